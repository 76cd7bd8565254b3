//! dlADMM (Wang, Yu, Chen and Zhao 2019, "ADMM for efficient deep learning with global
//! convergence", KDD) for MLPs of dense ReLU layers with a linear output, on mini-batches.
//!
//! The paper's Problem 2 relaxes the network's equalities into penalties, except the last:
//!
//! ```text
//! min  R(z_L; y) + (nu/2) sum_{l<L} ( ||z_l - a_{l-1} W_l - b_l||^2 + ||a_l - f(z_l)||^2 )
//! s.t. z_L = a_{L-1} W_L + b_L
//! ```
//!
//! with `R` the softmax cross-entropy, `f` the ReLU and `a_0` the input, and adds the
//! multiplier `u` of the last equality with the term `u . (z_L - a_{L-1} W_L - b_L) +
//! (rho/2) ||z_L - a_{L-1} W_L - b_L||^2`. As in the authors' code, `nu = rho`. One iteration
//! (Algorithm 1) updates every block backward, `z_L, b_L, W_L, a_{L-1}, z_{L-1}, b_{L-1}, ...,
//! W_1`, then forward, `W_1, b_1, z_1, a_1, ..., W_L, b_L, z_L`, then `u += rho (z_L - a_{L-1}
//! W_L - b_L)`. Each block minimises the augmented Lagrangian with the others fixed:
//! - `b_l`: the paper's step `b - grad / rho` is the exact minimiser (the residual's mean).
//! - `W_l` and `a_l`: one gradient step of size `1/theta` (`1/tau`), where dlADMM backtracks
//!   until the quadratic bound `phi(W+) <= phi(W) + <grad, W+ - W> + theta/2 ||W+ - W||^2`
//!   holds. `phi` is quadratic along the step, so the smallest such `theta` has a closed
//!   form, `rho ||a G||^2 / ||G||^2` for `G = grad / rho`, and it is what plflow takes (it is
//!   also the exact line search; the doubling search lands within a factor 2 above it).
//! - `z_l`, `l < L`: `argmin ||z - m||^2 + ||a_l - f(z)||^2` element by element, in closed
//!   form over the pieces of the clipped ReLU (below 0, between 0 and the clip, above it).
//! - `z_L`: `argmin R(z; y) + (rho/2) ||z - m + u/rho||^2`, strongly convex and separable by
//!   rows: Newton's method per row (the authors use FISTA; the minimiser is the same).
//!
//! **Mini-batches.** The paper keeps `z`, `a` and `u` for the whole training set (full-batch
//! iterations; about 300 MB on MNIST). plflow streams batches, so these per-example variables
//! are made for each batch by a forward pass with `u = 0`, `iterations` dlADMM iterations run
//! on the batch, and they are dropped: only the weights persist, with no optimiser state.

use crate::activation::Activation;
use crate::dense::Dense;
use crate::error::Dim;
use crate::network::{LayerError, Network, StepStats, argmax};
use crate::state::{Part, StateTensor, StateTensorMut, TrainerState};
use crate::{Matrix, OpsError, par};
use faer::Accum;
use faer::linalg::matmul::matmul;
use std::time::Instant;

/// The settings of dlADMM.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdmmConfig {
    /// Penalty `rho` (= `nu`) of the relaxed equalities and the augmented Lagrangian.
    pub rho: f32,
    /// dlADMM iterations (backward and forward sweeps, then the multiplier) per batch.
    pub iterations: u32,
}

/// The dlADMM trainer. It holds no state between batches: every variable but the weights
/// lives for one batch.
#[derive(Debug, Clone)]
pub struct AdmmTrainer {
    /// The settings.
    pub config: AdmmConfig,
}

/// A batch's variables: pre-activations `z[l]` of every layer, activations `a[l]` of the
/// hidden ones, and the multiplier `u` of the output equality.
struct Vars<'x> {
    x: &'x Matrix,
    z: Vec<Matrix>,
    a: Vec<Matrix>,
    u: Matrix,
    rho: f32,
}

impl Vars<'_> {
    /// The input of layer `l`: the batch or the activation below.
    fn input(&self, l: usize) -> &Matrix {
        if l == 0 { self.x } else { &self.a[l - 1] }
    }
}

impl TrainerState for AdmmTrainer {
    fn tensors(&self) -> Vec<Part<StateTensor<'_>>> {
        Vec::new()
    }

    fn tensors_mut(&mut self) -> Vec<Part<StateTensorMut<'_>>> {
        Vec::new()
    }

    fn scalars(&self) -> Vec<Part<f64>> {
        Vec::new()
    }

    fn set_scalar(&mut self, _layer: Option<usize>, _name: &str, _value: f64) -> bool {
        false
    }
}

