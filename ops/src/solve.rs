//! The Prospective Learning solve (SPEC section 2, step 4):
//! `dTheta = -alpha (X_aug^T X_aug + lambda I)^-1 X_aug^T e` with `X_aug = [X, 1]`.
//!
//! Two exact routes give the same `dTheta`:
//! - primal: factor the `(d+1) x (d+1)` Gram `X_aug^T X_aug + lambda I`;
//! - dual: factor the `n x n` kernel `X_aug X_aug^T + lambda I` and map back with
//!   `X_aug^T (X_aug X_aug^T + lambda I)^-1 e`.
//!
//! [`SolvePath::Auto`] takes the smaller system. Both accumulate in `f64` (with the paper's
//! `lambda = 1e-4` the system is far too ill-conditioned for `f32`), factor by Cholesky (never an
//! explicit inverse), compute only the lower triangle of the symmetric product, and solve in
//! place. `X_aug` and `e` are never converted to `f64` whole: the system is accumulated from
//! 128-wide slices and the dual route's right-hand side is solved block by block, so the
//! workspace is the system plus a few slices ([`workspace_bytes`]). All of it is
//! ledger-tracked and released before the function returns.

use crate::ledger::Buffer;
use crate::{Matrix, OpsError, par};
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt;
use faer::linalg::matmul::matmul;
use faer::linalg::matmul::triangular::{self, BlockStructure};
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

/// How `lambda` is interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RidgeScale {
    /// `lambda` is added to the Gram diagonal as it is (the paper's literal setting).
    Absolute,
    /// `lambda` is multiplied by the mean diagonal of `X_aug^T X_aug`, i.e. by
    /// `||X_aug||_F^2 / (d+1)`, so the regularisation follows the scale of the data and of
    /// the batch size. Both solve routes see the same value.
    Relative,
}

/// Which system to factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SolvePath {
    /// The smaller of the two.
    Auto,
    /// The `(d+1) x (d+1)` Gram.
    Primal,
    /// The `n x n` kernel.
    Dual,
}

/// Settings of one regularised least-squares update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RidgeConfig {
    /// Step size `alpha`.
    pub alpha: f64,
    /// Ridge `lambda`, read according to `scale`.
    pub lambda: f64,
    /// How `lambda` is read.
    pub scale: RidgeScale,
    /// Which system to factor.
    pub path: SolvePath,
}

/// The result of one solve: the update of a dense layer's weights and bias.
#[derive(Debug)]
pub struct RidgeUpdate {
    /// `d x m`, to be added to the weights.
    pub dw: Matrix,
    /// `1 x m`, to be added to the bias.
    pub db: Matrix,
    /// The `lambda` actually added to the diagonal.
    pub lambda_used: f64,
    /// `true` when the `n x n` system was factored.
    pub dual: bool,
}

/// Solve for the update of a layer with input `x` (`n x d`) and error `e` (`n x m`).
pub fn ridge_update(x: &Matrix, e: &Matrix, cfg: &RidgeConfig) -> Result<RidgeUpdate, OpsError> {
    ridge_update_chunked(x, e, cfg, CHUNK)
}

/// What a streamed solve used.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SolveInfo {
    /// The `lambda` actually added to the diagonal.
    pub lambda_used: f64,
    /// `true` when the `n x n` system was factored.
    pub dual: bool,
}

/// Receives the update `dTheta` (already scaled by `-alpha`) one tile at a time: the tile
/// holds rows `row0..` and columns `col0..` of the `(d+1) x m` matrix whose last row is the
/// bias update. Every entry is delivered exactly once.
pub type TileSink<'a> = dyn FnMut(MatRef<'_, f64>, usize, usize) + 'a;

