//! The Prospective Learning solve (SPEC section 2, step 4):
//! `dTheta = -alpha (X_aug^T X_aug + lambda I)^-1 X_aug^T e` with `X_aug = [X, 1]`.
//!
//! Two exact routes give the same `dTheta`:
//! - primal: factor the `(d+1) x (d+1)` Gram `X_aug^T X_aug + lambda I`;
//! - dual: factor the `n x n` kernel `X_aug X_aug^T + lambda I` and map back with
//!   `X_aug^T (X_aug X_aug^T + lambda I)^-1 e`.
//!
//! [`SolvePath::Auto`] takes the smaller system. Both factor by Cholesky (never an explicit
//! inverse), compute only the lower triangle of the symmetric product, and solve in place.
//!
//! Precision follows the system's condition number, which the ridge bounds before anything is
//! computed: the largest eigenvalue of the Gram (or kernel) is at most its trace and the
//! smallest at least `lambda`, so `cond <= 1 + trace / lambda` (with the relative ridge,
//! `1 + (d+1) / lambda_rel`: 132 on the MNIST first layer at the default 6). Where that bound
//! is at most [`F32_CONDITION_LIMIT`], the system is built and factored in `f32` straight from
//! the layer's own `f32` input ([`single`]): half the memory and about twice the speed of
//! `f64`; its kernels and wide Grams are held packed (the lower triangle only, [`packed`]),
//! which halves them again. Above it (the paper's absolute `lambda = 1e-4`, the CNN's relative 0.01 on narrow
//! layers) the system is summed and factored in `f64` ([`double`]): `X_aug` and `e` are
//! converted 128 columns at a time, except that up to [`F32_PRODUCTS_CONDITION_LIMIT`] a
//! primal system's products are formed in `f32` over blocks of [`F32_PRODUCT_ROWS`] rows and
//! only their block sums added in `f64` (the CNN's pointwise layers). Either way the update
//! reaches the caller as `f32` tiles, the workspace is ledger-tracked and released before the
//! function returns ([`workspace_bytes`]).

mod double;
mod packed;
mod single;

use crate::error::Dim;
use crate::ledger::Buffer;
use crate::{Matrix, OpsError};
use faer::dyn_stack::{MemBuffer, MemStack, StackReq};
use faer::linalg::cholesky::llt;
use faer::linalg::matmul::matmul;
use faer::linalg::matmul::triangular::{self, BlockStructure};
use faer::traits::ComplexField;
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

/// The arithmetic a solve may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// `f32` where the ridge bounds the condition number by [`F32_CONDITION_LIMIT`], else `f64`.
    Auto,
    /// Always `f64` (for comparison, or to rule precision out when a run misbehaves).
    F64,
}

/// Largest bound on the condition number at which a system is solved in `f32`. With `f32`
/// rounding (6e-8) the relative error of the solved update stays near `cond * 1e-7` times a
/// small factor; at 1000 that is about 1e-4 (measured in the tests below against the `f64`
/// normal equations), far below the noise of a minibatch step.
pub const F32_CONDITION_LIMIT: f64 = 1.0e3;

/// Rows whose products an `f64` primal system sums in `f32` before adding them in `f64`
/// (with [`Precision::Auto`], up to [`F32_PRODUCTS_CONDITION_LIMIT`]): a sum of 256 terms
/// rounds by about `16 * 6e-8` relative, which a condition number of a few thousand (the
/// CNN's pointwise layers: 3301) turns into an update error near 1e-4, like the `f32` systems
/// at [`F32_CONDITION_LIMIT`]; forming the products in `f32` takes no converted copy of the
/// input and half the time.
pub const F32_PRODUCT_ROWS: usize = 256;

/// Largest bound on the condition number at which an `f64` primal system is summed from
/// `f32` products ([`F32_PRODUCT_ROWS`]); above it (the paper's absolute `lambda = 1e-4`)
/// the products are formed in `f64` too. Tested at the limit below (at 1e4 the update was
/// 1.2e-4 off the all-`f64` one, relative to its largest value).
pub const F32_PRODUCTS_CONDITION_LIMIT: f64 = 5.0e3;

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
    /// Which arithmetic to use.
    pub precision: Precision,
    /// The caller has seen every value of the error finite (PL sums the error's squares as
    /// it forms it), so the solve does not scan it again; otherwise a non-finite error is
    /// reported before any work.
    pub error_checked: bool,
}

impl RidgeConfig {
    /// The route a batch of `n` rows into a layer of `d` inputs takes, as far as it is known
    /// before seeing data: with an absolute ridge the precision depends on the data's scale,
    /// and the (larger) `f64` route is assumed.
    pub fn planned_route(&self, n: usize, d: usize) -> Route {
        let (dual, single) = (self.dual(n, d), self.single_precision(d).unwrap_or(false));
        let products = self.condition_bound(d).is_some_and(|b| b <= F32_PRODUCTS_CONDITION_LIMIT);
        Route { dual, single, f32_products: products && !dual && !single }
    }

    /// Whether a layer with `d` inputs is solved in `f32`, when that is known before seeing
    /// data (relative ridge); `None` when it depends on the data's scale (absolute ridge).
    pub fn single_precision(&self, d: usize) -> Option<bool> {
        match (self.precision, self.scale) {
            (Precision::F64, _) => Some(false),
            (Precision::Auto, RidgeScale::Relative) => {
                self.condition_bound(d).map(|b| b <= F32_CONDITION_LIMIT)
            }
            (Precision::Auto, RidgeScale::Absolute) => None,
        }
    }

    /// The bound `1 + (d+1) / lambda_rel` on the condition number of a layer with `d` inputs,
    /// when it is known before seeing data and the precision may follow it.
    fn condition_bound(&self, d: usize) -> Option<f64> {
        let known = self.precision == Precision::Auto && self.scale == RidgeScale::Relative;
        known.then(|| 1.0 + (d + 1) as f64 / self.lambda)
    }

