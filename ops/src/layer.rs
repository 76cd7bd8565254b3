//! The layer abstraction: what every kind of layer gives the network and the trainers.
//!
//! A kind of layer is one type implementing [`Op`] in its own file ([`crate::dense`],
//! [`crate::depthwise`], [`crate::pool`]). The network, the PL trainer and the backprop
//! trainers only call these methods, so adding a kind touches its file and the code that
//! builds it from a pipeline, not the training loops.
//!
//! Shapes: a batch is a [`Matrix`] of `batch * rows-per-sample` rows. Flat inputs have one
//! row per sample; feature maps are NHWC with one row per position.

use crate::activation::Activation;
use crate::dense::Dense;
use crate::error::Dim;
use crate::solve::{RidgeConfig, RidgeUpdate};
use crate::sparse::Mask;
use crate::update::{LayerState, Pending, UpdateRule};
use crate::{Matrix, OpsError};
use std::any::Any;
use std::borrow::Cow;
use std::fmt::Debug;
use std::ops::Range;

/// How an error crosses a layer that averages positions (global average pooling) on its
/// way down.
///
/// Backpropagation needs the gradient: each of the `P` pooled positions receives `e / P`.
/// A PL layer instead solves for the change of its output that the error asks for, and the
/// smallest change of `P` positions that moves their mean by `e` moves each of them by `e`
/// (the pseudo-inverse of averaging). With the gradient, every layer below a pool of `P`
/// positions solves for a change `P` times too small (49 to 784 times on the MNIST CNN), and
/// the convolutions hardly learn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorMode {
    /// The gradient (backpropagation).
    Gradient,
    /// The target change (Prospective Learning).
    Target,
}

impl ErrorMode {
    /// The factor each of `positions` averaged positions receives of the averaged error.
    pub fn share(self, positions: usize) -> f32 {
        match self {
            ErrorMode::Gradient => 1.0 / positions.max(1) as f32,
            ErrorMode::Target => 1.0,
        }
    }
}

/// `combine(offset, scratch, a)`: finish one block of an in-place error, where `scratch` holds
/// the propagated error and `a` the activation it replaces, which starts at element `offset`
/// of the whole activation (see [`Op::error_in_place`]).
pub type Combine<'a> = dyn Fn(usize, &mut [f32], &mut [f32]) + Sync + 'a;

/// Receives a layer's weight gradient a block of rows at a time, with the parameters to
/// apply it to: `(params, first row, rows, bias)`, the bias gradient with the last block.
pub type GradientSink<'a> =
    dyn FnMut(&mut Dense, usize, &[f32], Option<&Matrix>) -> Result<(), OpsError> + 'a;

/// Rows per sample and columns of a layer's input or output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerSample {
    /// Rows each sample occupies (1 for flat vectors, `H * W` for maps).
    pub rows: usize,
    /// Columns (features or channels).
    pub cols: usize,
}

impl PerSample {
    /// The `(rows, cols)` of a batch of `batch` samples.
    pub fn of(self, batch: usize) -> (usize, usize) {
        (batch * self.rows, self.cols)
    }
}

/// One kind of layer: its computation, its error propagation and its two training rules.
pub trait Op: Debug + Send + Sync + Any {
    /// The kind's name in model files and messages (`dense`, `depthwise`, `global_avg_pool`).
    fn kind(&self) -> &'static str;

    /// A boxed copy (layers are cloned to compare trainers on the same start).
    fn clone_op(&self) -> Box<dyn Op>;

    /// For code outside the training loops that needs the concrete kind (model export).
    fn as_any(&self) -> &dyn Any;

    /// Shape of one sample's input; `positions` is the layer's rows per input sample, which
    /// only kinds applied row by row (dense over map positions) need.
    fn input(&self, positions: usize) -> PerSample;

    /// Shape of one sample's output.
    fn output(&self, positions: usize) -> PerSample;

    /// The weights and bias, if the kind has any.
    fn params(&self) -> Option<&Dense> {
        None
    }

    /// The weights and bias, mutable.
    fn params_mut(&mut self) -> Option<&mut Dense> {
        None
    }

    /// The output before the activation, for `input` in the input shape.
    fn forward(&self, input: &Matrix) -> Result<Matrix, OpsError>;

    /// The output after `act`, for `input` in the input shape. By default `act` is applied
    /// to [`Op::forward`]'s result in a pass of its own; kinds with large outputs apply it
    /// to each piece as it is formed, while it is still in cache (the same values).
    fn forward_activated(&self, input: &Matrix, act: Activation) -> Result<Matrix, OpsError> {
        let mut z = self.forward(input)?;
        act.apply(z.as_mut_slice());
        Ok(z)
    }

    /// The error reaching the input from the output error `err`, in a new matrix (before the
    /// input activation's derivative).
    fn input_error(&self, err: &Matrix, mode: ErrorMode) -> Result<Matrix, OpsError>;

