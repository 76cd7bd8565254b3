//! The `f32` routes, for systems whose condition bound allows it (see the module above). They
//! read the layer's `f32` input where it lies, with no converted copy: the ones column of
//! `X_aug` is folded in algebraically (`X_aug X_aug^T = X X^T + 1 1^T`; the Gram's last row
//! and column are the column sums of `X` and the row count), so the workspace is the system
//! (packed: its lower triangle only), one block of right-hand sides and one output tile.

use super::packed::{Blocks, Packed};
use super::{
    Ridge, Tile, TileSink, balanced_rows, factor, lower_product, primal_parts, primal_rows,
    product_by_row_shares, solve_factored,
};
use crate::ledger::Buffer;
use crate::{Matrix, OpsError, par};
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, Par};
use rayon::prelude::*;

/// Above this many Gram rows, the primal route builds one system with parallel products
/// instead of one partial system per thread (whose copies would then cost more memory than
/// the barriers of a parallel product cost time).
const PARTIALS_UP_TO: usize = 256;

/// Peak workspace bytes of [`solve_dual`] or [`solve_primal`] (see `super::workspace_bytes`).
pub(super) fn workspace_bytes(n: usize, d: usize, m: usize, dual: bool) -> usize {
    let (da, chunk) = (d + 1, super::CHUNK);
    let f32s = if dual {
        let (bw, cw) = (chunk.min(m), chunk.min(d.max(1)));
        Packed::<f32>::len(n) + n * bw + cw * bw + bw
    } else if packed_primal(n, da) {
        Packed::<f32>::len(da) + da * m
    } else {
        primal_systems(n, da) * (da * da + da * m)
    };
    f32s * size_of::<f32>()
}

/// Number of systems the primal route accumulates at once (`PARTIAL_SYSTEMS` for small ones).
fn primal_systems(n: usize, da: usize) -> usize {
    if da > PARTIALS_UP_TO { 1 } else { primal_parts(n, primal_rows(super::CHUNK, da, n)) }
}

/// Whether a system of `da` rows is small enough for one partial system per row range.
pub(super) fn partial_systems_for(da: usize) -> bool {
    da <= PARTIALS_UP_TO
}

/// Whether the primal route builds one packed system (rather than partial square ones).
fn packed_primal(n: usize, da: usize) -> bool {
    da >= 2 && primal_systems(n, da) == 1
}

/// Column sums of the rows of `v` (`cols` wide, row-major), accumulated in `f64` on the
/// stack a block of columns at a time (no allocation), each handed to `emit(column, sum)`.
pub(super) fn column_sums(v: &[f32], cols: usize, mut emit: impl FnMut(usize, f64)) {
    for c0 in (0..cols).step_by(SUM_BLOCK) {
        let w = SUM_BLOCK.min(cols - c0);
        let mut acc = [0.0f64; SUM_BLOCK];
        block_column_sums(v, cols, c0, &mut acc[..w]);
        for (j, &a) in acc[..w].iter().enumerate() {
            emit(c0 + j, a);
        }
    }
}

/// Columns summed per pass of [`column_sums`].
const SUM_BLOCK: usize = 64;

widest_vectors! {
    /// `acc[j] += sum of column c0 + j` over the rows of `v`, in the widest vector lanes the
    /// CPU has (the pointwise layers' ones column reads each map and error this way).
    fn block_column_sums(v: &[f32], cols: usize, c0: usize, acc: &mut [f64]) => column_sums_loop
}

#[inline(always)]
fn column_sums_loop(v: &[f32], cols: usize, c0: usize, acc: &mut [f64]) {
    // Fixed-width runs of columns summed in a local array, which stays in registers: summed
    // straight into `acc` (a slice of run-time length), every row's adds went through memory
    // and waited on the previous row's stores. Each column still adds its rows in order.
    let w = acc.len();
    let mut j = 0;
    while j + 32 <= w {
        column_run::<32>(v, cols, c0 + j, &mut acc[j..j + 32]);
        j += 32;
    }
    while j + 8 <= w {
        column_run::<8>(v, cols, c0 + j, &mut acc[j..j + 8]);
        j += 8;
    }
    for (a, c) in acc[j..].iter_mut().zip(c0 + j..) {
        *a += v.chunks_exact(cols).map(|row| f64::from(row[c])).sum::<f64>();
    }
}

