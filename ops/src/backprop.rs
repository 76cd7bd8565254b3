//! Backpropagation baselines (SPEC section 6): SGD with momentum, Adam and AdamW on the same
//! [`Network`] as Prospective Learning, with softmax cross-entropy on the output layer.
//!
//! The optimiser rules follow PyTorch's (so published figures are comparable): SGD
//! `buf = mu buf + g; w -= lr buf`; Adam with bias correction; AdamW with decoupled weight
//! decay `w *= 1 - lr wd` before the Adam step; Muon as in [`crate::muon`] for weight
//! matrices, AdamW for biases.
//!
//! The backward pass gets every memory technique the PL step has, so that the memory
//! comparison is against the leanest backprop: each layer's update is applied as soon as its
//! gradient and the error for the layer below are computed (one gradient alive at a time);
//! that error is written over the activation below, whose last use was the gradient; and the
//! first layer's weight gradient, which no error below needs, is formed and applied a tile of
//! rows at a time, never whole.

use crate::dense::Dense;
use crate::error::Dim;
use crate::layer::Op;
use crate::network::{ErrorMode, LayerError, Network, StepStats, argmax, at};
use crate::shard::{Reducer, shard_sum, shard_sum_par, two_rows_at_least};
use crate::sparse::Mask;
use crate::state::{Part, StateTensor, StateTensorMut, TrainerState, count};
use crate::{Matrix, OpsError};
use rayon::prelude::*;
use std::ops::Range;
use std::time::Instant;

/// A first-order optimiser and its settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Optimizer {
    /// SGD with (heavy-ball) momentum and optional L2 weight decay added to the gradient.
    Sgd {
        /// Learning rate.
        lr: f32,
        /// Momentum coefficient (0 for plain SGD).
        momentum: f32,
        /// L2 coefficient added to the gradient.
        weight_decay: f32,
    },
    /// Adam with optional L2 weight decay added to the gradient.
    Adam {
        /// Learning rate.
        lr: f32,
        /// Decay of the first-moment average.
        beta1: f32,
        /// Decay of the second-moment average.
        beta2: f32,
        /// Added to the denominator.
        eps: f32,
        /// L2 coefficient added to the gradient.
        weight_decay: f32,
    },
    /// AdamW: Adam with decoupled weight decay.
    AdamW {
        /// Learning rate.
        lr: f32,
        /// Decay of the first-moment average.
        beta1: f32,
        /// Decay of the second-moment average.
        beta2: f32,
        /// Added to the denominator.
        eps: f32,
        /// Weights shrink by `lr * weight_decay` per step, apart from the gradient.
        weight_decay: f32,
    },
    /// Muon for the weight matrices (see [`crate::muon`]); AdamW for biases (without decay)
    /// and, with `adamw_output`, for the output layer's weights (as Jordan et al. and Liu et
    /// al. advise: Muon is for hidden layers).
    Muon {
        /// Learning rate (of the weights' RMS-matched update and of the biases' AdamW).
        lr: f32,
        /// Momentum coefficient.
        momentum: f32,
        /// Orthogonalise `g + momentum * buf` (Nesterov) instead of `buf`.
        nesterov: bool,
        /// Newton-Schulz iterations per step.
        ns_steps: u32,
        /// Decoupled weight decay of the weights.
        weight_decay: f32,
        /// First-moment decay of the biases' AdamW.
        beta1: f32,
        /// Second-moment decay of the biases' AdamW.
        beta2: f32,
        /// Denominator guard of the biases' AdamW.
        eps: f32,
        /// Train the output layer's weights with AdamW instead of Muon.
        adamw_output: bool,
    },
}

impl Optimizer {
    /// The name used in pipelines and reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Optimizer::Sgd { .. } => "sgd",
            Optimizer::Adam { .. } => "adam",
            Optimizer::AdamW { .. } => "adamw",
            Optimizer::Muon { .. } => "muon",
        }
    }

    /// State buffers this optimiser keeps per weight (momentum: 1, Adam: 2, Muon: 1).
    pub fn buffers_per_parameter(&self) -> usize {
        self.buffers(true)
    }

    /// State buffers per weight (`weights`) or per bias (Muon's biases take AdamW: 2).
    pub fn buffers(&self, weights: bool) -> usize {
        match self {
            Optimizer::Sgd { momentum, .. } => usize::from(*momentum != 0.0),
            Optimizer::Adam { .. } | Optimizer::AdamW { .. } => 2,
            Optimizer::Muon { .. } => 2 - usize::from(weights),
        }
    }

    /// Bytes a step needs beside a `d x m` weight gradient to turn it into an update: Muon's
    /// orthogonalised direction and its workspace; nothing for the element-wise rules.
    pub fn update_workspace_bytes(&self, d: usize, m: usize) -> usize {
        match self {
            Optimizer::Muon { .. } => d * m * size_of::<f32>() + crate::muon::workspace_bytes(d, m),
            _ => 0,
        }
    }

    /// The settings by name, for run records (booleans as 0 or 1).
    pub fn settings(&self) -> Vec<(&'static str, f64)> {
        match *self {
            Optimizer::Sgd { lr, momentum, weight_decay } => {
                vec![("lr", lr as f64), ("momentum", momentum as f64), ("weight_decay", weight_decay as f64)]
            }
            Optimizer::Adam { lr, beta1, beta2, eps, weight_decay }
            | Optimizer::AdamW { lr, beta1, beta2, eps, weight_decay } => vec![
                ("lr", lr as f64),
                ("beta1", beta1 as f64),
                ("beta2", beta2 as f64),
                ("eps", eps as f64),
                ("weight_decay", weight_decay as f64),
            ],
            Optimizer::Muon {
                lr,
                momentum,
                nesterov,
                ns_steps,
                weight_decay,
                beta1,
                beta2,
                eps,
                adamw_output,
            } => {
                vec![
                    ("lr", lr as f64),
                    ("momentum", momentum as f64),
                    ("nesterov", f64::from(u8::from(nesterov))),
                    ("ns_steps", ns_steps as f64),
                    ("weight_decay", weight_decay as f64),
                    ("beta1", beta1 as f64),
                    ("beta2", beta2 as f64),
                    ("eps", eps as f64),
                    ("adamw_output", f64::from(u8::from(adamw_output))),
                ]
            }
        }
    }

    /// One line for `plflow check` and reports.
    pub fn describe(&self) -> String {
        match *self {
            Optimizer::Sgd { lr, momentum, weight_decay } => {
                format!("backprop with SGD, lr {lr}, momentum {momentum}, weight decay {weight_decay}")
            }
            Optimizer::Adam { lr, beta1, beta2, eps, weight_decay } => format!(
                "backprop with Adam, lr {lr}, betas ({beta1}, {beta2}), eps {eps}, weight decay {weight_decay}"
            ),
            Optimizer::AdamW { lr, beta1, beta2, eps, weight_decay } => format!(
                "backprop with AdamW, lr {lr}, betas ({beta1}, {beta2}), eps {eps}, decoupled weight decay {weight_decay}"
            ),
            Optimizer::Muon {
                lr,
                momentum,
                nesterov,
                ns_steps,
                weight_decay,
                beta1,
                beta2,
                eps,
                adamw_output,
            } => {
                format!(
                    "backprop with Muon, lr {lr}, momentum {momentum}{}, {ns_steps} Newton-Schulz steps, decoupled weight decay {weight_decay}; biases{} AdamW, betas ({beta1}, {beta2}), eps {eps}",
                    if nesterov { " (Nesterov)" } else { "" },
                    if adamw_output { " and output weights" } else { "" }
                )
            }
        }
    }
}

