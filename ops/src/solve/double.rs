//! The `f64` routes, for systems whose condition bound is too large for `f32`. `X_aug` and `e`
//! are never converted to `f64` whole: the system is accumulated from slices of `chunk`
//! columns (dual) or of a few hundred rows (primal), and the dual route's right-hand side is
//! solved block by block.

use super::single::column_sums;
use super::{Ridge, Tile, TileSink, factor, lower_product, primal_parts, primal_rows, solve_factored};
use crate::ledger::Buffer;
use crate::{Matrix, OpsError, par};
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

/// Peak workspace bytes of [`solve_dual`] or [`solve_primal`] (see `super::workspace_bytes`).
pub(super) fn workspace_bytes(n: usize, d: usize, m: usize, dual: bool, f32_products: bool) -> usize {
    let (da, chunk) = (d + 1, super::CHUNK);
    let (f64b, f32b) = (size_of::<f64>(), size_of::<f32>());
    if dual {
        let (bw, cw) = (chunk.min(m), chunk.min(da));
        (n * n + n * cw + n * bw + cw * bw) * f64b + cw * bw * f32b
    } else {
        let rows = primal_rows(chunk, da, n);
        let parts = primal_parts(n, rows);
        let system = da * da + da * m;
        // accumulating: the summed system, and per part a partial system and either one
        // slice of rows in f64 or one block's system in f32; then the system and the f32
        // copy of the solution
        let block = if f32_products { system * f32b } else { rows * (da + m) * f64b };
        let accumulate = (1 + parts) * system * f64b + parts * block;
        accumulate.max(system * f64b + da * m * f32b)
    }
}

/// Columns `c0..c1` of `X_aug` (column `d` is the ones column) as a row-major `f64` block.
fn columns_f64(x: &Matrix, c0: usize, c1: usize, out: &mut [f64]) {
    let (d, w) = (x.cols(), c1 - c0);
    for (i, dst) in out.chunks_exact_mut(w).enumerate().take(x.rows()) {
        let row = x.row(i);
        for (j, o) in dst.iter_mut().enumerate() {
            let c = c0 + j;
            *o = if c == d { 1.0 } else { row[c] as f64 };
        }
    }
}

/// Hand an `f64` tile to the sink as `f32`.
fn emit(tile: MatRef<'_, f64>, scratch: &mut [f32], row0: usize, col0: usize, sink: &mut TileSink<'_>) {
    let (h, w) = (tile.nrows(), tile.ncols());
    for (j, dst) in scratch.chunks_exact_mut(w).take(h).enumerate() {
        for (c, o) in dst.iter_mut().enumerate() {
            *o = tile[(j, c)] as f32;
        }
    }
    sink(Tile { values: &scratch[..h * w], cols: w, row0, col0 });
}

/// Dual route: `K = X_aug X_aug^T + lambda I` (n x n) accumulated from column chunks, then for
/// each block of error columns `Z = K^-1 e_b` and `dTheta_b = -alpha X_aug^T Z`.
pub(super) fn solve_dual(
    x: &Matrix,
    e: &Matrix,
    r: &Ridge,
    sink: &mut TileSink<'_>,
) -> Result<f64, OpsError> {
    let (n, d, m) = (x.rows(), x.cols(), e.cols());
    let (da, chunk) = (d + 1, r.chunk);
    let mut k = Buffer::<f64>::zeros(n * n);
    let mut kv = MatMut::from_column_major_slice_mut(&mut k, n, n);
    {
        let mut xc = Buffer::<f64>::zeros(n * chunk.min(da));
        for c0 in (0..da).step_by(chunk) {
            let c1 = (c0 + chunk).min(da);
            let w = c1 - c0;
            columns_f64(x, c0, c1, &mut xc[..n * w]);
            let xv = MatRef::from_row_major_slice(&xc[..n * w], n, w);
            let accum = if c0 == 0 { Accum::Replace } else { Accum::Add };
            lower_product(kv.as_mut(), accum, xv, xv.transpose(), 1.0, par());
        }
    }
    let lambda = r.lambda((0..n).map(|i| kv[(i, i)]).sum())?;
    for i in 0..n {
        kv[(i, i)] += lambda;
    }
    factor(kv.as_mut())?;
    let (bw, cw) = (chunk.min(m), chunk.min(da));
    let mut z = Buffer::<f64>::zeros(n * bw);
    let mut xc = Buffer::<f64>::zeros(n * cw);
    let mut out = Buffer::<f64>::zeros(cw * bw);
    let mut narrow = Buffer::<f32>::zeros(cw * bw);
    for b0 in (0..m).step_by(chunk) {
        let b1 = (b0 + chunk).min(m);
        let w = b1 - b0;
        for (i, dst) in z.chunks_exact_mut(w).enumerate().take(n) {
            for (o, &v) in dst.iter_mut().zip(&e.row(i)[b0..b1]) {
                *o = v as f64;
            }
        }
        let mut zv = MatMut::from_row_major_slice_mut(&mut z[..n * w], n, w);
        solve_factored(kv.as_ref(), zv.as_mut());
        let zr = zv.as_ref();
        for c0 in (0..da).step_by(chunk) {
            let c1 = (c0 + chunk).min(da);
            let cwid = c1 - c0;
            columns_f64(x, c0, c1, &mut xc[..n * cwid]);
            let xv = MatRef::from_row_major_slice(&xc[..n * cwid], n, cwid);
            let mut ov = MatMut::from_row_major_slice_mut(&mut out[..cwid * w], cwid, w);
            matmul(ov.as_mut(), Accum::Replace, xv.transpose(), zr, -r.alpha, par());
            emit(ov.as_ref(), &mut narrow, c0, b0, sink);
        }
    }
    Ok(lambda)
}

