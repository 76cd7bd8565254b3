//! NoProp, discrete time (Li, Teh and Pascanu 2025, "NoProp: Training Neural Networks without
//! Back-propagation or Forward-propagation", arXiv:2503.24322), with MLP blocks.
//!
//! - **Noise schedule.** `T` blocks; `z_0` is pure noise and `z_T` nearly the class embedding
//!   `u_y` (here the one-hot vector of the class, fixed, as in the paper's one-hot variant).
//!   `q(z_t | y) = N(sqrt(abar_t) u_y, (1 - abar_t) I)` (its eq. 6) with the cosine schedule
//!   `abar_t = cos^2(pi/2 (1 - t/T + s) / (1 + s))`, `s = 0.008`: `abar_0 = 0`, so
//!   `q(z_0 | y) = p(z_0) = N(0, I)` and the objective's KL term is zero, and `abar_T < 1`, so
//!   every SNR is finite.
//! - **Blocks.** Block `t` reads the input `x` and `z_{t-1}`: its first layer is `x W_x + z
//!   W_z + b` (two layers of the network, `x` and `z` parts), then the hidden layers, then a
//!   linear layer to one logit per class; `u_hat_t = softmax(logits) U` with `U` the
//!   embeddings (the identity here). Each block is trained alone, by backprop inside the
//!   block only, on `z_{t-1} ~ q(z_{t-1} | y)`, to minimise the denoising term of the
//!   objective (its eq. 8): `(T/2) eta (SNR(t) - SNR(t-1)) ||u_hat_t - u_y||^2`, `SNR(t) =
//!   abar_t / (1 - abar_t)`, with AdamW.
//! - **Classifier.** A linear layer on `z_T ~ q(z_T | y)` with softmax cross-entropy (the
//!   objective's first term; eq. 14's parameterisation).
//! - **Inference** (its eq. 3 and 7): `z_t = a_t u_hat_t(z_{t-1}, x) + b_t z_{t-1} + sqrt(c_t)
//!   eps`, the Gaussian posterior of `z_t` given `z_{t-1}` and `u_y` with `alpha_t =
//!   abar_{t-1} / abar_t`: `a_t = sqrt(abar_t) (1 - alpha_t) / (1 - abar_{t-1})`, `b_t =
//!   sqrt(alpha_t) (1 - abar_t) / (1 - abar_{t-1})`, `c_t = (1 - abar_t) (1 - alpha_t) / (1 -
//!   abar_{t-1})`; the prediction is the classifier's largest logit on `z_T`. plflow follows
//!   the chain's mean (`z_0 = 0`, no added noise), so that a model answers the same every
//!   time; the paper samples.
//!
//! The network's layers are the blocks' in order (`x` part, `z` part, hidden layers, logits,
//! for block 1 to `T`), then the classifier.

use crate::backprop::{
    GRADIENT_TILE_ROWS, Optimizer, OptimizerState, apply, gradient_tile_rows, optimizer_state_is_the_state,
    softmax_cross_entropy,
};
use crate::dense::Dense;
use crate::layer::ErrorMode;
use crate::network::{LayerError, Network, StepStats, argmax, at};
use crate::state::Trainer;
use crate::{Matrix, OpsError};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use std::time::Instant;

/// The cosine schedule's offset (Nichol and Dhariwal 2021), as the paper's code uses.
const COSINE_OFFSET: f64 = 0.008;

/// `abar_t` for `t = 0..=T` and the coefficients of the inference steps.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// `abar_t`, `t = 0..=T`.
    pub abar: Vec<f64>,
}

impl Schedule {
    /// The cosine schedule over `steps` blocks.
    pub fn cosine(steps: usize) -> Self {
        let t_max = steps.max(1) as f64;
        let abar = (0..=steps)
            .map(|t| {
                let tau = 1.0 - t as f64 / t_max;
                (std::f64::consts::FRAC_PI_2 * (tau + COSINE_OFFSET) / (1.0 + COSINE_OFFSET)).cos().powi(2)
            })
            .collect();
        Self { abar }
    }

    /// Blocks `T`.
    pub fn steps(&self) -> usize {
        self.abar.len() - 1
    }

