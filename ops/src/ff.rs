//! Forward-Forward (Hinton 2022, "The Forward-Forward Algorithm: Some Preliminary
//! Investigations", arXiv:2212.13345), supervised, for chains of dense ReLU layers.
//!
//! - **The label is in the input** (section 3.3): the first `classes` features of an example
//!   are replaced by a one-hot vector times `label_scale`. Positive data is an example with
//!   its own label, negative data the same example with a wrong one.
//! - **Every layer's input has a fixed length** (section 2.1: "the length of the hidden vector
//!   is normalised before it is used as input to the next layer"), so a layer sees the
//!   direction of the activity below, not its goodness. plflow divides by the root mean
//!   square (length over `sqrt(width)`) rather than the length, so that entries stay of order
//!   1 at any width: with unit length, a 784-pixel input's entries are about 0.04 and Adam's
//!   steps move the first layer's outputs `sqrt(784)` times slower (on MNIST, 90% instead of
//!   95% training accuracy after 5 epochs, at the best of the learning rates tried for each).
//! - **Goodness** of a layer's activity `h` (m units): `g = (1/m) sum_j h_j^2`, the paper's
//!   sum of squares divided by the width so that one threshold `theta` fits every layer.
//!   `p(positive) = sigma(g - theta)` (eq. 1), so each layer minimises its own
//!   `softplus(theta - g)` on positive rows and `softplus(g - theta)` on negative ones,
//!   averaged over the 2n rows, with Adam. No error crosses layers: the next layer's input
//!   is this layer's normalised activity under its pre-update weights, a constant to it.
//! - **Negative labels**: `hard` (section 3.3: incorrect labels "in proportion to their
//!   predicted probabilities"), drawn from the softmax of the current net's goodness over the
//!   wrong labels; or `random`, uniform over the wrong labels.
//! - **Prediction** (section 3.3): the label whose embedding gives the most goodness summed
//!   over the layers ([`Goodness::scores`]).
//!
//! Memory: besides Adam's two moments, the first layer's label-free product, its 2n-row
//! activity and its folded error (`Fold`); then, for a layer above, its 2n-row input,
//! activity and error; and a tile of a weight gradient. No activation outlives the layer it
//! feeds, and the 2n x d labelled batch is never made.

use crate::activation::Activation;
use crate::backprop::{
    GRADIENT_TILE_ROWS, Optimizer, OptimizerState, apply, gradient_tile_rows, optimizer_state_is_the_state,
};
use crate::dense::Dense;
use crate::network::{LayerError, Network, StepStats, argmax, at};
use crate::state::Trainer;
use crate::{Matrix, OpsError, par};
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

/// Added to a row's length before dividing by it, so that a zero row stays zero.
const NORM_EPS: f32 = 1e-4;

/// How a Forward-Forward network reads its labels and classifies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Goodness {
    /// Classes: the first `classes` input features carry the label.
    pub classes: usize,
    /// The value written at the label's feature.
    pub label_scale: f32,
}

/// Which wrong label a negative example carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Negatives {
    /// Drawn in proportion to the softmax of the current net's goodness (the paper's).
    Hard,
    /// Uniform over the wrong labels.
    Random,
}

/// The settings of Forward-Forward.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FfConfig {
    /// The label embedding and readout.
    pub goodness: Goodness,
    /// `theta`: positive rows should have more mean squared activity than this, negative less.
    pub threshold: f32,
    /// How negative labels are chosen.
    pub negatives: Negatives,
    /// The optimiser of every layer's local loss (Adam in the paper's code).
    pub optimizer: Optimizer,
    /// Seed of the negative labels' draws (each step draws from `seed` and its step count, so
    /// a resumed run draws the same).
    pub seed: u64,
}

/// Divide every row of `m` by its root mean square (plus [`NORM_EPS`]): its length over
/// `sqrt(cols)`, so that inputs of any width arrive with entries of order 1.
pub fn normalize_rows(m: &mut Matrix) {
    let cols = m.cols().max(1);
    for row in m.as_mut_slice().chunks_exact_mut(cols) {
        let inv = 1.0 / (goodness(row).sqrt() + NORM_EPS);
        row.iter_mut().for_each(|v| *v *= inv);
    }
}

/// The mean square of `row`: a layer's goodness on one example.
pub fn goodness(row: &[f32]) -> f32 {
    row.iter().map(|v| v * v).sum::<f32>() / row.len().max(1) as f32
}