    /// Whether the dual system is factored for a batch of `n` rows and `d` inputs.
    pub fn dual(&self, n: usize, d: usize) -> bool {
        match self.path {
            SolvePath::Auto => n < d + 1,
            SolvePath::Primal => false,
            SolvePath::Dual => true,
        }
    }
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

/// What a solve used.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SolveInfo {
    /// The `lambda` actually added to the diagonal.
    pub lambda_used: f64,
    /// `true` when the `n x n` system was factored.
    pub dual: bool,
    /// `true` when the system was built and factored in `f32`.
    pub single: bool,
}

/// Which system a solve factors, in which precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The `n x n` kernel rather than the `(d+1) x (d+1)` Gram.
    pub dual: bool,
    /// In `f32` rather than `f64`.
    pub single: bool,
    /// An `f64` primal system summed from blocks of `f32` products ([`F32_PRODUCT_ROWS`]).
    pub f32_products: bool,
}

/// How a solve hands its update over, which sets its workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// As one `d x m` matrix ([`ridge_update`]).
    Whole,
    /// In tiles, the error borrowed ([`ridge_update_tiles`]).
    Tiles,
    /// In tiles, the error consumed and solved in place where the route allows
    /// ([`ridge_update_tiles_consuming`]).
    TilesConsuming,
}

/// One tile of the update `dTheta` (already scaled by `-alpha`): rows `row0..` and columns
/// `col0..` of the `(d+1) x m` matrix whose last row is the bias update, row-major.
#[derive(Debug, Clone, Copy)]
pub struct Tile<'a> {
    /// `rows() x cols` values, row after row.
    pub values: &'a [f32],
    /// Columns of the tile.
    pub cols: usize,
    /// First row of the update the tile holds.
    pub row0: usize,
    /// First column of the update the tile holds.
    pub col0: usize,
}

impl<'a> Tile<'a> {
    /// Rows of the tile.
    pub fn rows(&self) -> usize {
        self.values.len() / self.cols.max(1)
    }

    /// Row `j` of the tile (row `row0 + j` of the update).
    pub fn row(&self, j: usize) -> &'a [f32] {
        &self.values[j * self.cols..(j + 1) * self.cols]
    }
}

/// Receives the update one tile at a time. Every entry is delivered exactly once.
pub type TileSink<'a> = dyn FnMut(Tile<'_>) + 'a;

/// Solve for the update of a layer with input `x` (`n x d`) and error `e` (`n x m`).
pub fn ridge_update(x: &Matrix, e: &Matrix, cfg: &RidgeConfig) -> Result<RidgeUpdate, OpsError> {
    ridge_update_chunked(x, Rhs::Borrowed(e), cfg, CHUNK)
}

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
    solve_tiles(x, Rhs::Borrowed(e), cfg, CHUNK, sink)
}

/// Like [`ridge_update_tiles`] for an error whose last use this is (the first layer's):
/// the `f32` dual route solves the kernel system over the error's own storage, with no block
/// of right-hand sides beside it, and in one call for all columns. The error is released
/// before the function returns.
pub fn ridge_update_tiles_consuming(
    x: &Matrix,
    e: Matrix,
    cfg: &RidgeConfig,
    sink: &mut TileSink<'_>,
) -> Result<SolveInfo, OpsError> {
    solve_tiles(x, Rhs::Owned(e), cfg, CHUNK, sink)
}

/// Peak bytes of workspace that a solve for an input of `n x d` and an error of `n x m`
/// allocates on `route` when it delivers its update as `delivery` (for
/// [`Delivery::TilesConsuming`], beyond the consumed error); used for memory estimates. It
/// does not depend on the thread count (see [`PARTIAL_SYSTEMS`]).
pub fn workspace_bytes(n: usize, d: usize, m: usize, route: Route, delivery: Delivery) -> usize {
    let update = if delivery == Delivery::Whole { (d * m + m) * size_of::<f32>() } else { 0 };
    let work = match (route.single, route.dual, delivery) {
        (true, true, Delivery::TilesConsuming) => single::in_place_workspace_bytes(n, d, m),
        (true, ..) => single::workspace_bytes(n, d, m, route.dual),
        (false, ..) => double::workspace_bytes(n, d, m, route.dual, route.f32_products),
    };
    work + update
}

/// Values in a [`primal_partial`] of a layer with `d` inputs and `m` outputs: the lower
/// triangle of the `(d+1) x (d+1)` Gram, column by column, then the `(d+1) x m` right-hand
/// side, column by column.
pub fn primal_partial_len(d: usize, m: usize) -> usize {
    let da = d + 1;
    da * (da + 1) / 2 + da * m
}

/// The additive part of the primal solve over input rows `rows` (one shard of a distributed
/// batch): `X_aug^T X_aug` and `X_aug^T e` of those rows in `f64`, packed as
/// [`primal_partial_len`] says. The products are formed in `f32` blocks where a relative
/// ridge bounds the condition number by [`F32_PRODUCTS_CONDITION_LIMIT`], as in one process.
/// Sums of partials go to [`ridge_update_from_sums`].
pub fn primal_partial(
    x: &Matrix,
    e: &Matrix,
    rows: std::ops::Range<usize>,
    cfg: &RidgeConfig,
) -> Result<Vec<f64>, OpsError> {
    let (n, d, m) = (x.rows(), x.cols(), e.cols());
    OpsError::check(OP, "error", &[Dim::Exact(n), Dim::Any], &[e.rows(), m])?;
    if rows.start > rows.end || rows.end > n {
        let detail = format!("rows {}..{} of a {n}-row input", rows.start, rows.end);
        return Err(OpsError::Invalid { op: OP, detail });
    }
    let f32_products = cfg.condition_bound(d).is_some_and(|b| b <= F32_PRODUCTS_CONDITION_LIMIT);
    let da = d + 1;
    let (g, rhs) = double::primal_system(x, e, rows, CHUNK, f32_products);
    let mut out = Vec::with_capacity(primal_partial_len(d, m));
    for j in 0..da {
        out.extend_from_slice(&g[j * da + j..(j + 1) * da]);
    }
    out.extend_from_slice(&rhs);
    Ok(out)
}