/// Primal route: `G = X_aug^T X_aug + lambda I` and `R = X_aug^T e` accumulated from row
/// chunks, then `R <- G^-1 R` in place. With `f32_products` each chunk's products are formed
/// and summed in `f32` straight from the layer's input (a few hundred terms per sum, see
/// [`super::F32_PRODUCT_ROWS`]) and added into the `f64` sums; otherwise each chunk is
/// converted to `f64` first.
pub(super) fn solve_primal(
    x: &Matrix,
    e: &Matrix,
    r: &Ridge,
    f32_products: bool,
    sink: &mut TileSink<'_>,
) -> Result<f64, OpsError> {
    let (g, rhs) = primal_system(x, e, 0..x.rows(), r.chunk, f32_products);
    solve_system(g, rhs, x.cols() + 1, r, sink)
}

/// `X_aug^T X_aug` (lower triangle) and `X_aug^T e` over rows `rows`, column-major `f64`.
pub(super) fn primal_system(
    x: &Matrix,
    e: &Matrix,
    rows: std::ops::Range<usize>,
    chunk: usize,
    f32_products: bool,
) -> (Buffer<f64>, Buffer<f64>) {
    let (d, m) = (x.cols(), e.cols());
    let (first, n) = (rows.start, rows.len());
    let da = d + 1;
    // The rows are split into a fixed number of contiguous ranges (`PARTIAL_SYSTEMS`),
    // each accumulating its own partial Gram and right-hand side with sequential
    // products: the products of one slice are too small to share out (a 33 x 33 result),
    // and parallel ones spent most of their time in barriers. Partials are summed in
    // range order, so the result depends neither on scheduling nor on the thread count.
    let rows = primal_rows(chunk, da, n);
    let parts = primal_parts(n, rows);
    let span = n.div_ceil(parts).max(1);
    let partials: Vec<(Buffer<f64>, Buffer<f64>)> = (0..parts)
        .into_par_iter()
        .map(|p| {
            let (start, stop) = (first + (p * span).min(n), first + ((p + 1) * span).min(n));
            let mut g = Buffer::<f64>::zeros(da * da);
            let mut r = Buffer::<f64>::zeros(da * m);
            let mut gv = MatMut::from_column_major_slice_mut(&mut g, da, da);
            let mut rv = MatMut::from_column_major_slice_mut(&mut r, da, m);
            if f32_products {
                accumulate_f32_products(x, e, start, stop, super::F32_PRODUCT_ROWS, gv.as_mut(), rv.as_mut());
                return (g, r);
            }
            let mut xr = Buffer::<f64>::zeros(rows * da);
            let mut er = Buffer::<f64>::zeros(rows * m);
            for r0 in (start..stop).step_by(rows) {
                let r1 = (r0 + rows).min(stop);
                let h = r1 - r0;
                for (i, dst) in xr.chunks_exact_mut(da).take(h).enumerate() {
                    for (o, &v) in dst.iter_mut().zip(x.row(r0 + i)) {
                        *o = v as f64;
                    }
                    dst[d] = 1.0;
                }
                for (o, &v) in er.iter_mut().zip(&e.as_slice()[r0 * m..r1 * m]) {
                    *o = v as f64;
                }
                let xv = MatRef::from_row_major_slice(&xr[..h * da], h, da);
                let ev = MatRef::from_row_major_slice(&er[..h * m], h, m);
                lower_product(gv.as_mut(), Accum::Add, xv.transpose(), xv, 1.0, Par::Seq);
                matmul(rv.as_mut(), Accum::Add, xv.transpose(), ev, 1.0, Par::Seq);
            }
            (g, r)
        })
        .collect();
    if partials.len() == 1 {
        // One part (a short shard of a distributed batch): it is the sum.
        return partials.into_iter().next().expect("one part");
    }
    let mut g = Buffer::<f64>::zeros(da * da);
    let mut gv = MatMut::from_column_major_slice_mut(&mut g, da, da);
    let mut rhs = Buffer::<f64>::zeros(da * m);
    let mut rv = MatMut::from_column_major_slice_mut(&mut rhs, da, m);
    for (g, r) in &partials {
        let (g, r) = (MatRef::from_column_major_slice(g, da, da), MatRef::from_column_major_slice(r, da, m));
        for j in 0..da {
            for i in j..da {
                gv[(i, j)] += g[(i, j)];
            }
        }
        for c in 0..m {
            for j in 0..da {
                rv[(j, c)] += r[(j, c)];
            }
        }
    }
    (g, rhs)
}