/// Like [`ridge_update`], but hands the update to `sink` tile by tile instead of returning it,
/// so the caller can fold it into its state without a `d x m` buffer. The inputs are checked
/// before the first tile; a tile with NaN or infinity stops the stream with an error (the
/// caller's state may then hold the tiles already delivered).
pub fn ridge_update_tiles(
    x: &Matrix,
    e: &Matrix,
    cfg: &RidgeConfig,
    sink: &mut TileSink<'_>,
) -> Result<SolveInfo, OpsError> {
    solve_tiles(x, e, cfg, CHUNK, sink)
}

/// Peak bytes of workspace that a solve for an input of `n x d` and an error of `n x m`
/// allocates: with `materialized`, [`ridge_update`] (which returns the whole update), else
/// [`ridge_update_tiles`] (which streams it); used for memory estimates.
pub fn workspace_bytes(n: usize, d: usize, m: usize, path: SolvePath, materialized: bool) -> usize {
    let da = d + 1;
    let update = if materialized { (d * m + m) * size_of::<f32>() } else { 0 };
    let f64s = match path {
        SolvePath::Dual => n * n + n * CHUNK.min(da) + n * CHUNK.min(m) + CHUNK.min(da) * CHUNK.min(m),
        SolvePath::Primal => {
            let rows = CHUNK.max((1 << 15) / da).min(n.max(1));
            da * da + da * m + rows * (da + m)
        }
        SolvePath::Auto => {
            return workspace_bytes(
                n,
                d,
                m,
                if n < da { SolvePath::Dual } else { SolvePath::Primal },
                materialized,
            );
        }
    };
    f64s * size_of::<f64>() + update
}

/// Width of the `f64` slices of `X_aug` and `e` that are converted at a time: large enough
/// for efficient products, small enough that the workspace is dominated by the system itself.
const CHUNK: usize = 128;

const OP: &str = "PL solve";

fn ridge_update_chunked(
    x: &Matrix,
    e: &Matrix,
    cfg: &RidgeConfig,
    chunk: usize,
) -> Result<RidgeUpdate, OpsError> {
    let mut collected = TileCollector::new(x.cols(), e.cols());
    let info = solve_tiles(x, e, cfg, chunk, &mut |tile, row0, col0| collected.absorb(tile, row0, col0))?;
    Ok(collected.finish(info))
}

/// Gathers streamed tiles of `dTheta` back into a whole update.
#[derive(Debug)]
pub struct TileCollector {
    dw: Matrix,
    db: Matrix,
}

impl TileCollector {
    /// An empty update for `d` inputs and `m` outputs.
    pub fn new(d: usize, m: usize) -> Self {
        Self { dw: Matrix::zeros(d, m), db: Matrix::zeros(1, m) }
    }

    /// Store one tile (rows `row0..`, columns `col0..`; row `d` is the bias).
    pub fn absorb(&mut self, tile: MatRef<'_, f64>, row0: usize, col0: usize) {
        let (d, m) = (self.dw.rows(), self.dw.cols());
        for j in 0..tile.nrows() {
            let row = row0 + j;
            let dst = if row == d {
                self.db.as_mut_slice()
            } else {
                &mut self.dw.as_mut_slice()[row * m..(row + 1) * m]
            };
            for c in 0..tile.ncols() {
                dst[col0 + c] = tile[(j, c)] as f32;
            }
        }
    }

    /// The whole update.
    pub fn finish(self, info: SolveInfo) -> RidgeUpdate {
        RidgeUpdate { dw: self.dw, db: self.db, lambda_used: info.lambda_used, dual: info.dual }
    }
}