/// The update from summed [`primal_partial`]s of a layer with `d` inputs and `m` outputs:
/// the same ridge, factor and solve as [`ridge_update`]'s primal `f64` route.
pub fn ridge_update_from_sums(
    sums: &[f64],
    d: usize,
    m: usize,
    cfg: &RidgeConfig,
) -> Result<RidgeUpdate, OpsError> {
    let da = d + 1;
    OpsError::check(OP, "summed system", &[Dim::Exact(primal_partial_len(d, m))], &[sums.len()])?;
    let rows = sums[primal_partial_len(d, 0) - 1];
    if !sums.iter().all(|v| v.is_finite()) {
        return Err(OpsError::NonFinite { op: OP, what: "the summed system", rows: rows as usize, cols: d });
    }
    let mut g = crate::ledger::Buffer::<f64>::zeros(da * da);
    let mut at = 0;
    let mut trace = 0.0;
    for j in 0..da {
        let column = &sums[at..at + da - j];
        g[j * da + j..(j + 1) * da].copy_from_slice(column);
        trace += column[0];
        at += da - j;
    }
    let mut rhs = crate::ledger::Buffer::<f64>::zeros(da * m);
    rhs.copy_from_slice(&sums[at..]);
    let lambda = match cfg.scale {
        RidgeScale::Absolute => cfg.lambda,
        RidgeScale::Relative => cfg.lambda * trace / da as f64,
    };
    let system = Ridge { lambda: Lambda::Fixed(lambda), alpha: cfg.alpha, chunk: CHUNK, input: (0, d) };
    let mut collected = TileCollector::new(d, m);
    let mut finite = true;
    double::solve_system(g, rhs, da, &system, &mut |tile| {
        finite &= tile.values.iter().all(|v| v.is_finite());
        collected.absorb(tile);
    })?;
    if !finite {
        return Err(OpsError::NonFinite { op: OP, what: "the solved update", rows: da, cols: m });
    }
    Ok(collected.finish(SolveInfo { lambda_used: lambda, dual: false, single: false }))
}

/// The error a solve reads: borrowed, or owned (its last use) so a route may overwrite it.
#[derive(Debug)]
enum Rhs<'a> {
    Borrowed(&'a Matrix),
    Owned(Matrix),
}

impl Rhs<'_> {
    fn matrix(&self) -> &Matrix {
        match self {
            Rhs::Borrowed(m) => m,
            Rhs::Owned(m) => m,
        }
    }
}

/// Width of the slices of `X_aug` and `e` handled at a time: large enough for efficient
/// products, small enough that the workspace is dominated by the system itself.
const CHUNK: usize = 128;

const OP: &str = "PL solve";

fn ridge_update_chunked(
    x: &Matrix,
    e: Rhs<'_>,
    cfg: &RidgeConfig,
    chunk: usize,
) -> Result<RidgeUpdate, OpsError> {
    let mut collected = TileCollector::new(x.cols(), e.matrix().cols());
    let info = solve_tiles(x, e, cfg, chunk, &mut |tile| collected.absorb(tile))?;
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

    /// Store one tile (row `d` of the update is the bias).
    pub fn absorb(&mut self, tile: Tile<'_>) {
        let (d, m) = (self.dw.rows(), self.dw.cols());
        for j in 0..tile.rows() {
            let row = tile.row0 + j;
            let dst = if row == d {
                self.db.as_mut_slice()
            } else {
                &mut self.dw.as_mut_slice()[row * m..(row + 1) * m]
            };
            dst[tile.col0..tile.col0 + tile.cols].copy_from_slice(tile.row(j));
        }
    }

    /// The whole update.
    pub fn finish(self, info: SolveInfo) -> RidgeUpdate {
        RidgeUpdate { dw: self.dw, db: self.db, lambda_used: info.lambda_used, dual: info.dual }
    }
}

/// The sum of squares of `values` in `f64`, in parallel blocks summed in a fixed order.
pub(crate) fn sum_of_squares(values: &[f32]) -> f64 {
    let parts: Vec<f64> = values.par_chunks(1 << 16).map(block_sum_of_squares).collect();
    parts.iter().sum()
}

widest_vectors! {
    /// One block of [`sum_of_squares`] in the widest vectors the CPU has (compiled for the
    /// baseline x86-64 the `f64` lanes run two wide; the CNN's error sizes took 5% of its PL
    /// epoch). Each of the 32 partial sums adds its values in the same order on every CPU.
    pub(crate) fn block_sum_of_squares(values: &[f32]) -> f64 => block_sum_of_squares_loop
}

#[inline(always)]
fn block_sum_of_squares_loop(values: &[f32]) -> f64 {
    // 32 f64 partials: the loop vectorises, and four vectors of eight (or eight of four)
    // are added to independently, so the adds do not wait on each other's latency (one
    // vector of eight partials ran at a third of the speed).
    let mut lanes = [0.0f64; 32];
    let mut it = values.chunks_exact(32);
    for block in &mut it {
        for (l, &v) in lanes.iter_mut().zip(block) {
            *l += (v as f64) * (v as f64);
        }
    }
    lanes.iter().sum::<f64>() + it.remainder().iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>()
}

/// Whether every value is finite, as a vectorisable pass (`v * 0` is `0` for a finite `v`
/// and NaN otherwise, and NaN survives the sums) in parallel blocks: a scan that stops at
/// the first non-finite value runs one value at a time, 0.2 ms of an MNIST step.
pub(crate) fn all_finite(values: &[f32]) -> bool {
    values.par_chunks(1 << 15).all(block_finite)
}

widest_vectors! {
    /// One block of [`all_finite`], in the widest vector lanes the CPU has.
    fn block_finite(values: &[f32]) -> bool => block_finite_loop
}

#[inline(always)]
fn block_finite_loop(values: &[f32]) -> bool {
    let mut lanes = [0.0f32; 16];
    let mut it = values.chunks_exact(16);
    for block in &mut it {
        for (l, &v) in lanes.iter_mut().zip(block) {
            *l += v * 0.0;
        }
    }
    lanes.iter().chain(it.remainder()).all(|v| v.is_finite())
}