/// `acc[l] += sum of column c0 + l` over the rows of `v`, for `L` columns.
#[inline(always)]
fn column_run<const L: usize>(v: &[f32], cols: usize, c0: usize, acc: &mut [f64]) {
    let mut lanes = [0.0f64; L];
    for row in v.chunks_exact(cols) {
        let values: &[f32; L] = row[c0..c0 + L].try_into().expect("L columns");
        for (l, &x) in lanes.iter_mut().zip(values) {
            *l += f64::from(x);
        }
    }
    for (a, l) in acc.iter_mut().zip(lanes) {
        *a += l;
    }
}

/// Most values of `dW` per tile of the in-place dual route (512 KiB; the MNIST first layer's
/// 785 rows go in four tiles of 197, 394 KiB each). Its products run a share of rows per
/// thread; seven tiles of 128 rows took 0.6 ms more per MNIST step, in per-call costs and
/// the uneven last tile. The tile is not at the MLP's peak (the hidden layer's solve is).
const TILE_VALUES: usize = 1 << 17;

/// Peak workspace bytes of [`solve_dual_in_place`], beside the consumed error.
pub(super) fn in_place_workspace_bytes(n: usize, d: usize, m: usize) -> usize {
    let rows = balanced_rows(d, m, TILE_VALUES);
    (Packed::<f32>::len(n) + rows * m + m) * size_of::<f32>()
}

/// The factored kernel `K = X X^T + 1 1^T + lambda I`, packed (half an `n x n` matrix), and
/// the ridge added.
fn kernel(x: &Matrix, ridge: &Ridge) -> Result<(Packed<f32>, f64), OpsError> {
    let mut k = Packed::<f32>::zeros(x.rows());
    let (h, r) = k.split();
    k.set_gram(x.view().subrows(0, h), x.view().subrows(h, r));
    k.add_to_lower(1.0);
    let lambda = ridge.lambda(k.diagonal_sum())?;
    k.add_diagonal(lambda as f32);
    k.factor()?;
    Ok((k, lambda))
}

/// Dual route over the error's own storage (its last use): `Z = K^-1 e` in place for all
/// columns at once, then `dW = -alpha X^T Z` in tiles of rows and `db = -alpha 1^T Z`.
pub(super) fn solve_dual_in_place(
    x: &Matrix,
    mut e: Matrix,
    r: &Ridge,
    sink: &mut TileSink<'_>,
) -> Result<f64, OpsError> {
    let (d, m) = (x.cols(), e.cols());
    let (k, lambda) = kernel(x, r)?;
    k.solve_in_place(e.view_mut());
    let rows = balanced_rows(d, m, TILE_VALUES);
    let mut out = Buffer::<f32>::zeros(rows * m);
    for c0 in (0..d).step_by(rows) {
        let h = rows.min(d - c0);
        let ov = MatMut::from_row_major_slice_mut(&mut out[..h * m], h, m);
        product_by_row_shares(ov, x.view().subcols(c0, h).transpose(), e.view(), -r.alpha as f32);
        sink(Tile { values: &out[..h * m], cols: m, row0: c0, col0: 0 });
    }
    let mut bias = Buffer::<f32>::zeros(m);
    column_sums(e.as_slice(), m, |c, s| bias[c] = (-r.alpha * s) as f32);
    sink(Tile { values: &bias, cols: m, row0: d, col0: 0 });
    Ok(lambda)
}

