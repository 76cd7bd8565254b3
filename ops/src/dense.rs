//! A fully connected layer: `z = x W + b`, with `W` stored `inputs x outputs`. Over the rows
//! of NHWC feature maps it is also the pointwise (1x1) convolution.

use crate::activation::Activation;
use crate::error::Dim;
use crate::layer::{Combine, ErrorMode, GradientSink, Op, PerSample};
use crate::ledger::Buffer;
use crate::solve::{
    RidgeConfig, RidgeUpdate, balanced_rows, gradient_product, primal_partial, product_by_row_shares,
    ridge_update, ridge_update_from_sums, ridge_update_tiles, ridge_update_tiles_consuming,
};
use crate::sparse::Mask;
use crate::update::{LayerState, Pending, UpdateRule};
use crate::{Matrix, OpsError, par};
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;
use std::any::Any;

/// Weights and bias of a dense layer. Rows of `weights` index inputs, columns outputs, so
/// the PL solve's `dTheta` (one row per input plus the bias row) adds on directly.
#[derive(Debug, Clone)]
pub struct Dense {
    /// `inputs x outputs`.
    pub weights: Matrix,
    /// `1 x outputs`.
    pub bias: Matrix,
}

impl Dense {
    /// A layer from its weights; the bias starts at zero.
    pub fn new(weights: Matrix) -> Self {
        let bias = Matrix::zeros(1, weights.cols());
        Self { weights, bias }
    }

    /// Width of the input.
    pub fn inputs(&self) -> usize {
        self.weights.rows()
    }

    /// Width of the output.
    pub fn outputs(&self) -> usize {
        self.weights.cols()
    }

    /// Number of trainable values (weights and bias).
    pub fn parameter_count(&self) -> usize {
        self.inputs() * self.outputs() + self.outputs()
    }

    /// Check that a batch `x` to run forward is `n x inputs`.
    fn check_input(&self, x: &Matrix) -> Result<(), OpsError> {
        let (expected, actual) = ([Dim::Any, Dim::Exact(self.inputs())], [x.rows(), x.cols()]);
        OpsError::check("dense forward", "input", &expected, &actual)
    }

    /// `x W + b` for a batch `x` of shape `n x inputs`.
    pub fn forward(&self, x: &Matrix) -> Result<Matrix, OpsError> {
        self.check_input(x)?;
        let mut out = Matrix::zeros(x.rows(), self.outputs());
        let b = self.bias.as_slice();
        for row in out.as_mut_slice().chunks_exact_mut(b.len().max(1)) {
            row.copy_from_slice(b);
        }
        matmul(out.view_mut(), Accum::Add, x.view(), self.weights.view(), 1.0, par());
        Ok(out)
    }

    /// `act(x W + b)`. A large batch (a pointwise layer's positions) is formed in blocks of
    /// rows on the threads, each activated while it is in cache; a small one whole, by
    /// [`Dense::forward`], then activated.
    pub fn forward_activated(&self, x: &Matrix, act: Activation) -> Result<Matrix, OpsError> {
        let m = self.outputs().max(1);
        if x.rows() < ACTIVATED_BLOCKS_FROM {
            let mut z = self.forward(x)?;
            act.apply(z.as_mut_slice());
            return Ok(z);
        }
        self.check_input(x)?;
        let mut out = Matrix::zeros(x.rows(), m);
        let (b, rows) = (self.bias.as_slice(), (ACTIVATED_BLOCK / m).max(1));
        out.as_mut_slice().par_chunks_mut(rows * m).enumerate().for_each(|(i, block)| {
            let h = block.len() / m;
            block.chunks_exact_mut(m).for_each(|row| row.copy_from_slice(b));
            let dst = MatMut::from_row_major_slice_mut(block, h, m);
            matmul(dst, Accum::Add, x.view().subrows(i * rows, h), self.weights.view(), 1.0, Par::Seq);
            act.apply(block);
        });
        Ok(out)
    }