fn solve_tiles(
    x: &Matrix,
    rhs: Rhs<'_>,
    cfg: &RidgeConfig,
    chunk: usize,
    sink: &mut TileSink<'_>,
) -> Result<SolveInfo, OpsError> {
    let e = rhs.matrix();
    let (n, d, m) = (x.rows(), x.cols(), e.cols());
    OpsError::check(OP, "error", &[Dim::Exact(n), Dim::Any], &[e.rows(), m])?;
    let da = d + 1;
    if !cfg.error_checked && !all_finite(e.as_slice()) {
        return Err(OpsError::NonFinite { op: OP, what: "the error", rows: n, cols: m });
    }
    // A relative ridge is `lambda_rel * trace / (d+1)`, with trace(X_aug^T X_aug) = ||X||_F^2 + n
    // read from the system's diagonal once it is formed (a non-finite input shows there),
    // and the condition bound `1 + trace / lambda` does not depend on the trace. An absolute
    // ridge's bound does: it takes a pass over the input first.
    let (lambda, bound) = match cfg.scale {
        RidgeScale::Relative => (Lambda::PerTrace(cfg.lambda / da as f64), 1.0 + da as f64 / cfg.lambda),
        RidgeScale::Absolute => {
            let trace = n as f64 + sum_of_squares(x.as_slice());
            if !trace.is_finite() {
                return Err(OpsError::NonFinite { op: OP, what: "the layer input", rows: n, cols: d });
            }
            (Lambda::Fixed(cfg.lambda), 1.0 + trace / cfg.lambda)
        }
    };
    let dual = cfg.dual(n, d);
    let single = cfg.precision == Precision::Auto && bound <= F32_CONDITION_LIMIT;
    let f32_products = cfg.precision == Precision::Auto && bound <= F32_PRODUCTS_CONDITION_LIMIT;
    let mut finite = true;
    let mut checked = |tile: Tile<'_>| {
        if finite {
            finite = all_finite(tile.values);
            if finite {
                sink(tile);
            }
        }
    };
    let system = Ridge { lambda, alpha: cfg.alpha, chunk, input: (n, d) };
    let lambda = match (single, dual, rhs) {
        (true, true, Rhs::Owned(e)) => single::solve_dual_in_place(x, e, &system, &mut checked)?,
        (true, true, rhs) => single::solve_dual(x, rhs.matrix(), &system, &mut checked)?,
        (true, false, rhs) => single::solve_primal(x, rhs.matrix(), &system, &mut checked)?,
        (false, true, rhs) => double::solve_dual(x, rhs.matrix(), &system, &mut checked)?,
        (false, false, rhs) => double::solve_primal(x, rhs.matrix(), &system, f32_products, &mut checked)?,
    };
    if !finite {
        return Err(OpsError::NonFinite { op: OP, what: "the solved update", rows: da, cols: m });
    }
    Ok(SolveInfo { lambda_used: lambda, dual, single })
}

/// The numbers a route needs: the ridge's rule, the step, the slice width, and the input's
/// shape (for errors).
#[derive(Debug, Clone, Copy)]
struct Ridge {
    lambda: Lambda,
    alpha: f64,
    chunk: usize,
    input: (usize, usize),
}

/// The ridge added to a system's diagonal.
#[derive(Debug, Clone, Copy)]
enum Lambda {
    /// This value.
    Fixed(f64),
    /// This factor times the system's trace (before the ridge): the relative ridge, without
    /// a pass over the input of its own (the CNN's passes took 5% of its PL epoch).
    PerTrace(f64),
}

impl Ridge {
    /// The ridge for a system whose diagonal sums to `trace`, or the error of a non-finite
    /// input, which every route's diagonal shows (a sum of squares of the values).
    fn lambda(&self, trace: f64) -> Result<f64, OpsError> {
        if !trace.is_finite() {
            let (rows, cols) = self.input;
            return Err(OpsError::NonFinite { op: OP, what: "the layer input", rows, cols });
        }
        Ok(match self.lambda {
            Lambda::Fixed(lambda) => lambda,
            Lambda::PerTrace(factor) => factor * trace,
        })
    }
}

/// Rows per block of a primal route's per-thread accumulation: about 256 KiB of `f64` input,
/// few enough calls for long, thin inputs (the positions of a pointwise layer).
fn primal_rows(chunk: usize, da: usize, n: usize) -> usize {
    chunk.max((1 << 15) / da).min(n.max(1))
}

/// Partial systems a primal route splits its rows into: a constant, not the thread count, so
/// that the sums (and every later update) are the same bits on any number of threads (two
/// threads each take one; one thread accumulates both in turn).
const PARTIAL_SYSTEMS: usize = 2;

/// How many partial systems a primal route over `n` rows accumulates, in blocks of `rows`.
fn primal_parts(n: usize, rows: usize) -> usize {
    PARTIAL_SYSTEMS.clamp(1, n.div_ceil(rows.max(1)).max(1))
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
    factor(av.as_mut()).map_err(|e| match e {
        OpsError::NotPositiveDefinite { dim, pivot, .. } => OpsError::NotPositiveDefinite { op, dim, pivot },
        other => other,
    })?;
    let rv = MatMut::from_column_major_slice_mut(rhs, dim, 1);
    solve_factored(av.as_ref(), rv);
    Ok(())
}

/// Lower triangle of the symmetric product `alpha * a * b`, replacing or adding to `dst`.
pub(crate) fn lower_product<T: ComplexField>(
    dst: MatMut<'_, T>,
    accum: Accum,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    alpha: T,
    par: Par,
) {
    triangular::matmul(
        dst,
        BlockStructure::TriangularLower,
        accum,
        a,
        BlockStructure::Rectangular,
        b,
        BlockStructure::Rectangular,
        alpha,
        par,
    );
}

