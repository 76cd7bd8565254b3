//! Backpropagation baselines (SPEC section 6): SGD with momentum, Adam and AdamW on the same
//! [`Network`] as Prospective Learning, with softmax cross-entropy on the output layer.
//!
//! The optimiser rules follow PyTorch's (so published figures are comparable): SGD
//! `buf = mu buf + g; w -= lr buf`; Adam with bias correction; AdamW with decoupled weight
//! decay `w *= 1 - lr wd` before the Adam step. The backward pass applies each layer's update
//! as soon as its gradient and the error for the layer below are computed, so only one
//! layer's gradient is alive at a time: the lean way to run backprop, which makes the memory
//! comparison with PL a comparison against a careful baseline. Cached activations are
//! released layer by layer as the backward pass passes them.

use crate::network::{LayerError, LayerKind, Network, PoolError, StepStats, argmax, at};
use crate::{Matrix, OpsError, par};
use faer::Accum;
use faer::linalg::matmul::matmul;
use std::time::Instant;

/// A first-order optimiser and its settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Optimizer {
    /// SGD with (heavy-ball) momentum and optional L2 weight decay added to the gradient.
    Sgd { lr: f32, momentum: f32, weight_decay: f32 },
    /// Adam with optional L2 weight decay added to the gradient.
    Adam { lr: f32, beta1: f32, beta2: f32, eps: f32, weight_decay: f32 },
    /// AdamW: Adam with decoupled weight decay.
    AdamW { lr: f32, beta1: f32, beta2: f32, eps: f32, weight_decay: f32 },
}

impl Optimizer {
    /// The name used in pipelines and reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Optimizer::Sgd { .. } => "sgd",
            Optimizer::Adam { .. } => "adam",
            Optimizer::AdamW { .. } => "adamw",
        }
    }

    /// Per-parameter state buffers this optimiser keeps (momentum: 1, Adam: 2).
    pub fn buffers_per_parameter(&self) -> usize {
        match self {
            Optimizer::Sgd { momentum, .. } => usize::from(*momentum != 0.0),
            Optimizer::Adam { .. } | Optimizer::AdamW { .. } => 2,
        }
    }
}

/// Optimiser state of one parameter tensor.
#[derive(Debug)]
struct Moments {
    first: Option<Matrix>,
    second: Option<Matrix>,
}

impl Moments {
    fn new(rows: usize, cols: usize, opt: &Optimizer) -> Self {
        let k = opt.buffers_per_parameter();
        Self {
            first: (k >= 1).then(|| Matrix::zeros(rows, cols)),
            second: (k >= 2).then(|| Matrix::zeros(rows, cols)),
        }
    }

    fn bytes(&self) -> usize {
        self.first.as_ref().map_or(0, Matrix::bytes) + self.second.as_ref().map_or(0, Matrix::bytes)
    }