/// Dual route: `K = X X^T + 1 1^T + lambda I` (n x n), then for each block of error columns
/// `Z = K^-1 e_b`, `dW_b = -alpha X^T Z` in tiles of rows and `db_b = -alpha 1^T Z`.
pub(super) fn solve_dual(
    x: &Matrix,
    e: &Matrix,
    r: &Ridge,
    sink: &mut TileSink<'_>,
) -> Result<f64, OpsError> {
    let (n, d, m) = (x.rows(), x.cols(), e.cols());
    let chunk = r.chunk;
    let (k, lambda) = kernel(x, r)?;
    let (bw, cw) = (chunk.min(m), chunk.min(d.max(1)));
    let mut z = Buffer::<f32>::zeros(n * bw);
    let mut out = Buffer::<f32>::zeros(cw * bw);
    let mut bias = Buffer::<f32>::zeros(bw);
    let alpha = r.alpha as f32;
    for b0 in (0..m).step_by(chunk) {
        let b1 = (b0 + chunk).min(m);
        let w = b1 - b0;
        for (dst, src) in z.chunks_exact_mut(w).zip(e.as_slice().chunks_exact(m)) {
            dst.copy_from_slice(&src[b0..b1]);
        }
        let mut zv = MatMut::from_row_major_slice_mut(&mut z[..n * w], n, w);
        k.solve_in_place(zv.as_mut());
        let zr = zv.as_ref();
        for c0 in (0..d).step_by(chunk) {
            let cwid = chunk.min(d - c0);
            let xv = x.view().subcols(c0, cwid);
            let mut ov = MatMut::from_row_major_slice_mut(&mut out[..cwid * w], cwid, w);
            product_by_row_shares(ov.as_mut(), xv.transpose(), zr, -alpha);
            sink(Tile { values: &out[..cwid * w], cols: w, row0: c0, col0: b0 });
        }
        column_sums(&z[..n * w], w, |c, s| bias[c] = (-r.alpha * s) as f32);
        sink(Tile { values: &bias[..w], cols: w, row0: d, col0: b0 });
    }
    Ok(lambda)
}

/// Primal route: `G = X_aug^T X_aug + lambda I` and `R = X_aug^T e` (row `d` of each from
/// column sums), then `R <- -alpha G^-1 R` in place, handed over as one tile. A wide layer's
/// Gram is one packed system built with parallel products; a narrow one's is summed from
/// partial systems over contiguous row ranges.
pub(super) fn solve_primal(
    x: &Matrix,
    e: &Matrix,
    r: &Ridge,
    sink: &mut TileSink<'_>,
) -> Result<f64, OpsError> {
    let (n, d, m) = (x.rows(), x.cols(), e.cols());
    let da = d + 1;
    let (mut rhs, lambda) = if packed_primal(n, da) {
        let mut g = packed_gram(x);
        let lambda = r.lambda(g.diagonal_sum())?;
        let mut rhs = right_hand_side(x, e, 0, n, par());
        g.add_diagonal(lambda as f32);
        g.factor()?;
        g.solve_in_place(MatMut::from_row_major_slice_mut(&mut rhs, da, m));
        (rhs, lambda)
    } else {
        solve_partial_systems(x, e, r)?
    };
    let alpha = r.alpha as f32;
    rhs.iter_mut().for_each(|v| *v *= -alpha);
    sink(Tile { values: &rhs, cols: m, row0: 0, col0: 0 });
    Ok(lambda)
}

/// `G^-1 R` from partial systems over contiguous row ranges, summed in range order (no
/// dependence on scheduling or thread count), and the ridge added.
fn solve_partial_systems(x: &Matrix, e: &Matrix, r: &Ridge) -> Result<(Buffer<f32>, f64), OpsError> {
    let (n, d, m) = (x.rows(), x.cols(), e.cols());
    let da = d + 1;
    let parts = primal_systems(n, da);
    let span = n.div_ceil(parts).max(1);
    let mut systems: Vec<(Buffer<f32>, Buffer<f32>)> = (0..parts)
        .into_par_iter()
        .map(|p| {
            let (start, stop) = ((p * span).min(n), ((p + 1) * span).min(n));
            accumulate(x, e, start, stop, Par::Seq)
        })
        .collect();
    let (mut g, mut rhs) = systems.remove(0);
    for (pg, pr) in &systems {
        // Only the lower triangle of a Gram is meaningful.
        for j in 0..da {
            for i in j..da {
                g[j * da + i] += pg[j * da + i];
            }
        }
        for (a, &b) in rhs.iter_mut().zip(pr.iter()) {
            *a += b;
        }
    }
    drop(systems);
    let mut gv = MatMut::from_column_major_slice_mut(&mut g, da, da);
    let lambda = r.lambda((0..da).map(|i| f64::from(gv[(i, i)])).sum())?;
    for i in 0..da {
        gv[(i, i)] += lambda as f32;
    }
    factor(gv.as_mut())?;
    solve_factored(gv.as_ref(), MatMut::from_row_major_slice_mut(&mut rhs, da, m));
    Ok((rhs, lambda))
}