/// `log(1 + e^t)` without overflow.
fn softplus(t: f32) -> f32 {
    t.max(0.0) + (-t.abs()).exp().ln_1p()
}

fn sigmoid(t: f32) -> f32 {
    1.0 / (1.0 + (-t).exp())
}

impl Goodness {
    fn invalid(&self, detail: String) -> LayerError {
        at(0)(OpsError::Invalid { op: "forward-forward", detail })
    }

    /// The first layer's weights, checked to take `x` with room for the label.
    fn first<'n>(&self, net: &'n Network, x: &Matrix) -> Result<&'n Dense, LayerError> {
        let params = net.layers.first().and_then(|l| l.params());
        let Some(params) = params.filter(|p| net.layers[0].input_positions == 1 && p.inputs() == x.cols())
        else {
            return Err(self.invalid(format!(
                "the first layer must be dense on the {}-wide flat input (the label is written into it)",
                x.cols()
            )));
        };
        if x.cols() < self.classes {
            let detail = format!("{} input features cannot hold a {}-class label", x.cols(), self.classes);
            return Err(self.invalid(detail));
        }
        Ok(params)
    }

    /// Every class's goodness summed over the layers for every row of `x` (`n x classes`):
    /// the prediction is the row's largest.
    pub fn scores(&self, net: &Network, x: &Matrix) -> Result<Matrix, LayerError> {
        let front = Front::of(self, self.first(net, x)?, x);
        self.scores_from(net, &front)
    }

    /// [`Goodness::scores`] from the first layer's label-free product.
    fn scores_from(&self, net: &Network, front: &Front) -> Result<Matrix, LayerError> {
        let (n, k) = (front.base.rows(), self.classes);
        let mut scores = Matrix::zeros(n, k);
        for c in 0..k {
            let mut z = front.first_layer(self, net, |_| c);
            self.add_goodness(&z, &mut scores, c);
            normalize_rows(&mut z);
            let mut h: Option<Matrix> = None;
            for l in 1..net.layers.len() {
                let mut out = net.layers[l].forward(h.as_ref().unwrap_or(&z)).map_err(at(l))?;
                self.add_goodness(&out, &mut scores, c);
                normalize_rows(&mut out);
                h = Some(out);
            }
        }
        Ok(scores)
    }

    fn add_goodness(&self, h: &Matrix, scores: &mut Matrix, c: usize) {
        let k = self.classes;
        for (i, row) in h.as_slice().chunks_exact(h.cols().max(1)).enumerate() {
            scores.as_mut_slice()[i * k + c] += goodness(row);
        }
    }
}

/// The first layer's product without the label, `x_rest W` (`x` with its label features
/// zeroed), and every row's normalising factor. A label adds its weight row to a row's
/// product, and every embedding of a row has the same length, so each label then costs an
/// addition: the readout's classes, the positive and the negative rows share one product.
struct Front {
    /// `x_rest W`, `n x units`.
    base: Matrix,
    /// `1 / (rms + eps)` of each row's embedding.
    inv: Vec<f32>,
}

impl Front {
    /// The product for `x` under the first layer's weights `params`.
    fn of(g: &Goodness, params: &Dense, x: &Matrix) -> Self {
        let (n, d, k, s) = (x.rows(), x.cols().max(1), g.classes, g.label_scale);
        let inv = (0..n)
            .map(|i| {
                let sq = x.row(i)[k..].iter().map(|v| v * v).sum::<f32>();
                1.0 / (((sq + s * s) / d as f32).sqrt() + NORM_EPS)
            })
            .collect();
        let mut base = Matrix::zeros(n, params.outputs());
        matmul(base.view_mut(), Accum::Replace, x.view(), params.weights.view(), 1.0, par());
        // Take the label features' share back out: x_rest W = x W - x[:, :k] W[:k, :].
        let (xk, wk) = (x.view().subcols(0, k), params.weights.view().subrows(0, k));
        matmul(base.view_mut(), Accum::Add, xk, wk, -1.0, par());
        Self { base, inv }
    }