    /// `SNR(t) = abar_t / (1 - abar_t)`.
    pub fn snr(&self, t: usize) -> f64 {
        self.abar[t] / (1.0 - self.abar[t])
    }

    /// `(a_t, b_t, c_t)` of inference step `t` (from 1).
    pub fn coefficients(&self, t: usize) -> (f64, f64, f64) {
        let (now, before) = (self.abar[t], self.abar[t - 1]);
        let alpha = before / now;
        let a = now.sqrt() * (1.0 - alpha) / (1.0 - before);
        let b = alpha.sqrt() * (1.0 - now) / (1.0 - before);
        let c = (1.0 - now) * (1.0 - alpha) / (1.0 - before);
        (a, b, c)
    }
}

/// How a NoProp network is laid out and read.
#[derive(Debug, Clone, PartialEq)]
pub struct NoPropReadout {
    /// The noise schedule (its length is the number of blocks).
    pub schedule: Schedule,
    /// Classes, the width of `z`.
    pub classes: usize,
}

impl NoPropReadout {
    /// A readout for `steps` blocks over `classes` classes.
    pub fn new(steps: usize, classes: usize) -> Self {
        Self { schedule: Schedule::cosine(steps), classes }
    }

    fn invalid(&self, detail: String) -> LayerError {
        at(0)(OpsError::Invalid { op: "noprop", detail })
    }

    /// Layers per block (`x` part, `z` part, hidden layers, logits), checked against `net`.
    pub fn per_block(&self, net: &Network) -> Result<usize, LayerError> {
        let t = self.schedule.steps();
        let count = net.layers.len();
        let per = count.checked_sub(1).map(|c| c / t.max(1)).unwrap_or(0);
        if t == 0 || per < 3 || per * t + 1 != count {
            let detail = format!("{count} layers are not {t} blocks of at least 3 layers and a classifier");
            return Err(self.invalid(detail));
        }
        Ok(per)
    }

    /// Block `t`'s (from 1) activations for input `x` and noisy embedding `z`: the first
    /// layer's, every hidden layer's and the logits (last).
    fn block(
        &self,
        net: &Network,
        per: usize,
        t: usize,
        x: &Matrix,
        z: &Matrix,
    ) -> Result<Vec<Matrix>, LayerError> {
        let first = (t - 1) * per;
        let from_z = net.layers[first + 1].forward(z).map_err(at(first + 1))?;
        let mut acts = vec![net.layers[first].forward_with(x, Some(&from_z)).map_err(at(first))?];
        for l in first + 2..first + per {
            let out = net.layers[l].forward(acts.last().expect("one per layer")).map_err(at(l))?;
            acts.push(out);
        }
        Ok(acts)
    }

    /// The classifier's logits for every row of `x`, after the inference chain's mean.
    pub fn scores(&self, net: &Network, x: &Matrix) -> Result<Matrix, LayerError> {
        let per = self.per_block(net)?;
        let (n, k) = (x.rows(), self.classes);
        let mut z = Matrix::zeros(n, k);
        for t in 1..=self.schedule.steps() {
            let mut u = self.block(net, per, t, x, &z)?.pop().expect("a logits layer");
            softmax_rows(&mut u);
            let (a, b, _) = self.schedule.coefficients(t);
            for (zv, &uv) in z.as_mut_slice().iter_mut().zip(u.as_slice()) {
                *zv = (a * f64::from(uv) + b * f64::from(*zv)) as f32;
            }
        }
        let last = net.layers.len() - 1;
        net.layers[last].forward(&z).map_err(at(last))
    }
}

/// Each row of `m` replaced by its softmax.
fn softmax_rows(m: &mut Matrix) {
    let k = m.cols().max(1);
    for row in m.as_mut_slice().chunks_exact_mut(k) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f32 = row
            .iter_mut()
            .map(|v| {
                *v = (*v - max).exp();
                *v
            })
            .sum();
        row.iter_mut().for_each(|v| *v /= sum);
    }
}

/// The settings of NoProp.
#[derive(Debug, Clone, PartialEq)]
pub struct NoPropConfig {
    /// Blocks, schedule and classes.
    pub readout: NoPropReadout,
    /// `eta`, the weight of the denoising terms.
    pub eta: f64,
    /// The optimiser of every block and of the classifier (AdamW in the paper).
    pub optimizer: Optimizer,
    /// Seed of the noise draws (each step draws from it and its step count).
    pub seed: u64,
}