/// Optimiser state of one parameter tensor.
#[derive(Debug)]
pub(crate) struct Moments {
    first: Option<Matrix>,
    second: Option<Matrix>,
    /// Updated by Muon's orthogonalised rule (weights of hidden layers under Muon).
    orthogonal: bool,
    /// Muon's direction while a step's gradient arrives in blocks (none between steps).
    direction: Option<Matrix>,
}

impl Moments {
    /// State for a `rows x cols` tensor: `orthogonal` for weights Muon updates (one
    /// momentum buffer); element-wise rules keep the optimiser's buffers (Adam's two for the
    /// tensors Muon leaves to AdamW).
    pub(crate) fn new(rows: usize, cols: usize, opt: &Optimizer, orthogonal: bool) -> Self {
        let k = opt.buffers(orthogonal || !matches!(opt, Optimizer::Muon { .. }));
        Self {
            first: (k >= 1).then(|| Matrix::zeros(rows, cols)),
            second: (k >= 2).then(|| Matrix::zeros(rows, cols)),
            orthogonal,
            direction: None,
        }
    }

    pub(crate) fn bytes(&self) -> usize {
        self.first.as_ref().map_or(0, Matrix::bytes) + self.second.as_ref().map_or(0, Matrix::bytes)
    }

    /// Apply gradient `g` to parameters `p` at step `t` (1-based); `p` and `g` are the
    /// parameters from flat index `offset` on. `decay` says whether weight decay applies
    /// (weights yes, biases no, as is customary).
    fn apply(&mut self, offset: usize, p: &mut [f32], g: &[f32], opt: &Optimizer, t: u64, decay: bool) {
        let range = offset..offset + g.len();
        match *opt {
            Optimizer::Sgd { lr, momentum, weight_decay } => {
                let wd = if decay { weight_decay } else { 0.0 };
                match &mut self.first {
                    Some(buf) => {
                        let rule = SgdRule { lr, momentum, wd };
                        let b = &mut buf.as_mut_slice()[range];
                        let share = thread_share(p.len());
                        if share >= p.len() {
                            return sgd_run(p, g, b, &rule);
                        }
                        let values = p.par_chunks_mut(share).zip(g.par_chunks(share));
                        values.zip(b.par_chunks_mut(share)).for_each(|((p, g), b)| sgd_run(p, g, b, &rule));
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
                self.adam(range, p, g, lr, beta1, beta2, eps, wd, t);
            }
            // Muon reaches here for the tensors it leaves to AdamW (its own weights go
            // through `muon_rows`).
            Optimizer::AdamW { lr, beta1, beta2, eps, weight_decay }
            | Optimizer::Muon { lr, beta1, beta2, eps, weight_decay, .. } => {
                if decay {
                    let keep = 1.0 - lr * weight_decay;
                    p.iter_mut().for_each(|p| *p *= keep);
                }
                self.adam(range, p, g, lr, beta1, beta2, eps, 0.0, t);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn adam(
        &mut self,
        range: std::ops::Range<usize>,
        p: &mut [f32],
        g: &[f32],
        lr: f32,
        b1: f32,
        b2: f32,
        eps: f32,
        wd: f32,
        t: u64,
    ) {
        let (Some(m), Some(v)) = (&mut self.first, &mut self.second) else { return };
        let (m, v) = (&mut m.as_mut_slice()[range.clone()], &mut v.as_mut_slice()[range]);
        let rule = AdamRule { lr, b1, b2, eps, wd, c1: 1.0 - b1.powi(t as i32), c2: 1.0 - b2.powi(t as i32) };
        let share = thread_share(p.len());
        if share >= p.len() {
            return adam_run(p, g, m, v, &rule);
        }
        let values = p.par_chunks_mut(share).zip(g.par_chunks(share));
        let moments = m.par_chunks_mut(share).zip(v.par_chunks_mut(share));
        values.zip(moments).for_each(|((p, g), (m, v))| adam_run(p, g, m, v, &rule));
    }
}

/// Adam's rule for one step: rates and bias corrections `c1 = 1 - b1^t`, `c2 = 1 - b2^t`.
struct AdamRule {
    lr: f32,
    b1: f32,
    b2: f32,
    eps: f32,
    wd: f32,
    c1: f32,
    c2: f32,
}

widest_vectors! {
    /// One run of Adam's element-wise update, in the widest vector lanes the CPU has (the
    /// same bits as scalar code: no operation is fused).
    fn adam_run(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], rule: &AdamRule) => adam_values
}

#[inline(always)]
fn adam_values(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], rule: &AdamRule) {
    let AdamRule { lr, b1, b2, eps, wd, c1, c2 } = *rule;
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        let g = g + wd * *p;
        *m = b1 * *m + (1.0 - b1) * g;
        *v = b2 * *v + (1.0 - b2) * g * g;
        let mhat = *m / c1;
        let vhat = *v / c2;
        *p -= lr * mhat / (vhat.sqrt() + eps);
    }
}

/// SGD's rule with momentum for one step.
struct SgdRule {
    lr: f32,
    momentum: f32,
    wd: f32,
}

widest_vectors! {
    /// One run of SGD's element-wise update with momentum, in the widest vector lanes.
    fn sgd_run(p: &mut [f32], g: &[f32], b: &mut [f32], rule: &SgdRule) => sgd_values
}

#[inline(always)]
fn sgd_values(p: &mut [f32], g: &[f32], b: &mut [f32], rule: &SgdRule) {
    let SgdRule { lr, momentum, wd } = *rule;
    for ((p, &g), b) in p.iter_mut().zip(g).zip(b) {
        let g = g + wd * *p;
        *b = momentum * *b + g;
        *p -= lr * *b;
    }
}

/// Fewest values an element-wise optimiser update splits between the threads.
const SHARED_FROM: usize = 1 << 14;

/// Values per thread of an element-wise update of `len` values (`len` itself when short):
/// PL folds its updates on every thread, and so do the baselines.
fn thread_share(len: usize) -> usize {
    let threads = crate::threads();
    if len < SHARED_FROM || threads < 2 { len.max(1) } else { len.div_ceil(threads).next_multiple_of(16) }
}

/// A backprop trainer: the optimiser and its state for every layer.
#[derive(Debug)]
pub struct BackpropTrainer {
    /// The optimiser.
    pub optimizer: Optimizer,
    state: OptimizerState,
}

/// Every layer's optimiser state (weights, bias) and the step count: what the rules that
/// take gradient steps (backprop, Forward-Forward, NoProp) keep between steps.
#[derive(Debug)]
pub(crate) struct OptimizerState {
    /// `(weights, bias)` moments of every layer.
    pub(crate) layers: Vec<(Moments, Moments)>,
    /// Steps taken (Adam's bias correction; the draws of Forward-Forward and NoProp).
    pub(crate) steps: u64,
}

impl OptimizerState {
    /// Fresh state for every layer of `network` under `optimizer`, with Muon's orthogonal
    /// rule for the weights of the layers `orthogonal` names.
    pub(crate) fn new(network: &Network, optimizer: &Optimizer, orthogonal: impl Fn(usize) -> bool) -> Self {
        let layers = network
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let (d, m) = l.params().map_or((0, 0), |p| (p.inputs(), p.outputs()));
                (Moments::new(d, m, optimizer, orthogonal(i)), Moments::new(1, m, optimizer, false))
            })
            .collect();
        Self { layers, steps: 0 }
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.layers.iter().map(|(w, b)| w.bytes() + b.bytes()).sum()
    }
}

