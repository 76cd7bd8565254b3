//! Distributed steps: 1, 2 and 3 workers (threads exchanging through channels) reach the same
//! weights bit for bit, and those weights are the one-process step's up to rounding.

use plflow_ops::Matrix;
use plflow_ops::activation::Activation;
use plflow_ops::backprop::{BackpropTrainer, Optimizer};
use plflow_ops::dense::Dense;
use plflow_ops::init::xavier_normal;
use plflow_ops::network::{Layer, Network, StepStats};
use plflow_ops::pl::{ErrorScale, PlConfig, PlTrainer};
use plflow_ops::shard::{Local, threads};
use plflow_ops::state::Trainer;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

const SHARDS: usize = 6;
const BATCH: usize = 50;
const STEPS: usize = 4;

fn network(seed: u64) -> Network {
    network_of(&[12, 9, 7, 3], seed)
}

/// Five layers, the third and the fourth adding the outputs of the first and the third
/// (an add two layers down, whose error waits, and one directly below).
fn residual_network(seed: u64) -> Network {
    let mut net = network_of(&[12, 9, 9, 9, 9, 3], seed);
    net.layers[2].residual = Some(0);
    net.layers[3].residual = Some(2);
    net
}

fn network_of(sizes: &[usize], seed: u64) -> Network {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let layers = sizes
        .windows(2)
        .enumerate()
        .map(|(i, w)| {
            let act = if i + 2 == sizes.len() { Activation::Linear } else { Activation::Elu { clip: 10.0 } };
            Layer::dense(Dense::new(xavier_normal(w[0], w[1], &mut rng)), act)
        })
        .collect();
    Network { layers }
}

fn data() -> (Matrix, Vec<u32>) {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let x: Vec<f32> = (0..BATCH * 12).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let labels =
        x.chunks(12).map(|r| (0..3).max_by(|&a, &b| r[a].total_cmp(&r[b])).unwrap_or(0) as u32).collect();
    (Matrix::from_vec(BATCH, 12, x), labels)
}

fn pl() -> Box<dyn Trainer> {
    let mut cfg = PlConfig::foundation(0.5, 1.0);
    cfg.error_scale = ErrorScale::Output;
    Box::new(PlTrainer::new(&network(1), cfg))
}

fn pl_residual() -> Box<dyn Trainer> {
    let mut cfg = PlConfig::foundation(0.5, 1.0);
    cfg.error_scale = ErrorScale::Output;
    Box::new(PlTrainer::new(&residual_network(1), cfg))
}

fn adam() -> Box<dyn Trainer> {
    let opt = Optimizer::Adam { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-4 };
    Box::new(BackpropTrainer::new(&network(1), opt))
}

/// Every weight and bias of `net`, as bits.
fn bits(net: &Network) -> Vec<u32> {
    let params = net.layers.iter().filter_map(|l| l.params());
    params.flat_map(|p| p.weights.as_slice().iter().chain(p.bias.as_slice()).map(|v| v.to_bits())).collect()
}

/// The weights and the summed figures of the last step after `STEPS` steps on `workers`
/// workers (one value per worker).
fn train(make: fn() -> Box<dyn Trainer>, workers: usize) -> Vec<(Vec<u32>, StepStats)> {
    train_on(make, workers, BATCH)
}

