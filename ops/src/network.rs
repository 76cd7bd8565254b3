//! A chain of layers: weights and activations only. Trainers ([`crate::pl`], and the backprop
//! baselines) own their optimiser state and update the network in place.
//!
//! Layers exchange [`Matrix`] batches. Flat inputs have one row per sample; feature maps are
//! NHWC, one row per position (see [`crate::depthwise`]). Between layers an activation is
//! reshaped (without copying) to what the next layer reads, so a dense layer after a map sees
//! the map flattened, and an error is reshaped back to what its layer produced.

use crate::activation::Activation;
use crate::dense::Dense;
use crate::depthwise::{Depthwise, global_avg_pool, global_avg_pool_error};
use crate::ledger::Buffer;
use crate::sparse::Mask;
use crate::{Matrix, OpsError};
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

/// Values per scratch block of [`Network::error_below_in_place`] for dense layers (128 KiB):
/// the rows of a block are as many as fit, at least one.
const SCRATCH_VALUES: usize = 1 << 15;

/// How [`Network::error_below_in_place`] splits a dense layer's rows: `span` rows per worker,
/// processed `block` rows at a time in the worker's own scratch.
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

/// Bytes of scratch that [`Network::error_below_in_place`] holds for a dense layer with
/// `cols` inputs over `rows` rows on `threads` threads.
pub fn dense_error_scratch_bytes(rows: usize, cols: usize, threads: usize) -> usize {
    ScratchLayout::new(rows, cols, threads).bytes()
}

/// What a layer computes.
#[derive(Debug, Clone)]
pub enum LayerKind {
    /// `x W + b` on every row: a fully connected layer on flat inputs, the pointwise (1x1)
    /// convolution on the positions of NHWC maps.
    Dense(Dense),
    /// A depthwise `k x k` convolution.
    Depthwise(Depthwise),
    /// Global average pooling of maps with `positions` positions and `channels` channels.
    Pool { positions: usize, channels: usize },
}

impl LayerKind {
    /// The weights and bias, if this kind has any.
    pub fn params(&self) -> Option<&Dense> {
        match self {
            LayerKind::Dense(d) => Some(d),
            LayerKind::Depthwise(dw) => Some(&dw.params),
            LayerKind::Pool { .. } => None,
        }
    }

    /// The weights and bias, mutable.
    pub fn params_mut(&mut self) -> Option<&mut Dense> {
        match self {
            LayerKind::Dense(d) => Some(d),
            LayerKind::Depthwise(dw) => Some(&mut dw.params),
            LayerKind::Pool { .. } => None,
        }
    }
}

/// How an error crosses a global average pooling layer on its way down.
///
/// Backpropagation needs the gradient: each of the `P` pooled positions receives `e / P`.
/// A PL layer instead solves for the change of its output that the error asks for, and the
/// smallest change of `P` positions that moves their mean by `e` moves each of them by `e`
/// (the pseudo-inverse of averaging). With the gradient, every layer below a pool of `P`
/// positions solves for a change `P` times too small (49 to 784 times on the MNIST CNN), and
/// the convolutions hardly learn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolError {
    /// `e / P` at each position (backpropagation).
    Gradient,
    /// `e` at each position (Prospective Learning).
    Target,
}

impl PoolError {
    /// The factor each of `positions` pooled positions receives of the pooled error.
    pub fn share(self, positions: usize) -> f32 {
        match self {
            PoolError::Gradient => 1.0 / positions.max(1) as f32,
            PoolError::Target => 1.0,
        }
    }
}

/// One layer of a network.
#[derive(Debug, Clone)]
pub struct Layer {
    /// What it computes, with its parameters.
    pub kind: LayerKind,
    /// The activation after it.
    pub activation: Activation,
    /// Persistent sparse connectivity: weights outside the mask stay zero through training.
    pub mask: Option<Mask>,
    /// Rows of input per sample: 1 for a dense layer on flat inputs, `H * W` for a pointwise
    /// layer on maps.
    pub input_positions: usize,
}

impl Layer {
    /// A dense layer on flat inputs.
    pub fn dense(dense: Dense, activation: Activation) -> Self {
        Self { kind: LayerKind::Dense(dense), activation, mask: None, input_positions: 1 }
    }

    /// The weights and bias, if the layer has any.
    pub fn params(&self) -> Option<&Dense> {
        self.kind.params()
    }

    /// The weights and bias, mutable.
    pub fn params_mut(&mut self) -> Option<&mut Dense> {
        self.kind.params_mut()
    }

    /// Shape of the input for a batch of `batch` samples.
    pub fn input_shape(&self, batch: usize) -> (usize, usize) {
        match &self.kind {
            LayerKind::Dense(d) => (batch * self.input_positions, d.inputs()),
            LayerKind::Depthwise(dw) => (batch * dw.geometry.h * dw.geometry.w, dw.channels()),
            LayerKind::Pool { positions, channels } => (batch * positions, *channels),
        }
    }