impl Moments {
    pub(crate) fn buffers(&self, prefix: usize) -> [(&'static str, Option<&Matrix>); 2] {
        let names = [["weight.first", "weight.second"], ["bias.first", "bias.second"]][prefix];
        [(names[0], self.first.as_ref()), (names[1], self.second.as_ref())]
    }

    pub(crate) fn buffers_mut(&mut self, prefix: usize) -> [(&'static str, Option<&mut Matrix>); 2] {
        let names = [["weight.first", "weight.second"], ["bias.first", "bias.second"]][prefix];
        [(names[0], self.first.as_mut()), (names[1], self.second.as_mut())]
    }
}

impl TrainerState for OptimizerState {
    fn tensors(&self) -> Vec<Part<StateTensor<'_>>> {
        let mut parts = Vec::new();
        for (l, (w, b)) in self.layers.iter().enumerate() {
            for (name, m) in w.buffers(0).into_iter().chain(b.buffers(1)) {
                parts.extend(m.map(|m| Part::of(l, name, m.into())));
            }
        }
        parts
    }

    fn tensors_mut(&mut self) -> Vec<Part<StateTensorMut<'_>>> {
        let mut parts = Vec::new();
        for (l, (w, b)) in self.layers.iter_mut().enumerate() {
            for (name, m) in w.buffers_mut(0).into_iter().chain(b.buffers_mut(1)) {
                parts.extend(m.map(|m| Part::of(l, name, m.into())));
            }
        }
        parts
    }

    fn scalars(&self) -> Vec<Part<f64>> {
        vec![Part::global("steps", self.steps as f64)]
    }

    fn set_scalar(&mut self, layer: Option<usize>, name: &str, value: f64) -> bool {
        match (layer, name, count(value)) {
            (None, "steps", Some(v)) => {
                self.steps = v;
                true
            }
            _ => false,
        }
    }
}