/// Cholesky-factor the SPD matrix `a` (lower triangle) in place, on one thread below the
/// size where faer's parallel factorisation pays for its synchronisation (measured on two
/// cores: at 512 rows one thread takes 0.8 ms in `f32` against 1.3-1.5 ms on two; the
/// parallel one wins from about 900 rows in `f32` and 700 in `f64`).
fn factor<T: ComplexField>(a: MatMut<'_, T>) -> Result<(), OpsError> {
    let dim = a.nrows();
    let parallel_from = if size_of::<T>() <= 4 { 900 } else { 700 };
    let par = if dim >= parallel_from { crate::par() } else { Par::Seq };
    let req = llt::factor::cholesky_in_place_scratch::<T>(dim, par, Default::default());
    let mut mem = MemBuffer::new(req);
    llt::factor::cholesky_in_place(a, Default::default(), par, MemStack::new(&mut mem), Default::default())
        .map_err(|err| match err {
        llt::factor::LltError::NonPositivePivot { index } => {
            OpsError::NotPositiveDefinite { op: OP, dim, pivot: index }
        }
    })?;
    Ok(())
}

/// Fewest right-hand-side columns worth a thread of their own in [`solve_factored`].
const SOLVE_COLUMNS_PER_THREAD: usize = 16;

/// Solve `L L^T Z = B` in place over `b` for the factor `l` (lower triangle). The columns
/// are independent, so each thread solves a contiguous share of them on its own, which
/// needs no synchronisation inside the triangular solves (measured on two cores at 512
/// rows: 128 columns 0.45 ms against 1.0 ms for faer's parallel solve of all of them).
fn solve_factored<T: ComplexField + Send + Sync>(l: MatRef<'_, T>, b: MatMut<'_, T>) {
    by_column_shares(b, &|part: MatMut<'_, T>| {
        llt::solve::solve_in_place(l, part, Par::Seq, MemStack::new(&mut MemBuffer::new(StackReq::EMPTY)));
    });
}

/// `gw = x^T e` for a weight gradient (`x` the layer's `n x d` input, `e` its `n x m` error).
/// A narrow layer's (`d + 1` up to the primal route's partial-system limit) is cut as the PL
/// primal route's partial systems are: two contiguous row ranges (`PARTIAL_SYSTEMS`), each a
/// single-threaded product, side by side and added in range order (the same bits on any
/// thread count); faer's parallel product of a long, thin pair waited in its barriers for
/// 7% of the CNN's backprop epoch. A wide layer's is one parallel product.
pub(crate) fn gradient_product(gw: &mut Matrix, x: &Matrix, e: &Matrix) {
    const _: () = assert!(PARTIAL_SYSTEMS == 2, "gradient_product cuts its rows in two");
    let (n, d, m) = (x.rows(), x.cols(), e.cols());
    if !single::partial_systems_for(d + 1) || n < 2 * PRODUCT_ROWS_PER_THREAD {
        matmul(gw.view_mut(), Accum::Replace, x.view().transpose(), e.view(), 1.0, crate::par());
        return;
    }
    let h = n.div_ceil(2);
    let mut rest = Buffer::<f32>::zeros(d * m);
    let product = |dst: MatMut<'_, f32>, rows: std::ops::Range<usize>| {
        let (xr, er) = (x.view().subrows(rows.start, rows.len()), e.view().subrows(rows.start, rows.len()));
        matmul(dst, Accum::Replace, xr.transpose(), er, 1.0, Par::Seq);
    };
    rayon::join(
        || product(gw.view_mut(), 0..h),
        || product(MatMut::from_row_major_slice_mut(&mut rest, d, m), h..n),
    );
    gw.as_mut_slice().iter_mut().zip(rest.iter()).for_each(|(g, &r)| *g += r);
}

/// Fewest rows of a product's destination worth a thread of their own in
/// [`product_by_row_shares`].
const PRODUCT_ROWS_PER_THREAD: usize = 16;

/// `dst = alpha a b`, `dst`'s rows (and `a`'s) cut into one contiguous share per thread, each
/// a single-threaded product: no synchronisation inside the product, which on two cores is
/// faster than faer's parallel product at a tile's sizes (the MNIST first layer's
/// `X^T Z`, 785 x 512 x 512 in four tiles: 1.83 ms against 1.98 ms; seven parallel tiles of
/// 128 rows took 2.4 ms).
pub(crate) fn product_by_row_shares<T: ComplexField + Copy + Send + Sync>(
    dst: MatMut<'_, T>,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    alpha: T,
) {
    let rows = dst.nrows();
    let parts = rayon::current_num_threads().min(rows / PRODUCT_ROWS_PER_THREAD).max(1);
    let mut shares = Vec::with_capacity(parts);
    let (mut rest, mut from) = (dst, 0);
    for p in 0..parts {
        let height = rows / parts + usize::from(p < rows % parts);
        let (share, tail) = rest.split_at_row_mut(height);
        shares.push((share, a.subrows(from, height)));
        (rest, from) = (tail, from + height);
    }
    shares
        .into_par_iter()
        .for_each(|(d, a)| faer::linalg::matmul::matmul(d, Accum::Replace, a, b, alpha, Par::Seq));
}

/// Rows per tile when `d` rows of `m` values are cut into the fewest tiles of at most
/// `values` values, all about the same height (uneven tiles leave a thread idle on the
/// last).
pub(crate) fn balanced_rows(d: usize, m: usize, values: usize) -> usize {
    let tiles = (d * m).div_ceil(values.max(1)).clamp(1, d.max(1));
    d.div_ceil(tiles).max(1)
}