    /// The first layer's activity for row `r` of `rows` (row `r % n` of the batch) shown with
    /// label `label(r)`.
    fn rows(&self, g: &Goodness, net: &Network, rows: usize, label: impl Fn(usize) -> usize) -> Matrix {
        let (n, m) = (self.base.rows(), self.base.cols().max(1));
        let params = net.layers[0].params().expect("checked by Goodness::first");
        let (b, s) = (params.bias.as_slice(), g.label_scale);
        let mut z = Matrix::zeros(rows, self.base.cols());
        for (r, row) in z.as_mut_slice().chunks_exact_mut(m).enumerate() {
            let (base, wc, inv) = (self.base.row(r % n), params.weights.row(label(r)), self.inv[r % n]);
            for (j, v) in row.iter_mut().enumerate() {
                *v = (base[j] + s * wc[j]) * inv + b[j];
            }
        }
        net.layers[0].activation.apply(z.as_mut_slice());
        z
    }

    /// [`Front::rows`] for every row of the batch once.
    fn first_layer(&self, g: &Goodness, net: &Network, label: impl Fn(usize) -> usize) -> Matrix {
        self.rows(g, net, self.base.rows(), label)
    }
}

/// The first layer's local error folded for its gradient as it is made, row by row. Row `r`
/// of the 2n-row embedded input is `(x_rest[r % n] + s e_label(r)) inv[r % n]`, so the weight
/// gradient `sum_r u_r^T delta_r` is `x_rest^T D` with `D[i] = inv[i] (delta[i] + delta[n +
/// i])`, one n-row product, except on the label features' rows, which are `sum_r s inv[r %
/// n] delta_r` over the rows showing that label.
struct Fold<'a> {
    /// `D`, `n x units`.
    folded: Matrix,
    /// The label features' gradient rows, `classes x units`.
    labels: Matrix,
    /// The bias gradient, `1 x units`.
    bias: Matrix,
    inv: &'a [f32],
    label: &'a dyn Fn(usize) -> usize,
    scale: f32,
}

impl<'a> Fold<'a> {
    fn new(g: &Goodness, n: usize, m: usize, inv: &'a [f32], label: &'a dyn Fn(usize) -> usize) -> Self {
        let (folded, labels, bias) = (Matrix::zeros(n, m), Matrix::zeros(g.classes, m), Matrix::zeros(1, m));
        Self { folded, labels, bias, inv, label, scale: g.label_scale }
    }

    /// Fold the error `e` of row `r`.
    fn add(&mut self, r: usize, e: &[f32]) {
        let (n, m) = (self.folded.rows(), e.len());
        let (i, c) = (r % n, (self.label)(r));
        let w = self.inv[i];
        let into = &mut self.folded.as_mut_slice()[i * m..(i + 1) * m];
        let lab = &mut self.labels.as_mut_slice()[c * m..(c + 1) * m];
        for (((f, l), b), &e) in into.iter_mut().zip(lab.iter_mut()).zip(self.bias.as_mut_slice()).zip(e) {
            *f += w * e;
            *l += self.scale * w * e;
            *b += e;
        }
    }
}

/// The Forward-Forward trainer: Adam's moments for every layer and the step count.
#[derive(Debug)]
pub struct FfTrainer {
    /// The settings.
    pub config: FfConfig,
    state: OptimizerState,
}

/// Why `net` is not a network Forward-Forward trains, if it is not: dense layers on flat
/// inputs with ReLU, no residual adds.
pub fn unsupported(net: &Network) -> Option<(usize, String)> {
    net.layers.iter().enumerate().find_map(|(l, layer)| {
        let why = if layer.params().is_none() || layer.op.kind() != "dense" || layer.input_positions != 1 {
            format!("is a {} layer; Forward-Forward trains dense layers on flat inputs", layer.op.kind())
        } else if layer.residual.is_some() {
            "adds a residual; Forward-Forward trains plain chains".to_owned()
        } else if !matches!(layer.activation, Activation::Relu { .. }) {
            format!("has activation {}; Forward-Forward's goodness needs relu", layer.activation.name())
        } else {
            return None;
        };
        Some((l, why))
    })
}

impl FfTrainer {
    /// Fresh state for every layer of `network`.
    pub fn new(network: &Network, config: FfConfig) -> Self {
        let state = OptimizerState::new(network, &config.optimizer, |_| false);
        Self { config, state }
    }