/// The trainers built on [`OptimizerState`] list it as their whole state.
macro_rules! optimizer_state_is_the_state {
    ($trainer:ty) => {
        impl crate::state::TrainerState for $trainer {
            fn tensors(&self) -> Vec<crate::state::Part<crate::state::StateTensor<'_>>> {
                self.state.tensors()
            }

            fn tensors_mut(&mut self) -> Vec<crate::state::Part<crate::state::StateTensorMut<'_>>> {
                self.state.tensors_mut()
            }

            fn scalars(&self) -> Vec<crate::state::Part<f64>> {
                self.state.scalars()
            }

            fn set_scalar(&mut self, layer: Option<usize>, name: &str, value: f64) -> bool {
                self.state.set_scalar(layer, name, value)
            }
        }
    };
}
pub(crate) use optimizer_state_is_the_state;

optimizer_state_is_the_state!(BackpropTrainer);

impl crate::state::Trainer for BackpropTrainer {
    fn step(&mut self, net: &mut Network, x: &Matrix, labels: &[u32]) -> Result<StepStats, LayerError> {
        BackpropTrainer::step(self, net, x, labels)
    }

    fn state_bytes(&self) -> usize {
        BackpropTrainer::state_bytes(self)
    }

    fn step_sharded(
        &mut self,
        net: &mut Network,
        x: &Matrix,
        labels: &[u32],
        batch: usize,
        reducer: &mut dyn Reducer,
    ) -> Result<StepStats, LayerError> {
        BackpropTrainer::step_sharded(self, net, x, labels, batch, reducer)
    }
}

impl BackpropTrainer {
    /// Fresh state for every layer of `network`.
    pub fn new(network: &Network, optimizer: Optimizer) -> Self {
        let output = network.layers.iter().rposition(|l| l.params().is_some());
        let orthogonal = |i: usize| match optimizer {
            Optimizer::Muon { adamw_output, .. } => !(adamw_output && Some(i) == output),
            _ => false,
        };
        let state = OptimizerState::new(network, &optimizer, orthogonal);
        Self { optimizer, state }
    }

    /// Bytes of optimiser state held.
    pub fn state_bytes(&self) -> usize {
        self.state.bytes()
    }

    /// One step of minibatch backprop on `x` with class labels `labels`.
    pub fn step(&mut self, net: &mut Network, x: &Matrix, labels: &[u32]) -> Result<StepStats, LayerError> {
        self.step_tiled(net, x, labels, GRADIENT_TILE_ROWS)
    }

    /// [`BackpropTrainer::step`] with the first layer's gradient streamed in tiles of
    /// `tile_rows` input rows.
    fn step_tiled(
        &mut self,
        net: &mut Network,
        x: &Matrix,
        labels: &[u32],
        tile_rows: usize,
    ) -> Result<StepStats, LayerError> {
        let count = net.layers.len();
        if count == 0 {
            return Ok(StepStats::default());
        }
        self.state.steps += 1;
        let batch = net.batch_of(x);
        let clock = Instant::now();
        let mut acts = net.forward_all(x, batch)?;
        let Some(mut delta) = acts.pop() else {
            return Ok(StepStats::default());
        };
        let mut stats = softmax_cross_entropy(&mut delta, labels).map_err(at(count - 1))?;
        stats.forward_seconds = clock.elapsed().as_secs_f64();
        // Deltas of residual adds, `(layer whose output was added, delta)`, until that
        // layer's delta is formed.
        let mut pending: Vec<(usize, Matrix)> = Vec::new();

        for l in (0..count).rev() {
            let clock = Instant::now();
            if l == 0 {
                self.first_layer(net, x, &delta, tile_rows).map_err(at(0))?;
                stats.solve_seconds += clock.elapsed().as_secs_f64();
                break;
            }
            let grads = net.layers[l].op.gradients(&acts[l - 1], &delta).map_err(at(l))?;
            let solved = Instant::now();
            // The input activation's last use was the gradient: the error below takes its place.
            let below = acts.pop().expect("one activation per layer below this one");
            // The gradient reaching a residual add flows to the output it added as well; a
            // concatenation's is split between its two sources.
            let skip = net.layers[l].residual.map(|r| (r, net.layers[l].skip_error(&delta)));
            let skips = net.skips_for(l, skip.as_ref().map(|(_, e)| e.as_ref()), &pending);
            let below = net.error_below_in_place(l, &delta, below, batch, ErrorMode::Gradient, &skips)?;
            pending.retain(|(r, _)| *r != l - 1);
            if let Some((r, e)) = skip.filter(|&(r, _)| r + 1 < l) {
                pending.push((r, e.into_owned()));
            }
            let propagated = Instant::now();
            stats.propagate_seconds += propagated.duration_since(solved).as_secs_f64();
            drop(delta);
            if let Some((gw, gb)) = grads {
                self.apply_whole(net, l, &gw, &gb, x.rows()).map_err(at(l))?;
            }
            stats.solve_seconds +=
                solved.duration_since(clock).as_secs_f64() + propagated.elapsed().as_secs_f64();
            delta = below;
        }
        Ok(stats)
    }