/// [`train`] on the first `batch` examples.
fn train_on(make: fn() -> Box<dyn Trainer>, workers: usize, batch: usize) -> Vec<(Vec<u32>, StepStats)> {
    let (x, labels) = data();
    let x = Matrix::from_vec(batch, 12, x.as_slice()[..batch * 12].to_vec());
    let labels = &labels[..batch];
    let reducers = threads::connected(SHARDS, workers).expect("layout");
    std::thread::scope(|scope| {
        let handles: Vec<_> = reducers
            .into_iter()
            .map(|mut reducer| {
                let x = &x;
                scope.spawn(move || {
                    use plflow_ops::shard::Reducer;
                    let mine = reducer.layout().my_samples(batch);
                    let part = x.as_slice()[mine.start * 12..mine.end * 12].to_vec();
                    let local = Matrix::from_vec(mine.len(), 12, part);
                    let (mut net, mut trainer) = (network(1), make());
                    let mut stats = StepStats::default();
                    for _ in 0..STEPS {
                        stats = trainer
                            .step_sharded(&mut net, &local, &labels[mine.clone()], batch, &mut reducer)
                            .expect("step");
                    }
                    (bits(&net), stats)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("worker")).collect()
    })
}

fn same_bits_on_one_two_and_three_workers(make: fn() -> Box<dyn Trainer>) {
    let one = train(make, 1).remove(0);
    for workers in [2, 3] {
        for (w, got) in train(make, workers).into_iter().enumerate() {
            assert!(got.0 == one.0, "{workers} workers: worker {w}'s weights differ from one worker's");
            let figures = |s: &StepStats| (s.rows, s.correct, s.loss_sum.to_bits());
            assert_eq!(figures(&got.1), figures(&one.1), "{workers} workers: worker {w}'s figures");
        }
    }
    assert_eq!(one.1.rows, BATCH);
}

#[test]
fn pl_steps_are_the_same_bits_on_one_two_and_three_workers() {
    same_bits_on_one_two_and_three_workers(pl);
}

#[test]
fn adam_steps_are_the_same_bits_on_one_two_and_three_workers() {
    same_bits_on_one_two_and_three_workers(adam);
}

/// The distributed step computes the one-process step (other sums, so other rounding).
fn matches_the_one_process_step(make: fn() -> Box<dyn Trainer>, net: fn(u64) -> Network, tolerance: f32) {
    let (x, labels) = data();
    let (mut plain, mut sharded) = (net(1), net(1));
    let (mut a, mut b) = (make(), make());
    let mut local = Local { shards: SHARDS };
    for _ in 0..STEPS {
        let s = a.step(&mut plain, &x, &labels).expect("step");
        let t = b.step_sharded(&mut sharded, &x, &labels, BATCH, &mut local).expect("step");
        assert_eq!((s.rows, s.correct), (t.rows, t.correct));
        assert!((s.loss_sum - t.loss_sum).abs() <= 1e-4 * s.loss_sum.abs().max(1.0));
    }
    let params = |n: &Network| -> Vec<f32> {
        let layers = n.layers.iter().filter_map(|l| l.params());
        layers
            .flat_map(|p| p.weights.as_slice().iter().chain(p.bias.as_slice()).copied().collect::<Vec<_>>())
            .collect()
    };
    let (p, q) = (params(&plain), params(&sharded));
    let scale = p.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let worst = p.iter().zip(&q).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(worst <= tolerance * scale, "largest difference {worst} (weights up to {scale})");
    assert!(p != q || STEPS == 0, "the routes differ, so the bits should too (or the test is vacuous)");
}

#[test]
fn the_pl_step_matches_the_one_process_step() {
    matches_the_one_process_step(pl, network, 1e-4);
}

/// The one-process step folds an output-scaled error's scale into its solve, except where
/// skips are added in; the distributed step scales every error as it is formed.
#[test]
fn the_pl_step_with_residual_adds_matches_the_one_process_step() {
    matches_the_one_process_step(pl_residual, residual_network, 1e-4);
}

#[test]
fn the_adam_step_matches_the_one_process_step() {
    matches_the_one_process_step(adam, network, 1e-5);
}

/// Batches of 2 and 3 over 6 shards and 3 workers: a worker holds one sample or none (the
/// one-row products take other kernels than batched ones) and still ends with the same
/// weights as one worker holding them all.
#[test]
fn workers_with_one_sample_or_none_get_the_same_weights() {
    for (make, batch) in [(pl as fn() -> Box<dyn Trainer>, 2), (adam, 2), (pl, 3), (adam, 3)] {
        let one = train_on(make, 1, batch).remove(0);
        let all = train_on(make, 3, batch);
        let diff: Vec<usize> =
            all.iter().map(|g| g.0.iter().zip(&one.0).filter(|(a, b)| a != b).count()).collect();
        for (w, got) in all.into_iter().enumerate() {
            assert!(
                got.0 == one.0,
                "worker {w}'s weights: values differing per worker {diff:?} of {}",
                one.0.len()
            );
            assert_eq!((got.1.rows, got.1.correct), (batch, one.1.correct));
        }
    }
}