/// Add the ridge to the diagonal of the system `g` (`da x da`, lower triangle, column-major),
/// factor it, solve for `rhs` (`da x m`) and hand `-alpha` times the solution to `sink`;
/// returns the ridge added.
pub(super) fn solve_system(
    mut g: Buffer<f64>,
    mut rhs: Buffer<f64>,
    da: usize,
    r: &Ridge,
    sink: &mut TileSink<'_>,
) -> Result<f64, OpsError> {
    let m = rhs.len() / da.max(1);
    let mut gv = MatMut::from_column_major_slice_mut(&mut g, da, da);
    let mut rv = MatMut::from_column_major_slice_mut(&mut rhs, da, m);
    let lambda = r.lambda((0..da).map(|i| gv[(i, i)]).sum())?;
    for i in 0..da {
        gv[(i, i)] += lambda;
    }
    factor(gv.as_mut())?;
    solve_factored(gv.as_ref(), rv.as_mut());
    let mut narrow = Buffer::<f32>::zeros(da * m);
    for c in 0..m {
        for j in 0..da {
            narrow[j * m + c] = (rv[(j, c)] * -r.alpha) as f32;
        }
    }
    sink(Tile { values: &narrow, cols: m, row0: 0, col0: 0 });
    Ok(lambda)
}

/// Add `X_aug^T X_aug` (lower triangle) and `X_aug^T e` of rows `start..stop` into the `f64`
/// sums `g` and `r`, forming each block of `rows` rows' products in `f32` (no converted copy
/// of the input; the ones column's entries are column sums taken in `f64`).
fn accumulate_f32_products(
    x: &Matrix,
    e: &Matrix,
    start: usize,
    stop: usize,
    rows: usize,
    mut g: MatMut<'_, f64>,
    mut r: MatMut<'_, f64>,
) {
    let (d, m) = (x.cols(), e.cols());
    let da = d + 1;
    let mut bg = Buffer::<f32>::zeros(da * da);
    let mut br = Buffer::<f32>::zeros(da * m);
    for r0 in (start..stop).step_by(rows) {
        let h = rows.min(stop - r0);
        let (xv, ev) = (x.view().subrows(r0, h), e.view().subrows(r0, h));
        let mut bgv = MatMut::from_column_major_slice_mut(&mut bg, da, da);
        lower_product(
            bgv.as_mut().submatrix_mut(0, 0, d, d),
            Accum::Replace,
            xv.transpose(),
            xv,
            1.0,
            Par::Seq,
        );
        let mut brv = MatMut::from_column_major_slice_mut(&mut br, da, m);
        matmul(brv.as_mut().submatrix_mut(0, 0, d, m), Accum::Replace, xv.transpose(), ev, 1.0, Par::Seq);
        for j in 0..d {
            for i in j..d {
                g[(i, j)] += bgv[(i, j)] as f64;
            }
        }
        for c in 0..m {
            for j in 0..d {
                r[(j, c)] += brv[(j, c)] as f64;
            }
        }
        column_sums(&x.as_slice()[r0 * d..(r0 + h) * d], d, |j, s| g[(d, j)] += s);
        column_sums(&e.as_slice()[r0 * m..(r0 + h) * m], m, |c, s| r[(d, c)] += s);
        g[(d, d)] += h as f64;
    }
}