    /// The error reaching this layer's input: `err W^T` (`n x outputs` -> `n x inputs`),
    /// before the input activation's derivative is applied.
    pub fn input_error(&self, err: &Matrix) -> Result<Matrix, OpsError> {
        let op = "dense error propagation";
        OpsError::check(op, "error", &[Dim::Any, Dim::Exact(self.outputs())], &[err.rows(), err.cols()])?;
        let mut out = Matrix::zeros(err.rows(), self.inputs());
        matmul(out.view_mut(), Accum::Replace, err.view(), self.weights.view().transpose(), 1.0, par());
        Ok(out)
    }

    /// Check that `input` (`n x inputs`) and `delta` (`n x outputs`) fit the weights.
    fn check_pair(&self, op: &'static str, input: &Matrix, delta: &Matrix) -> Result<(), OpsError> {
        let (d, m) = (self.inputs(), self.outputs());
        OpsError::check(op, "input", &[Dim::Any, Dim::Exact(d)], &[input.rows(), input.cols()])?;
        OpsError::check(
            op,
            "error",
            &[Dim::Exact(input.rows()), Dim::Exact(m)],
            &[delta.rows(), delta.cols()],
        )
    }
}

/// Rows from which [`Dense::forward_activated`] forms the result in blocks: a pointwise
/// layer's positions (6,272 to 100,352 in the MNIST CNN), whose result leaves the cache
/// before a pass of its own could activate it. An MLP's batch stays whole: at 512 examples
/// x 512 outputs the blocks were slower than faer's parallel product (Adam on MNIST, 3
/// epochs x 3 runs alternating: 0.82-0.84 s/epoch whole, 0.87-0.89 in blocks).
const ACTIVATED_BLOCKS_FROM: usize = 4096;

/// Values per block of [`Dense::forward_activated`] (128 KiB, as many rows as fit, at least
/// one): small enough that the block is still in cache when it is activated.
const ACTIVATED_BLOCK: usize = 1 << 15;

/// Values per scratch block of the in-place error (128 KiB): the rows of a block are as many
/// as fit, at least one.
const SCRATCH_VALUES: usize = 1 << 15;

/// How the in-place error splits a dense layer's rows: `span` rows per worker, processed
/// `block` rows at a time in the worker's own scratch.
#[derive(Debug, Clone, Copy)]
struct ScratchLayout {
    block: usize,
    span: usize,
    workers: usize,
    cols: usize,
}

impl ScratchLayout {
    fn new(rows: usize, cols: usize, threads: usize) -> Self {
        let block = (SCRATCH_VALUES / cols.max(1)).max(1).min(rows.max(1));
        let workers = rows.div_ceil(block).clamp(1, threads.max(1));
        let span = rows.div_ceil(workers).max(1);
        Self { block: block.min(span), span, workers, cols }
    }

    fn bytes(&self) -> usize {
        self.workers * self.block * self.cols * size_of::<f32>()
    }
}

/// Bytes of scratch the in-place error of a dense layer with `cols` inputs holds over `rows`
/// rows on `threads` threads (for memory estimates without a layer at hand).
pub fn error_scratch_bytes(rows: usize, cols: usize, threads: usize) -> usize {
    ScratchLayout::new(rows, cols, threads).bytes()
}

/// Column sums of `delta` (`n x m`): the bias gradient.
fn bias_gradient(delta: &Matrix, m: usize) -> Matrix {
    let mut gb = Matrix::zeros(1, m);
    add_rows(delta.as_slice(), gb.as_mut_slice());
    gb
}

widest_vectors! {
    /// `sum += each row of rows` (rows as wide as `sum`), in the widest vector lanes the CPU
    /// has, as PL's column sums are (a pointwise layer's error has a row per position).
    fn add_rows(rows: &[f32], sum: &mut [f32]) => add_rows_loop
}

#[inline(always)]
fn add_rows_loop(rows: &[f32], sum: &mut [f32]) {
    for row in rows.chunks_exact(sum.len().max(1)) {
        for (g, &v) in sum.iter_mut().zip(row) {
            *g += v;
        }
    }
}

