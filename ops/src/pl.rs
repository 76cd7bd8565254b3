//! Prospective Learning (SPEC section 2): the trainer that holds PL's per-layer state and
//! performs one training step on a [`Network`].
//!
//! One step: forward with the current weights, smoothed targets, then from the output back
//! to the input: solve layer `l` on its input activation and error; compute the error of
//! layer `l-1` with layer `l`'s weights *before* they change, written over layer `l`'s input
//! activation (its last use); release layer `l`'s error; apply the update. The solve streams
//! a hidden layer's update into its velocity as it is produced (the weights move from the
//! velocity once the error below is formed), so no `d x m` update is held. Every error is
//! thus computed from pre-update weights, exactly as if all were computed before any update,
//! but at most two errors are alive at once, one of them in an activation's place, and none
//! is alive during another layer's solve. The first layer (the largest, with
//! the dataset's features as input) needs no error below it, so its solve consumes its error
//! (solving over it in place where the route allows) and its update is streamed from the
//! solve straight into its state and weights without a `d x m` buffer.

use crate::error::Dim;
use crate::layer::Op;
use crate::network::{ErrorMode, LayerError, Network, StepStats, argmax, at};
use crate::shard::{Reducer, shard_sum, shard_sum_par, two_rows_at_least};
use crate::solve::{Precision, RidgeConfig, RidgeScale, RidgeUpdate, SolvePath};
use crate::state::{Part, StateTensor, StateTensorMut, TrainerState, count};
use crate::update::{LayerState, Storage, UpdateRule};
use crate::{Matrix, OpsError};
use rayon::prelude::*;
use std::ops::Range;
use std::time::Instant;

/// Settings of a PL training step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlConfig {
    /// The regularised least-squares solve.
    pub ridge: RidgeConfig,
    /// The stabilisers applied after each solve.
    pub rule: UpdateRule,
    /// Label smoothing `eps`: targets are `1 - eps` and `eps / (C - 1)`.
    pub label_smoothing: f32,
    /// The size of the error each hidden layer solves for.
    pub error_scale: ErrorScale,
    /// Per-epoch factor of the step: epoch `k` (from 0) solves with `alpha * alpha_decay^k`.
    pub alpha_decay: f64,
}

/// The size of the error a hidden layer's solve is asked to remove.
///
/// A solve turns an error into an update of about the same size (it asks the layer's output
/// to move by `-alpha e`), unlike a gradient step, whose size the rest of the network
/// rescales. So the gains along the error's way down (weight norms, activation
/// derivatives) set each layer's step directly, and in a deep stack they compound. On the
/// MNIST CNN (11 layers) one epoch gives 74.4% test accuracy with raw errors and 87.2% with
/// output-scaled ones; on subsets, raw errors were also the unstable ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorScale {
    /// The propagated error as it is (SPEC section 2, eq. 3-4; the paper's rule).
    Raw,
    /// The propagated error rescaled to the root-mean-square of the output error: every layer
    /// moves by a step the size of the output's, in the direction the error gives.
    Output,
}

/// `m <- s m`, in parallel blocks.
fn scale_in_place(m: &mut Matrix, s: f32) {
    m.as_mut_slice().par_chunks_mut(1 << 16).for_each(|c| c.iter_mut().for_each(|v| *v *= s));
}

/// Root mean square of a matrix's values, in `f64` (in vector lanes and parallel blocks: a
/// serial `f64` sum over a CNN's error maps took a tenth of the step).
fn rms(m: &Matrix) -> f64 {
    let values = m.as_slice();
    (crate::solve::sum_of_squares(values) / values.len().max(1) as f64).sqrt()
}