    /// One step of a distributed run (see [`crate::state::Trainer::step_sharded`]): this
    /// worker's rows forward and back; the loss (over the global batch's size) and every
    /// layer's gradients are summed over the global batch's shards, so every worker applies
    /// the same update. Gradients are formed whole, not streamed.
    pub fn step_sharded(
        &mut self,
        net: &mut Network,
        x: &Matrix,
        labels: &[u32],
        batch: usize,
        reducer: &mut dyn Reducer,
    ) -> Result<StepStats, LayerError> {
        let count = net.layers.len();
        if count == 0 {
            return Ok(StepStats::default());
        }
        self.state.steps += 1;
        let padded = two_rows_at_least(x, net.batch_of(x));
        let x = padded.as_ref().unwrap_or(x);
        let local = net.batch_of(x);
        let clock = Instant::now();
        let mut acts = net.forward_all(x, local)?;
        let Some(mut delta) = acts.pop() else {
            return Ok(StepStats::default());
        };
        let classes = delta.cols();
        let scale = 1.0 / batch.max(1) as f32;
        let figures = shard_sum(reducer, batch, &mut |_, samples: Range<usize>| {
            let values = &mut delta.as_mut_slice()[samples.start * classes..samples.end * classes];
            let s = cross_entropy_rows(values, classes, &labels[samples], scale)?;
            Ok::<_, OpsError>(vec![s.loss_sum, s.correct as f64])
        })
        .map_err(at(count - 1))?;
        let mut stats = StepStats {
            rows: batch,
            loss_sum: figures[0],
            correct: figures[1] as usize,
            ..StepStats::default()
        };
        stats.forward_seconds = clock.elapsed().as_secs_f64();
        let mut pending: Vec<(usize, Matrix)> = Vec::new();
        for l in (0..count).rev() {
            let clock = Instant::now();
            let input = if l == 0 { x } else { &acts[l - 1] };
            let grads =
                sharded_gradients(&*net.layers[l].op, input, &delta, local, batch, reducer).map_err(at(l))?;
            let solved = Instant::now();
            let mut below = None;
            if l > 0 {
                let act = acts.pop().expect("one activation per layer below this one");
                let skip = net.layers[l].residual.map(|r| (r, net.layers[l].skip_error(&delta)));
                let skips = net.skips_for(l, skip.as_ref().map(|(_, e)| e.as_ref()), &pending);
                below = Some(net.error_below_in_place(l, &delta, act, local, ErrorMode::Gradient, &skips)?);
                pending.retain(|(r, _)| *r != l - 1);
                if let Some((r, e)) = skip.filter(|&(r, _)| r + 1 < l) {
                    pending.push((r, e.into_owned()));
                }
            }
            let propagated = Instant::now();
            stats.propagate_seconds += propagated.duration_since(solved).as_secs_f64();
            if let Some((gw, gb)) = grads {
                self.apply_whole(net, l, &gw, &gb, batch).map_err(at(l))?;
            }
            stats.solve_seconds +=
                solved.duration_since(clock).as_secs_f64() + propagated.elapsed().as_secs_f64();
            match below {
                Some(b) => delta = b,
                None => break,
            }
        }
        Ok(stats)
    }

    /// The first layer needs no error below it, so its weight gradient may be formed and
    /// applied a block of rows at a time, never whole (a dense layer does: the same
    /// streaming PL's first-layer solve gets).
    fn first_layer(
        &mut self,
        net: &mut Network,
        x: &Matrix,
        delta: &Matrix,
        tile_rows: usize,
    ) -> Result<(), OpsError> {
        let layer = &mut net.layers[0];
        let mask = layer.mask.as_ref();
        let (state, optimizer, steps) = (&mut self.state.layers[0], &self.optimizer, self.state.steps);
        let mut sink = |params: &mut Dense, row0: usize, gw: &[f32], gb: Option<&Matrix>| {
            apply(state, optimizer, steps, params, mask, row0, gw, gb, x.rows())
        };
        layer.op.stream_gradients(x, delta, tile_rows, &mut sink)
    }

    /// Apply the gradients `(gw, gb)` of layer `l`.
    fn apply_whole(
        &mut self,
        net: &mut Network,
        l: usize,
        gw: &Matrix,
        gb: &Matrix,
        rows: usize,
    ) -> Result<(), OpsError> {
        let layer = &mut net.layers[l];
        let mask = layer.mask.as_ref();
        let Some(params) = layer.op.params_mut() else { return Ok(()) };
        apply(
            &mut self.state.layers[l],
            &self.optimizer,
            self.state.steps,
            params,
            mask,
            0,
            gw.as_slice(),
            Some(gb),
            rows,
        )
    }
}

/// Apply weight-gradient rows `row0..` (`gw`) and, when given, the bias gradient `gb` to
/// `params` with optimiser `state` at step `steps`; the mask, if any, is re-applied to the
/// rows that changed. `batch_rows` is for the error message.
#[allow(clippy::too_many_arguments)]
pub(crate) fn apply(
    state: &mut (Moments, Moments),
    optimizer: &Optimizer,
    steps: u64,
    params: &mut Dense,
    mask: Option<&Mask>,
    row0: usize,
    gw: &[f32],
    gb: Option<&Matrix>,
    batch_rows: usize,
) -> Result<(), OpsError> {
    if !gw.iter().chain(gb.map_or(&[][..], |g| g.as_slice())).all(|v| v.is_finite()) {
        let cols = params.inputs();
        return Err(OpsError::NonFinite { op: "backprop", what: "the gradient", rows: batch_rows, cols });
    }
    let (sw, sb) = state;
    let m = params.outputs().max(1);
    let range = row0 * m..row0 * m + gw.len();
    if sw.orthogonal {
        muon_rows(sw, optimizer, params, mask, range.start, gw);
    } else {
        let weights = &mut params.weights.as_mut_slice()[range.clone()];
        sw.apply(range.start, weights, gw, optimizer, steps, true);
        if let Some(mask) = mask {
            mask.apply_rows(&mut params.weights, row0, gw.len() / m);
        }
    }
    if let Some(gb) = gb {
        sb.apply(0, params.bias.as_mut_slice(), gb.as_slice(), optimizer, steps, false);
    }
    Ok(())
}

