//! A trainer's state as named parts, so that a checkpoint can hold all of it and a resumed
//! run continue bit for bit: every buffer (momentum, metaplasticity traces, power-iteration
//! vectors, Adam moments) as a [`Part`] holding a [`Matrix`], and every counter or scalar
//! (step counts, the last spectral norm) as a [`Part`] holding an `f64`, which represents
//! every `u64` count below 2^53 and every `f32` exactly.

use crate::bf16::Bf16Matrix;
use crate::network::{LayerError, Network, StepStats};
use crate::shard::Reducer;
use crate::{Matrix, OpsError};

/// One named piece of a trainer's state.
#[derive(Debug)]
pub struct Part<T> {
    /// The layer it belongs to (index in the network), or `None` for the whole trainer.
    pub layer: Option<usize>,
    /// Its name within the layer, e.g. `velocity`.
    pub name: &'static str,
    /// The buffer or value.
    pub value: T,
}

impl<T> Part<T> {
    /// A part of layer `layer`.
    pub fn of(layer: usize, name: &'static str, value: T) -> Self {
        Self { layer: Some(layer), name, value }
    }

    /// A part of the whole trainer.
    pub fn global(name: &'static str, value: T) -> Self {
        Self { layer: None, name, value }
    }
}

/// A state buffer as listed for a checkpoint: `f32`, or `bf16` for state kept at half size.
#[derive(Debug, Clone, Copy)]
pub enum StateTensor<'a> {
    /// Values in `f32`.
    F32(&'a Matrix),
    /// Values stored as `bf16`.
    Bf16(&'a Bf16Matrix),
}

/// A state buffer to be overwritten from a checkpoint (see [`StateTensor`]).
#[derive(Debug)]
pub enum StateTensorMut<'a> {
    /// Values in `f32`.
    F32(&'a mut Matrix),
    /// Values stored as `bf16`.
    Bf16(&'a mut Bf16Matrix),
}

impl StateTensor<'_> {
    /// The values widened to `f32` (exactly), e.g. to compare two states.
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            Self::F32(m) => m.as_slice().to_vec(),
            Self::Bf16(m) => m.as_slice().iter().map(|&h| crate::bf16::to_f32(h)).collect(),
        }
    }

    /// `[rows, cols]`.
    pub fn shape(&self) -> [usize; 2] {
        match self {
            Self::F32(m) => [m.rows(), m.cols()],
            Self::Bf16(m) => [m.rows(), m.cols()],
        }
    }
}

impl StateTensorMut<'_> {
    /// `[rows, cols]`.
    pub fn shape(&self) -> [usize; 2] {
        match self {
            Self::F32(m) => [m.rows(), m.cols()],
            Self::Bf16(m) => [m.rows(), m.cols()],
        }
    }
}

impl<'a> From<&'a Matrix> for StateTensor<'a> {
    fn from(m: &'a Matrix) -> Self {
        Self::F32(m)
    }
}

impl<'a> From<&'a mut Matrix> for StateTensorMut<'a> {
    fn from(m: &'a mut Matrix) -> Self {
        Self::F32(m)
    }
}

/// A trainer whose whole state can be listed, written and restored.
pub trait TrainerState {
    /// Every state buffer, read-only (for writing a checkpoint).
    fn tensors(&self) -> Vec<Part<StateTensor<'_>>>;
    /// Every state buffer, in the same order, to be overwritten from a checkpoint.
    fn tensors_mut(&mut self) -> Vec<Part<StateTensorMut<'_>>>;
    /// Every counter and scalar.
    fn scalars(&self) -> Vec<Part<f64>>;
    /// Restore the scalar `name` of `layer`; false when the trainer has no such scalar or
    /// the value is not one it can hold (a count that is negative or not whole).
    fn set_scalar(&mut self, layer: Option<usize>, name: &str, value: f64) -> bool;
}