/// The NoProp trainer: the optimiser's moments for every layer, and the step count.
#[derive(Debug)]
pub struct NoPropTrainer {
    /// The settings.
    pub config: NoPropConfig,
    state: OptimizerState,
}

impl NoPropTrainer {
    /// Fresh state for every layer of `network`.
    pub fn new(network: &Network, config: NoPropConfig) -> Self {
        let state = OptimizerState::new(network, &config.optimizer, |_| false);
        Self { config, state }
    }

    /// `sqrt(abar_t) u_y + sqrt(1 - abar_t) eps` for every label: a draw of `q(z_t | y)`.
    fn noisy(&self, t: usize, labels: &[u32], rng: &mut ChaCha8Rng) -> Matrix {
        let k = self.config.readout.classes;
        let abar = self.config.readout.schedule.abar[t];
        let (signal, noise) = (abar.sqrt() as f32, (1.0 - abar).sqrt() as f32);
        let mut z = Matrix::zeros(labels.len(), k);
        for (row, &y) in z.as_mut_slice().chunks_exact_mut(k.max(1)).zip(labels) {
            for (c, v) in row.iter_mut().enumerate() {
                let e: f32 = StandardNormal.sample(rng);
                *v = noise * e + if c == y as usize { signal } else { 0.0 };
            }
        }
        z
    }