/// Why `net` is not a network dlADMM trains, if it is not: every layer dense on flat inputs,
/// ReLU below a linear output, no residual adds.
pub fn unsupported(net: &Network) -> Option<(usize, String)> {
    let last = net.layers.len().checked_sub(1)?;
    net.layers.iter().enumerate().find_map(|(l, layer)| {
        let why = if layer.params().is_none() || layer.op.kind() != "dense" || layer.input_positions != 1 {
            format!("is a {} layer; dlADMM trains dense layers on flat inputs", layer.op.kind())
        } else if layer.residual.is_some() {
            "adds a residual; dlADMM trains plain chains".to_owned()
        } else if l == last && layer.activation != Activation::Linear {
            format!("is the output layer with activation {}; it must be linear", layer.activation.name())
        } else if l < last && !matches!(layer.activation, Activation::Relu { .. }) {
            format!("has activation {}; dlADMM's closed-form z update needs relu", layer.activation.name())
        } else {
            return None;
        };
        Some((l, why))
    })
}

impl crate::state::Trainer for AdmmTrainer {
    fn step(&mut self, net: &mut Network, x: &Matrix, labels: &[u32]) -> Result<StepStats, LayerError> {
        AdmmTrainer::step(self, net, x, labels)
    }

    fn state_bytes(&self) -> usize {
        0
    }
}

impl AdmmTrainer {
    /// A trainer with `config`.
    pub fn new(config: AdmmConfig) -> Self {
        Self { config }
    }

    /// One batch: a forward pass makes the variables, `iterations` dlADMM iterations update
    /// them and the weights. The statistics are the forward pass's (before the update).
    pub fn step(&mut self, net: &mut Network, x: &Matrix, labels: &[u32]) -> Result<StepStats, LayerError> {
        if let Some((layer, detail)) = unsupported(net) {
            return Err(LayerError { layer, source: OpsError::Invalid { op: "admm", detail } });
        }
        let t0 = Instant::now();
        let mut vars = forward(net, x, self.config.rho)?;
        let last = net.layers.len() - 1;
        let mut stats = cross_entropy_stats(&vars.z[last], labels).map_err(at(last))?;
        stats.forward_seconds = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        for _ in 0..self.config.iterations {
            iterate(net, &mut vars, labels)?;
        }
        stats.solve_seconds = t1.elapsed().as_secs_f64();
        Ok(stats)
    }
}

fn at(layer: usize) -> impl Fn(OpsError) -> LayerError {
    move |source| LayerError { layer, source }
}

fn params(net: &Network, l: usize) -> &Dense {
    net.layers[l].params().expect("checked by `unsupported`")
}

/// The clip of hidden layer `l`'s ReLU.
fn clip(net: &Network, l: usize) -> f32 {
    net.layers[l].activation.clip().unwrap_or(f32::INFINITY)
}

/// The variables of a batch from a forward pass: constraints hold exactly, `u = 0`.
fn forward<'x>(net: &Network, x: &'x Matrix, rho: f32) -> Result<Vars<'x>, LayerError> {
    let last = net.layers.len() - 1;
    let mut vars = Vars { x, z: Vec::new(), a: Vec::new(), u: Matrix::zeros(0, 0), rho };
    for l in 0..=last {
        let z = params(net, l).forward(vars.input(l)).map_err(at(l))?;
        if l < last {
            let mut a = z.clone();
            net.layers[l].activation.apply(a.as_mut_slice());
            vars.a.push(a);
        }
        vars.z.push(z);
    }
    vars.u = Matrix::zeros(x.rows(), vars.z[last].cols());
    Ok(vars)
}

/// One dlADMM iteration: the backward sweep, the forward sweep, the multiplier.
///
/// Each layer's residual `r_l = a_{l-1} W_l + b_l - target_l` is carried from one block
/// update to the next (each update changes it by a known amount) instead of being formed
/// again: a sweep costs three products of each layer's size where recomputing costs five.
fn iterate(net: &mut Network, v: &mut Vars<'_>, labels: &[u32]) -> Result<(), LayerError> {
    let last = net.layers.len() - 1;
    for l in (0..=last).rev() {
        let mut r = params(net, l).forward(v.input(l)).map_err(at(l))?;
        update_z(net, v, l, &r, labels)?;
        shift_by_target(v, l, &mut r, -1.0);
        update_b(net, l, &mut r);
        update_w(net, v.input(l), l, &mut r);
        if l > 0 {
            update_a(net, v, l - 1, &mut r);
        }
    }
    let mut r = residual(net, v, 0);
    for l in 0..=last {
        update_w(net, v.input(l), l, &mut r);
        update_b(net, l, &mut r);
        shift_by_target(v, l, &mut r, 1.0);
        update_z(net, v, l, &r, labels)?;
        shift_by_target(v, l, &mut r, -1.0);
        if l < last {
            drop(r);
            r = residual(net, v, l + 1);
            update_a(net, v, l, &mut r);
        }
    }
    // `r` is `a W + b - z_L - u / rho`, so `u + rho (z_L - a W - b) = -rho r`.
    let rho = v.rho;
    v.u.as_mut_slice().iter_mut().zip(r.as_slice()).for_each(|(u, r)| *u = -rho * r);
    Ok(())
}