/// Muon's weights: fold gradient values `g` (from flat index `offset`) into the momentum and
/// the step's direction; once the last row has arrived, orthogonalise the direction and
/// apply it (`W <- W - lr (0.2 sqrt(max(d, m)) O + wd W)`), then release it.
fn muon_rows(
    state: &mut Moments,
    optimizer: &Optimizer,
    params: &mut Dense,
    mask: Option<&Mask>,
    offset: usize,
    g: &[f32],
) {
    let Optimizer::Muon { lr, momentum, nesterov, ns_steps, weight_decay, .. } = *optimizer else { return };
    let (d, m) = (params.inputs(), params.outputs());
    let (Some(buf), direction) = (&mut state.first, &mut state.direction) else { return };
    let dir = direction.get_or_insert_with(|| Matrix::zeros(d, m));
    let range = offset..offset + g.len();
    for ((b, u), &g) in
        buf.as_mut_slice()[range.clone()].iter_mut().zip(&mut dir.as_mut_slice()[range]).zip(g)
    {
        *b = momentum * *b + g;
        *u = if nesterov { g + momentum * *b } else { *b };
    }
    if offset + g.len() < d * m {
        return;
    }
    let Some(mut dir) = direction.take() else { return };
    crate::muon::orthogonalize(&mut dir, ns_steps as usize);
    let (step, keep) = (lr * crate::muon::RMS_MATCH * (d.max(m) as f32).sqrt(), 1.0 - lr * weight_decay);
    for (w, &o) in params.weights.as_mut_slice().iter_mut().zip(dir.as_slice()) {
        *w = keep * *w - step * o;
    }
    if let Some(mask) = mask {
        mask.apply_rows(&mut params.weights, 0, d);
    }
}

/// Rows of the first layer's weight gradient formed at a time: 128 x 512 outputs is 256 KiB.
pub const GRADIENT_TILE_ROWS: usize = 128;

/// Rows per tile of a `d`-row weight gradient formed in tiles of at most
/// [`GRADIENT_TILE_ROWS`]: the fewest such tiles, evened out (784 rows: 7 of 112), so that
/// the last tile does not leave a thread idle.
pub fn gradient_tile_rows(d: usize) -> usize {
    let d = d.max(1);
    d.div_ceil(d.div_ceil(GRADIENT_TILE_ROWS))
}

/// Replace scores `z` by the gradient of the mean cross-entropy, `(softmax(z) - onehot) / n`,
/// and return the summed loss and the correct count.
pub fn softmax_cross_entropy(z: &mut Matrix, labels: &[u32]) -> Result<StepStats, OpsError> {
    let (n, classes) = (z.rows(), z.cols());
    OpsError::check("cross-entropy", "labels", &[Dim::Exact(n)], &[labels.len()])?;
    cross_entropy_rows(z.as_mut_slice(), classes, labels, 1.0 / n.max(1) as f32)
}