    /// One step: the prediction of the current network (the training accuracy), then every
    /// block on its own noisy embeddings, then the classifier.
    pub fn step(&mut self, net: &mut Network, x: &Matrix, labels: &[u32]) -> Result<StepStats, LayerError> {
        let r = self.config.readout.clone();
        let per = r.per_block(net)?;
        if let Some(&y) = labels.iter().find(|&&y| y as usize >= r.classes) {
            return Err(r.invalid(format!("label {y} but the network reads {} classes", r.classes)));
        }
        let clock = Instant::now();
        let n = labels.len();
        let scores = r.scores(net, x)?;
        let mut stats = StepStats { rows: n, ..StepStats::default() };
        stats.correct = (0..n).filter(|&i| argmax(scores.row(i)) == labels[i] as usize).count();
        drop(scores);
        stats.forward_seconds += clock.elapsed().as_secs_f64();
        self.state.steps += 1;
        let mut rng = ChaCha8Rng::seed_from_u64(
            self.config.seed ^ self.state.steps.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let steps = r.schedule.steps();
        for t in 1..=steps {
            let z = self.noisy(t - 1, labels, &mut rng);
            let clock = Instant::now();
            let mut acts = r.block(net, per, t, x, &z)?;
            let mut delta = acts.pop().expect("a logits layer");
            let weight = steps as f64 / 2.0 * self.config.eta * (r.schedule.snr(t) - r.schedule.snr(t - 1));
            stats.loss_sum += denoising_error(&mut delta, labels, weight);
            let solving = Instant::now();
            stats.forward_seconds += solving.duration_since(clock).as_secs_f64();
            self.block_update(net, (t - 1) * per, per, x, &z, acts, delta)?;
            stats.solve_seconds += solving.elapsed().as_secs_f64();
        }
        let clock = Instant::now();
        let z = self.noisy(steps, labels, &mut rng);
        let last = net.layers.len() - 1;
        let mut delta = net.layers[last].forward(&z).map_err(at(last))?;
        stats.loss_sum += softmax_cross_entropy(&mut delta, labels).map_err(at(last))?.loss_sum;
        let solving = Instant::now();
        stats.forward_seconds += solving.duration_since(clock).as_secs_f64();
        self.update(net, last, &z, &delta).map_err(at(last))?;
        stats.solve_seconds += solving.elapsed().as_secs_f64();
        Ok(stats)
    }

    /// Backprop inside the block whose layers start at `first`: its activations `acts` (the
    /// first layer's, then every hidden layer's) and the logits' error `delta`.
    #[allow(clippy::too_many_arguments)]
    fn block_update(
        &mut self,
        net: &mut Network,
        first: usize,
        per: usize,
        x: &Matrix,
        z: &Matrix,
        mut acts: Vec<Matrix>,
        mut delta: Matrix,
    ) -> Result<(), LayerError> {
        for l in (first + 2..first + per).rev() {
            let below = acts.pop().expect("the input of every layer above the first");
            let mut err = net.layers[l].op.input_error(&delta, ErrorMode::Gradient).map_err(at(l))?;
            let activation =
                if l == first + 2 { net.layers[first].activation } else { net.layers[l - 1].activation };
            activation.scale_by_derivative(err.as_mut_slice(), below.as_slice());
            self.update(net, l, &below, &delta).map_err(at(l))?;
            delta = err;
        }
        self.update(net, first + 1, z, &delta).map_err(at(first + 1))?;
        self.update(net, first, x, &delta).map_err(at(first))
    }

    /// Layer `l`'s optimiser step from its input `input` and output error `delta`, the
    /// weight gradient formed a tile of rows at a time.
    fn update(
        &mut self,
        net: &mut Network,
        l: usize,
        input: &Matrix,
        delta: &Matrix,
    ) -> Result<(), OpsError> {
        let layer = &mut net.layers[l];
        let (state, opt, steps, mask) =
            (&mut self.state.layers[l], &self.config.optimizer, self.state.steps, layer.mask.as_ref());
        let mut sink = |params: &mut Dense, row0: usize, gw: &[f32], gb: Option<&Matrix>| {
            apply(state, opt, steps, params, mask, row0, gw, gb, input.rows())
        };
        layer.op.stream_gradients(input, delta, GRADIENT_TILE_ROWS, &mut sink)
    }
}

/// Replace the logits `z` by the gradient of the mean denoising loss `weight ||softmax(z) -
/// u_y||^2` over the rows (`u_y` one-hot), and return the summed weighted loss.
pub fn denoising_error(z: &mut Matrix, labels: &[u32], weight: f64) -> f64 {
    let (n, k) = (labels.len().max(1), z.cols().max(1));
    softmax_rows(z);
    let scale = (2.0 * weight / n as f64) as f32;
    let mut loss = 0.0;
    let mut g = vec![0f32; k];
    for (p, &y) in z.as_mut_slice().chunks_exact_mut(k).zip(labels) {
        for (c, (gc, &pc)) in g.iter_mut().zip(p.iter()).enumerate() {
            let diff = pc - f32::from(u8::from(c == y as usize));
            loss += weight * f64::from(diff).powi(2);
            *gc = scale * diff;
        }
        // Through the softmax: d/dz_j = p_j (g_j - sum_i p_i g_i).
        let dot: f32 = p.iter().zip(&g).map(|(a, b)| a * b).sum();
        for (v, &gc) in p.iter_mut().zip(&g) {
            *v *= gc - dot;
        }
    }
    loss
}

optimizer_state_is_the_state!(NoPropTrainer);

impl Trainer for NoPropTrainer {
    fn step(&mut self, net: &mut Network, x: &Matrix, labels: &[u32]) -> Result<StepStats, LayerError> {
        NoPropTrainer::step(self, net, x, labels)
    }