    /// The wrong label each row of the batch is shown with.
    fn negative_labels(&self, scores: &Matrix, labels: &[u32]) -> Vec<usize> {
        let k = self.config.goodness.classes;
        let mut rng = ChaCha8Rng::seed_from_u64(
            self.config.seed ^ self.state.steps.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let mut weights = vec![0f64; k];
        labels
            .iter()
            .enumerate()
            .map(|(i, &y)| {
                let y = y as usize;
                if self.config.negatives == Negatives::Random || k < 2 {
                    return (y + 1 + rng.random_range(0..k.saturating_sub(1).max(1))) % k.max(1);
                }
                let row = scores.row(i);
                let top = (0..k).filter(|&c| c != y).map(|c| row[c]).fold(f32::NEG_INFINITY, f32::max);
                for (c, w) in weights.iter_mut().enumerate() {
                    *w = if c == y { 0.0 } else { f64::from(row[c] - top).exp() };
                }
                let mut u = rng.random::<f64>() * weights.iter().sum::<f64>();
                for (c, &w) in weights.iter().enumerate() {
                    if c != y && u < w {
                        return c;
                    }
                    u -= w;
                }
                (0..k).rev().find(|&c| c != y).unwrap_or(0)
            })
            .collect()
    }

    /// One step: the current net's goodness scores (for the training accuracy and the hard
    /// negatives), then every layer in turn on the 2n positive and negative rows. The first
    /// layer's product without the label is formed once for both.
    pub fn step(&mut self, net: &mut Network, x: &Matrix, labels: &[u32]) -> Result<StepStats, LayerError> {
        if let Some((layer, detail)) = unsupported(net) {
            return Err(LayerError { layer, source: OpsError::Invalid { op: "forward-forward", detail } });
        }
        let clock = Instant::now();
        let g = self.config.goodness;
        if let Some(&y) = labels.iter().find(|&&y| y as usize >= g.classes) {
            let detail = format!("label {y} but the network reads {} classes", g.classes);
            return Err(g.invalid(detail));
        }
        let front = Front::of(&g, g.first(net, x)?, x);
        let scores = g.scores_from(net, &front)?;
        self.state.steps += 1;
        let n = labels.len();
        let mut stats = StepStats { rows: n, ..StepStats::default() };
        stats.correct = (0..n).filter(|&i| argmax(scores.row(i)) == labels[i] as usize).count();
        let wrong = self.negative_labels(&scores, labels);
        drop(scores);
        let label = |r: usize| if r < n { labels[r] as usize } else { wrong[r - n] };
        let mut h = front.rows(&g, net, 2 * n, label);
        let Front { base, inv } = front;
        drop(base);
        stats.forward_seconds += clock.elapsed().as_secs_f64();
        let solving = Instant::now();
        let mut fold = Fold::new(&g, n, h.cols(), &inv, &label);
        stats.loss_sum += self.local_error_rows(&h, n, net.layers[0].activation, |r, e| fold.add(r, e));
        self.first_update(net, x, &fold).map_err(at(0))?;
        drop(fold);
        normalize_rows(&mut h);
        stats.solve_seconds += solving.elapsed().as_secs_f64();
        let mut u = h;
        for l in 1..net.layers.len() {
            let clock = Instant::now();
            let mut h = net.layers[l].forward(&u).map_err(at(l))?;
            let (loss, delta) = self.local_error(&h, n, net.layers[l].activation);
            stats.loss_sum += loss;
            let solving = Instant::now();
            stats.forward_seconds += solving.duration_since(clock).as_secs_f64();
            self.update(net, l, &u, &delta).map_err(at(l))?;
            drop(delta);
            normalize_rows(&mut h);
            u = h;
            stats.solve_seconds += solving.elapsed().as_secs_f64();
        }
        Ok(stats)
    }

    /// Layer `l`'s Adam step from its input `u` and the local error `delta`, the weight
    /// gradient formed a tile of rows at a time.
    fn update(&mut self, net: &mut Network, l: usize, u: &Matrix, delta: &Matrix) -> Result<(), OpsError> {
        let layer = &mut net.layers[l];
        let (state, opt, steps, mask) =
            (&mut self.state.layers[l], &self.config.optimizer, self.state.steps, layer.mask.as_ref());
        let mut sink = |params: &mut Dense, row0: usize, gw: &[f32], gb: Option<&Matrix>| {
            apply(state, opt, steps, params, mask, row0, gw, gb, u.rows())
        };
        layer.op.stream_gradients(u, delta, GRADIENT_TILE_ROWS, &mut sink)
    }

    /// The first layer's Adam step without its 2n x d embedded input (see [`Fold`]): `x^T D`
    /// a tile of rows at a time, with the label features' rows replaced by the fold's.
    fn first_update(&mut self, net: &mut Network, x: &Matrix, fold: &Fold) -> Result<(), OpsError> {
        let (n, d, m, k) = (x.rows(), x.cols(), fold.folded.cols(), fold.labels.rows());
        let layer = &mut net.layers[0];
        let mask = layer.mask.as_ref();
        let Some(params) = layer.op.params_mut() else { return Ok(()) };
        let tile_rows = gradient_tile_rows(d);
        let mut tile = Matrix::zeros(tile_rows, m);
        for r0 in (0..d).step_by(tile_rows) {
            let h = tile_rows.min(d - r0);
            let part = &mut tile.as_mut_slice()[..h * m];
            let (xv, dv) = (x.view().subcols(r0, h).transpose(), fold.folded.view());
            matmul(MatMut::from_row_major_slice_mut(part, h, m), Accum::Replace, xv, dv, 1.0, par());
            for c in r0..(r0 + h).min(k) {
                part[(c - r0) * m..(c - r0 + 1) * m].copy_from_slice(fold.labels.row(c));
            }
            let last = (r0 + h == d).then_some(&fold.bias);
            apply(
                &mut self.state.layers[0],
                &self.config.optimizer,
                self.state.steps,
                params,
                mask,
                r0,
                part,
                last,
                2 * n,
            )?;
        }
        Ok(())
    }

    /// A layer's loss over its activity `h` (positive rows first, then `n` negative ones),
    /// as the mean of each example's two losses, and the loss's gradient at the layer's
    /// pre-activations: `d/dz = -s sigma(s (theta - g)) (2 h / m) / (2n)` with `s = 1` on
    /// positive rows and `-1` on negative ones, times the activation's slope.
    fn local_error(&self, h: &Matrix, n: usize, activation: Activation) -> (f64, Matrix) {
        let mut delta = Matrix::zeros(h.rows(), h.cols());
        let m = h.cols().max(1);
        let loss = self.local_error_rows(h, n, activation, |r, e| {
            delta.as_mut_slice()[r * m..(r + 1) * m].copy_from_slice(e)
        });
        (loss, delta)
    }

    /// [`FfTrainer::local_error`] a row at a time, each row's error handed to `each` (so that
    /// the first layer folds it without holding the 2n x m matrix); returns the loss.
    fn local_error_rows(
        &self,
        h: &Matrix,
        n: usize,
        activation: Activation,
        mut each: impl FnMut(usize, &[f32]),
    ) -> f64 {
        let (m, theta) = (h.cols().max(1), self.config.threshold);
        let mut row_error = vec![0f32; m];
        let mut loss = 0f64;
        for (r, row) in h.as_slice().chunks_exact(m).enumerate() {
            let s = if r < n { 1.0 } else { -1.0 };
            let t = s * (theta - goodness(row));
            loss += f64::from(softplus(t)) / 2.0;
            let scale = -s * sigmoid(t) * 2.0 / (m as f32 * (2 * n) as f32);
            row_error.iter_mut().zip(row).for_each(|(e, &v)| *e = v * scale);
            activation.scale_by_derivative(&mut row_error, row);
            each(r, &row_error);
        }
        loss
    }
}

optimizer_state_is_the_state!(FfTrainer);

impl Trainer for FfTrainer {
    fn step(&mut self, net: &mut Network, x: &Matrix, labels: &[u32]) -> Result<StepStats, LayerError> {
        FfTrainer::step(self, net, x, labels)
    }