/// [`softmax_cross_entropy`] over rows `values` of `classes` scores, the gradient scaled by
/// `scale` (one over the whole batch's size).
fn cross_entropy_rows(
    values: &mut [f32],
    classes: usize,
    labels: &[u32],
    scale: f32,
) -> Result<StepStats, OpsError> {
    crate::clean_vector_state();
    let mut stats = StepStats { rows: labels.len(), ..StepStats::default() };
    for (row, &label) in values.chunks_exact_mut(classes.max(1)).zip(labels) {
        let label = label as usize;
        if label >= classes {
            return Err(OpsError::Label { op: "cross-entropy", label, classes });
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

/// A layer's weight and bias gradients summed over the shards of the global batch (`None`
/// for kinds without parameters); `local` samples are this worker's.
fn sharded_gradients(
    op: &dyn Op,
    input: &Matrix,
    delta: &Matrix,
    local: usize,
    batch: usize,
    reducer: &mut dyn Reducer,
) -> Result<Option<(Matrix, Matrix)>, OpsError> {
    if op.params().is_none() {
        return Ok(None);
    }
    let per = input.rows() / local.max(1);
    let sums = shard_sum_par(reducer, batch, &|_, samples: Range<usize>| {
        let rows = samples.start * per..samples.end * per;
        op.gradient_partial(input, delta, rows)?.ok_or_else(|| OpsError::Invalid {
            op: "distributed step",
            detail: format!("a `{}` layer with parameters gave no gradient sums", op.kind()),
        })
    })?;
    op.gradients_from_sums(&sums)
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
            let mut outputs: Vec<Vec<f64>> = Vec::new();
            for layer in &net.layers {
                if let Some(cat) = layer.op_as::<crate::concat::Concat>() {
                    let skip = outputs[layer.residual.expect("a concat has a skip source")].clone();
                    a = if cat.skip_first { [skip, a].concat() } else { [a, skip].concat() };
                    outputs.push(a.clone());
                    continue;
                }
                let params = layer.params().expect("dense");
                let w = &params.weights;
                let mut z: Vec<f64> = (0..w.cols())
                    .map(|j| {
                        params.bias.as_slice()[j] as f64
                            + (0..w.rows()).map(|k| a[k] * w.row(k)[j] as f64).sum::<f64>()
                    })
                    .collect();
                if let Some(r) = layer.residual {
                    z.iter_mut().zip(&outputs[r]).for_each(|(z, s)| *z += s);
                }
                if let Activation::Elu { .. } = layer.activation {
                    z.iter_mut().for_each(|v| *v = if *v > 0.0 { *v } else { v.exp_m1() });
                }
                outputs.push(z.clone());
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
            if net.layers[l].params().is_none() {
                continue;
            }
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
                            Optimizer::Muon { .. } => unreachable!("muon_steps_match_hand_computation"),
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

    /// Two Muon steps against Muon's formulas (momentum, Nesterov direction, the plain-loop
    /// Newton-Schulz iteration, Liu et al.'s scale, decoupled decay; AdamW for biases)
    /// applied to numerically differentiated gradients; and the first layer's gradient
    /// streamed one row at a time gives the same weights as in one block.
    #[test]
    fn muon_steps_match_hand_computation() {
        for adamw_output in [false, true] {
            muon_steps_match(adamw_output);
        }
    }

    fn muon_steps_match(adamw_output: bool) {
        let (lr, mu, wd, (b1, b2, eps)) = (0.02f32, 0.9f32, 0.1f32, (0.9f32, 0.999f32, 1e-8f32));
        let opt = Optimizer::Muon {
            lr,
            momentum: mu,
            nesterov: true,
            ns_steps: 5,
            weight_decay: wd,
            beta1: b1,
            beta2: b2,
            eps,
            adamw_output,
        };
        let (mut net, x, y) = tiny();
        let mut streamed = Network { layers: net.layers.clone() };
        let mut want = params(&net);
        let mut m1: Vec<Vec<f64>> = want.iter().map(|p| vec![0.0; p.len()]).collect();
        let mut m2 = m1.clone();
        let mut trainer = BackpropTrainer::new(&net, opt);
        let mut row_by_row = BackpropTrainer::new(&streamed, opt);
        for t in 1..=2 {
            let mut reference = Network { layers: net.layers.clone() };
            for (k, layer) in reference.layers.iter_mut().enumerate() {
                let p = layer.params_mut().expect("dense");
                p.weights.as_mut_slice().copy_from_slice(&want[2 * k]);
                p.bias.as_mut_slice().copy_from_slice(&want[2 * k + 1]);
            }
            let grads = numeric_gradient(&reference, &x, &y);
            for (i, (p, g)) in want.iter_mut().zip(&grads).enumerate() {
                let (weights, output) = (i % 2 == 0, i == 2);
                if weights && !(adamw_output && output) {
                    let direction: Vec<f64> = (0..p.len())
                        .map(|k| {
                            m1[i][k] = mu as f64 * m1[i][k] + g[k];
                            g[k] + mu as f64 * m1[i][k]
                        })
                        .collect();
                    let o = crate::muon::tests::naive(&direction, 2, 2, 5);
                    let scale = lr as f64 * 0.2 * 2f64.sqrt();
                    for (w, o) in p.iter_mut().zip(o) {
                        *w = ((1.0 - lr as f64 * wd as f64) * *w as f64 - scale * o) as f32;
                    }
                    continue;
                }
                // AdamW: decoupled decay for weights, none for biases.
                let keep = if weights { 1.0 - lr as f64 * wd as f64 } else { 1.0 };
                for (k, w) in p.iter_mut().enumerate() {
                    m1[i][k] = b1 as f64 * m1[i][k] + (1.0 - b1 as f64) * g[k];
                    m2[i][k] = b2 as f64 * m2[i][k] + (1.0 - b2 as f64) * g[k] * g[k];
                    let mh = m1[i][k] / (1.0 - (b1 as f64).powi(t));
                    let vh = m2[i][k] / (1.0 - (b2 as f64).powi(t));
                    *w = (keep * *w as f64 - lr as f64 * mh / (vh.sqrt() + eps as f64)) as f32;
                }
            }
            trainer.step(&mut net, &x, &y).expect("step");
            row_by_row.step_tiled(&mut streamed, &x, &y, 1).expect("step");
            for ((got, rows), want) in params(&net).iter().zip(params(&streamed)).zip(&want) {
                for ((g, r), w) in got.iter().zip(&rows).zip(want) {
                    assert!((g - w).abs() < 2e-4, "muon (adamw_output {adamw_output}) step {t}: {g} vs {w}");
                    assert!((g - r).abs() < 1e-6, "muon step {t}: streamed {r} vs whole {g}");
                }
            }
        }
    }

    /// Residual adds pass the gradient to the output they added: an SGD step on a network
    /// with a skip over one layer and one over two (both from layer 0, so layer 0's output
    /// gets three gradients) moves every weight by `-lr` times its finite-difference gradient.
    #[test]
    fn residual_adds_carry_the_gradient_to_their_source() {
        use crate::init::xavier_normal;
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let elu = Activation::Elu { clip: 10.0 };
        let net = Network {
            layers: vec![
                Layer::dense(Dense::new(xavier_normal(2, 3, &mut rng)), elu),
                Layer { residual: Some(0), ..Layer::dense(Dense::new(xavier_normal(3, 3, &mut rng)), elu) },
                Layer { residual: Some(0), ..Layer::dense(Dense::new(xavier_normal(3, 3, &mut rng)), elu) },
                Layer::dense(Dense::new(xavier_normal(3, 2, &mut rng)), Activation::Linear),
            ],
        };
        let x = xavier_normal(4, 2, &mut rng);
        sgd_step_matches_finite_differences(net, &x, &[0, 1, 1, 0]);
    }

    /// One SGD step on `net` moves every weight by `-lr` times its finite-difference
    /// gradient, and the forward pass that frees activations as it goes gives the training
    /// pass's scores.
    fn sgd_step_matches_finite_differences(mut net: Network, x: &Matrix, y: &[u32]) {
        let lr = 0.5;
        let grads = numeric_gradient(&net, x, y);
        let before = params(&net);
        let mut trainer = BackpropTrainer::new(&net, Optimizer::Sgd { lr, momentum: 0.0, weight_decay: 0.0 });
        trainer.step(&mut net, x, y).expect("step");
        for (i, ((got, was), g)) in params(&net).iter().zip(&before).zip(&grads).enumerate() {
            for k in 0..got.len() {
                let want = was[k] as f64 - lr as f64 * g[k];
                assert!((got[k] as f64 - want).abs() < 2e-4, "tensor {i}[{k}]: {} vs {want}", got[k]);
            }
        }
        let scores = net.forward(x).expect("forward");
        let all = net.forward_all(x, y.len()).expect("forward all");
        assert_eq!(scores.as_slice(), all.last().expect("scores").as_slice());
    }

    /// A concatenation splits the gradient between its sources: an SGD step on a network
    /// joining layer 1's output with layer 0's (skip first) and then a layer's output with
    /// itself (a skip from the layer just below) moves every weight by `-lr` times its
    /// finite-difference gradient.
    #[test]
    fn concatenations_split_the_gradient_between_their_sources() {
        use crate::concat::Concat;
        use crate::init::xavier_normal;
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let elu = Activation::Elu { clip: 10.0 };
        let cat = |input, skip, skip_first, r| Layer {
            residual: Some(r),
            ..Layer::new(Concat { positions: 1, input, skip, skip_first }, Activation::Linear, 1)
        };
        let net = Network {
            layers: vec![
                Layer::dense(Dense::new(xavier_normal(2, 3, &mut rng)), elu),
                Layer::dense(Dense::new(xavier_normal(3, 2, &mut rng)), elu),
                cat(2, 3, true, 0),
                Layer::dense(Dense::new(xavier_normal(5, 3, &mut rng)), elu),
                cat(3, 3, false, 3),
                Layer::dense(Dense::new(xavier_normal(6, 2, &mut rng)), Activation::Linear),
            ],
        };
        let x = xavier_normal(5, 2, &mut rng);
        sgd_step_matches_finite_differences(net, &x, &[0, 1, 1, 0, 1]);
    }

    /// Forming and applying the first layer's gradient a few rows at a time gives the weights
    /// a whole-gradient step gives, with and without a mask, for every optimiser.
    #[test]
    fn tiled_first_layer_matches_whole_gradient() {
        use crate::init::xavier_normal;
        use crate::sparse::small_world_mask;
        use rand::SeedableRng;
        use rand_chacha::ChaCha8Rng;
        let opts = [
            Optimizer::Sgd { lr: 0.1, momentum: 0.9, weight_decay: 1e-3 },
            Optimizer::Adam { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 },
            Optimizer::AdamW { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1 },
        ];
        for (opt, masked) in opts.iter().flat_map(|o| [(*o, false), (*o, true)]) {
            let mut rng = ChaCha8Rng::seed_from_u64(3);
            let mut first =
                Layer::dense(Dense::new(xavier_normal(11, 7, &mut rng)), Activation::Elu { clip: 10.0 });
            if masked {
                let mask = small_world_mask(11, 7, 0.2, &mut rng);
                if let Some(d) = first.params_mut() {
                    mask.apply(&mut d.weights);
                }
                first.mask = Some(mask);
            }
            let second = Layer::dense(Dense::new(xavier_normal(7, 3, &mut rng)), Activation::Linear);
            let mut a = Network { layers: vec![first, second] };
            let mut b = Network { layers: a.layers.clone() };
            let (mut ta, mut tb) = (BackpropTrainer::new(&a, opt), BackpropTrainer::new(&b, opt));
            for _ in 0..3 {
                let x = xavier_normal(16, 11, &mut rng);
                let y: Vec<u32> = (0..16).map(|i| (i % 3) as u32).collect();
                ta.step_tiled(&mut a, &x, &y, 1000).expect("whole");
                tb.step_tiled(&mut b, &x, &y, 3).expect("tiles of 3 rows");
            }
            assert_eq!(params(&a), params(&b), "{} masked {masked}", opt.kind());
        }
    }

    /// The element-wise updates of a tensor long enough to be cut between threads (and not
    /// a multiple of the shares) give the bits of the plain scalar formulas, step after step.
    #[test]
    fn shared_vector_updates_give_the_scalar_bits() {
        let len = 3 * SHARED_FROM + 37;
        let wave = |k: usize, s: f32| ((k * 7919 % 211) as f32 - 105.0) * s;
        let opts = [
            Optimizer::Sgd { lr: 0.1, momentum: 0.9, weight_decay: 1e-3 },
            Optimizer::Adam { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-2 },
        ];
        for opt in opts {
            let mut state = Moments::new(1, len, &opt, false);
            let mut p: Vec<f32> = (0..len).map(|k| wave(k, 1e-2)).collect();
            let (mut want, mut m, mut v) = (p.clone(), vec![0.0f32; len], vec![0.0f32; len]);
            for t in 1..=3u64 {
                let g: Vec<f32> = (0..len).map(|k| wave(k + t as usize, 1e-3)).collect();
                state.apply(0, &mut p, &g, &opt, t, true);
                for k in 0..len {
                    let (w, m, v) = (&mut want[k], &mut m[k], &mut v[k]);
                    match opt {
                        Optimizer::Sgd { lr, momentum, weight_decay } => {
                            let g = g[k] + weight_decay * *w;
                            *m = momentum * *m + g;
                            *w -= lr * *m;
                        }
                        Optimizer::Adam { lr, beta1, beta2, eps, weight_decay } => {
                            let g = g[k] + weight_decay * *w;
                            *m = beta1 * *m + (1.0 - beta1) * g;
                            *v = beta2 * *v + (1.0 - beta2) * g * g;
                            let (mh, vh) =
                                (*m / (1.0 - beta1.powi(t as i32)), *v / (1.0 - beta2.powi(t as i32)));
                            *w -= lr * mh / (vh.sqrt() + eps);
                        }
                        _ => unreachable!(),
                    }
                }
                let same = p.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{} step {t}", opt.kind());
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