impl PlConfig {
    /// The foundation PL rule (SPEC section 2 without sparse init, metaplasticity or
    /// orthogonalisation): `lambda` relative to the mean Gram diagonal, the smaller system,
    /// momentum 0.9, spectral clamp 2, label smoothing 0.01.
    pub fn foundation(alpha: f64, lambda: f64) -> Self {
        Self {
            ridge: RidgeConfig {
                alpha,
                lambda,
                scale: RidgeScale::Relative,
                path: SolvePath::Auto,
                precision: Precision::Auto,
                error_checked: false,
            },
            rule: UpdateRule {
                metaplasticity: None,
                momentum: Some(0.9),
                momentum_storage: Storage::F32,
                orthogonalize: None,
                spectral_max: Some(2.0),
            },
            label_smoothing: 0.01,
            error_scale: ErrorScale::Raw,
            alpha_decay: 1.0,
        }
    }
}

/// Prospective Learning over a network: settings and one [`LayerState`] per layer with
/// parameters.
#[derive(Debug)]
pub struct PlTrainer {
    /// Settings.
    pub config: PlConfig,
    /// Per-layer state, in layer order (`None` for layers without parameters).
    pub states: Vec<Option<LayerState>>,
    /// The epoch being trained (from 0), for the step's decay.
    epoch: usize,
}

impl TrainerState for PlTrainer {
    fn tensors(&self) -> Vec<Part<StateTensor<'_>>> {
        let layers = self.states.iter().enumerate();
        let per_layer = layers.filter_map(|(l, s)| s.as_ref().map(|s| (l, s)));
        per_layer.flat_map(|(l, s)| s.buffers().into_iter().map(move |(n, b)| Part::of(l, n, b))).collect()
    }

    fn tensors_mut(&mut self) -> Vec<Part<StateTensorMut<'_>>> {
        let layers = self.states.iter_mut().enumerate();
        let per_layer = layers.filter_map(|(l, s)| s.as_mut().map(|s| (l, s)));
        per_layer
            .flat_map(|(l, s)| s.buffers_mut().into_iter().map(move |(n, b)| Part::of(l, n, b)))
            .collect()
    }

    fn scalars(&self) -> Vec<Part<f64>> {
        let layers = self.states.iter().enumerate();
        let per_layer = layers.filter_map(|(l, s)| s.as_ref().map(|s| (l, s)));
        per_layer
            .flat_map(|(l, s)| {
                [
                    Part::of(l, "steps", s.steps as f64),
                    Part::of(l, "spectral_norm", f64::from(s.spectral_norm)),
                ]
            })
            .collect()
    }

    fn set_scalar(&mut self, layer: Option<usize>, name: &str, value: f64) -> bool {
        let Some(Some(state)) = layer.and_then(|l| self.states.get_mut(l)) else { return false };
        match name {
            "steps" => count(value).map(|v| state.steps = v).is_some(),
            // Written from an f32, so the narrowing is exact.
            "spectral_norm" => {
                state.spectral_norm = value as f32;
                true
            }
            _ => false,
        }
    }
}

impl crate::state::Trainer for PlTrainer {
    fn step(&mut self, net: &mut Network, x: &Matrix, labels: &[u32]) -> Result<StepStats, LayerError> {
        PlTrainer::step(self, net, x, labels)
    }

    fn state_bytes(&self) -> usize {
        PlTrainer::state_bytes(self)
    }

    fn set_epoch(&mut self, epoch: usize) {
        PlTrainer::set_epoch(self, epoch);
    }

    fn step_sharded(
        &mut self,
        net: &mut Network,
        x: &Matrix,
        labels: &[u32],
        batch: usize,
        reducer: &mut dyn Reducer,
    ) -> Result<StepStats, LayerError> {
        PlTrainer::step_sharded(self, net, x, labels, batch, reducer)
    }
}

impl PlTrainer {
    /// Fresh state for every layer of `network`.
    pub fn new(network: &Network, config: PlConfig) -> Self {
        let states = network
            .layers
            .iter()
            .map(|l| l.params().map(|p| LayerState::new(p, l.mask.as_ref(), &l.op.rule(&config.rule))))
            .collect();
        Self { config, states, epoch: 0 }
    }

