//! The PL step releases each layer's input activation and error as it goes. This runs in its
//! own process (an integration test binary with one test), so the process-wide ledger sees
//! only this network.

use plflow_ops::Matrix;
use plflow_ops::activation::Activation;
use plflow_ops::dense::Dense;
use plflow_ops::init::xavier_normal;
use plflow_ops::ledger;
use plflow_ops::network::{Layer, Network};
use plflow_ops::pl::{PlConfig, PlTrainer};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

#[test]
fn step_releases_activations_and_errors_layer_by_layer() {
    let (n, sizes) = (512usize, [784usize, 512, 128, 10]);
    let cfg = PlConfig::foundation(0.1, 0.1);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut net = Network {
        layers: sizes
            .windows(2)
            .enumerate()
            .map(|(i, w)| {
                let dense = Dense::new(xavier_normal(w[0], w[1], &mut rng));
                let activation = if i == 2 { Activation::Linear } else { Activation::Elu { clip: 10.0 } };
                Layer::dense(dense, activation)
            })
            .collect(),
    };
    let x = Matrix::from_vec(n, 784, (0..n * 784).map(|i| ((i * 31 % 255) as f32) / 255.0).collect());
    let labels: Vec<u32> = (0..n as u32).map(|i| i % 10).collect();

    let mut trainer = PlTrainer::new(&net, cfg);
    let before = ledger::current_bytes();
    ledger::reset_peak();
    trainer.step(&mut net, &x, &labels).expect("step");
    let after = ledger::current_bytes();
    let peak = ledger::peak_bytes() - before;
    assert_eq!(after, before, "everything a step allocates is released when it ends");

    // Both big layers take the dual route (n = 512 < d + 1). A solve holds the n x n kernel
    // in f64, one 128-column slice of X_aug and one 128-column block of Z in f64, and a
    // 128 x 128 output tile. Layer 1's solve also holds its input a(0), its error e(1) and its
    // f32 update; layer 0's solve holds e(0) and streams its update into the state, with
    // a(0) and a(1) already released. The peak is layer 1's solve, to the byte.
    let (f32b, f64b, chunk) = (4, 8, 128);
    let solve = |m: usize| (n * n + n * chunk + n * chunk.min(m) + chunk * chunk.min(m)) * f64b;
    let layer1 = n * 512 * f32b + n * 128 * f32b + solve(128) + (512 * 128 + 128) * f32b;
    let layer0 = n * 512 * f32b + solve(512);
    assert!(layer0 < layer1);
    assert_eq!(peak, layer1, "peak {peak} vs layer 1's solve {layer1} (layer 0's: {layer0})");
}