fn solve_tiles(
    x: &Matrix,
    e: &Matrix,
    cfg: &RidgeConfig,
    chunk: usize,
    sink: &mut TileSink<'_>,
) -> Result<SolveInfo, OpsError> {
    let (n, d, m) = (x.rows(), x.cols(), e.cols());
    if e.rows() != n {
        return Err(OpsError::Shape {
            op: OP,
            detail: format!("input has {n} rows but the error has {} ({}x{m})", e.rows(), e.rows()),
        });
    }
    let da = d + 1;
    // trace(X_aug^T X_aug) = ||X||_F^2 + n (the ones column), summed in f64.
    let trace = n as f64 + x.as_slice().iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>();
    if !trace.is_finite() {
        return Err(OpsError::NonFinite { op: OP, what: "the layer input", rows: n, cols: d });
    }
    if !e.as_slice().iter().all(|v| v.is_finite()) {
        return Err(OpsError::NonFinite { op: OP, what: "the error", rows: n, cols: d });
    }
    let lambda = match cfg.scale {
        RidgeScale::Absolute => cfg.lambda,
        RidgeScale::Relative => cfg.lambda * trace / da as f64,
    };
    let dual = match cfg.path {
        SolvePath::Auto => n < da,
        SolvePath::Primal => false,
        SolvePath::Dual => true,
    };
    let mut finite = true;
    let mut checked = |tile: MatRef<'_, f64>, row0: usize, col0: usize| {
        if finite {
            finite = (0..tile.ncols()).all(|c| (0..tile.nrows()).all(|r| tile[(r, c)].is_finite()));
            if finite {
                sink(tile, row0, col0);
            }
        }
    };
    if dual {
        solve_dual(x, e, lambda, cfg.alpha, chunk, &mut checked)?;
    } else {
        solve_primal(x, e, lambda, cfg.alpha, chunk, &mut checked)?;
    }
    if !finite {
        return Err(OpsError::NonFinite { op: OP, what: "the solved update", rows: n, cols: d });
    }
    Ok(SolveInfo { lambda_used: lambda, dual })
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

/// Dual route: `K = X_aug X_aug^T + lambda I` (n x n) accumulated from column chunks, then for
/// each block of error columns `Z = K^-1 e_b` and `dTheta_b = -alpha X_aug^T Z`.
fn solve_dual(
    x: &Matrix,
    e: &Matrix,
    lambda: f64,
    alpha: f64,
    chunk: usize,
    sink: &mut TileSink<'_>,
) -> Result<(), OpsError> {
    let (n, d, m) = (x.rows(), x.cols(), e.cols());
    let da = d + 1;
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
            lower_product(kv.as_mut(), accum, xv, xv.transpose());
        }
    }
    for i in 0..n {
        kv[(i, i)] += lambda;
    }
    let mut mem = factor(kv.as_mut())?;
    let stack = MemStack::new(&mut mem);
    let (bw, cw) = (chunk.min(m), chunk.min(da));
    let mut z = Buffer::<f64>::zeros(n * bw);
    let mut xc = Buffer::<f64>::zeros(n * cw);
    let mut out = Buffer::<f64>::zeros(cw * bw);
    for b0 in (0..m).step_by(chunk) {
        let b1 = (b0 + chunk).min(m);
        let w = b1 - b0;
        for (i, dst) in z.chunks_exact_mut(w).enumerate().take(n) {
            for (o, &v) in dst.iter_mut().zip(&e.row(i)[b0..b1]) {
                *o = v as f64;
            }
        }
        let mut zv = MatMut::from_row_major_slice_mut(&mut z[..n * w], n, w);
        llt::solve::solve_in_place(kv.as_ref(), zv.as_mut(), par(), stack);
        let zr = zv.as_ref();
        for c0 in (0..da).step_by(chunk) {
            let c1 = (c0 + chunk).min(da);
            let cwid = c1 - c0;
            columns_f64(x, c0, c1, &mut xc[..n * cwid]);
            let xv = MatRef::from_row_major_slice(&xc[..n * cwid], n, cwid);
            let mut ov = MatMut::from_row_major_slice_mut(&mut out[..cwid * w], cwid, w);
            matmul(ov.as_mut(), Accum::Replace, xv.transpose(), zr, -alpha, par());
            sink(ov.as_ref(), c0, b0);
        }
    }
    Ok(())
}