/// Run `solve` on contiguous shares of `b`'s columns, one per thread (at least
/// [`SOLVE_COLUMNS_PER_THREAD`] columns each), in parallel.
fn by_column_shares<T: Send>(b: MatMut<'_, T>, solve: &(dyn Fn(MatMut<'_, T>) + Sync)) {
    let m = b.ncols();
    let parts = rayon::current_num_threads().min(m / SOLVE_COLUMNS_PER_THREAD).max(1);
    if parts == 1 {
        return solve(b);
    }
    let mut rest = b;
    let mut shares = Vec::with_capacity(parts);
    for p in 0..parts {
        let width = m / parts + usize::from(p < m % parts);
        let (share, tail) = rest.split_at_col_mut(width);
        shares.push(share);
        rest = tail;
    }
    shares.into_par_iter().for_each(solve);
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
        let gram: Vec<f64> = (0..=d)
            .flat_map(|j| (0..=d).map(move |k| (j, k)))
            .map(|(j, k)| (0..n).map(|i| xa(i, j) * xa(i, k)).sum())
            .collect();
        let (mut worst, mut scale) = (0.0f64, 0.0f64);
        for j in 0..=d {
            for c in 0..m {
                let mut lhs = u.lambda_used * theta(j, c);
                for k in 0..=d {
                    lhs += gram[j * (d + 1) + k] * theta(k, c);
                }
                let rhs: f64 = alpha * (0..n).map(|i| xa(i, j) * e.row(i)[c] as f64).sum::<f64>();
                worst = worst.max((lhs + rhs).abs());
                scale = scale.max(rhs.abs());
            }
        }
        worst / scale
    }

    fn cfg(path: SolvePath, scale: RidgeScale, lambda: f64) -> RidgeConfig {
        RidgeConfig { alpha: 0.1, lambda, scale, path, precision: Precision::F64, error_checked: false }
    }

    fn single(path: SolvePath, lambda_rel: f64) -> RidgeConfig {
        RidgeConfig { precision: Precision::Auto, ..cfg(path, RidgeScale::Relative, lambda_rel) }
    }

    fn solve_with_info(x: &Matrix, e: &Matrix, c: &RidgeConfig, chunk: usize) -> (RidgeUpdate, SolveInfo) {
        let mut collected = TileCollector::new(x.cols(), e.cols());
        let info = solve_tiles(x, Rhs::Borrowed(e), c, chunk, &mut |t| collected.absorb(t)).expect("solve");
        (collected.finish(info), info)
    }

    fn max_abs_diff(a: &RidgeUpdate, b: &RidgeUpdate) -> (f32, f32) {
        let pairs =
            a.dw.as_slice().iter().zip(b.dw.as_slice()).chain(a.db.as_slice().iter().zip(b.db.as_slice()));
        pairs.fold((0f32, 0f32), |(diff, max), (x, y)| (diff.max((x - y).abs()), max.max(y.abs())))
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
        for precision in [Precision::F64, Precision::Auto] {
            for (n, d) in [(20, 50), (50, 20), (31, 30), (150, 300), (300, 140)] {
                let (x, e) = (random(n, d, 5), random(n, if d > 200 { 140 } else { 6 }, 6));
                let lambda = if precision == Precision::F64 { 1e-2 } else { 6.0 };
                let p = RidgeConfig { precision, ..cfg(SolvePath::Primal, RidgeScale::Relative, lambda) };
                let q = RidgeConfig { path: SolvePath::Dual, ..p };
                let (p, pi) = solve_with_info(&x, &e, &p, CHUNK);
                let (q, qi) = solve_with_info(&x, &e, &q, CHUNK);
                assert_eq!(pi.single, precision == Precision::Auto);
                assert_eq!(qi.single, pi.single);
                // The ridge comes from each system's diagonal: the trace in f64 loops.
                let squares: f64 = x.as_slice().iter().map(|&v| f64::from(v) * f64::from(v)).sum();
                let want = lambda * (squares + n as f64) / (d + 1) as f64;
                for got in [p.lambda_used, q.lambda_used] {
                    assert!(
                        (got - want).abs() <= 1e-6 * want,
                        "{precision:?} n={n} d={d}: ridge {got} vs {want}"
                    );
                }
                let (diff, max) = max_abs_diff(&p, &q);
                assert!(diff <= 1e-4 * max, "{precision:?} n={n} d={d}: differ by {diff} (max {max})");
            }
        }
    }

    /// The f32 routes against the f64 normal equations, on both routes and on shapes that
    /// exercise the partial systems (long and thin) and the parallel one (wide).
    #[test]
    fn single_precision_satisfies_normal_equations() {
        for (n, d, m, lambda) in
            [(512, 100, 20, 6.0), (60, 300, 30, 6.0), (3000, 20, 5, 1.0), (700, 300, 8, 0.5)]
        {
            let (x, e) = (random(n, d, 12), random(n, m, 13));
            let (u, info) = solve_with_info(&x, &e, &single(SolvePath::Auto, lambda), CHUNK);
            assert!(info.single, "bound {} allows f32", 1.0 + (d + 1) as f64 / lambda);
            assert_eq!(info.dual, n < d + 1);
            let r = normal_equation_residual(&x, &e, &u, 0.1);
            assert!(r < 1e-4, "n={n} d={d} lambda {lambda}: relative residual {r}");
        }
    }

    /// At the limit of the bound, on inputs made as ill-conditioned as the ridge allows
    /// (nearly collinear columns with a large offset), the f32 solve still agrees with f64.
    #[test]
    fn single_precision_holds_at_the_condition_limit() {
        let (n, d) = (400, 63);
        let base = random(n, 1, 14);
        let noise = random(n, d, 15);
        let v: Vec<f32> =
            (0..n * d).map(|k| 5.0 + base.as_slice()[k / d] + 1e-3 * noise.as_slice()[k]).collect();
        let x = Matrix::from_vec(n, d, v);
        let e = random(n, 7, 16);
        let lambda = (d + 1) as f64 / (F32_CONDITION_LIMIT - 1.0) * (1.0 + 1e-9); // bound at the limit
        for path in [SolvePath::Primal, SolvePath::Dual] {
            let (u32s, info) = solve_with_info(&x, &e, &single(path, lambda), CHUNK);
            assert!(info.single);
            let (u64s, _) = solve_with_info(&x, &e, &cfg(path, RidgeScale::Relative, lambda), CHUNK);
            let (diff, max) = max_abs_diff(&u32s, &u64s);
            assert!(diff <= 1e-3 * max, "{path:?}: f32 and f64 differ by {diff} (max {max})");
        }
    }

    /// Where the bound exceeds the limit (the CNN's relative 0.01 on a 33-wide layer, a tiny
    /// absolute ridge), the solve falls back to f64 and stays exact.
    #[test]
    fn large_condition_bound_falls_back_to_f64() {
        let (x, e) = (random(2000, 32, 17), random(2000, 32, 18));
        let c = single(SolvePath::Auto, 0.01);
        assert_eq!(c.single_precision(32), Some(false));
        let (u, info) = solve_with_info(&x, &e, &c, CHUNK);
        assert!(!info.single && !info.dual);
        assert!(normal_equation_residual(&x, &e, &u, 0.1) < 1e-5);
        let absolute = RidgeConfig { scale: RidgeScale::Absolute, lambda: 1e-4, ..c };
        assert_eq!(absolute.single_precision(32), None, "an absolute ridge depends on the data");
        let (_, info) = solve_with_info(&x, &e, &absolute, CHUNK);
        assert!(!info.single);
        assert_eq!(single(SolvePath::Auto, 6.0).single_precision(784), Some(true));
    }

    /// The first layer's route, solved over its consumed error, gives the borrowed route's
    /// update (f32 dual), and the other routes accept a consumed error as well.
    /// The `f64` primal system summed from blocks of `f32` products (the default above the
    /// `f32` condition limit) against the all-`f64` one, on long, thin and nearly collinear
    /// inputs (a shared column plus 1% noise, offset like ELU outputs: the pointwise layers of
    /// the CNN) at the CNN's ridge (condition bound 3301): within 1e-4 of the largest value,
    /// and both satisfy the normal equations.
    #[test]
    fn f32_products_match_f64_products_near_the_condition_bound() {
        let (base, noise, e) = (random(5000, 1, 21), random(5000, 32, 22), random(5000, 32, 23));
        let x = Matrix::from_vec(
            5000,
            32,
            (0..5000 * 32).map(|i| 0.5 + base.as_slice()[i / 32] + 0.01 * noise.as_slice()[i]).collect(),
        );
        // the CNN's ridge, then the one that puts the bound at the limit
        let at_limit = 33.0 / (F32_PRODUCTS_CONDITION_LIMIT - 1.0) * (1.0 + 1e-9);
        for lambda in [0.01, at_limit] {
            let mixed = single(SolvePath::Auto, lambda);
            assert_eq!(
                mixed.planned_route(5000, 32),
                Route { dual: false, single: false, f32_products: true }
            );
            let (u, info) = solve_with_info(&x, &e, &mixed, CHUNK);
            assert!(!info.single && !info.dual);
            let f64_route = cfg(SolvePath::Auto, RidgeScale::Relative, lambda);
            let (want, _) = solve_with_info(&x, &e, &f64_route, CHUNK);
            let (diff, max) = max_abs_diff(&u, &want);
            assert!(diff <= 1e-4 * max, "lambda {lambda}: {diff} against {max}");
            for (update, what) in [(&u, "f32 products"), (&want, "f64")] {
                let r = normal_equation_residual(&x, &e, update, 0.1);
                assert!(r < 1e-5, "lambda {lambda}, {what}: residual {r}");
            }
        }
        let beyond = single(SolvePath::Auto, at_limit / 2.0);
        assert!(!beyond.planned_route(5000, 32).f32_products, "above the limit: f64 products");
    }

    #[test]
    fn consuming_the_error_gives_the_same_update() {
        for (n, d, m, lambda) in [(64, 300, 70, 6.0), (64, 300, 70, 0.01), (300, 40, 9, 6.0)] {
            let (x, e) = (random(n, d, 21), random(n, m, 22));
            let c = single(SolvePath::Auto, lambda);
            let (borrowed, info) = solve_with_info(&x, &e, &c, CHUNK);
            let mut collected = TileCollector::new(d, m);
            let consumed =
                ridge_update_tiles_consuming(&x, e, &c, &mut |t| collected.absorb(t)).expect("solve");
            assert_eq!(consumed, info);
            let (diff, max) = max_abs_diff(&collected.finish(consumed), &borrowed);
            assert!(diff <= 1e-5 * max, "n={n} d={d} lambda {lambda}: differ by {diff} (max {max})");
        }
    }

    #[test]
    fn chunk_boundaries_do_not_change_the_result() {
        // Chunks of 3 split X_aug's columns (dual) and rows (primal) and e's columns unevenly.
        for precision in [Precision::F64, Precision::Auto] {
            for (n, d, m) in [(9, 20, 7), (25, 10, 8)] {
                let (x, e) = (random(n, d, 10), random(n, m, 11));
                let c = RidgeConfig { precision, ..cfg(SolvePath::Auto, RidgeScale::Relative, 0.05) };
                let c = if precision == Precision::Auto { RidgeConfig { lambda: 2.0, ..c } } else { c };
                let (whole, _) = solve_with_info(&x, &e, &c, CHUNK);
                let (chunked, _) = solve_with_info(&x, &e, &c, 3);
                let r = normal_equation_residual(&x, &e, &chunked, 0.1);
                assert!(r < 1e-4, "n={n} d={d}: relative residual {r}");
                let (diff, max) = max_abs_diff(&chunked, &whole);
                assert!(diff <= 1e-5 * max.max(1e-3), "{precision:?}: differ by {diff}");
            }
        }
    }

    /// A weight gradient from row ranges (narrow layers) or one parallel product (wide ones,
    /// short inputs) against plain f64 loops.
    #[test]
    fn gradient_products_match_plain_loops() {
        for (n, d, m) in [(300, 40, 7), (301, 255, 3), (20, 10, 4), (70, 300, 5)] {
            let (x, e) = (random(n, d, 11), random(n, m, 12));
            let mut gw = Matrix::zeros(d, m);
            gradient_product(&mut gw, &x, &e);
            for i in 0..d {
                for j in 0..m {
                    let want: f64 = (0..n).map(|r| f64::from(x.row(r)[i]) * f64::from(e.row(r)[j])).sum();
                    let got = f64::from(gw.row(i)[j]);
                    assert!(
                        (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "{n}x{d}x{m} ({i}, {j}): {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn sum_of_squares_is_the_baseline_bits_and_the_plain_sum() {
        for len in [0usize, 1, 7, 8, 9, 100, 70_001] {
            let v: Vec<f32> = (0..len).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013).collect();
            let plain: f64 = v.iter().map(|&x| (x as f64) * (x as f64)).sum();
            let got = sum_of_squares(&v);
            assert!((got - plain).abs() <= 1e-12 * plain.max(1.0), "{len}: {got} vs {plain}");
            for block in v.chunks(1 << 16) {
                assert_eq!(
                    block_sum_of_squares(block).to_bits(),
                    block_sum_of_squares_loop(block).to_bits(),
                    "{len}"
                );
            }
        }
    }

    #[test]
    fn the_finiteness_pass_finds_every_non_finite_value() {
        for len in [0usize, 1, 15, 16, 17, 40_000, 70_000] {
            let clean: Vec<f32> = (0..len).map(|i| (i as f32 - 7.0) * 1.0e30).collect();
            assert!(all_finite(&clean), "{len}: all finite");
            for at in [0, len / 2, len.saturating_sub(1), 32_768] {
                for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                    if at < len {
                        let mut v = clean.clone();
                        v[at] = bad;
                        assert!(!all_finite(&v), "{len}: {bad} at {at}");
                    }
                }
            }
        }
    }

    /// Products split between threads by rows match the naive sum, on shapes with an uneven
    /// split and fewer rows than threads would take.
    #[test]
    fn row_shares_product_matches_naive_loops() {
        for (rows, inner, cols) in [(1, 3, 2), (33, 17, 5), (197, 64, 40)] {
            let a = random(rows, inner, 3);
            let b = random(inner, cols, 4);
            let mut out = vec![0.0f32; rows * cols];
            product_by_row_shares(
                MatMut::from_row_major_slice_mut(&mut out, rows, cols),
                a.view(),
                b.view(),
                -0.5,
            );
            for i in 0..rows {
                for j in 0..cols {
                    let want: f64 =
                        (0..inner).map(|k| a.row(i)[k] as f64 * b.row(k)[j] as f64).sum::<f64>() * -0.5;
                    assert!(
                        (out[i * cols + j] as f64 - want).abs() < 1e-4 * (1.0 + want.abs()),
                        "{rows}x{inner}x{cols} ({i}, {j})"
                    );
                }
            }
        }
    }

    #[test]
    fn balanced_tiles_cover_the_rows_evenly() {
        // 785 rows of 512 in tiles of at most 2^17 values: four of 197 (the last 194).
        assert_eq!(balanced_rows(785, 512, 1 << 17), 197);
        assert_eq!(balanced_rows(10, 4, 1000), 10, "one tile");
        assert_eq!(balanced_rows(10, 1000, 1), 1, "a row per tile at least");
        assert_eq!(balanced_rows(0, 5, 100), 1);
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

    /// A NaN in the error is reported before any work, or, when the caller vouched for the
    /// error (`error_checked`) wrongly, as a non-finite update: never applied silently.
    #[test]
    fn nan_error_is_reported_whether_or_not_it_was_checked() {
        let x = random(8, 4, 7);
        let mut e = random(8, 2, 8);
        e.as_mut_slice()[3] = f32::NAN;
        for path in [SolvePath::Primal, SolvePath::Dual] {
            for (checked, what) in [(false, "the error"), (true, "the solved update")] {
                let c = RidgeConfig { error_checked: checked, ..single(path, 0.5) };
                let err = ridge_update(&x, &e, &c).expect_err("NaN error");
                assert!(err.to_string().contains(what), "{path:?} {checked}: {err}");
            }
        }
    }

    #[test]
    fn zero_lambda_on_rank_deficient_input_is_not_positive_definite() {
        let x = Matrix::zeros(10, 3);
        let e = random(10, 2, 9);
        let err =
            ridge_update(&x, &e, &cfg(SolvePath::Primal, RidgeScale::Absolute, 0.0)).expect_err("singular");
        assert!(err.to_string().contains("not positive definite"), "{err}");
    }

    /// `A = B B^T / k + I` (well conditioned) and `b = A x` for a known `x`, built in `f64`
    /// with plain loops; the factorisation on one thread or on all, then the column-split
    /// solve, must give `x` back.
    fn known_solution_is_recovered<T: ComplexField<Real = T> + Send + Sync + Copy + From<f32> + Into<f64>>(
        dim: usize,
        cols: usize,
        tolerance: f64,
    ) {
        let k = 8;
        let b = random(dim, k, dim as u64);
        let a = |i: usize, j: usize| {
            let dot: f64 = (0..k).map(|t| b.row(i)[t] as f64 * b.row(j)[t] as f64).sum();
            dot / k as f64 + if i == j { 1.0 } else { 0.0 }
        };
        let x = random(dim, cols, 7);
        let mut lower: Vec<T> = vec![T::from(0.0); dim * dim];
        let mut rhs: Vec<T> = vec![T::from(0.0); dim * cols];
        for j in 0..dim {
            for i in j..dim {
                lower[j * dim + i] = T::from(a(i, j) as f32);
            }
        }
        for i in 0..dim {
            for c in 0..cols {
                let v: f64 = (0..dim).map(|j| a(i, j) * x.row(j)[c] as f64).sum();
                rhs[i * cols + c] = T::from(v as f32);
            }
        }
        let mut lv = MatMut::from_column_major_slice_mut(&mut lower, dim, dim);
        factor(lv.as_mut()).expect("SPD");
        solve_factored(lv.as_ref(), MatMut::from_row_major_slice_mut(&mut rhs, dim, cols));
        for (got, want) in rhs.iter().zip(x.as_slice()) {
            let (got, want): (f64, f64) = ((*got).into(), *want as f64);
            assert!(
                (got - want).abs() <= tolerance * (1.0 + want.abs()),
                "dim {dim}, {cols} columns: {got} vs {want}"
            );
        }
    }

    #[test]
    fn factor_and_split_solve_recover_known_solutions_on_both_thread_counts() {
        // Below and above the sizes where the factorisation turns parallel (900 in f32, 700
        // in f64); one column (one share) and enough for a share per thread.
        for (dim, cols) in [(40, 1), (40, 37), (920, 1), (920, 33)] {
            known_solution_is_recovered::<f32>(dim, cols, 1e-3);
        }
        for (dim, cols) in [(40, 37), (720, 33)] {
            known_solution_is_recovered::<f64>(dim, cols, 1e-5);
        }
    }
}