    /// [`Op::input_error`] written over `below` (the input activation, `batch` samples in
    /// the input shape, consumed): the error is propagated a block at a time into scratch,
    /// and `combine(offset of the block, scratch, block of below)` finishes each block. Blocks may run in
    /// parallel; the scratch is small and counted in [`Op::error_scratch_bytes`].
    fn error_in_place(
        &self,
        err: &Matrix,
        below: &mut Matrix,
        batch: usize,
        mode: ErrorMode,
        combine: &Combine<'_>,
    ) -> Result<(), OpsError>;

    /// Bytes of scratch [`Op::error_in_place`] holds for `rows` input rows on `threads`.
    fn error_scratch_bytes(&self, rows: usize, threads: usize) -> usize;

    /// Where a skip connection's output goes in this layer's result, as `(first column,
    /// columns)`: `None` (the default) adds it to the whole result (a residual add); a
    /// concatenation places it in its own columns ([`crate::concat`]).
    fn skip_columns(&self) -> Option<(usize, usize)> {
        None
    }

    /// The update rule for this kind: stabilisers that act on weight matrices (the
    /// spectral clamp, orthogonalisation) do not apply to every kind.
    fn rule(&self, rule: &UpdateRule) -> UpdateRule {
        *rule
    }

    /// The PL solve: the change of the parameters that moves the output by `-alpha err`
    /// with `input` as the layer's input; `None` for kinds without parameters.
    fn pl_update(
        &self,
        input: &Matrix,
        err: &Matrix,
        ridge: &RidgeConfig,
    ) -> Result<Option<RidgeUpdate>, OpsError> {
        let _ = (input, err, ridge);
        Ok(None)
    }

    /// The PL solve of a hidden layer, folded into `state` as far as the old weights allow
    /// (the error below still needs them): the weights move in
    /// [`LayerState::finish_deferred`]. A kind may stream its update into the state instead of
    /// holding it whole; `None` for kinds without parameters.
    fn pl_update_deferred(
        &self,
        state: &mut LayerState,
        mask: Option<&Mask>,
        rule: &UpdateRule,
        input: &Matrix,
        err: &Matrix,
        ridge: &RidgeConfig,
    ) -> Result<Option<Pending>, OpsError> {
        let _ = (state, mask, rule);
        Ok(self.pl_update(input, err, ridge)?.map(Pending::Whole))
    }

    /// The PL solve and update of a layer whose error is not needed afterwards (the first):
    /// it may consume `err` and stream the update into `state` without holding it whole.
    fn pl_update_last(
        &mut self,
        state: &mut LayerState,
        mask: Option<&Mask>,
        rule: &UpdateRule,
        input: &Matrix,
        err: Matrix,
        ridge: &RidgeConfig,
    ) -> Result<(), OpsError> {
        let update = self.pl_update(input, &err, ridge)?;
        drop(err);
        match (update, self.params_mut()) {
            (Some(update), Some(params)) => state.apply(params, mask, update, rule),
            _ => Ok(()),
        }
    }

    /// The additive part of the PL solve over input rows `rows` (one shard of a distributed
    /// batch), to be summed over the shards and given to [`Op::pl_update_from_sums`]; `None`
    /// for kinds without parameters.
    fn pl_partial(
        &self,
        input: &Matrix,
        err: &Matrix,
        rows: Range<usize>,
        ridge: &RidgeConfig,
    ) -> Result<Option<Vec<f64>>, OpsError> {
        let _ = (input, err, rows, ridge);
        self.params().map_or(Ok(None), |_| Err(not_distributed(self.kind())))
    }

    /// The PL update from the sum of every shard's [`Op::pl_partial`].
    fn pl_update_from_sums(
        &self,
        sums: &[f64],
        ridge: &RidgeConfig,
    ) -> Result<Option<RidgeUpdate>, OpsError> {
        let _ = (sums, ridge);
        self.params().map_or(Ok(None), |_| Err(not_distributed(self.kind())))
    }

    /// The weight and bias gradients over input rows `rows` (one shard), flattened, to be
    /// summed over the shards and given to [`Op::gradients_from_sums`]; `None` for kinds
    /// without parameters.
    fn gradient_partial(
        &self,
        input: &Matrix,
        delta: &Matrix,
        rows: Range<usize>,
    ) -> Result<Option<Vec<f64>>, OpsError> {
        let _ = (input, delta, rows);
        self.params().map_or(Ok(None), |_| Err(not_distributed(self.kind())))
    }

    /// The weight and bias gradients from the sum of every shard's [`Op::gradient_partial`].
    fn gradients_from_sums(&self, sums: &[f64]) -> Result<Option<(Matrix, Matrix)>, OpsError> {
        let _ = sums;
        self.params().map_or(Ok(None), |_| Err(not_distributed(self.kind())))
    }

    /// The gradients of the weights and the bias for `input` and the output's `delta`;
    /// `None` for kinds without parameters.
    fn gradients(&self, input: &Matrix, delta: &Matrix) -> Result<Option<(Matrix, Matrix)>, OpsError> {
        let _ = (input, delta);
        Ok(None)
    }