/// Primal route: `G = X_aug^T X_aug + lambda I` and `R = X_aug^T e` accumulated from row
/// chunks, then `R <- G^-1 R` in place.
fn solve_primal(
    x: &Matrix,
    e: &Matrix,
    lambda: f64,
    alpha: f64,
    chunk: usize,
    sink: &mut TileSink<'_>,
) -> Result<(), OpsError> {
    let (n, d, m) = (x.rows(), x.cols(), e.cols());
    let da = d + 1;
    let mut g = Buffer::<f64>::zeros(da * da);
    let mut gv = MatMut::from_column_major_slice_mut(&mut g, da, da);
    let mut r = Buffer::<f64>::zeros(da * m);
    let mut rv = MatMut::from_column_major_slice_mut(&mut r, da, m);
    {
        // Row slices of about 256 KiB: few enough calls for long, thin inputs (the positions
        // of a pointwise layer), small enough to stay a minor part of the workspace. The rows
        // are split into one contiguous range per thread, each accumulating its own partial
        // Gram and right-hand side with sequential products: the products of one slice are
        // too small to share out (a 33 x 33 result), and parallel ones spent most of their
        // time in barriers. Partials are summed in range order, so the result does not
        // depend on scheduling.
        let rows = chunk.max((1 << 15) / da).min(n.max(1));
        let parts = rayon::current_num_threads().clamp(1, n.div_ceil(rows).max(1));
        let span = n.div_ceil(parts).max(1);
        let partials: Vec<(Buffer<f64>, Buffer<f64>)> = (0..parts)
            .into_par_iter()
            .map(|p| {
                let (start, stop) = ((p * span).min(n), ((p + 1) * span).min(n));
                let mut g = Buffer::<f64>::zeros(da * da);
                let mut r = Buffer::<f64>::zeros(da * m);
                let mut gv = MatMut::from_column_major_slice_mut(&mut g, da, da);
                let mut rv = MatMut::from_column_major_slice_mut(&mut r, da, m);
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
                    lower_product_with(gv.as_mut(), Accum::Add, xv.transpose(), xv, Par::Seq);
                    matmul(rv.as_mut(), Accum::Add, xv.transpose(), ev, 1.0, Par::Seq);
                }
                (g, r)
            })
            .collect();
        gv.fill(0.0);
        rv.fill(0.0);
        for (g, r) in &partials {
            let (g, r) =
                (MatRef::from_column_major_slice(g, da, da), MatRef::from_column_major_slice(r, da, m));
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
    }
    for i in 0..da {
        gv[(i, i)] += lambda;
    }
    let mut mem = factor(gv.as_mut())?;
    llt::solve::solve_in_place(gv.as_ref(), rv.as_mut(), par(), MemStack::new(&mut mem));
    for c in 0..m {
        for j in 0..da {
            rv[(j, c)] *= -alpha;
        }
    }
    sink(rv.as_ref(), 0, 0);
    Ok(())
}

/// Solve the small SPD system `a x = rhs` in place (`a` is `dim x dim`, symmetric, either
/// layout; it is overwritten by its Cholesky factor and `rhs` by `x`). For the per-channel
/// systems of depthwise layers.
pub fn solve_spd_in_place(
    a: &mut [f64],
    dim: usize,
    rhs: &mut [f64],
    op: &'static str,
) -> Result<(), OpsError> {
    assert_eq!(a.len(), dim * dim, "solve_spd_in_place: matrix size");
    assert_eq!(rhs.len(), dim, "solve_spd_in_place: right-hand side size");
    let mut av = MatMut::from_column_major_slice_mut(a, dim, dim);
    let mut mem = factor(av.as_mut()).map_err(|e| match e {
        OpsError::NotPositiveDefinite { dim, pivot, .. } => OpsError::NotPositiveDefinite { op, dim, pivot },
        other => other,
    })?;
    let rv = MatMut::from_column_major_slice_mut(rhs, dim, 1);
    llt::solve::solve_in_place(av.as_ref(), rv, Par::Seq, MemStack::new(&mut mem));
    Ok(())
}