    fn state_bytes(&self) -> usize {
        self.state.bytes()
    }
}

/// Peak bytes of a step beside the weights, the state and the batch: `n` examples through
/// blocks of dense layers `block` (`(inputs, units)`: the `x` part, the `z` part, the hidden
/// layers, the logits) over `classes` classes. The inference chain holds `z`, the `z` part's
/// output and two activations at a time; a block's update holds `z`, every activation of the
/// block, the error and the error below, and a tile of a gradient.
pub fn step_bytes(block: &[(usize, usize)], n: usize, classes: usize) -> usize {
    const F32: usize = 4;
    let widest = block.iter().map(|&(_, m)| m).max().unwrap_or(0);
    let first = block.first().map_or(0, |&(_, m)| m);
    let acts: usize = block.iter().skip(2).map(|&(_, m)| m).sum::<usize>() + first;
    let tile = block.iter().map(|&(d, m)| (gradient_tile_rows(d) * m + m) * F32).max().unwrap_or(0);
    let chain = n * (2 * classes + first + 2 * widest) * F32;
    let update = n * (classes + first + acts + 2 * widest) * F32 + tile;
    chain.max(update)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activation::Activation;
    use crate::init::xavier_normal;
    use crate::network::Layer;

    /// Blocks of `x` (d -> h, ELU), `z` (k -> h), a hidden ELU layer (h -> h) and logits (h ->
    /// k), then the classifier (k -> k).
    fn network(steps: usize, d: usize, h: usize, k: usize, rng: &mut ChaCha8Rng) -> Network {
        let elu = Activation::Elu { clip: 10.0 };
        let mut layers = Vec::new();
        for _ in 0..steps {
            layers.push(Layer::dense(Dense::new(xavier_normal(d, h, rng)), elu));
            layers.push(Layer::dense(Dense::new(xavier_normal(k, h, rng)), Activation::Linear));
            layers.push(Layer::dense(Dense::new(xavier_normal(h, h, rng)), elu));
            layers.push(Layer::dense(Dense::new(xavier_normal(h, k, rng)), Activation::Linear));
        }
        layers.push(Layer::dense(Dense::new(xavier_normal(k, k, rng)), Activation::Linear));
        Network { layers }
    }

    fn config(steps: usize, k: usize, optimizer: Optimizer) -> NoPropConfig {
        NoPropConfig { readout: NoPropReadout::new(steps, k), eta: 0.1, optimizer, seed: 3 }
    }

    #[test]
    fn the_cosine_schedule_runs_from_noise_to_the_label() {
        let s = Schedule::cosine(10);
        assert_eq!(s.steps(), 10);
        assert!(s.abar[0].abs() < 1e-15, "abar_0 = {}", s.abar[0]);
        let end = (std::f64::consts::FRAC_PI_2 * 0.008 / 1.008).cos().powi(2);
        assert!((s.abar[10] - end).abs() < 1e-15 && end < 1.0);
        assert!(s.abar.windows(2).all(|w| w[0] < w[1]), "{:?}", s.abar);
        // t = T/2: tau = 1/2.
        let mid = (std::f64::consts::FRAC_PI_2 * 0.508 / 1.008).cos().powi(2);
        assert!((s.abar[5] - mid).abs() < 1e-15);
        // The first step ignores z_0 (pure noise): z_1 = sqrt(abar_1) u + sqrt(1 - abar_1) eps.
        let (a, b, c) = s.coefficients(1);
        assert!(
            (a - s.abar[1].sqrt()).abs() < 1e-12 && b.abs() < 1e-12 && (c - (1.0 - s.abar[1])).abs() < 1e-12
        );
    }

    /// One inference step with a perfect denoiser (`u_hat = u_y`) maps `q(z_{t-1} | y)` onto
    /// `q(z_t | y)`: mean `a + b sqrt(abar_{t-1}) = sqrt(abar_t)` (times `u_y`) and variance
    /// `b^2 (1 - abar_{t-1}) + c = 1 - abar_t`.
    #[test]
    fn an_inference_step_with_a_perfect_denoiser_keeps_the_forward_marginals() {
        let s = Schedule::cosine(7);
        for t in 2..=7 {
            let (a, b, c) = s.coefficients(t);
            let mean = a + b * s.abar[t - 1].sqrt();
            let var = b * b * (1.0 - s.abar[t - 1]) + c;
            assert!((mean - s.abar[t].sqrt()).abs() < 1e-12, "t={t}: mean {mean}");
            assert!((var - (1.0 - s.abar[t])).abs() < 1e-12, "t={t}: variance {var}");
            assert!(c >= 0.0 && b >= 0.0 && a > 0.0);
        }
    }

    #[test]
    fn the_denoising_error_is_the_gradient_of_its_loss() {
        let labels = [2u32, 0, 1];
        let z0: Vec<f32> = vec![0.3, -1.2, 2.0, 0.5, 0.4, -0.7, -0.2, 1.1, 0.05];
        let loss = |z: &[f32]| {
            let mut m = Matrix::from_vec(3, 3, z.to_vec());
            denoising_error(&mut m, &labels, 0.7) / 3.0
        };
        let mut g = Matrix::from_vec(3, 3, z0.clone());
        denoising_error(&mut g, &labels, 0.7);
        for i in 0..9 {
            let (mut plus, mut minus) = (z0.clone(), z0.clone());
            plus[i] += 1e-3;
            minus[i] -= 1e-3;
            let fd = (loss(&plus) - loss(&minus)) / 2e-3;
            assert!((f64::from(g.as_slice()[i]) - fd).abs() < 1e-4, "z[{i}]: {} vs {fd}", g.as_slice()[i]);
        }
    }

    /// Backprop inside a block: with SGD at step 1, every parameter of block 2 moves by minus
    /// the gradient of its weighted denoising loss, against central differences; the other
    /// blocks do not move.
    #[test]
    fn a_block_update_follows_the_gradient_of_its_own_loss() {
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let (d, h, k, n) = (5, 4, 3, 6);
        let mut net = network(2, d, h, k, &mut rng);
        let x = xavier_normal(n, d, &mut rng);
        let z = xavier_normal(n, k, &mut rng);
        let labels = [0u32, 1, 2, 2, 1, 0];
        let sgd = Optimizer::Sgd { lr: 1.0, momentum: 0.0, weight_decay: 0.0 };
        let mut t = NoPropTrainer::new(&net, config(2, k, sgd));
        t.state.steps = 1;
        let r = t.config.readout.clone();
        let loss = |net: &Network| {
            let mut logits = r.block(net, 4, 2, &x, &z).expect("fits").pop().expect("logits");
            denoising_error(&mut logits, &labels, 1.0) / n as f64
        };
        let before = net.layers.clone();
        let mut acts = r.block(&net, 4, 2, &x, &z).expect("fits");
        let mut delta = acts.pop().expect("logits");
        denoising_error(&mut delta, &labels, 1.0);
        t.block_update(&mut net, 4, 4, &x, &z, acts, delta).expect("updates");
        for (l, layer) in net.layers.iter().enumerate() {
            let (w0, w1) = (before[l].params().expect("dense"), layer.params().expect("dense"));
            if !(4..8).contains(&l) {
                assert_eq!(w0.weights.as_slice(), w1.weights.as_slice(), "layer {l} is another block's");
                continue;
            }
            for i in [0, w0.weights.as_slice().len() / 2, w0.weights.as_slice().len() - 1] {
                let mut probe = Network { layers: before.clone() };
                let eps = 1e-3f32;
                probe.layers[l].params_mut().expect("dense").weights.as_mut_slice()[i] += eps;
                let up = loss(&probe);
                probe.layers[l].params_mut().expect("dense").weights.as_mut_slice()[i] -= 2.0 * eps;
                let fd = (up - loss(&probe)) / (2.0 * f64::from(eps));
                let moved = f64::from(w0.weights.as_slice()[i] - w1.weights.as_slice()[i]);
                assert!((moved - fd).abs() < 2e-3 * fd.abs().max(0.05), "layer {l} w[{i}]: {moved} vs {fd}");
            }
        }
    }

    /// A separable task (the class is the largest of the first three features): the blocks
    /// learn to denoise and the chain classifies.
    #[test]
    fn noprop_learns_a_synthetic_task() {
        let mut rng = ChaCha8Rng::seed_from_u64(21);
        let batch = |rng: &mut ChaCha8Rng| {
            let x = xavier_normal(128, 8, rng);
            let labels: Vec<u32> = (0..128)
                .map(|i| (0..3).max_by(|&a, &b| x.row(i)[a].total_cmp(&x.row(i)[b])).expect("three") as u32)
                .collect();
            (x, labels)
        };
        let mut net = network(4, 8, 32, 3, &mut rng);
        let adamw = Optimizer::AdamW { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-3 };
        let mut t = NoPropTrainer::new(&net, config(4, 3, adamw));
        let (test, truth) = batch(&mut rng);
        let r = t.config.readout.clone();
        let accuracy = |net: &Network| {
            let s = r.scores(net, &test).expect("fits");
            (0..128).filter(|&i| argmax(s.row(i)) == truth[i] as usize).count()
        };
        let before = accuracy(&net);
        for _ in 0..400 {
            let (x, y) = batch(&mut rng);
            let stats = t.step(&mut net, &x, &y).expect("trains");
            assert!(stats.loss_sum.is_finite());
        }
        let after = accuracy(&net);
        assert!(after >= 115, "{before} -> {after} of 128");
    }
}