    fn state_bytes(&self) -> usize {
        self.state.bytes()
    }
}

/// Peak bytes of a step beside the weights, the state and the batch, over dense layers
/// `(inputs, units)` with `n` examples of `classes` classes, following [`FfTrainer::step`].
/// The readout holds the label-free product, a class's first activity, the input and output
/// of a layer above and the scores. The first layer's update holds the 2n-row activity, the
/// folded error, the label rows and a tile of its gradient; a layer above, its
/// 2n-row input, activity and delta and a tile.
pub fn step_bytes(dims: &[(usize, usize)], n: usize, classes: usize) -> usize {
    const F32: usize = 4;
    let Some(&(d0, m0)) = dims.first() else { return 0 };
    let tile = |d: usize, m: usize| (gradient_tile_rows(d) * m + m) * F32;
    let above = dims.iter().skip(1).map(|&(_, m)| m).max().unwrap_or(0);
    let readout = n * (2 * m0 + 2 * above + classes) * F32;
    let first = (3 * n * m0 + classes * m0) * F32 + tile(d0, m0);
    let later = dims.iter().skip(1).map(|&(d, m)| 2 * n * (d + 2 * m) * F32 + tile(d, m)).max().unwrap_or(0);
    readout.max(first).max(later)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::xavier_normal;
    use crate::network::Layer;

    const RELU: Activation = Activation::Relu { clip: 1e9 };

    fn adam(lr: f32) -> Optimizer {
        Optimizer::Adam { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }

    fn config(classes: usize, negatives: Negatives) -> FfConfig {
        let goodness = Goodness { classes, label_scale: 1.0 };
        FfConfig { goodness, threshold: 2.0, negatives, optimizer: adam(0.003), seed: 7 }
    }

    fn network(sizes: &[usize], rng: &mut ChaCha8Rng) -> Network {
        let layers = sizes
            .windows(2)
            .map(|w| {
                let mut dense = Dense::new(xavier_normal(w[0], w[1], rng));
                dense.bias.as_mut_slice().iter_mut().for_each(|b| *b = 0.05);
                Layer::dense(dense, RELU)
            })
            .collect();
        Network { layers }
    }

    /// The definition the shared product stands for: `x` with the first `classes` features
    /// of row `i` replaced by `label(copy, i)`'s one-hot vector times `label_scale`, `copies`
    /// times over (rows `copy n + i`), each row normalised.
    fn embed(g: &Goodness, x: &Matrix, copies: usize, label: impl Fn(usize, usize) -> usize) -> Matrix {
        let (n, d) = (x.rows(), x.cols());
        let mut out = Matrix::zeros(copies * n, d);
        for (r, row) in out.as_mut_slice().chunks_exact_mut(d.max(1)).enumerate() {
            row.copy_from_slice(x.row(r % n));
            row[..g.classes].fill(0.0);
            row[label(r / n, r % n)] = g.label_scale;
        }
        normalize_rows(&mut out);
        out
    }

    #[test]
    fn goodness_is_the_mean_square_and_rows_get_unit_root_mean_square() {
        assert_eq!(goodness(&[1.0, -2.0, 3.0, 0.0]), 14.0 / 4.0);
        let mut m = Matrix::from_vec(2, 2, vec![3.0, 4.0, 0.0, 0.0]);
        normalize_rows(&mut m);
        let rms = 12.5f32.sqrt() + NORM_EPS;
        let want = [3.0 / rms, 4.0 / rms, 0.0, 0.0];
        assert!(m.as_slice().iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6), "{:?}", m.as_slice());
        assert!((softplus(0.0) - 2f32.ln()).abs() < 1e-7);
        assert_eq!(softplus(-200.0), 0.0);
        assert_eq!(softplus(200.0), 200.0);
    }

    #[test]
    fn the_label_replaces_the_first_features_before_normalising() {
        let g = Goodness { classes: 3, label_scale: 2.0 };
        let x = Matrix::from_vec(1, 5, vec![9.0, 9.0, 9.0, 3.0, 0.0]);
        let u = embed(&g, &x, 2, |copy, _| [1, 2][copy]);
        let len = (13.0f32 / 5.0).sqrt() + NORM_EPS;
        let close = |row: &[f32], want: [f32; 5]| row.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6);
        assert!(close(u.row(0), [0.0, 2.0 / len, 0.0, 3.0 / len, 0.0]), "{:?}", u.row(0));
        assert!(close(u.row(1), [0.0, 0.0, 2.0 / len, 3.0 / len, 0.0]), "{:?}", u.row(1));
    }