    /// Set the epoch (from 0) the next steps belong to: their step is `alpha * alpha_decay^epoch`.
    pub fn set_epoch(&mut self, epoch: usize) {
        self.epoch = epoch;
    }

    /// The step size of the current epoch.
    pub fn alpha(&self) -> f64 {
        self.config.ridge.alpha * self.config.alpha_decay.powi(self.epoch.min(i32::MAX as usize) as i32)
    }

    /// Bytes of optimiser state held.
    pub fn state_bytes(&self) -> usize {
        self.states.iter().flatten().map(LayerState::bytes).sum()
    }

    /// One Prospective Learning step on batch `x` (in the first layer's input shape) with
    /// class labels `labels`.
    pub fn step(&mut self, net: &mut Network, x: &Matrix, labels: &[u32]) -> Result<StepStats, LayerError> {
        let mut cfg = self.config;
        cfg.ridge.alpha = self.alpha();
        let count = net.layers.len();
        if count == 0 {
            return Ok(StepStats::default());
        }
        let batch = net.batch_of(x);
        let clock = Instant::now();
        let mut acts = net.forward_all(x, batch)?;
        let Some(mut err) = acts.pop() else {
            return Ok(StepStats::default());
        };
        let mut stats = output_error(&mut err, labels, cfg.label_smoothing).map_err(at(count - 1))?;
        stats.forward_seconds = clock.elapsed().as_secs_f64();
        let output_rms = rms(&err);
        // Errors of residual adds, `(layer whose output was added, error)`, until that
        // layer's output error is formed.
        let mut pending: Vec<(usize, Matrix)> = Vec::new();
        // The factor the current error is to be taken at (see `ErrorScale::Output` below).
        let mut err_scale = 1.0f32;
        // Whether every value of the current error is known finite (a finite sum of squares),
        // so its solve need not scan it.
        let mut err_checked = output_rms.is_finite();

        for l in (0..count).rev() {
            let clock = Instant::now();
            let rule = net.layers[l].op.rule(&cfg.rule);
            // The solve is linear in the error: solving for `s e` is solving for `e` with the
            // step `s alpha`, with no pass over the error to scale it.
            let mut ridge = cfg.ridge;
            ridge.alpha *= f64::from(err_scale);
            ridge.error_checked = err_checked;
            if l == 0 {
                // No error is propagated below the first layer, so nothing needs its old
                // weights: the layer may consume its error and stream its update.
                let layer = &mut net.layers[0];
                if let Some(state) = &mut self.states[0] {
                    let mask = layer.mask.as_ref();
                    layer.op.pl_update_last(state, mask, &rule, x, err, &ridge).map_err(at(0))?;
                }
                stats.solve_seconds += clock.elapsed().as_secs_f64();
                break;
            }
            let update = match &mut self.states[l] {
                Some(state) => {
                    let layer = &net.layers[l];
                    let mask = layer.mask.as_ref();
                    layer.op.pl_update_deferred(state, mask, &rule, &acts[l - 1], &err, &ridge)
                }
                None => Ok(None),
            }
            .map_err(at(l))?;
            let solved = Instant::now();
            let below = acts.pop().expect("one activation per layer below this one");
            // The error reaching a residual add is copied to the output it added; a
            // concatenation's is split between its two sources.
            if err_scale != 1.0 && (net.layers[l].residual.is_some() || !pending.is_empty()) {
                // A skip's error is added to another as it stands (a copy of this one, or
                // one waiting to be added to the error below, beside which this one's
                // propagation must have its scale): give this error its scale first.
                scale_in_place(&mut err, err_scale);
                err_scale = 1.0;
            }
            let skip = net.layers[l].residual.map(|r| (r, net.layers[l].skip_error(&err)));
            let skips = net.skips_for(l, skip.as_ref().map(|(_, e)| e.as_ref()), &pending);
            // The error below is rescaled as a whole, so this one's scale does not matter
            // to it, unless skips are added in (above).
            let (previous, squares) =
                net.error_below_measured(l, &err, below, batch, ErrorMode::Target, &skips)?;
            pending.retain(|(r, _)| *r != l - 1);
            if let Some((r, e)) = skip.filter(|&(r, _)| r + 1 < l) {
                pending.push((r, e.into_owned()));
            }
            let below_scale = match cfg.error_scale {
                ErrorScale::Output => {
                    let size = (squares / previous.as_slice().len().max(1) as f64).sqrt();
                    (output_rms / size.max(f64::MIN_POSITIVE)) as f32
                }
                ErrorScale::Raw => err_scale,
            };
            let propagated = Instant::now();
            stats.propagate_seconds += propagated.duration_since(solved).as_secs_f64();
            drop(err);
            let layer = &mut net.layers[l];
            let mask = layer.mask.as_ref();
            if let (Some(pending), Some(state), Some(params)) =
                (update, &mut self.states[l], layer.op.params_mut())
            {
                state.finish_deferred(params, mask, pending, &rule).map_err(at(l))?;
            }
            stats.solve_seconds +=
                solved.duration_since(clock).as_secs_f64() + propagated.elapsed().as_secs_f64();
            err = previous;
            err_scale = below_scale;
            err_checked = squares.is_finite();
        }
        Ok(stats)
    }
}