    /// Shape of the output for a batch of `batch` samples.
    pub fn output_shape(&self, batch: usize) -> (usize, usize) {
        match &self.kind {
            LayerKind::Dense(d) => (batch * self.input_positions, d.outputs()),
            LayerKind::Depthwise(dw) => (batch * dw.geometry.out_h() * dw.geometry.out_w(), dw.channels()),
            LayerKind::Pool { channels, .. } => (batch, *channels),
        }
    }

    /// The layer's output (after its activation) for `input` in [`Layer::input_shape`].
    pub fn forward(&self, input: &Matrix) -> Result<Matrix, OpsError> {
        let mut z = match &self.kind {
            LayerKind::Dense(d) => d.forward(input)?,
            LayerKind::Depthwise(dw) => dw.forward(input)?,
            LayerKind::Pool { positions, .. } => global_avg_pool(input, *positions)?,
        };
        self.activation.apply(z.as_mut_slice());
        Ok(z)
    }

    /// The error reaching the input from the error `err` at the output (before the input
    /// activation's derivative), crossing pooling as `pool` says.
    pub fn input_error(&self, err: &Matrix, pool: PoolError) -> Result<Matrix, OpsError> {
        match &self.kind {
            LayerKind::Dense(d) => d.input_error(err),
            LayerKind::Depthwise(dw) => dw.input_error(err),
            LayerKind::Pool { positions, .. } => {
                Ok(global_avg_pool_error(err, *positions, pool.share(*positions)))
            }
        }
    }

    /// Trainable values.
    pub fn parameter_count(&self) -> usize {
        self.params().map_or(0, Dense::parameter_count)
    }
}

/// What one training step saw, for the run's metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepStats {
    /// Rows in the batch.
    pub rows: usize,
    /// PL: sum over the batch of the squared output error `||z - y_hat||^2`; backprop: sum of
    /// the cross-entropy losses.
    pub loss_sum: f64,
    /// Rows whose largest output was the true class (with the pre-update weights).
    pub correct: usize,
    /// Seconds spent in the forward pass.
    pub forward_seconds: f64,
    /// Seconds spent propagating errors (or deltas) to the layers below.
    pub propagate_seconds: f64,
    /// Seconds spent solving for updates (PL) or forming gradients (backprop) and applying them.
    pub solve_seconds: f64,
}

impl StepStats {
    /// Add another step's figures to these.
    pub fn add(&mut self, other: &StepStats) {
        self.rows += other.rows;
        self.loss_sum += other.loss_sum;
        self.correct += other.correct;
        self.forward_seconds += other.forward_seconds;
        self.propagate_seconds += other.propagate_seconds;
        self.solve_seconds += other.solve_seconds;
    }
}

/// A failure inside a step, with the index of the layer where it happened.
#[derive(Debug, thiserror::Error)]
#[error("layer {layer} failed")]
pub struct LayerError {
    /// Index of the layer in the chain (0 = first).
    pub layer: usize,
    /// What went wrong.
    #[source]
    pub source: OpsError,
}

pub(crate) fn at(layer: usize) -> impl Fn(OpsError) -> LayerError {
    move |source| LayerError { layer, source }
}

/// A chain of dense layers.
#[derive(Debug, Default)]
pub struct Network {
    /// Layers from input to output.
    pub layers: Vec<Layer>,
}

impl Network {
    /// Number of trainable values.
    pub fn parameter_count(&self) -> usize {
        self.layers.iter().map(Layer::parameter_count).sum()
    }

    /// Samples in a batch given to the first layer.
    pub fn batch_of(&self, x: &Matrix) -> usize {
        let per = self.layers.first().map_or(1, |l| l.input_shape(1).0);
        x.rows() / per.max(1)
    }

    /// The forward pass of training: every layer's output, each reshaped for the layer after
    /// it (the last is the output scores).
    pub(crate) fn forward_all(&self, x: &Matrix, batch: usize) -> Result<Vec<Matrix>, LayerError> {
        let mut acts: Vec<Matrix> = Vec::with_capacity(self.layers.len());
        for l in 0..self.layers.len() {
            let out = self.forward_layer(l, acts.last().unwrap_or(x), batch)?;
            acts.push(out);
        }
        Ok(acts)
    }