    /// The gradients handed to `sink` with the parameters a block of weight rows at a time
    /// (about `tile_rows` rows), for a layer whose gradient is used once and applied at
    /// once: a kind may stream it without holding the whole weight gradient. By default,
    /// one block.
    fn stream_gradients(
        &mut self,
        input: &Matrix,
        delta: &Matrix,
        tile_rows: usize,
        sink: &mut GradientSink<'_>,
    ) -> Result<(), OpsError> {
        let _ = tile_rows;
        match (self.gradients(input, delta)?, self.params_mut()) {
            (Some((gw, gb)), Some(params)) => sink(params, 0, gw.as_slice(), Some(&gb)),
            _ => Ok(()),
        }
    }
}

/// The error of a layer kind whose sums are not split over shards yet.
fn not_distributed(kind: &str) -> OpsError {
    let detail = format!(
        "layers of kind `{kind}` do not train on several workers yet (dense layers do); run without --workers"
    );
    OpsError::Invalid { op: "distributed step", detail }
}

impl Clone for Box<dyn Op> {
    fn clone(&self) -> Self {
        self.clone_op()
    }
}

/// One layer of a network: an [`Op`], the activation after it, and its training options.
#[derive(Debug, Clone)]
pub struct Layer {
    /// What it computes, with its parameters.
    pub op: Box<dyn Op>,
    /// The activation after it.
    pub activation: Activation,
    /// Persistent sparse connectivity: weights outside the mask stay zero through training.
    pub mask: Option<Mask>,
    /// Rows of input per sample: 1 for a dense layer on flat inputs, `H * W` on maps.
    pub input_positions: usize,
    /// A residual connection: the output of layer `r` (earlier in the network, with this
    /// layer's output shape) is added to this layer's result before its activation, so the
    /// error reaching this layer is copied to layer `r`'s output as well.
    pub residual: Option<usize>,
}

impl Layer {
    /// A layer of `op` on `positions` rows per sample.
    pub fn new(op: impl Op, activation: Activation, positions: usize) -> Self {
        Self { op: Box::new(op), activation, mask: None, input_positions: positions, residual: None }
    }

    /// A dense layer on flat inputs.
    pub fn dense(dense: Dense, activation: Activation) -> Self {
        Self::new(dense, activation, 1)
    }

    /// The op as its concrete kind, if it is one.
    pub fn op_as<T: Op>(&self) -> Option<&T> {
        self.op.as_any().downcast_ref::<T>()
    }

    /// The weights and bias, if the layer has any.
    pub fn params(&self) -> Option<&Dense> {
        self.op.params()
    }

    /// The weights and bias, mutable.
    pub fn params_mut(&mut self) -> Option<&mut Dense> {
        self.op.params_mut()
    }

    /// Shape of the input for a batch of `batch` samples.
    pub fn input_shape(&self, batch: usize) -> (usize, usize) {
        self.op.input(self.input_positions).of(batch)
    }

    /// Shape of the output for a batch of `batch` samples.
    pub fn output_shape(&self, batch: usize) -> (usize, usize) {
        self.op.output(self.input_positions).of(batch)
    }

    /// The layer's output (after its activation) for `input` in [`Layer::input_shape`].
    pub fn forward(&self, input: &Matrix) -> Result<Matrix, OpsError> {
        self.forward_with(input, None)
    }

    /// [`Layer::forward`] with `skip` (the output of the layer [`Layer::residual`] names)
    /// added before the activation, to the whole result or to the op's
    /// [`Op::skip_columns`].
    pub fn forward_with(&self, input: &Matrix, skip: Option<&Matrix>) -> Result<Matrix, OpsError> {
        let Some(skip) = skip else {
            return self.op.forward_activated(input, self.activation);
        };
        let mut z = self.op.forward(input)?;
        let skip = skip.as_slice();
        match self.op.skip_columns() {
            None => {
                let op = "residual add";
                OpsError::check(op, "skip", &[Dim::Exact(z.as_slice().len())], &[skip.len()])?;
                z.as_mut_slice().iter_mut().zip(skip).for_each(|(z, s)| *z += s);
            }
            Some((first, count)) => {
                let (rows, w) = (z.rows(), z.cols().max(1));
                OpsError::check("concat", "skip", &[Dim::Exact(rows * count)], &[skip.len()])?;
                let pairs = z.as_mut_slice().chunks_exact_mut(w).zip(skip.chunks_exact(count.max(1)));
                pairs.for_each(|(z, s)| z[first..first + count].iter_mut().zip(s).for_each(|(z, s)| *z += s));
            }
        }
        self.activation.apply(z.as_mut_slice());
        Ok(z)
    }

    /// The part of the error `err` reaching this layer's result that flows to its skip
    /// source: all of it for a residual add, the skip's columns for a concatenation.
    pub fn skip_error<'e>(&self, err: &'e Matrix) -> Cow<'e, Matrix> {
        match self.op.skip_columns() {
            None => Cow::Borrowed(err),
            Some((first, count)) => Cow::Owned(crate::concat::columns(err, first, count)),
        }
    }

    /// Trainable values.
    pub fn parameter_count(&self) -> usize {
        self.params().map_or(0, Dense::parameter_count)
    }
}