    /// Scores by the definition: every class embedded, every layer run with its input
    /// normalised, goodness summed; naive loops in f64.
    fn naive_scores(net: &Network, g: &Goodness, x: &Matrix) -> Vec<Vec<f64>> {
        (0..x.rows())
            .map(|i| {
                (0..g.classes)
                    .map(|c| {
                        let mut v: Vec<f64> = x.row(i).iter().map(|&a| f64::from(a)).collect();
                        v[..g.classes].fill(0.0);
                        v[c] = f64::from(g.label_scale);
                        let mut total = 0.0;
                        for layer in &net.layers {
                            let p = layer.params().expect("dense");
                            let rms = (v.iter().map(|a| a * a).sum::<f64>() / v.len() as f64).sqrt();
                            let len = rms + f64::from(NORM_EPS);
                            let h: Vec<f64> = (0..p.outputs())
                                .map(|j| {
                                    let z: f64 = (0..p.inputs())
                                        .map(|k| v[k] / len * f64::from(p.weights.row(k)[j]))
                                        .sum::<f64>()
                                        + f64::from(p.bias.as_slice()[j]);
                                    z.max(0.0)
                                })
                                .collect();
                            total += h.iter().map(|a| a * a).sum::<f64>() / h.len() as f64;
                            v = h;
                        }
                        total
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn scores_match_the_definition() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let net = network(&[9, 12, 6, 5], &mut rng);
        let g = Goodness { classes: 4, label_scale: 1.5 };
        let x = xavier_normal(7, 9, &mut rng);
        let got = g.scores(&net, &x).expect("fits");
        let want = naive_scores(&net, &g, &x);
        for (i, want) in want.iter().enumerate() {
            for (c, &b) in want.iter().enumerate() {
                let a = f64::from(got.row(i)[c]);
                assert!((a - b).abs() < 1e-5 * b.abs().max(1e-3), "row {i} class {c}: {a} vs {b}");
            }
        }
        let narrow = xavier_normal(2, 3, &mut rng);
        assert!(g.scores(&net, &narrow).is_err(), "an input narrower than the net is refused");
    }

    /// The local error is the gradient of the layer's mean loss over the 2n rows: compare
    /// `u^T delta` with central differences of that loss in the weights.
    #[test]
    fn local_error_is_the_gradient_of_the_layer_loss() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (d, m, n) = (6, 5, 4);
        let mut layer = Layer::dense(Dense::new(xavier_normal(d, m, &mut rng)), RELU);
        let mut u = xavier_normal(2 * n, d, &mut rng);
        normalize_rows(&mut u);
        // Larger weights put the goodness on both sides of the threshold.
        layer.params_mut().expect("dense").weights.as_mut_slice().iter_mut().for_each(|w| *w *= 2.0);
        let trainer = FfTrainer::new(&Network { layers: vec![layer.clone()] }, config(3, Negatives::Random));
        let loss = |layer: &Layer| {
            let h = layer.forward(&u).expect("fits");
            trainer.local_error(&h, n, RELU).0 / n as f64
        };
        let h = layer.forward(&u).expect("fits");
        let (_, delta) = trainer.local_error(&h, n, RELU);
        let goods: Vec<f32> = (0..2 * n).map(|r| goodness(h.row(r))).collect();
        assert!(goods.iter().any(|&g| g > 2.0) && goods.iter().any(|&g| g < 2.0), "{goods:?}");
        let mut grad = Matrix::zeros(d, m);
        matmul(grad.view_mut(), Accum::Replace, u.view().transpose(), delta.view(), 1.0, par());
        for (k, j) in [(0, 0), (2, 3), (5, 4), (3, 1)] {
            let eps = 1e-3f32;
            let mut plus = layer.clone();
            plus.params_mut().expect("dense").weights.as_mut_slice()[k * m + j] += eps;
            let mut minus = layer.clone();
            minus.params_mut().expect("dense").weights.as_mut_slice()[k * m + j] -= eps;
            let fd = (loss(&plus) - loss(&minus)) / (2.0 * f64::from(eps));
            let g = f64::from(grad.row(k)[j]);
            assert!((g - fd).abs() < 1e-2 * fd.abs().max(1e-2), "w[{k},{j}]: {g} vs {fd}");
        }
    }

    /// The first layer's activity and gradient from the shared label-free product equal
    /// those of the embedded 2n x d input (SGD with step 1 applies minus the gradient).
    #[test]
    fn the_first_layer_without_its_embedded_input_matches_the_embedded_one() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let (n, d, m) = (6, 9, 5);
        let mut net = network(&[d, m], &mut rng);
        let mut x = xavier_normal(n, d, &mut rng);
        x.as_mut_slice().iter_mut().for_each(|v| *v *= 3.0);
        let (labels, wrong) = ([0usize, 1, 2, 3, 1, 0], [2usize, 3, 0, 1, 0, 3]);
        let label = |r: usize| if r < n { labels[r] } else { wrong[r - n] };
        let sgd = Optimizer::Sgd { lr: 1.0, momentum: 0.0, weight_decay: 0.0 };
        let mut t = FfTrainer::new(&net, FfConfig { optimizer: sgd, ..config(4, Negatives::Random) });
        t.state.steps = 1;
        let g = t.config.goodness;
        let u = embed(&g, &x, 2, |copy, i| label(copy * n + i));
        let h = net.layers[0].forward(&u).expect("fits");
        let front = Front::of(&g, net.layers[0].params().expect("dense"), &x);
        let shared = front.rows(&g, &net, 2 * n, label);
        assert!(h.as_slice().iter().zip(shared.as_slice()).all(|(a, b)| (a - b).abs() < 1e-5));
        let (_, delta) = t.local_error(&h, n, RELU);
        let mut want = Matrix::zeros(d, m);
        matmul(want.view_mut(), Accum::Replace, u.view().transpose(), delta.view(), 1.0, par());
        let before = net.layers[0].params().expect("dense").clone();
        let mut fold = Fold::new(&g, n, m, &front.inv, &label);
        (0..2 * n).for_each(|r| fold.add(r, delta.row(r)));
        t.first_update(&mut net, &x, &fold).expect("applies");
        let after = net.layers[0].params().expect("dense");
        for (k, (w0, w1)) in before.weights.as_slice().iter().zip(after.weights.as_slice()).enumerate() {
            let g = want.as_slice()[k];
            assert!(
                (w0 - w1 - g).abs() < 1e-6 * g.abs().max(1.0),
                "w[{}, {}]: {} vs {g}",
                k / m,
                k % m,
                w0 - w1
            );
        }
        for j in 0..m {
            let gb: f32 = (0..2 * n).map(|r| delta.row(r)[j]).sum();
            let moved = before.bias.as_slice()[j] - after.bias.as_slice()[j];
            assert!((moved - gb).abs() < 1e-6, "bias {j}: {moved} vs {gb}");
        }
    }

    #[test]
    fn negative_labels_are_wrong_and_hard_ones_follow_the_scores() {
        let net = network(&[6, 4], &mut ChaCha8Rng::seed_from_u64(0));
        let labels: Vec<u32> = (0..4000).map(|i| (i % 3) as u32).collect();
        // Class 2 scores far above class 1, which scores 1 above class 0.
        let scores = Matrix::from_vec(4000, 3, [0.0, 1.0, 30.0].repeat(4000));
        for negatives in [Negatives::Random, Negatives::Hard] {
            let t = FfTrainer::new(&net, config(3, negatives));
            let wrong = t.negative_labels(&scores, &labels);
            assert!(wrong.iter().zip(&labels).all(|(&w, &y)| w != y as usize && w < 3));
            // Rows labelled 2 must pick 1 over 0 in proportion e : 1 when hard, evenly when random.
            let ones = wrong.iter().zip(&labels).filter(|&(&w, &y)| y == 2 && w == 1).count() as f64;
            let share = ones / labels.iter().filter(|&&y| y == 2).count() as f64;
            let want = if negatives == Negatives::Hard { 1f64.exp() / (1.0 + 1f64.exp()) } else { 0.5 };
            assert!((share - want).abs() < 0.04, "{negatives:?}: {share} vs {want}");
            // Rows labelled 0 or 1 almost always get the dominant class 2 when hard.
            let twos = wrong.iter().zip(&labels).filter(|&(&w, &y)| y != 2 && w == 2).count() as f64;
            let share = twos / labels.iter().filter(|&&y| y != 2).count() as f64;
            assert!(if negatives == Negatives::Hard { share > 0.99 } else { share < 0.6 }, "{share}");
        }
    }

    /// A separable task (the class is the largest of three features, the label goes into
    /// three columns of zeros): Forward-Forward learns to read it through the goodness.
    #[test]
    fn forward_forward_learns_a_synthetic_task() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let batch = |rng: &mut ChaCha8Rng| {
            let mut x = xavier_normal(128, 11, rng);
            let mut labels = Vec::with_capacity(128);
            for row in x.as_mut_slice().chunks_exact_mut(11) {
                row[..3].fill(0.0);
                let y = (3..6).max_by(|&a, &b| row[a].total_cmp(&row[b])).expect("three") - 3;
                labels.push(y as u32);
            }
            (x, labels)
        };
        let mut net = network(&[11, 64, 32], &mut rng);
        let mut t = FfTrainer::new(&net, config(3, Negatives::Hard));
        let (test, truth) = batch(&mut rng);
        let g = t.config.goodness;
        let accuracy = |net: &Network| {
            let s = g.scores(net, &test).expect("fits");
            (0..128).filter(|&i| argmax(s.row(i)) == truth[i] as usize).count()
        };
        let before = accuracy(&net);
        for _ in 0..600 {
            let (x, y) = batch(&mut rng);
            let stats = t.step(&mut net, &x, &y).expect("trains");
            assert!(stats.loss_sum.is_finite() && stats.rows == 128);
        }
        let after = accuracy(&net);
        assert!(after >= 120, "{before} -> {after} of 128");
    }
}