/// Lower triangle of the symmetric product `a * b`, replacing or adding to `dst`.
fn lower_product(dst: MatMut<'_, f64>, accum: Accum, a: MatRef<'_, f64>, b: MatRef<'_, f64>) {
    lower_product_with(dst, accum, a, b, par());
}

/// [`lower_product`] with the given parallelism.
fn lower_product_with(dst: MatMut<'_, f64>, accum: Accum, a: MatRef<'_, f64>, b: MatRef<'_, f64>, par: Par) {
    triangular::matmul(
        dst,
        BlockStructure::TriangularLower,
        accum,
        a,
        BlockStructure::Rectangular,
        b,
        BlockStructure::Rectangular,
        1.0,
        par,
    );
}

/// Cholesky-factor the SPD matrix `a` (lower triangle) in place; returns the scratch the
/// triangular solves may use.
fn factor(a: MatMut<'_, f64>) -> Result<MemBuffer, OpsError> {
    let dim = a.nrows();
    let req = llt::factor::cholesky_in_place_scratch::<f64>(dim, par(), Default::default())
        .or(llt::solve::solve_in_place_scratch::<f64>(dim, CHUNK, par()));
    let mut mem = MemBuffer::new(req);
    llt::factor::cholesky_in_place(a, Default::default(), par(), MemStack::new(&mut mem), Default::default())
        .map_err(|err| match err {
            llt::factor::LltError::NonPositivePivot { index } => {
                OpsError::NotPositiveDefinite { op: OP, dim, pivot: index }
            }
        })?;
    Ok(mem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use rand_distr::{Distribution, StandardNormal};

    fn random(rows: usize, cols: usize, seed: u64) -> Matrix {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let v = (0..rows * cols).map(|_| StandardNormal.sample(&mut rng)).collect();
        Matrix::from_vec(rows, cols, v)
    }

    /// Residual of the normal equations `(X_aug^T X_aug + lambda I) dTheta + alpha X_aug^T e`,
    /// computed with plain loops in f64, relative to the size of `alpha X_aug^T e`.
    fn normal_equation_residual(x: &Matrix, e: &Matrix, u: &RidgeUpdate, alpha: f64) -> f64 {
        let (n, d, m) = (x.rows(), x.cols(), e.cols());
        let xa = |i: usize, j: usize| if j == d { 1.0 } else { x.row(i)[j] as f64 };
        let theta = |j: usize, c: usize| {
            if j == d { u.db.as_slice()[c] as f64 } else { u.dw.row(j)[c] as f64 }
        };
        let (mut worst, mut scale) = (0.0f64, 0.0f64);
        for j in 0..=d {
            for c in 0..m {
                let mut lhs = u.lambda_used * theta(j, c);
                for k in 0..=d {
                    let g: f64 = (0..n).map(|i| xa(i, j) * xa(i, k)).sum();
                    lhs += g * theta(k, c);
                }
                let rhs: f64 = alpha * (0..n).map(|i| xa(i, j) * e.row(i)[c] as f64).sum::<f64>();
                worst = worst.max((lhs + rhs).abs());
                scale = scale.max(rhs.abs());
            }
        }
        worst / scale
    }

    fn cfg(path: SolvePath, scale: RidgeScale, lambda: f64) -> RidgeConfig {
        RidgeConfig { alpha: 0.1, lambda, scale, path }
    }

    #[test]
    fn primal_solve_satisfies_normal_equations() {
        let (x, e) = (random(40, 12, 1), random(40, 3, 2));
        let u = ridge_update(&x, &e, &cfg(SolvePath::Auto, RidgeScale::Absolute, 0.5)).expect("solve");
        assert!(!u.dual, "n=40 > d+1=13 must take the primal route");
        let r = normal_equation_residual(&x, &e, &u, 0.1);
        assert!(r < 1e-5, "relative residual {r}");
    }

    #[test]
    fn dual_solve_satisfies_normal_equations() {
        let (x, e) = (random(10, 30, 3), random(10, 4, 4));
        let u = ridge_update(&x, &e, &cfg(SolvePath::Auto, RidgeScale::Relative, 0.1)).expect("solve");
        assert!(u.dual, "n=10 < d+1=31 must take the dual route");
        let r = normal_equation_residual(&x, &e, &u, 0.1);
        assert!(r < 1e-5, "relative residual {r}");
    }

    #[test]
    fn both_routes_agree() {
        for (n, d) in [(20, 50), (50, 20), (31, 30), (150, 300), (300, 140)] {
            let (x, e) = (random(n, d, 5), random(n, if d > 200 { 140 } else { 6 }, 6));
            let p =
                ridge_update(&x, &e, &cfg(SolvePath::Primal, RidgeScale::Relative, 1e-2)).expect("primal");
            let q = ridge_update(&x, &e, &cfg(SolvePath::Dual, RidgeScale::Relative, 1e-2)).expect("dual");
            assert_eq!(p.lambda_used, q.lambda_used);
            let max = p.dw.as_slice().iter().fold(0f32, |a, v| a.max(v.abs()));
            for (a, b) in
                p.dw.as_slice().iter().zip(q.dw.as_slice()).chain(p.db.as_slice().iter().zip(q.db.as_slice()))
            {
                assert!((a - b).abs() <= 1e-4 * max, "n={n} d={d}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn chunk_boundaries_do_not_change_the_result() {
        // Chunks of 3 split X_aug's columns (dual) and rows (primal) and e's columns unevenly.
        for (n, d, m) in [(9, 20, 7), (25, 10, 8)] {
            let (x, e) = (random(n, d, 10), random(n, m, 11));
            let c = cfg(SolvePath::Auto, RidgeScale::Relative, 0.05);
            let whole = ridge_update(&x, &e, &c).expect("whole");
            let chunked = ridge_update_chunked(&x, &e, &c, 3).expect("chunked");
            let r = normal_equation_residual(&x, &e, &chunked, 0.1);
            assert!(r < 1e-5, "n={n} d={d}: relative residual {r}");
            for (a, b) in whole
                .dw
                .as_slice()
                .iter()
                .zip(chunked.dw.as_slice())
                .chain(whole.db.as_slice().iter().zip(chunked.db.as_slice()))
            {
                assert!((a - b).abs() <= 1e-5 * a.abs().max(1e-3), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn relative_lambda_is_mean_gram_diagonal() {
        let x = Matrix::from_vec(2, 2, vec![1.0, 2.0, 3.0, 4.0]);
        let e = Matrix::from_vec(2, 1, vec![1.0, -1.0]);
        let u = ridge_update(&x, &e, &cfg(SolvePath::Auto, RidgeScale::Relative, 0.5)).expect("solve");
        // trace = 1 + 4 + 9 + 16 + 2 (ones column) = 32, over d+1 = 3 diagonal entries.
        assert!((u.lambda_used - 0.5 * 32.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn nan_input_is_reported_not_propagated() {
        let mut x = random(8, 4, 7);
        x.as_mut_slice()[5] = f32::NAN;
        let err = ridge_update(&x, &random(8, 2, 8), &cfg(SolvePath::Auto, RidgeScale::Absolute, 1.0))
            .expect_err("NaN input");
        assert!(err.to_string().contains("NaN"), "{err}");
    }

    #[test]
    fn zero_lambda_on_rank_deficient_input_is_not_positive_definite() {
        let x = Matrix::zeros(10, 3);
        let e = random(10, 2, 9);
        let err =
            ridge_update(&x, &e, &cfg(SolvePath::Primal, RidgeScale::Absolute, 0.0)).expect_err("singular");
        assert!(err.to_string().contains("not positive definite"), "{err}");
    }
}