    /// Run layer `l` on `input` and reshape its output for layer `l + 1`.
    pub(crate) fn forward_layer(&self, l: usize, input: &Matrix, batch: usize) -> Result<Matrix, LayerError> {
        let mut out = self.layers[l].forward(input).map_err(at(l))?;
        if let Some(next) = self.layers.get(l + 1) {
            let (rows, cols) = next.input_shape(batch);
            if rows * cols != out.rows() * out.cols() {
                return Err(LayerError {
                    layer: l + 1,
                    source: OpsError::Shape {
                        op: "layer input",
                        detail: format!(
                            "{}x{} values reach a layer that reads {rows}x{cols}",
                            out.rows(),
                            out.cols()
                        ),
                    },
                });
            }
            out.reshape(rows, cols);
        }
        Ok(out)
    }

    /// The error of layer `l - 1`'s output from layer `l`'s output error: propagated through
    /// layer `l` (across pooling as `pool` says), times the derivative of layer `l - 1`'s activation (recovered from its
    /// output `below`), in layer `l - 1`'s output shape.
    #[cfg(test)]
    pub(crate) fn error_below(
        &self,
        l: usize,
        err: &Matrix,
        below: &Matrix,
        batch: usize,
        pool: PoolError,
    ) -> Result<Matrix, LayerError> {
        let mut e = self.layers[l].input_error(err, pool).map_err(at(l))?;
        self.layers[l - 1].activation.scale_by_derivative(e.as_mut_slice(), below.as_slice());
        let (rows, cols) = self.layers[l - 1].output_shape(batch);
        e.reshape(rows, cols);
        Ok(e)
    }

    /// [`Network::error_below`] written over `below` (layer `l - 1`'s output, consumed): the
    /// error takes the place of the activation it was the last use of, so no second buffer of
    /// that size is allocated (on the MNIST CNN, a 12.8 MB map at the step's peak). The
    /// propagation runs on a block of rows, or one sample of a map, at a time into a small
    /// scratch buffer, and the blocks run in parallel.
    pub(crate) fn error_below_in_place(
        &self,
        l: usize,
        err: &Matrix,
        mut below: Matrix,
        batch: usize,
        pool: PoolError,
    ) -> Result<Matrix, LayerError> {
        let layer = &self.layers[l];
        let derivative = self.layers[l - 1].activation;
        let (rows, cols) = layer.input_shape(batch);
        if below.rows() * below.cols() != rows * cols {
            return Err(LayerError {
                layer: l,
                source: OpsError::Shape {
                    op: "error propagation",
                    detail: format!(
                        "{}x{} activation below a layer that reads {rows}x{cols}",
                        below.rows(),
                        below.cols()
                    ),
                },
            });
        }
        below.reshape(rows, cols);
        // Propagate into `scratch`, then `a <- scratch * f'(a)` where `a` is the activation.
        let combine = |scratch: &mut [f32], a: &mut [f32]| {
            derivative.scale_by_derivative(scratch, a);
            a.copy_from_slice(scratch);
        };
        match &layer.kind {
            LayerKind::Dense(d) => {
                if err.rows() != rows || err.cols() != d.outputs() {
                    return Err(at(l)(OpsError::Shape {
                        op: "dense error propagation",
                        detail: format!(
                            "error is {}x{}, layer has {} outputs",
                            err.rows(),
                            err.cols(),
                            d.outputs()
                        ),
                    }));
                }
                // One contiguous range of rows per worker, each with its own block of scratch,
                // all allocated up front: the peak does not depend on scheduling.
                let (m, layout) = (d.outputs(), ScratchLayout::new(rows, cols, crate::threads()));
                let mut scratch = Buffer::<f32>::zeros(layout.bytes() / size_of::<f32>());
                below
                    .as_mut_slice()
                    .par_chunks_mut(layout.span * cols)
                    .zip(err.as_slice().par_chunks(layout.span * m))
                    .zip(scratch.par_chunks_mut(layout.block * cols))
                    .for_each(|((a, e), s)| {
                        for (a, e) in a.chunks_mut(layout.block * cols).zip(e.chunks(layout.block * m)) {
                            let h = e.len() / m.max(1);
                            let s = &mut s[..h * cols];
                            let out = MatMut::from_row_major_slice_mut(s, h, cols);
                            let e = MatRef::from_row_major_slice(e, h, m);
                            matmul(out, Accum::Replace, e, d.weights.view().transpose(), 1.0, Par::Seq);
                            combine(s, a);
                        }
                    });
            }
            LayerKind::Depthwise(dw) => {
                let samples = dw.check_error(err).map_err(at(l))?;
                let (per_in, per_out) = (rows / samples.max(1), err.rows() / samples.max(1));
                below
                    .as_mut_slice()
                    .par_chunks_mut(per_in * cols)
                    .zip(err.as_slice().par_chunks(per_out * cols))
                    .for_each(|(a, e)| {
                        let mut scratch = Buffer::<f32>::zeros(a.len());
                        dw.input_error_sample(e, &mut scratch);
                        combine(&mut scratch, a);
                    });
            }
            LayerKind::Pool { positions, channels } => {
                if err.rows() != batch || err.cols() != *channels {
                    return Err(at(l)(OpsError::Shape {
                        op: "pooling error propagation",
                        detail: format!(
                            "error is {}x{}, expected {batch}x{channels}",
                            err.rows(),
                            err.cols()
                        ),
                    }));
                }
                let share = pool.share(*positions);
                below
                    .as_mut_slice()
                    .par_chunks_mut(positions * channels)
                    .zip(err.as_slice().par_chunks(*channels))
                    .for_each(|(a, e)| {
                        let mut scratch =
                            Buffer::from_vec(e.iter().map(|v| v * share).cycle().take(a.len()).collect());
                        combine(&mut scratch, a);
                    });
            }
        }
        let (rows, cols) = self.layers[l - 1].output_shape(batch);
        below.reshape(rows, cols);
        Ok(below)
    }