/// The packed Gram `X_aug^T X_aug` of all rows (the ones column's row from column sums).
fn packed_gram(x: &Matrix) -> Packed<f32> {
    let (n, d) = (x.rows(), x.cols());
    let mut g = Packed::<f32>::zeros(d + 1);
    let (k, r) = g.split();
    // Columns 0..k of X_aug are inputs (k <= d), k..d the rest, then the ones column.
    g.set_gram(x.view().subcols(0, k).transpose(), x.view().subcols(k, r - 1).transpose());
    let Blocks { mut a21, mut a22, .. } = g.blocks_mut();
    column_sums(x.as_slice(), d, |j, s| {
        if j < k {
            a21[(r - 1, j)] = s as f32;
        } else {
            a22[(r - 1, j - k)] = s as f32;
        }
    });
    a22[(r - 1, r - 1)] = n as f32;
    g
}

/// The Gram (lower triangle, column-major `da x da`) and right-hand side (row-major
/// `da x m`) of rows `start..stop`.
fn accumulate(x: &Matrix, e: &Matrix, start: usize, stop: usize, par: Par) -> (Buffer<f32>, Buffer<f32>) {
    let d = x.cols();
    let (da, h) = (d + 1, stop - start);
    let mut g = Buffer::<f32>::zeros(da * da);
    let xv = x.view().subrows(start, h);
    let mut gv = MatMut::from_column_major_slice_mut(&mut g, da, da);
    lower_product(gv.as_mut().submatrix_mut(0, 0, d, d), Accum::Replace, xv.transpose(), xv, 1.0, par);
    column_sums(&x.as_slice()[start * d..stop * d], d, |j, s| gv[(d, j)] = s as f32);
    gv[(d, d)] = h as f32;
    (g, right_hand_side(x, e, start, stop, par))
}

/// `X_aug^T e` over rows `start..stop` (row-major `(d+1) x m`; row `d` from column sums).
fn right_hand_side(x: &Matrix, e: &Matrix, start: usize, stop: usize, par: Par) -> Buffer<f32> {
    let (d, m) = (x.cols(), e.cols());
    let h = stop - start;
    let mut rhs = Buffer::<f32>::zeros((d + 1) * m);
    let mut rv = MatMut::from_row_major_slice_mut(&mut rhs, d + 1, m);
    let (xv, ev) = (x.view().subrows(start, h), e.view().subrows(start, h));
    matmul(rv.as_mut().submatrix_mut(0, 0, d, m), Accum::Replace, xv.transpose(), ev, 1.0, par);
    column_sums(&e.as_slice()[start * m..stop * m], m, |c, s| rv[(d, c)] = s as f32);
    rhs
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Column sums equal plain `f64` sums of each column's rows in order, bit for bit, for
    /// widths around the 32- and 8-column runs and past the 64-column blocks.
    #[test]
    fn column_sums_are_each_columns_rows_added_in_order() {
        for cols in [1usize, 7, 8, 9, 31, 32, 33, 41, 64, 65, 100] {
            let rows = 37;
            let v: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919) % 1013) as f32 / 97.0 - 5.0).collect();
            let mut got = vec![f64::NAN; cols];
            column_sums(&v, cols, |c, s| got[c] = s);
            for (c, &g) in got.iter().enumerate() {
                let want = (0..rows).fold(0.0f64, |s, r| s + f64::from(v[r * cols + c]));
                assert_eq!(g.to_bits(), want.to_bits(), "{cols} columns, column {c}: {g} vs {want}");
            }
        }
    }
}