/// A learning rule as the scheduler drives it: one step per batch over the network's
/// weights, and the state it keeps between steps (listed by [`TrainerState`] for
/// checkpoints). Each rule (PL, backprop, dlADMM, Forward-Forward...) implements it in its
/// own module.
pub trait Trainer: TrainerState + Send {
    /// One step on batch `x` (in the first layer's input shape) with class labels `labels`.
    fn step(&mut self, net: &mut Network, x: &Matrix, labels: &[u32]) -> Result<StepStats, LayerError>;
    /// Bytes of state held between steps (optimiser moments, traces).
    fn state_bytes(&self) -> usize;
    /// The epoch (from 0) the next steps belong to, for rules with a schedule.
    fn set_epoch(&mut self, _epoch: usize) {}
    /// One step of a distributed run ([`crate::shard`]): `x` and `labels` are this worker's
    /// samples of a global batch of `batch` samples, every sum over the batch goes through
    /// `reducer`, and every worker ends with the same weights and the global batch's figures.
    fn step_sharded(
        &mut self,
        net: &mut Network,
        x: &Matrix,
        labels: &[u32],
        batch: usize,
        reducer: &mut dyn Reducer,
    ) -> Result<StepStats, LayerError> {
        let _ = (net, x, labels, batch, reducer);
        let detail = "this solver does not train on several workers yet (pl, sgd, adam, adamw and muon do); \
                      run without --workers"
            .to_owned();
        Err(LayerError { layer: 0, source: OpsError::Invalid { op: "distributed step", detail } })
    }
}