    /// Outputs (pre-softmax scores) for a batch; each activation is dropped as soon as the
    /// next layer has consumed it.
    pub fn forward(&self, x: &Matrix) -> Result<Matrix, LayerError> {
        let batch = self.batch_of(x);
        let mut current: Option<Matrix> = None;
        for l in 0..self.layers.len() {
            let input = current.as_ref().unwrap_or(x);
            current = Some(self.forward_layer(l, input, batch)?);
        }
        Ok(current.unwrap_or_else(|| x.clone()))
    }
}

/// Index of the largest value (the first one on ties).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_chains_layers_and_applies_activations() {
        let mut first = Dense::new(Matrix::from_vec(2, 2, vec![1.0, -1.0, 0.5, 2.0]));
        first.bias = Matrix::from_vec(1, 2, vec![0.0, -3.0]);
        let second = Dense::new(Matrix::from_vec(2, 1, vec![1.0, 1.0]));
        let net = Network {
            layers: vec![
                Layer::dense(first, Activation::Elu { clip: 10.0 }),
                Layer::dense(second, Activation::Linear),
            ],
        };
        let out = net.forward(&Matrix::from_vec(1, 2, vec![2.0, 1.0])).expect("shapes");
        // z1 = [2 + 0.5, -2 + 2 - 3] = [2.5, -3]; a1 = [2.5, e^-3 - 1]; z2 = a1[0] + a1[1]
        let want = 2.5 + ((-3.0f32).exp() - 1.0);
        assert!((out.as_slice()[0] - want).abs() < 1e-6);
        assert_eq!(argmax(&[0.1, 0.7, 0.7, -1.0]), 1);
    }

    /// The in-place error equals the allocating one for every kind of layer, on a small CNN
    /// (pointwise, depthwise with stride 2, pooling, dense head) with a batch of 3.
    #[test]
    fn in_place_error_matches_the_allocating_one() {
        use crate::depthwise::Geometry;
        use crate::init::xavier_normal;
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let elu = Activation::Elu { clip: 10.0 };
        let geometry = Geometry { h: 5, w: 6, k: 3, stride: 2 };
        let (oh, ow) = (geometry.out_h(), geometry.out_w());
        let net = Network {
            layers: vec![
                Layer { input_positions: 30, ..Layer::dense(Dense::new(xavier_normal(2, 4, &mut rng)), elu) },
                Layer {
                    kind: LayerKind::Depthwise(Depthwise::new(xavier_normal(9, 4, &mut rng), geometry)),
                    activation: elu,
                    mask: None,
                    input_positions: 30,
                },
                Layer {
                    kind: LayerKind::Pool { positions: oh * ow, channels: 4 },
                    activation: Activation::Linear,
                    mask: None,
                    input_positions: oh * ow,
                },
                Layer::dense(Dense::new(xavier_normal(4, 3, &mut rng)), Activation::Linear),
            ],
        };
        let batch = 3;
        let x = xavier_normal(batch * 30, 2, &mut rng);
        let acts = net.forward_all(&x, batch).expect("shapes");
        for pool in [PoolError::Gradient, PoolError::Target] {
            for l in 1..net.layers.len() {
                let (rows, cols) = net.layers[l].output_shape(batch);
                let err = xavier_normal(rows, cols, &mut rng);
                let want = net.error_below(l, &err, &acts[l - 1], batch, pool).expect("allocating");
                let got =
                    net.error_below_in_place(l, &err, acts[l - 1].clone(), batch, pool).expect("in place");
                assert_eq!((got.rows(), got.cols()), (want.rows(), want.cols()), "layer {l}");
                for (g, w) in got.as_slice().iter().zip(want.as_slice()) {
                    assert!((g - w).abs() < 1e-6, "layer {l}, {pool:?}: {g} vs {w}");
                }
            }
        }
    }
}