impl Op for Dense {
    fn kind(&self) -> &'static str {
        "dense"
    }

    fn clone_op(&self) -> Box<dyn Op> {
        Box::new(self.clone())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn input(&self, positions: usize) -> PerSample {
        PerSample { rows: positions, cols: self.inputs() }
    }

    fn output(&self, positions: usize) -> PerSample {
        PerSample { rows: positions, cols: self.outputs() }
    }

    fn params(&self) -> Option<&Dense> {
        Some(self)
    }

    fn params_mut(&mut self) -> Option<&mut Dense> {
        Some(self)
    }

    fn forward(&self, input: &Matrix) -> Result<Matrix, OpsError> {
        Dense::forward(self, input)
    }

    fn forward_activated(&self, input: &Matrix, act: Activation) -> Result<Matrix, OpsError> {
        Dense::forward_activated(self, input, act)
    }

    fn input_error(&self, err: &Matrix, _: ErrorMode) -> Result<Matrix, OpsError> {
        Dense::input_error(self, err)
    }

    /// One contiguous range of rows per worker, each with its own block of scratch, all
    /// allocated up front: the peak does not depend on scheduling.
    fn error_in_place(
        &self,
        err: &Matrix,
        below: &mut Matrix,
        _: usize,
        _: ErrorMode,
        combine: &Combine<'_>,
    ) -> Result<(), OpsError> {
        let (rows, cols, m) = (below.rows(), below.cols(), self.outputs());
        OpsError::check(
            "dense error propagation",
            "error",
            &[Dim::Exact(rows), Dim::Exact(m)],
            &[err.rows(), err.cols()],
        )?;
        let layout = ScratchLayout::new(rows, cols, crate::threads());
        let mut scratch = Buffer::<f32>::zeros(layout.bytes() / size_of::<f32>());
        below
            .as_mut_slice()
            .par_chunks_mut(layout.span * cols)
            .zip(err.as_slice().par_chunks(layout.span * m))
            .zip(scratch.par_chunks_mut(layout.block * cols))
            .enumerate()
            .for_each(|(i, ((a, e), s))| {
                let span = i * layout.span * cols;
                for (j, (a, e)) in
                    a.chunks_mut(layout.block * cols).zip(e.chunks(layout.block * m)).enumerate()
                {
                    let h = e.len() / m.max(1);
                    let s = &mut s[..h * cols];
                    let out = MatMut::from_row_major_slice_mut(s, h, cols);
                    let e = MatRef::from_row_major_slice(e, h, m);
                    matmul(out, Accum::Replace, e, self.weights.view().transpose(), 1.0, Par::Seq);
                    combine(span + j * layout.block * cols, s, a);
                }
            });
        Ok(())
    }

    fn error_scratch_bytes(&self, rows: usize, threads: usize) -> usize {
        error_scratch_bytes(rows, self.inputs(), threads)
    }

    fn pl_update(
        &self,
        input: &Matrix,
        err: &Matrix,
        ridge: &RidgeConfig,
    ) -> Result<Option<RidgeUpdate>, OpsError> {
        ridge_update(input, err, ridge).map(Some)
    }

    /// The update streams into the velocity: no `d x m` buffer while the error below is formed.
    fn pl_update_deferred(
        &self,
        state: &mut LayerState,
        mask: Option<&Mask>,
        rule: &UpdateRule,
        input: &Matrix,
        err: &Matrix,
        ridge: &RidgeConfig,
    ) -> Result<Option<Pending>, OpsError> {
        let shape = (self.inputs(), self.outputs());
        let pending = state.stream_deferred(shape, mask, rule, |sink| {
            ridge_update_tiles(input, err, ridge, sink).map(|_| ())
        })?;
        Ok(Some(pending))
    }

    /// The update is folded into the state as the solve streams it: no `d x m` buffer.
    fn pl_update_last(
        &mut self,
        state: &mut LayerState,
        mask: Option<&Mask>,
        rule: &UpdateRule,
        input: &Matrix,
        err: Matrix,
        ridge: &RidgeConfig,
    ) -> Result<(), OpsError> {
        state.stream_update(self, mask, rule, |sink| {
            ridge_update_tiles_consuming(input, err, ridge, sink).map(|_| ())
        })
    }

    fn pl_partial(
        &self,
        input: &Matrix,
        err: &Matrix,
        rows: std::ops::Range<usize>,
        ridge: &RidgeConfig,
    ) -> Result<Option<Vec<f64>>, OpsError> {
        self.check_pair("dense PL solve", input, err)?;
        primal_partial(input, err, rows, ridge).map(Some)
    }

    fn pl_update_from_sums(
        &self,
        sums: &[f64],
        ridge: &RidgeConfig,
    ) -> Result<Option<RidgeUpdate>, OpsError> {
        ridge_update_from_sums(sums, self.inputs(), self.outputs(), ridge).map(Some)
    }

    /// `[gW (d x m, row-major), gb (m)]` over the rows: the weight gradient's products in
    /// `f32` (as in one process), added up in `f64`.
    fn gradient_partial(
        &self,
        input: &Matrix,
        delta: &Matrix,
        rows: std::ops::Range<usize>,
    ) -> Result<Option<Vec<f64>>, OpsError> {
        self.check_pair("dense gradient", input, delta)?;
        let (d, m) = (self.inputs(), self.outputs());
        if rows.start > rows.end || rows.end > input.rows() {
            let detail = format!("rows {}..{} of a {}-row input", rows.start, rows.end, input.rows());
            return Err(OpsError::Invalid { op: "dense gradient", detail });
        }
        let h = rows.len();
        let mut gw = Buffer::<f32>::zeros(d * m);
        let (xv, dv) = (input.view().subrows(rows.start, h), delta.view().subrows(rows.start, h));
        matmul(
            MatMut::from_row_major_slice_mut(&mut gw, d, m),
            Accum::Replace,
            xv.transpose(),
            dv,
            1.0,
            par(),
        );
        let mut out: Vec<f64> = gw.iter().map(|&v| f64::from(v)).collect();
        let mut gb = vec![0.0f64; m];
        for row in delta.as_slice()[rows.start * m..rows.end * m].chunks_exact(m.max(1)) {
            gb.iter_mut().zip(row).for_each(|(g, &v)| *g += f64::from(v));
        }
        out.extend(gb);
        Ok(Some(out))
    }

    fn gradients_from_sums(&self, sums: &[f64]) -> Result<Option<(Matrix, Matrix)>, OpsError> {
        let (d, m) = (self.inputs(), self.outputs());
        OpsError::check("dense gradient", "summed gradient", &[Dim::Exact(d * m + m)], &[sums.len()])?;
        let narrow = |v: &[f64], rows| Matrix::from_vec(rows, m, v.iter().map(|&x| x as f32).collect());
        Ok(Some((narrow(&sums[..d * m], d), narrow(&sums[d * m..], 1))))
    }

    fn gradients(&self, input: &Matrix, delta: &Matrix) -> Result<Option<(Matrix, Matrix)>, OpsError> {
        self.check_pair("dense gradient", input, delta)?;
        let (d, m) = (self.inputs(), self.outputs());
        let mut gw = Matrix::zeros(d, m);
        gradient_product(&mut gw, input, delta);
        Ok(Some((gw, bias_gradient(delta, m))))
    }

    /// The weight gradient is formed `tile_rows` input rows at a time, never whole.
    fn stream_gradients(
        &mut self,
        input: &Matrix,
        delta: &Matrix,
        tile_rows: usize,
        sink: &mut GradientSink<'_>,
    ) -> Result<(), OpsError> {
        self.check_pair("dense gradient", input, delta)?;
        let (d, m) = (self.inputs(), self.outputs());
        let gb = bias_gradient(delta, m);
        // Tiles of even height (an uneven last one leaves a thread idle), each product cut
        // by rows between the threads, as PL's first-layer tiles are.
        let rows = balanced_rows(d, m, tile_rows.max(1) * m);
        let mut tile = Matrix::zeros(rows, m);
        for r0 in (0..d).step_by(rows) {
            let h = rows.min(d - r0);
            let part = &mut tile.as_mut_slice()[..h * m];
            let xv = input.view().subcols(r0, h);
            let tv = MatMut::from_row_major_slice_mut(part, h, m);
            product_by_row_shares(tv, xv.transpose(), delta.view(), 1.0);
            sink(self, r0, part, (r0 + h == d).then_some(&gb))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &Matrix, w: &Matrix, b: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0; x.rows() * w.cols()];
        for i in 0..x.rows() {
            for j in 0..w.cols() {
                let mut s = b[j] as f64;
                for k in 0..x.cols() {
                    s += x.row(i)[k] as f64 * w.row(k)[j] as f64;
                }
                out[i * w.cols() + j] = s as f32;
            }
        }
        out
    }

    fn ramp(rows: usize, cols: usize, scale: f32) -> Matrix {
        let v = (0..rows * cols).map(|i| ((i * 7919 % 13) as f32 - 6.0) * scale).collect();
        Matrix::from_vec(rows, cols, v)
    }

    #[test]
    fn forward_matches_naive_loops() {
        let x = ramp(5, 7, 0.1);
        let mut layer = Dense::new(ramp(7, 3, 0.2));
        layer.bias = Matrix::from_vec(1, 3, vec![0.5, -1.0, 2.0]);
        let got = layer.forward(&x).expect("shapes fit");
        let want = naive(&x, &layer.weights, layer.bias.as_slice());
        for (g, w) in got.as_slice().iter().zip(&want) {
            assert!((g - w).abs() < 1e-4, "{g} vs {w}");
        }
    }

    /// Formed in blocks of rows and activated block by block (a batch above the threshold,
    /// its last block short), the output is the whole product's, activated after: the same
    /// bits; and it matches plain loops.
    #[test]
    fn activated_blocks_give_the_whole_products_bits() {
        let (rows, m) = (ACTIVATED_BLOCKS_FROM + 37, 24);
        let x = Matrix::from_vec(
            rows,
            9,
            (0..rows * 9).map(|i| ((i * 7919 % 1013) as f32 - 500.0) * 1e-3).collect(),
        );
        let mut layer = Dense::new(ramp(9, m, 0.05));
        layer.bias = Matrix::from_vec(1, m, (0..m).map(|j| j as f32 * 0.1 - 1.0).collect());
        let act = Activation::Elu { clip: 10.0 };
        let got = layer.forward_activated(&x, act).expect("shapes fit");
        let mut whole = layer.forward(&x).expect("shapes fit");
        act.apply(whole.as_mut_slice());
        let bits = |m: &Matrix| m.as_slice().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&whole));
        let mut want = naive(&x, &layer.weights, layer.bias.as_slice());
        act.apply(&mut want);
        for (g, w) in got.as_slice().iter().zip(&want) {
            assert!((g - w).abs() < 1e-4, "{g} vs {w}");
        }
        assert!(matches!(layer.forward_activated(&ramp(rows, 8, 0.1), act), Err(OpsError::Shape { .. })));
    }

    #[test]
    fn input_error_is_product_with_transpose() {
        let e = ramp(4, 3, 0.3);
        let layer = Dense::new(ramp(6, 3, 0.1));
        let got = layer.input_error(&e).expect("shapes fit");
        for i in 0..4 {
            for k in 0..6 {
                let want: f32 = (0..3).map(|j| e.row(i)[j] * layer.weights.row(k)[j]).sum();
                assert!((got.row(i)[k] - want).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn wrong_input_width_is_a_shape_error() {
        let layer = Dense::new(Matrix::zeros(4, 2));
        let err = layer.forward(&Matrix::zeros(3, 5)).expect_err("5 != 4");
        assert_eq!(err.to_string(), "dense forward: shape mismatch: input is 3x5, expected nx4");
    }
}