/// `value` as a step count, if it is one.
pub(crate) fn count(value: f64) -> Option<u64> {
    (value >= 0.0 && value.fract() == 0.0 && value < 2f64.powi(53)).then_some(value as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activation::Activation;
    use crate::backprop::{BackpropTrainer, Optimizer};
    use crate::dense::Dense;
    use crate::init::xavier_normal;
    use crate::network::{Layer, Network};
    use crate::pl::{PlConfig, PlTrainer};
    use crate::update::Metaplasticity;
    use rand::SeedableRng;

    fn network(seed: u64) -> Network {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        Network {
            layers: vec![
                Layer::dense(Dense::new(xavier_normal(12, 8, &mut rng)), Activation::Elu { clip: 10.0 }),
                Layer::dense(Dense::new(xavier_normal(8, 3, &mut rng)), Activation::Linear),
            ],
        }
    }

    fn batch(k: usize) -> (Matrix, Vec<u32>) {
        let values = (0..10 * 12).map(|i| (((i * 7 + k * 13) % 17) as f32 - 8.0) / 5.0).collect();
        (Matrix::from_vec(10, 12, values), (0..10).map(|i| ((i + k) % 3) as u32).collect())
    }

    /// Copy `from`'s whole state into `to` through the [`TrainerState`] listing only.
    fn transplant(from: &dyn TrainerState, to: &mut dyn TrainerState) {
        let sources = from.tensors();
        let mut targets = to.tensors_mut();
        assert_eq!(sources.len(), targets.len());
        for (s, t) in sources.iter().zip(&mut targets) {
            assert_eq!((s.layer, s.name), (t.layer, t.name));
            match (&s.value, &mut t.value) {
                (StateTensor::F32(s), StateTensorMut::F32(t)) => {
                    t.as_mut_slice().copy_from_slice(s.as_slice())
                }
                (StateTensor::Bf16(s), StateTensorMut::Bf16(t)) => {
                    t.as_mut_slice().copy_from_slice(s.as_slice())
                }
                _ => panic!("{}: the listings differ in type", s.name),
            }
        }
        for p in from.scalars() {
            assert!(to.set_scalar(p.layer, p.name, p.value), "{} restores", p.name);
        }
    }

    /// Train 3 steps, move the state to a fresh trainer over a copy of the network, train 3
    /// more with each: the weights agree bit for bit only if the listing is the whole state.
    fn split_run_matches<T: TrainerState>(
        make: impl Fn(&Network) -> T,
        step: fn(&mut T, &mut Network, usize),
    ) {
        split_run_of(network, make, step);
    }

    /// [`split_run_matches`] on networks made by `network`.
    fn split_run_of<T: TrainerState>(
        network: fn(u64) -> Network,
        make: impl Fn(&Network) -> T,
        step: fn(&mut T, &mut Network, usize),
    ) {
        let mut net = network(7);
        let mut trainer = make(&net);
        (0..3).for_each(|k| step(&mut trainer, &mut net, k));
        let mut copy = network(7);
        for (a, b) in copy.layers.iter_mut().zip(&net.layers) {
            let (a, b) = (a.params_mut().expect("dense"), b.params().expect("dense"));
            a.weights.as_mut_slice().copy_from_slice(b.weights.as_slice());
            a.bias.as_mut_slice().copy_from_slice(b.bias.as_slice());
        }
        let mut resumed = make(&copy);
        transplant(&trainer, &mut resumed);
        for k in 3..6 {
            step(&mut trainer, &mut net, k);
            step(&mut resumed, &mut copy, k);
        }
        for (a, b) in net.layers.iter().zip(&copy.layers) {
            let (a, b) = (a.params().expect("dense"), b.params().expect("dense"));
            assert_eq!(a.weights.as_slice(), b.weights.as_slice());
            assert_eq!(a.bias.as_slice(), b.bias.as_slice());
        }
    }

    #[test]
    fn a_pl_trainer_continues_bit_for_bit_from_its_listed_state() {
        let mut config = PlConfig::foundation(0.5, 1.0);
        config.rule.metaplasticity =
            Some(Metaplasticity { beta: 0.9, gamma: 0.5, tau_inactive: 0.01, xi: 1.5, theta0: 0.1 });
        let make = |net: &Network| PlTrainer::new(net, config);
        let state = make(&network(7));
        let names: Vec<_> = state.tensors().iter().map(|p| (p.layer, p.name)).collect();
        assert!(names.contains(&(Some(0), "theta")) && names.contains(&(Some(1), "power")), "{names:?}");
        split_run_matches(make, |t, net, k| {
            let (x, y) = batch(k);
            t.step(net, &x, &y).expect("step");
        });
    }

    #[test]
    fn a_pl_trainer_with_bf16_momentum_continues_bit_for_bit_from_its_listed_state() {
        let mut config = PlConfig::foundation(0.5, 1.0);
        config.rule.momentum_storage = crate::update::Storage::Bf16;
        let make = |net: &Network| PlTrainer::new(net, config);
        let state = make(&network(7));
        assert!(state.tensors().iter().any(|p| matches!(p.value, StateTensor::Bf16(_))));
        split_run_matches(make, |t, net, k| {
            let (x, y) = batch(k);
            t.step(net, &x, &y).expect("step");
        });
    }

    #[test]
    fn an_adam_trainer_continues_bit_for_bit_from_its_listed_state() {
        let adam = Optimizer::Adam { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
        split_run_matches(
            |net| BackpropTrainer::new(net, adam),
            |t, net, k| {
                let (x, y) = batch(k);
                t.step(net, &x, &y).expect("step");
            },
        );
    }

    /// Forward-Forward's state is Adam's moments and the step count its negative labels
    /// are drawn from.
    #[test]
    fn a_forward_forward_trainer_continues_bit_for_bit_from_its_listed_state() {
        use crate::ff::{FfConfig, FfTrainer, Goodness, Negatives};
        fn relu(seed: u64) -> Network {
            let mut net = network(seed);
            net.layers.iter_mut().for_each(|l| l.activation = Activation::Relu { clip: 10.0 });
            net
        }
        let adam = Optimizer::Adam { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
        let goodness = Goodness { classes: 3, label_scale: 1.0 };
        let config =
            FfConfig { goodness, threshold: 2.0, negatives: Negatives::Hard, optimizer: adam, seed: 5 };
        split_run_of(
            relu,
            |net| FfTrainer::new(net, config),
            |t, net, k| {
                let (x, y) = batch(k);
                t.step(net, &x, &y).expect("step");
            },
        );
    }

    /// NoProp's state is AdamW's moments for every block and the classifier, and the step
    /// count its noise is drawn from.
    #[test]
    fn a_noprop_trainer_continues_bit_for_bit_from_its_listed_state() {
        use crate::noprop::{NoPropConfig, NoPropReadout, NoPropTrainer};
        fn blocks(seed: u64) -> Network {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let mut dense = |d, m, a| Layer::dense(Dense::new(xavier_normal(d, m, &mut rng)), a);
            let mut layers = Vec::new();
            for _ in 0..2 {
                layers.push(dense(12, 8, Activation::Elu { clip: 10.0 }));
                layers.push(dense(3, 8, Activation::Linear));
                layers.push(dense(8, 3, Activation::Linear));
            }
            layers.push(dense(3, 3, Activation::Linear));
            Network { layers }
        }
        let adamw = Optimizer::AdamW { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-3 };
        let config = NoPropConfig { readout: NoPropReadout::new(2, 3), eta: 0.1, optimizer: adamw, seed: 9 };
        split_run_of(
            blocks,
            |net| NoPropTrainer::new(net, config.clone()),
            |t, net, k| {
                let (x, y) = batch(k);
                t.step(net, &x, &y).expect("step");
            },
        );
    }

    #[test]
    fn counts_must_be_whole_and_names_known() {
        let net = network(1);
        let mut t = BackpropTrainer::new(&net, Optimizer::Sgd { lr: 0.1, momentum: 0.9, weight_decay: 0.0 });
        assert!(!t.set_scalar(None, "steps", -1.0));
        assert!(!t.set_scalar(None, "steps", 1.5));
        assert!(!t.set_scalar(None, "epoch", 1.0));
        assert!(t.set_scalar(None, "steps", 12.0));
        assert_eq!(t.scalars()[0].value, 12.0);
    }
}