/// `r += sign * target_l` in place (`target_l` is `z_l`, or `z_L + u / rho`).
fn shift_by_target(v: &Vars<'_>, l: usize, r: &mut Matrix, sign: f32) {
    let z = v.z[l].as_slice();
    if l + 1 == v.z.len() {
        let inv = 1.0 / v.rho;
        let terms = r.as_mut_slice().iter_mut().zip(z).zip(v.u.as_slice());
        terms.for_each(|((r, z), u)| *r += sign * (z + u * inv));
    } else {
        r.as_mut_slice().iter_mut().zip(z).for_each(|(r, z)| *r += sign * z);
    }
}

/// `a_{l-1} W_l + b_l - target_l`: how far layer `l`'s affine map is from its target.
fn residual(net: &Network, v: &Vars<'_>, l: usize) -> Matrix {
    let p = params(net, l);
    let mut r = Matrix::zeros(v.input(l).rows(), p.outputs());
    shift_by_target(v, l, &mut r, -1.0);
    add_bias(&mut r, &p.bias);
    matmul(r.view_mut(), Accum::Add, v.input(l).view(), p.weights.view(), 1.0, par());
    r
}

fn add_bias(m: &mut Matrix, bias: &Matrix) {
    let b = bias.as_slice();
    for row in m.as_mut_slice().chunks_exact_mut(b.len().max(1)) {
        row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
    }
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// `b_l`: the exact minimiser, the bias moved by the residual's mean over the batch; the
/// residual `r` of layer `l` follows.
fn update_b(net: &mut Network, l: usize, r: &mut Matrix) {
    let cols = r.cols().max(1);
    let mut mean = vec![0.0f64; cols];
    for row in r.as_slice().chunks_exact(cols) {
        mean.iter_mut().zip(row).for_each(|(m, &x)| *m += x as f64);
    }
    let n = r.rows().max(1) as f64;
    let mean: Vec<f32> = mean.iter().map(|m| (m / n) as f32).collect();
    let bias = &mut net.layers[l].params_mut().expect("dense").bias;
    bias.as_mut_slice().iter_mut().zip(&mean).for_each(|(b, m)| *b -= m);
    for row in r.as_mut_slice().chunks_exact_mut(cols) {
        row.iter_mut().zip(&mean).for_each(|(r, m)| *r -= m);
    }
}

/// `W_l`: the gradient step `W - G / theta` with the smallest `theta` that satisfies the
/// backtracking bound (module docs), in the sparsity mask when the layer has one; the
/// residual `r` of layer `l` follows.
fn update_w(net: &mut Network, input: &Matrix, l: usize, r: &mut Matrix) {
    let layer = &mut net.layers[l];
    let (d, m) = (layer.params().expect("dense").inputs(), layer.params().expect("dense").outputs());
    let mut g = Matrix::zeros(d, m);
    matmul(g.view_mut(), Accum::Replace, input.view().transpose(), r.view(), 1.0, par());
    if let Some(mask) = &layer.mask {
        mask.apply_rows(&mut g, 0, d);
    }
    let mut p = Matrix::zeros(input.rows(), m);
    matmul(p.view_mut(), Accum::Replace, input.view(), g.view(), 1.0, par());
    let (gg, pp) = (dot(g.as_slice(), g.as_slice()), dot(p.as_slice(), p.as_slice()));
    if pp <= 0.0 || !pp.is_finite() {
        return;
    }
    let step = (gg / pp) as f32;
    let w = &mut layer.params_mut().expect("dense").weights;
    w.as_mut_slice().iter_mut().zip(g.as_slice()).for_each(|(w, g)| *w -= step * g);
    r.as_mut_slice().iter_mut().zip(p.as_slice()).for_each(|(r, p)| *r -= step * p);
}

/// `a_l` (hidden): the gradient step on `(rho/2) (||a W_{l+1} + b_{l+1} - target_{l+1}||^2 +
/// ||a - f(z_l)||^2)` with the smallest `tau` of the backtracking bound; `r` is layer
/// `l + 1`'s residual, and follows.
fn update_a(net: &Network, v: &mut Vars<'_>, l: usize, r: &mut Matrix) {
    let w = &params(net, l + 1).weights;
    let clip = clip(net, l);
    // G = r W^T + (a - f(z)).
    let mut g = Matrix::zeros(r.rows(), w.rows());
    matmul(g.view_mut(), Accum::Replace, r.view(), w.view().transpose(), 1.0, par());
    let (a, z) = (v.a[l].as_slice(), v.z[l].as_slice());
    for ((g, &a), &z) in g.as_mut_slice().iter_mut().zip(a).zip(z) {
        *g += a - z.clamp(0.0, clip);
    }
    let mut p = Matrix::zeros(r.rows(), w.cols());
    matmul(p.view_mut(), Accum::Replace, g.view(), w.view(), 1.0, par());
    let gg = dot(g.as_slice(), g.as_slice());
    let curvature = gg + dot(p.as_slice(), p.as_slice());
    if gg <= 0.0 || !curvature.is_finite() {
        return;
    }
    let step = (gg / curvature) as f32;
    v.a[l].as_mut_slice().iter_mut().zip(g.as_slice()).for_each(|(a, g)| *a -= step * g);
    r.as_mut_slice().iter_mut().zip(p.as_slice()).for_each(|(r, p)| *r -= step * p);
}

/// `z_l` from `m = a_{l-1} W_l + b_l`: the closed form for a hidden layer, Newton's method
/// per row for the output.
fn update_z(net: &Network, v: &mut Vars<'_>, l: usize, m: &Matrix, labels: &[u32]) -> Result<(), LayerError> {
    if l + 1 < net.layers.len() {
        let clip = clip(net, l);
        for ((z, &m), &a) in v.z[l].as_mut_slice().iter_mut().zip(m.as_slice()).zip(v.a[l].as_slice()) {
            *z = relu_z(m, a, clip);
        }
        return Ok(());
    }
    let (classes, inv, rho) = (m.cols().max(1), 1.0 / v.rho, v.rho as f64);
    OpsError::check("admm output update", "labels", &[Dim::Exact(m.rows())], &[labels.len()])
        .map_err(at(l))?;
    let mut target = vec![0.0f32; classes];
    let rows = v.z[l].as_mut_slice().chunks_exact_mut(classes).zip(m.as_slice().chunks_exact(classes));
    for (((z, m), u), &y) in rows.zip(v.u.as_slice().chunks_exact(classes)).zip(labels) {
        if y as usize >= classes {
            return Err(at(l)(OpsError::Label { op: "admm", label: y as usize, classes }));
        }
        target.iter_mut().zip(m).zip(u).for_each(|((t, m), u)| *t = m - u * inv);
        prox_cross_entropy(z, &target, y as usize, rho);
    }
    Ok(())
}

/// `argmin_z (z - m)^2 + (a - f(z))^2` for `f(z) = clamp(z, 0, clip)`: the best of the
/// minimisers on the three pieces of `f` (branch-free, so the loop over a layer vectorises;
/// an infinite clip makes the top piece's cost infinite).
#[inline(always)]
pub fn relu_z(m: f32, a: f32, clip: f32) -> f32 {
    let below = m.min(0.0);
    let between = ((m + a) * 0.5).max(0.0).min(clip);
    let above = m.max(clip);
    let cost_below = (below - m) * (below - m) + a * a;
    let cost_between = (between - m) * (between - m) + (a - between) * (a - between);
    let cost_above = (above - m) * (above - m) + (a - clip) * (a - clip);
    let (best, cost) = if cost_between < cost_below { (between, cost_between) } else { (below, cost_below) };
    if cost_above < cost { above } else { best }
}

/// Row objective of the output update: `logsumexp(z) - z_y + (rho/2) ||z - m||^2`.
fn prox_objective(z: &[f64], m: &[f32], y: usize, rho: f64) -> f64 {
    let max = z.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
    let lse = max + z.iter().map(|&v| (v - max).exp()).sum::<f64>().ln();
    let quad: f64 = z.iter().zip(m).map(|(&z, &m)| (z - m as f64).powi(2)).sum();
    lse - z[y] + rho / 2.0 * quad
}

/// `z <- argmin_z CE(z; y) + (rho/2) ||z - m||^2` for one row, by damped Newton from `z`.
/// The Hessian `diag(p) - p p^T + rho I` is inverted by Sherman-Morrison.
pub fn prox_cross_entropy(z_out: &mut [f32], m: &[f32], y: usize, rho: f64) {
    let c = z_out.len();
    let mut z: Vec<f64> = z_out.iter().map(|&v| v as f64).collect();
    let (mut p, mut g, mut dz) = (vec![0.0; c], vec![0.0; c], vec![0.0; c]);
    let mut f = prox_objective(&z, m, y, rho);
    for _ in 0..50 {
        let max = z.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
        let sum: f64 = z.iter().map(|&v| (v - max).exp()).sum();
        for k in 0..c {
            p[k] = (z[k] - max).exp() / sum;
            g[k] = p[k] - f64::from(k == y) + rho * (z[k] - m[k] as f64);
        }
        // (D - p p^T)^-1 g with D = diag(p + rho); 1 - p^T D^-1 p = sum p rho / (p + rho).
        let denom: f64 = p.iter().map(|&p| p * rho / (p + rho)).sum();
        let pdg: f64 = (0..c).map(|k| p[k] * g[k] / (p[k] + rho)).sum();
        for k in 0..c {
            dz[k] = (g[k] + p[k] * pdg / denom) / (p[k] + rho);
        }
        let decrement: f64 = g.iter().zip(&dz).map(|(g, d)| g * d).sum();
        // Stop at convergence, or on a NaN decrement.
        if decrement.is_nan() || decrement <= 1e-12 {
            break;
        }
        let mut t = 1.0;
        let mut trial = vec![0.0; c];
        loop {
            trial.iter_mut().zip(&z).zip(&dz).for_each(|((n, z), d)| *n = z - t * d);
            let ft = prox_objective(&trial, m, y, rho);
            if ft <= f - 0.25 * t * decrement || t < 1e-6 {
                z.copy_from_slice(&trial);
                f = ft;
                break;
            }
            t *= 0.5;
        }
    }
    z_out.iter_mut().zip(&z).for_each(|(o, &v)| *o = v as f32);
}

/// The summed cross-entropy and correct count of scores `z` (not modified).
fn cross_entropy_stats(z: &Matrix, labels: &[u32]) -> Result<StepStats, OpsError> {
    let (n, classes) = (z.rows(), z.cols());
    OpsError::check("cross-entropy", "labels", &[Dim::Exact(n)], &[labels.len()])?;
    let mut stats = StepStats { rows: n, ..StepStats::default() };
    for (row, &label) in z.as_slice().chunks_exact(classes.max(1)).zip(labels) {
        let label = label as usize;
        if label >= classes {
            return Err(OpsError::Label { op: "cross-entropy", label, classes });
        }
        stats.correct += usize::from(argmax(row) == label);
        let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let sum: f64 = row.iter().map(|&v| ((v - max) as f64).exp()).sum();
        stats.loss_sum += sum.ln() + max as f64 - row[label] as f64;
    }
    Ok(stats)
}

/// Bytes the ledger holds at the peak of a step beyond the weights and the batch, for
/// layers `dims` (`(inputs, outputs)`) and `n` examples: the variables (`z` of every layer,
/// `a` of the hidden ones, `u`) and the largest block update's temporaries: a layer's
/// residual and its change, with the gradient of its weights or of its input.
pub fn step_bytes(dims: &[(usize, usize)], n: usize) -> usize {
    const F32: usize = 4;
    let Some(&(_, classes)) = dims.last() else { return 0 };
    let hidden: usize = dims[..dims.len() - 1].iter().map(|&(_, m)| m).sum();
    let vars = n * (hidden * 2 + classes * 2);
    let transient = dims
        .iter()
        .enumerate()
        .map(|(l, &(d, m))| 2 * n * m + if l > 0 { (d * m).max(n * d) } else { d * m })
        .max()
        .unwrap_or(0);
    (vars + transient) * F32
}

// The reference is plain index loops on purpose: it should read like the equations.
#[cfg(test)]
#[allow(clippy::needless_range_loop)]
mod tests {
    use super::*;
    use crate::layer::Layer;

    type M = Vec<Vec<f64>>;

    fn to_m(m: &Matrix) -> M {
        (0..m.rows()).map(|i| m.row(i).iter().map(|&v| v as f64).collect()).collect()
    }

    fn values(n: usize, k: f32) -> Vec<f32> {
        (0..n).map(|i| (i as f32 * 0.61 + k).sin() * 0.8).collect()
    }

    /// A 4 -> 5 (ReLU, clip 3) -> 3 network and a batch of 6.
    fn tiny() -> (Network, Matrix, Vec<u32>) {
        let mut l0 = Dense::new(Matrix::from_vec(4, 5, values(20, 0.3)));
        l0.bias = Matrix::from_vec(1, 5, values(5, 1.1));
        let mut l1 = Dense::new(Matrix::from_vec(5, 3, values(15, 2.0)));
        l1.bias = Matrix::from_vec(1, 3, values(3, 0.7));
        let net = Network {
            layers: vec![
                Layer::dense(l0, Activation::Relu { clip: 3.0 }),
                Layer::dense(l1, Activation::Linear),
            ],
        };
        (
            net,
            Matrix::from_vec(6, 4, values(24, 5.0).iter().map(|v| v * 2.0).collect()),
            vec![0, 2, 1, 1, 0, 2],
        )
    }

    fn affine(x: &M, w: &M, b: &[f64]) -> M {
        x.iter()
            .map(|r| (0..b.len()).map(|j| b[j] + (0..r.len()).map(|k| r[k] * w[k][j]).sum::<f64>()).collect())
            .collect()
    }

    fn sub(a: &M, b: &M) -> M {
        a.iter().zip(b).map(|(a, b)| a.iter().zip(b).map(|(a, b)| a - b).collect()).collect()
    }

    fn sq(a: &M) -> f64 {
        a.iter().flatten().map(|v| v * v).sum()
    }

    fn relu(z: &M, clip: f64) -> M {
        z.iter().map(|r| r.iter().map(|v| v.clamp(0.0, clip)).collect()).collect()
    }

    /// The row prox of cross-entropy by plain gradient descent (step 1 / (1/2 + rho), the
    /// inverse of the gradient's Lipschitz constant), long enough to converge.
    fn prox_by_descent(m: &[f64], y: usize, rho: f64) -> Vec<f64> {
        let mut z = m.to_vec();
        let step = 1.0 / (0.5 + rho);
        for _ in 0..200_000 {
            let max = z.iter().fold(f64::MIN, |a, &b| a.max(b));
            let s: f64 = z.iter().map(|v| (v - max).exp()).sum();
            for k in 0..z.len() {
                let p = (z[k] - max).exp() / s;
                let g = p - f64::from(k == y) + rho * (z[k] - m[k]);
                z[k] -= step * g;
            }
        }
        z
    }

    /// Plain-loop f64 dlADMM on a 2-layer network, written from the paper's block updates.
    struct Naive {
        x: M,
        w: [M; 2],
        b: [Vec<f64>; 2],
        z: [M; 2],
        a1: M,
        u: M,
        rho: f64,
        clip: f64,
        y: Vec<usize>,
    }

    impl Naive {
        fn input(&self, l: usize) -> &M {
            if l == 0 { &self.x } else { &self.a1 }
        }
        fn target(&self, l: usize) -> M {
            if l == 0 {
                return self.z[0].clone();
            }
            self.z[1]
                .iter()
                .zip(&self.u)
                .map(|(z, u)| z.iter().zip(u).map(|(z, u)| z + u / self.rho).collect())
                .collect()
        }
        fn residual(&self, l: usize) -> M {
            sub(&affine(self.input(l), &self.w[l], &self.b[l]), &self.target(l))
        }
        fn b(&mut self, l: usize) {
            let r = self.residual(l);
            for j in 0..self.b[l].len() {
                self.b[l][j] -= r.iter().map(|row| row[j]).sum::<f64>() / r.len() as f64;
            }
        }
        /// phi_l(W) = (rho/2) ||a W + b - target||^2
        fn phi(&self, l: usize, w: &M) -> f64 {
            self.rho / 2.0 * sq(&sub(&affine(self.input(l), w, &self.b[l]), &self.target(l)))
        }
        fn w(&mut self, l: usize) {
            let (a, r) = (self.input(l).clone(), self.residual(l));
            let (d, m) = (self.w[l].len(), self.w[l][0].len());
            // gradient rho a^T r
            let g: M = (0..d)
                .map(|k| {
                    (0..m).map(|j| self.rho * (0..a.len()).map(|i| a[i][k] * r[i][j]).sum::<f64>()).collect()
                })
                .collect();
            // the smallest theta of dlADMM's bound, found by bisection on the bound itself
            let at = |theta: f64| -> M {
                self.w[l]
                    .iter()
                    .zip(&g)
                    .map(|(w, g)| w.iter().zip(g).map(|(w, g)| w - g / theta).collect())
                    .collect()
            };
            let bound = |theta: f64| {
                self.phi(l, &at(theta)) <= self.phi(l, &self.w[l]) - sq(&g) / (2.0 * theta) + 1e-12
            };
            let (mut lo, mut hi) = (1e-9f64, 1e9f64);
            for _ in 0..200 {
                let mid = (lo * hi).sqrt();
                if bound(mid) { hi = mid } else { lo = mid }
            }
            self.w[l] = at(hi);
        }
        fn a(&mut self) {
            // objective (rho/2)(||a W2 + b2 - t2||^2 + ||a - f(z1)||^2)
            let f = relu(&self.z[0], self.clip);
            let obj = |a: &M, s: &Self| {
                let r = sub(&affine(a, &s.w[1], &s.b[1]), &s.target(1));
                s.rho / 2.0 * (sq(&r) + sq(&sub(a, &f)))
            };
            let r = self.residual(1);
            let g: M = (0..self.a1.len())
                .map(|i| {
                    (0..self.a1[0].len())
                        .map(|k| {
                            self.rho
                                * ((0..r[0].len()).map(|j| r[i][j] * self.w[1][k][j]).sum::<f64>()
                                    + self.a1[i][k]
                                    - f[i][k])
                        })
                        .collect()
                })
                .collect();
            let at = |tau: f64, a: &M| -> M {
                a.iter().zip(&g).map(|(a, g)| a.iter().zip(g).map(|(a, g)| a - g / tau).collect()).collect()
            };
            let f0 = obj(&self.a1, self);
            let (mut lo, mut hi) = (1e-9f64, 1e9f64);
            for _ in 0..200 {
                let mid = (lo * hi).sqrt();
                if obj(&at(mid, &self.a1), self) <= f0 - sq(&g) / (2.0 * mid) + 1e-12 {
                    hi = mid
                } else {
                    lo = mid
                }
            }
            self.a1 = at(hi, &self.a1);
        }
        fn z(&mut self, l: usize) {
            let m = affine(self.input(l), &self.w[l], &self.b[l]);
            if l == 0 {
                for i in 0..m.len() {
                    for j in 0..m[0].len() {
                        self.z[0][i][j] =
                            relu_z(m[i][j] as f32, self.a1[i][j] as f32, self.clip as f32) as f64;
                    }
                }
            } else {
                for i in 0..m.len() {
                    let target: Vec<f64> =
                        m[i].iter().zip(&self.u[i]).map(|(m, u)| m - u / self.rho).collect();
                    self.z[1][i] = prox_by_descent(&target, self.y[i], self.rho);
                }
            }
        }
        fn iterate(&mut self) {
            self.z(1);
            self.b(1);
            self.w(1);
            self.a();
            self.z(0);
            self.b(0);
            self.w(0);
            self.w(0);
            self.b(0);
            self.z(0);
            self.a();
            self.w(1);
            self.b(1);
            self.z(1);
            let m = affine(&self.a1, &self.w[1], &self.b[1]);
            for i in 0..m.len() {
                for j in 0..m[0].len() {
                    self.u[i][j] += self.rho * (self.z[1][i][j] - m[i][j]);
                }
            }
        }
    }

    #[test]
    fn relu_z_is_the_minimiser_on_a_fine_grid() {
        for &(m, a) in &[(-1.0f32, 0.5), (0.3, 2.0), (2.5, -0.4), (4.0, 3.5), (-0.2, -0.3), (1.0, 5.0)] {
            let cost = |z: f32| (z - m).powi(2) + (a - z.clamp(0.0, 3.0)).powi(2);
            let got = relu_z(m, a, 3.0);
            let best = (0..=200_000).map(|i| -10.0 + i as f32 * 1e-4).map(cost).fold(f32::MAX, f32::min);
            assert!(cost(got) <= best + 1e-5, "m={m} a={a}: z={got} cost {} vs grid {best}", cost(got));
        }
    }

    #[test]
    fn the_output_prox_matches_gradient_descent() {
        let m = [0.4f32, -1.2, 2.0, 0.1];
        for &rho in &[1.0, 0.1, 0.01] {
            let mut z = m;
            prox_cross_entropy(&mut z, &m, 1, rho);
            let want = prox_by_descent(&m.map(f64::from), 1, rho);
            for (g, w) in z.iter().zip(&want) {
                assert!((*g as f64 - w).abs() < 1e-4, "rho {rho}: {z:?} vs {want:?}");
            }
        }
    }

    #[test]
    fn two_iterations_match_plain_loops_on_a_two_layer_net() {
        let (mut net, x, labels) = tiny();
        let rho = 0.5;
        let p = |l: usize| net.layers[l].params().expect("dense").clone();
        let (p0, p1) = (p(0), p(1));
        let vars = forward(&net, &x, rho as f32).expect("forward");
        let mut naive = Naive {
            x: to_m(&x),
            w: [to_m(&p0.weights), to_m(&p1.weights)],
            b: [to_m(&p0.bias).remove(0), to_m(&p1.bias).remove(0)],
            z: [to_m(&vars.z[0]), to_m(&vars.z[1])],
            a1: to_m(&vars.a[0]),
            u: vec![vec![0.0; 3]; 6],
            rho,
            clip: 3.0,
            y: labels.iter().map(|&y| y as usize).collect(),
        };
        let mut trainer = AdmmTrainer::new(AdmmConfig { rho: rho as f32, iterations: 2 });
        trainer.step(&mut net, &x, &labels).expect("step");
        naive.iterate();
        naive.iterate();
        for l in 0..2 {
            let got = net.layers[l].params().expect("dense");
            for (g, w) in to_m(&got.weights).iter().flatten().zip(naive.w[l].iter().flatten()) {
                assert!((g - w).abs() < 2e-4 * (1.0 + w.abs()), "layer {l} weight {g} vs {w}");
            }
            for (g, w) in got.bias.as_slice().iter().zip(&naive.b[l]) {
                assert!((*g as f64 - w).abs() < 2e-4 * (1.0 + w.abs()), "layer {l} bias {g} vs {w}");
            }
        }
        // The weights moved.
        assert!(sq(&sub(&to_m(&net.layers[1].params().expect("dense").weights), &to_m(&p1.weights))) > 1e-4);
    }

    #[test]
    fn each_block_update_lowers_the_augmented_lagrangian() {
        let (net, x, labels) = tiny();
        let rho = 0.5;
        let vars = forward(&net, &x, rho as f32).expect("forward");
        let p = |l: usize| net.layers[l].params().expect("dense").clone();
        let mut s = Naive {
            x: to_m(&x),
            w: [to_m(&p(0).weights), to_m(&p(1).weights)],
            b: [to_m(&p(0).bias).remove(0), to_m(&p(1).bias).remove(0)],
            z: [to_m(&vars.z[0]), to_m(&vars.z[1])],
            a1: to_m(&vars.a[0]),
            u: vec![vec![0.1; 3]; 6],
            rho,
            clip: 3.0,
            y: labels.iter().map(|&y| y as usize).collect(),
        };
        let lagrangian = |s: &Naive| {
            let ce: f64 = s.z[1]
                .iter()
                .zip(&s.y)
                .map(|(z, &y)| {
                    let max = z.iter().fold(f64::MIN, |a, &b| a.max(b));
                    max + z.iter().map(|v| (v - max).exp()).sum::<f64>().ln() - z[y]
                })
                .sum();
            let r0 = sub(&s.z[0], &affine(&s.x, &s.w[0], &s.b[0]));
            let r1 = sub(&s.a1, &relu(&s.z[0], s.clip));
            let c = sub(&s.z[1], &affine(&s.a1, &s.w[1], &s.b[1]));
            let uc: f64 = s.u.iter().flatten().zip(c.iter().flatten()).map(|(u, c)| u * c).sum();
            ce + s.rho / 2.0 * (sq(&r0) + sq(&r1) + sq(&c)) + uc
        };
        let mut last = lagrangian(&s);
        let steps: [fn(&mut Naive); 7] =
            [|s| s.z(1), |s| s.b(1), |s| s.w(1), |s| s.a(), |s| s.z(0), |s| s.b(0), |s| s.w(0)];
        for (k, step) in steps.iter().enumerate() {
            step(&mut s);
            let now = lagrangian(&s);
            assert!(now <= last + 1e-9, "block {k} raised the Lagrangian: {last} -> {now}");
            last = now;
        }
    }

    #[test]
    fn admm_learns_separable_blobs() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let centres = [[2.0f32, 0.0], [-1.0, 1.7], [-1.0, -1.7]];
        let sample = |rng: &mut rand_chacha::ChaCha8Rng, n: usize| {
            let labels: Vec<u32> = (0..n).map(|_| rng.random_range(0..3)).collect();
            let x: Vec<f32> = labels
                .iter()
                .flat_map(|&y| centres[y as usize].map(|c| c + rng.random_range(-0.8f32..0.8)))
                .collect();
            (Matrix::from_vec(n, 2, x), labels)
        };
        let mut net = Network {
            layers: vec![
                Layer::dense(
                    Dense::new(crate::init::xavier_normal(2, 16, &mut rng)),
                    Activation::Relu { clip: 10.0 },
                ),
                Layer::dense(Dense::new(crate::init::xavier_normal(16, 3, &mut rng)), Activation::Linear),
            ],
        };
        let mut trainer = AdmmTrainer::new(AdmmConfig { rho: 1.0, iterations: 1 });
        for _ in 0..100 {
            let (x, y) = sample(&mut rng, 32);
            trainer.step(&mut net, &x, &y).expect("step");
        }
        let (x, y) = sample(&mut rng, 500);
        let out = net.forward(&x).expect("forward");
        let correct = (0..500).filter(|&i| argmax(out.row(i)) == y[i] as usize).count();
        assert!(correct > 475, "{correct} of 500");
    }

    #[test]
    fn networks_it_cannot_train_are_named() {
        let (mut net, x, labels) = tiny();
        net.layers[0].activation = Activation::Elu { clip: 3.0 };
        let err = AdmmTrainer::new(AdmmConfig { rho: 1.0, iterations: 1 })
            .step(&mut net, &x, &labels)
            .expect_err("refused");
        assert_eq!(err.layer, 0);
        assert!(err.source.to_string().contains("needs relu"), "{}", err.source);
    }
}