    /// Apply gradient `g` to parameters `p` at step `t` (1-based). `decay` says whether weight
    /// decay applies (weights yes, biases no, as is customary).
    fn apply(&mut self, p: &mut [f32], g: &[f32], opt: &Optimizer, t: u64, decay: bool) {
        match *opt {
            Optimizer::Sgd { lr, momentum, weight_decay } => {
                let wd = if decay { weight_decay } else { 0.0 };
                match &mut self.first {
                    Some(buf) => {
                        for ((p, &g), b) in p.iter_mut().zip(g).zip(buf.as_mut_slice()) {
                            let g = g + wd * *p;
                            *b = momentum * *b + g;
                            *p -= lr * *b;
                        }
                    }
                    None => {
                        for (p, &g) in p.iter_mut().zip(g) {
                            *p -= lr * (g + wd * *p);
                        }
                    }
                }
            }
            Optimizer::Adam { lr, beta1, beta2, eps, weight_decay } => {
                let wd = if decay { weight_decay } else { 0.0 };
                self.adam(p, g, lr, beta1, beta2, eps, wd, t);
            }
            Optimizer::AdamW { lr, beta1, beta2, eps, weight_decay } => {
                if decay {
                    let keep = 1.0 - lr * weight_decay;
                    p.iter_mut().for_each(|p| *p *= keep);
                }
                self.adam(p, g, lr, beta1, beta2, eps, 0.0, t);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn adam(&mut self, p: &mut [f32], g: &[f32], lr: f32, b1: f32, b2: f32, eps: f32, wd: f32, t: u64) {
        let (Some(m), Some(v)) = (&mut self.first, &mut self.second) else { return };
        let c1 = 1.0 - b1.powi(t as i32);
        let c2 = 1.0 - b2.powi(t as i32);
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.as_mut_slice()).zip(v.as_mut_slice()) {
            let g = g + wd * *p;
            *m = b1 * *m + (1.0 - b1) * g;
            *v = b2 * *v + (1.0 - b2) * g * g;
            let mhat = *m / c1;
            let vhat = *v / c2;
            *p -= lr * mhat / (vhat.sqrt() + eps);
        }
    }
}

/// A backprop trainer: the optimiser and its state for every layer.
#[derive(Debug)]
pub struct BackpropTrainer {
    /// The optimiser.
    pub optimizer: Optimizer,
    states: Vec<(Moments, Moments)>,
    steps: u64,
}

impl BackpropTrainer {
    /// Fresh state for every layer of `network`.
    pub fn new(network: &Network, optimizer: Optimizer) -> Self {
        let states = network
            .layers
            .iter()
            .map(|l| {
                let (d, m) = l.params().map_or((0, 0), |p| (p.inputs(), p.outputs()));
                (Moments::new(d, m, &optimizer), Moments::new(1, m, &optimizer))
            })
            .collect();
        Self { optimizer, states, steps: 0 }
    }

    /// Bytes of optimiser state held.
    pub fn state_bytes(&self) -> usize {
        self.states.iter().map(|(w, b)| w.bytes() + b.bytes()).sum()
    }

    /// One step of minibatch backprop on `x` with class labels `labels`.
    pub fn step(&mut self, net: &mut Network, x: &Matrix, labels: &[u32]) -> Result<StepStats, LayerError> {
        let count = net.layers.len();
        if count == 0 {
            return Ok(StepStats::default());
        }
        self.steps += 1;
        let batch = net.batch_of(x);
        let clock = Instant::now();
        let mut acts = net.forward_all(x, batch)?;
        let Some(mut delta) = acts.pop() else {
            return Ok(StepStats::default());
        };
        let mut stats = softmax_cross_entropy(&mut delta, labels).map_err(at(count - 1))?;
        stats.forward_seconds = clock.elapsed().as_secs_f64();

        for l in (0..count).rev() {
            let clock = Instant::now();
            let input = if l == 0 { x } else { &acts[l - 1] };
            let grads = match &net.layers[l].kind {
                LayerKind::Dense(dense) => {
                    let (d, m) = (dense.inputs(), dense.outputs());
                    let mut gw = Matrix::zeros(d, m);
                    matmul(gw.view_mut(), Accum::Replace, input.view().transpose(), delta.view(), 1.0, par());
                    let mut gb = Matrix::zeros(1, m);
                    for row in delta.as_slice().chunks_exact(m) {
                        for (g, &v) in gb.as_mut_slice().iter_mut().zip(row) {
                            *g += v;
                        }
                    }
                    Some((gw, gb))
                }
                LayerKind::Depthwise(dw) => Some(dw.gradients(input, &delta).map_err(at(l))?),
                LayerKind::Pool { .. } => None,
            };
            let solved = Instant::now();
            let below = if l > 0 {
                Some(net.error_below(l, &delta, &acts[l - 1], batch, PoolError::Gradient)?)
            } else {
                None
            };
            let propagated = Instant::now();
            stats.propagate_seconds += propagated.duration_since(solved).as_secs_f64();
            drop(delta);
            acts.truncate(l.saturating_sub(1));
            if let Some((gw, gb)) = grads {
                if !gw.as_slice().iter().chain(gb.as_slice()).all(|v| v.is_finite()) {
                    let source = OpsError::NonFinite {
                        op: "backprop",
                        what: "the gradient",
                        rows: x.rows(),
                        cols: gw.rows(),
                    };
                    return Err(LayerError { layer: l, source });
                }
                let (sw, sb) = &mut self.states[l];
                let layer = &mut net.layers[l];
                let mask = layer.mask.clone();
                if let Some(params) = layer.params_mut() {
                    sw.apply(params.weights.as_mut_slice(), gw.as_slice(), &self.optimizer, self.steps, true);
                    sb.apply(params.bias.as_mut_slice(), gb.as_slice(), &self.optimizer, self.steps, false);
                    if let Some(mask) = &mask {
                        mask.apply(&mut params.weights);
                    }
                }
            }
            stats.solve_seconds +=
                solved.duration_since(clock).as_secs_f64() + propagated.elapsed().as_secs_f64();
            match below {
                Some(e) => delta = e,
                None => break,
            }
        }
        Ok(stats)
    }
}

/// Replace scores `z` by the gradient of the mean cross-entropy, `(softmax(z) - onehot) / n`,
/// and return the summed loss and the correct count.
pub fn softmax_cross_entropy(z: &mut Matrix, labels: &[u32]) -> Result<StepStats, OpsError> {
    let (n, classes) = (z.rows(), z.cols());
    if labels.len() != n {
        return Err(OpsError::Shape {
            op: "cross-entropy",
            detail: format!("{} labels for {n} rows", labels.len()),
        });
    }
    let mut stats = StepStats { rows: n, ..StepStats::default() };
    let scale = 1.0 / n.max(1) as f32;
    for (row, &label) in z.as_mut_slice().chunks_exact_mut(classes.max(1)).zip(labels) {
        let label = label as usize;
        if label >= classes {
            return Err(OpsError::Shape {
                op: "cross-entropy",
                detail: format!("label {label} but the output layer has {classes} units"),
            });
        }
        if argmax(row) == label {
            stats.correct += 1;
        }
        let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let sum: f64 = row.iter().map(|&v| ((v - max) as f64).exp()).sum();
        let log_sum = sum.ln() + max as f64;
        stats.loss_sum += log_sum - row[label] as f64;
        for (c, v) in row.iter_mut().enumerate() {
            let p = ((*v as f64) - log_sum).exp() as f32;
            *v = (p - if c == label { 1.0 } else { 0.0 }) * scale;
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activation::Activation;
    use crate::dense::Dense;
    use crate::network::Layer;

    /// A 2 -> 2 (ELU) -> 2 network with fixed weights, and one batch of two examples.
    fn tiny() -> (Network, Matrix, Vec<u32>) {
        let mut l0 = Dense::new(Matrix::from_vec(2, 2, vec![0.5, -0.3, 0.2, 0.8]));
        l0.bias = Matrix::from_vec(1, 2, vec![0.1, -0.2]);
        let mut l1 = Dense::new(Matrix::from_vec(2, 2, vec![1.0, -1.0, 0.4, 0.6]));
        l1.bias = Matrix::from_vec(1, 2, vec![0.0, 0.05]);
        let net = Network {
            layers: vec![
                Layer::dense(l0, Activation::Elu { clip: 10.0 }),
                Layer::dense(l1, Activation::Linear),
            ],
        };
        (net, Matrix::from_vec(2, 2, vec![1.0, -2.0, 0.5, 1.5]), vec![1, 0])
    }

    /// Mean cross-entropy of `net` on the batch, in f64, computed independently of the code
    /// under test (plain loops).
    fn loss(net: &Network, x: &Matrix, labels: &[u32]) -> f64 {
        let mut total = 0.0;
        for (i, &y) in labels.iter().enumerate() {
            let mut a: Vec<f64> = x.row(i).iter().map(|&v| v as f64).collect();
            for layer in &net.layers {
                let params = layer.params().expect("dense");
                let w = &params.weights;
                let mut z: Vec<f64> = (0..w.cols())
                    .map(|j| {
                        params.bias.as_slice()[j] as f64
                            + (0..w.rows()).map(|k| a[k] * w.row(k)[j] as f64).sum::<f64>()
                    })
                    .collect();
                if let Activation::Elu { .. } = layer.activation {
                    z.iter_mut().for_each(|v| *v = if *v > 0.0 { *v } else { v.exp_m1() });
                }
                a = z;
            }
            let lse = a.iter().map(|v| v.exp()).sum::<f64>().ln();
            total += lse - a[y as usize];
        }
        total / labels.len() as f64
    }

    /// The gradient that backprop must apply, by central finite differences on `loss`.
    fn numeric_gradient(net: &Network, x: &Matrix, labels: &[u32]) -> Vec<Vec<f64>> {
        let h = 1e-3f32;
        let mut grads = Vec::new();
        for l in 0..net.layers.len() {
            for which in 0..2 {
                let params = net.layers[l].params().expect("dense");
                let len =
                    if which == 0 { params.weights.as_slice().len() } else { params.bias.as_slice().len() };
                let mut g = Vec::new();
                for k in 0..len {
                    let probe = |delta: f32| {
                        let mut n2 = Network { layers: net.layers.clone() };
                        let d = n2.layers[l].params_mut().expect("dense");
                        let p = if which == 0 { d.weights.as_mut_slice() } else { d.bias.as_mut_slice() };
                        p[k] += delta;
                        loss(&n2, x, labels)
                    };
                    g.push((probe(h) - probe(-h)) / (2.0 * h as f64));
                }
                grads.push(g);
            }
        }
        grads
    }

    fn params(net: &Network) -> Vec<Vec<f32>> {
        net.layers
            .iter()
            .filter_map(|l| l.params())
            .flat_map(|p| [p.weights.as_slice().to_vec(), p.bias.as_slice().to_vec()])
            .collect()
    }

    /// Two steps of each optimiser against its textbook formulas applied to numerically
    /// differentiated gradients.
    #[test]
    fn first_two_steps_match_hand_computation() {
        let opts = [
            Optimizer::Sgd { lr: 0.1, momentum: 0.9, weight_decay: 0.0 },
            Optimizer::Adam { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 },
            Optimizer::AdamW { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1 },
        ];
        for opt in opts {
            let (mut net, x, y) = tiny();
            let mut want = params(&net);
            let mut m1: Vec<Vec<f64>> = want.iter().map(|p| vec![0.0; p.len()]).collect();
            let mut m2 = m1.clone();
            let mut trainer = BackpropTrainer::new(&net, opt);
            for t in 1..=2 {
                // reference: gradients at the current reference parameters
                let mut reference = Network { layers: net.layers.clone() };
                for (k, layer) in reference.layers.iter_mut().enumerate() {
                    let p = layer.params_mut().expect("dense");
                    p.weights.as_mut_slice().copy_from_slice(&want[2 * k]);
                    p.bias.as_mut_slice().copy_from_slice(&want[2 * k + 1]);
                }
                let grads = numeric_gradient(&reference, &x, &y);
                for (i, (p, g)) in want.iter_mut().zip(&grads).enumerate() {
                    let is_weight = i % 2 == 0;
                    for k in 0..p.len() {
                        let (w, g) = (p[k] as f64, g[k]);
                        let next = match opt {
                            Optimizer::Sgd { lr, momentum, .. } => {
                                m1[i][k] = momentum as f64 * m1[i][k] + g;
                                w - lr as f64 * m1[i][k]
                            }
                            Optimizer::Adam { lr, beta1, beta2, eps, .. }
                            | Optimizer::AdamW { lr, beta1, beta2, eps, .. } => {
                                let mut w = w;
                                if let (Optimizer::AdamW { weight_decay, .. }, true) = (opt, is_weight) {
                                    w *= 1.0 - lr as f64 * weight_decay as f64;
                                }
                                m1[i][k] = beta1 as f64 * m1[i][k] + (1.0 - beta1 as f64) * g;
                                m2[i][k] = beta2 as f64 * m2[i][k] + (1.0 - beta2 as f64) * g * g;
                                let mh = m1[i][k] / (1.0 - (beta1 as f64).powi(t));
                                let vh = m2[i][k] / (1.0 - (beta2 as f64).powi(t));
                                w - lr as f64 * mh / (vh.sqrt() + eps as f64)
                            }
                        };
                        p[k] = next as f32;
                    }
                }
                trainer.step(&mut net, &x, &y).expect("step");
                for (got, want) in params(&net).iter().zip(&want) {
                    for (g, w) in got.iter().zip(want) {
                        assert!((g - w).abs() < 2e-4, "{} step {t}: {g} vs {w}", opt.kind());
                    }
                }
            }
        }
    }

    #[test]
    fn cross_entropy_gradient_and_loss() {
        let mut z = Matrix::from_vec(1, 3, vec![1.0, 2.0, 0.5]);
        let s = softmax_cross_entropy(&mut z, &[1]).expect("fits");
        let e: Vec<f64> = [1.0f64, 2.0, 0.5].iter().map(|v| v.exp()).collect();
        let total: f64 = e.iter().sum();
        assert!((s.loss_sum - (total.ln() - 2.0)).abs() < 1e-9);
        for (c, g) in z.as_slice().iter().enumerate() {
            let want = e[c] / total - if c == 1 { 1.0 } else { 0.0 };
            assert!((*g as f64 - want).abs() < 1e-6);
        }
        assert_eq!(s.correct, 1);
    }
}