impl PlTrainer {
    /// One step of a distributed run (see [`crate::state::Trainer::step_sharded`]): the
    /// forward pass and the errors are this worker's rows; the output figures, the
    /// output-scaled error's size and every layer's primal system are summed over the
    /// global batch's shards, and every worker solves the same system. Every layer takes
    /// the primal `f64` route (the dual `n x n` system would need every worker's rows), and
    /// the first layer's update is formed whole rather than streamed.
    pub fn step_sharded(
        &mut self,
        net: &mut Network,
        x: &Matrix,
        labels: &[u32],
        batch: usize,
        reducer: &mut dyn Reducer,
    ) -> Result<StepStats, LayerError> {
        let mut cfg = self.config;
        cfg.ridge.alpha = self.alpha();
        let count = net.layers.len();
        if count == 0 {
            return Ok(StepStats::default());
        }
        let padded = two_rows_at_least(x, net.batch_of(x));
        let x = padded.as_ref().unwrap_or(x);
        let local = net.batch_of(x);
        let clock = Instant::now();
        let mut acts = net.forward_all(x, local)?;
        let Some(mut err) = acts.pop() else {
            return Ok(StepStats::default());
        };
        let classes = err.cols();
        // Rows per sample from the shapes, not the data: a worker may hold no sample.
        let rows = net.layers[count - 1].output_shape(1).0;
        let figures = shard_sum(reducer, batch, &mut |_, samples: Range<usize>| {
            let values =
                &mut err.as_mut_slice()[samples.start * rows * classes..samples.end * rows * classes];
            let s = output_error_rows(values, classes, &labels[samples], self.config.label_smoothing)?;
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
        let output_rms = (figures[0] / (batch * rows * classes).max(1) as f64).sqrt();
        let mut pending: Vec<(usize, Matrix)> = Vec::new();

        for l in (0..count).rev() {
            let clock = Instant::now();
            let rule = net.layers[l].op.rule(&cfg.rule);
            let input = if l == 0 { x } else { &acts[l - 1] };
            let per = net.layers[l].input_shape(1).0;
            let update = sharded_update(&*net.layers[l].op, input, &err, per, batch, reducer, &cfg.ridge)
                .map_err(at(l))?;
            let solved = Instant::now();
            let mut previous = None;
            if l > 0 {
                let below = acts.pop().expect("one activation per layer below this one");
                let skip = net.layers[l].residual.map(|r| (r, net.layers[l].skip_error(&err)));
                let skips = net.skips_for(l, skip.as_ref().map(|(_, e)| e.as_ref()), &pending);
                let mut e = net.error_below_in_place(l, &err, below, local, ErrorMode::Target, &skips)?;
                pending.retain(|(r, _)| *r != l - 1);
                if let Some((r, e)) = skip.filter(|&(r, _)| r + 1 < l) {
                    pending.push((r, e.into_owned()));
                }
                if cfg.error_scale == ErrorScale::Output {
                    let (r, c) = net.layers[l - 1].output_shape(1);
                    let per = r * c;
                    let squares = shard_sum(reducer, batch, &mut |_, samples: Range<usize>| {
                        let values = &e.as_slice()[samples.start * per..samples.end * per];
                        Ok::<_, OpsError>(vec![values.iter().map(|&v| f64::from(v) * f64::from(v)).sum()])
                    })
                    .map_err(at(l - 1))?;
                    let size = (squares[0] / (batch * per).max(1) as f64).sqrt();
                    scale_in_place(&mut e, (output_rms / size.max(f64::MIN_POSITIVE)) as f32);
                }
                previous = Some(e);
            }
            let propagated = Instant::now();
            stats.propagate_seconds += propagated.duration_since(solved).as_secs_f64();
            let layer = &mut net.layers[l];
            let mask = layer.mask.as_ref();
            if let (Some(update), Some(state), Some(params)) =
                (update, &mut self.states[l], layer.op.params_mut())
            {
                state.apply(params, mask, update, &rule).map_err(at(l))?;
            }
            stats.solve_seconds +=
                solved.duration_since(clock).as_secs_f64() + propagated.elapsed().as_secs_f64();
            match previous {
                Some(e) => err = e,
                None => break,
            }
        }
        Ok(stats)
    }
}

/// A layer's PL update from its primal systems summed over the shards of the global batch
/// (`None` for kinds without parameters); `per` is the input's rows per sample.
fn sharded_update(
    op: &dyn Op,
    input: &Matrix,
    err: &Matrix,
    per: usize,
    batch: usize,
    reducer: &mut dyn Reducer,
    ridge: &RidgeConfig,
) -> Result<Option<RidgeUpdate>, OpsError> {
    if op.params().is_none() {
        return Ok(None);
    }
    let sums = shard_sum_par(reducer, batch, &|_, samples: Range<usize>| {
        let rows = samples.start * per..samples.end * per;
        op.pl_partial(input, err, rows, ridge)?.ok_or_else(|| OpsError::Invalid {
            op: "distributed step",
            detail: format!("a `{}` layer with parameters gave no PL sums", op.kind()),
        })
    })?;
    op.pl_update_from_sums(&sums, ridge)
}

/// Turn output scores into the output error `z - y_hat` in place, and count what the scores
/// got right.
fn output_error(z: &mut Matrix, labels: &[u32], eps: f32) -> Result<StepStats, OpsError> {
    let (n, classes) = (z.rows(), z.cols());
    OpsError::check("PL targets", "labels", &[Dim::Exact(n)], &[labels.len()])?;
    output_error_rows(z.as_mut_slice(), classes, labels, eps)
}

/// [`output_error`] over rows `values` of `classes` scores each.
fn output_error_rows(
    values: &mut [f32],
    classes: usize,
    labels: &[u32],
    eps: f32,
) -> Result<StepStats, OpsError> {
    crate::clean_vector_state();
    let off = if classes > 1 { eps / (classes - 1) as f32 } else { 0.0 };
    let mut stats = StepStats { rows: labels.len(), ..StepStats::default() };
    for (row, &label) in values.chunks_exact_mut(classes.max(1)).zip(labels) {
        let label = label as usize;
        if label >= classes {
            return Err(OpsError::Label { op: "PL targets", label, classes });
        }
        if argmax(row) == label {
            stats.correct += 1;
        }
        for (c, v) in row.iter_mut().enumerate() {
            *v -= if c == label { 1.0 - eps } else { off };
            stats.loss_sum += (*v as f64).powi(2);
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activation::Activation;
    use crate::dense::Dense;
    use crate::init::xavier_normal;
    use crate::network::Layer;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn config() -> PlConfig {
        PlConfig::foundation(0.1, 0.1)
    }

    fn network(sizes: &[usize], rng: &mut ChaCha8Rng) -> Network {
        let layers = sizes
            .windows(2)
            .enumerate()
            .map(|(i, w)| {
                let dense = Dense::new(xavier_normal(w[0], w[1], rng));
                let activation =
                    if i + 2 == sizes.len() { Activation::Linear } else { Activation::Elu { clip: 10.0 } };
                Layer::dense(dense, activation)
            })
            .collect();
        Network { layers }
    }

    #[test]
    fn output_error_uses_smoothed_targets() {
        let mut z = Matrix::from_vec(1, 3, vec![0.2, 0.9, 0.1]);
        let stats = output_error(&mut z, &[1], 0.01).expect("fits");
        assert_eq!(stats.correct, 1);
        let want = [0.2 - 0.005, 0.9 - 0.99, 0.1 - 0.005];
        for (g, w) in z.as_slice().iter().zip(want) {
            assert!((g - w).abs() < 1e-6);
        }
    }

    #[test]
    fn out_of_range_label_is_an_error() {
        let mut z = Matrix::zeros(1, 3);
        assert!(output_error(&mut z, &[3], 0.01).is_err());
    }

    /// Train a fresh network of `sizes` with `cfg` for `steps` batches of 64 on a separable
    /// synthetic task (the class is the index of the largest of the first three of 8
    /// features), and count the correct answers on a new batch of 64.
    fn synthetic_score(sizes: &[usize], cfg: PlConfig, steps: usize, seed: u64) -> usize {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let net = network(sizes, &mut rng);
        synthetic_score_of(net, cfg, steps, &mut rng)
    }

    fn synthetic_score_of(mut net: Network, cfg: PlConfig, steps: usize, rng: &mut ChaCha8Rng) -> usize {
        let batch = |rng: &mut ChaCha8Rng| {
            let x = xavier_normal(64, 8, rng);
            let labels: Vec<u32> = (0..64).map(|i| argmax(&x.row(i)[..3]) as u32).collect();
            (x, labels)
        };
        let mut trainer = PlTrainer::new(&net, cfg);
        for _ in 0..steps {
            let (x, y) = batch(rng);
            trainer.step(&mut net, &x, &y).expect("step");
        }
        let (x, y) = batch(rng);
        let out = net.forward(&x).expect("forward");
        (0..64).filter(|&i| argmax(out.row(i)) == y[i] as usize).count()
    }

    /// PL must learn the synthetic task well within a few dozen steps.
    #[test]
    fn pl_learns_a_synthetic_task() {
        let correct = synthetic_score(&[8, 32, 16, 3], config(), 60, 7);
        assert!(correct >= 54, "only {correct}/64 correct after training");
    }

    /// The same task through a deeper stack, with every hidden error rescaled to the output
    /// error's size.
    #[test]
    fn pl_with_output_scaled_errors_learns_through_a_deep_stack() {
        let cfg = PlConfig { error_scale: ErrorScale::Output, ..config() };
        let correct = synthetic_score(&[8, 32, 32, 32, 16, 3], cfg, 80, 8);
        assert!(correct >= 54, "only {correct}/64 correct after training");
    }

    /// The same task through a head that reads the last hidden layer beside the first
    /// (a skip concatenation): the error reaching the join is split between both.
    #[test]
    fn pl_learns_through_a_concatenation() {
        use crate::concat::Concat;
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let elu = Activation::Elu { clip: 10.0 };
        let mut net = network(&[8, 32, 16], &mut rng);
        net.layers[1].activation = elu;
        let cat = Concat { positions: 1, input: 16, skip: 32, skip_first: false };
        net.layers.push(Layer { residual: Some(0), ..Layer::new(cat, Activation::Linear, 1) });
        net.layers.push(Layer::dense(Dense::new(xavier_normal(48, 3, &mut rng)), Activation::Linear));
        let correct = synthetic_score_of(net, config(), 60, &mut rng);
        assert!(correct >= 54, "only {correct}/64 correct after training");
    }

    #[test]
    fn step_size_decays_per_epoch() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let net = network(&[4, 3], &mut rng);
        let mut trainer =
            PlTrainer::new(&net, PlConfig { alpha_decay: 0.5, ..PlConfig::foundation(0.8, 0.1) });
        assert_eq!(trainer.alpha(), 0.8);
        trainer.set_epoch(2);
        assert!((trainer.alpha() - 0.2).abs() < 1e-12);
    }

    #[test]
    fn rms_is_the_root_mean_square() {
        assert!((rms(&Matrix::from_vec(1, 4, vec![1.0, -1.0, 3.0, -3.0])) - 5f64.sqrt()).abs() < 1e-12);
        assert_eq!(rms(&Matrix::zeros(0, 3)), 0.0);
    }

    /// With persistent masks and every component on, 100 steps leave the weights outside the
    /// masks exactly zero, and the per-weight state is sized to the masks.
    #[test]
    fn masks_are_preserved_after_100_steps() {
        use crate::sparse::{masked_weights, small_world_mask};
        use crate::update::{Metaplasticity, Orthogonalize};
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let sizes = [8usize, 24, 12, 3];
        let layers = sizes
            .windows(2)
            .enumerate()
            .map(|(i, w)| {
                let mask = small_world_mask(w[0], w[1], 0.1, &mut rng);
                let dense = Dense::new(masked_weights(&mask, &mut rng));
                let activation = if i == 2 { Activation::Linear } else { Activation::Elu { clip: 10.0 } };
                Layer { mask: Some(mask), ..Layer::dense(dense, activation) }
            })
            .collect();
        let mut net = Network { layers };
        let mut cfg = config();
        cfg.rule.metaplasticity =
            Some(Metaplasticity { beta: 0.7, gamma: 0.15, tau_inactive: 1e-3, xi: 3.0, theta0: 0.1 });
        cfg.rule.orthogonalize = Some(Orthogonalize { every: 5, strength: 0.1 });
        let mut trainer = PlTrainer::new(&net, cfg);
        let nnz: usize = net.layers.iter().map(|l| l.mask.as_ref().map_or(0, |m| m.nnz())).sum();
        let dense: usize =
            net.layers.iter().filter_map(|l| l.params()).map(|p| p.inputs() * p.outputs()).sum();
        let spectral: usize = net.layers.iter().filter_map(|l| l.params()).map(|p| p.outputs()).sum();
        assert_eq!(trainer.state_bytes(), (2 * nnz + spectral) * 4, "velocity and traces only on the masks");
        assert!(nnz < dense / 2);
        for _ in 0..100 {
            let x = xavier_normal(32, 8, &mut rng);
            let y: Vec<u32> = (0..32).map(|i| argmax(&x.row(i)[..3]) as u32).collect();
            trainer.step(&mut net, &x, &y).expect("step");
        }
        let mut changed = 0;
        for layer in &net.layers {
            let mask = layer.mask.as_ref().expect("persistent");
            let p = layer.params().expect("dense");
            for i in 0..p.inputs() {
                for j in 0..p.outputs() {
                    let w = p.weights.row(i)[j];
                    if mask.contains(i, j) {
                        changed += usize::from(w != 0.0);
                    } else {
                        assert_eq!(w, 0.0, "weight ({i}, {j}) outside the mask moved");
                    }
                }
            }
        }
        assert!(changed > nnz / 2, "the masked weights did train");
    }
}
