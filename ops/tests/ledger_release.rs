//! The PL, backprop and dlADMM steps release each layer's input activation and error as they go, and
//! their peaks are exactly what their release orders say. This runs in its own process (an
//! integration test binary with one test), so the process-wide ledger sees only these
//! networks; the scenarios run one after another.

use plflow_ops::Matrix;
use plflow_ops::activation::Activation;
use plflow_ops::admm::{AdmmConfig, AdmmTrainer, step_bytes as admm_step_bytes};
use plflow_ops::backprop::{BackpropTrainer, GRADIENT_TILE_ROWS, Optimizer, gradient_tile_rows};
use plflow_ops::dense::Dense;
use plflow_ops::dense::error_scratch_bytes as dense_error_scratch_bytes;
use plflow_ops::init::xavier_normal;
use plflow_ops::ledger;
use plflow_ops::network::{Layer, Network};
use plflow_ops::pl::{PlConfig, PlTrainer};
use plflow_ops::solve::{
    Delivery, Precision, RidgeConfig, RidgeScale, Route, SolvePath, ridge_update, ridge_update_tiles,
    ridge_update_tiles_consuming, workspace_bytes,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const N: usize = 512;
const SIZES: [usize; 4] = [784, 512, 128, 10];
const F32: usize = 4;

fn network() -> Network {
    network_with(Activation::Elu { clip: 10.0 })
}

fn network_with(hidden: Activation) -> Network {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    Network {
        layers: SIZES
            .windows(2)
            .enumerate()
            .map(|(i, w)| {
                let dense = Dense::new(xavier_normal(w[0], w[1], &mut rng));
                let activation = if i == 2 { Activation::Linear } else { hidden };
                Layer::dense(dense, activation)
            })
            .collect(),
    }
}

/// The step's peak above what was alive before it, after checking it released everything.
fn step_peak(step: impl FnOnce()) -> usize {
    let before = ledger::current_bytes();
    ledger::reset_peak();
    step();
    assert_eq!(ledger::current_bytes(), before, "everything a step allocates is released when it ends");
    ledger::peak_bytes() - before
}

#[test]
fn steps_release_activations_and_errors_layer_by_layer() {
    let _serial = SERIAL.lock();
    let x = Matrix::from_vec(N, 784, (0..N * 784).map(|i| ((i * 31 % 255) as f32) / 255.0).collect());
    let labels: Vec<u32> = (0..N as u32).map(|i| i % 10).collect();
    let threads = plflow_ops::threads();
    let (a0, a1, a2) = (N * 512 * F32, N * 128 * F32, N * 10 * F32);

    // PL. Both big layers take the dual route (n = 512 < d + 1). Layer 1's solve holds its
    // input a(0), its error e(1), the solve's workspace and its bias update (allocated
    // first), and streams its weights' update into the velocity (the weights move after
    // the error below is formed); layer 0's solve consumes e(0) (over a(0)) and streams its
    // update into the state. The peak is layer 1's solve, to the byte. A relative lambda of 0.1 bounds
    // the condition number by 1 + 513 / 0.1: f64. The default 6 bounds it by 86.5: f32.
    for (lambda, single) in [(0.1, false), (6.0, true)] {
        let mut net = network();
        let mut trainer = PlTrainer::new(&net, PlConfig::foundation(0.1, lambda));
        let peak = step_peak(|| {
            trainer.step(&mut net, &x, &labels).expect("step");
        });
        let route = Route { dual: true, single, f32_products: false };
        let layer1 = a0 + a1 + 128 * F32 + workspace_bytes(N, 512, 128, route, Delivery::Tiles);
        let layer0 = a0 + workspace_bytes(N, 784, 512, route, Delivery::TilesConsuming);
        assert!(layer0 < layer1);
        assert_eq!(
            peak, layer1,
            "lambda {lambda}: peak {peak} vs layer 1's solve {layer1} (layer 0's: {layer0})"
        );
    }

    // Lean Adam. The forward pass ends with a(0), a(1), a(2). Layer 1's step holds a(0), its
    // delta (over a(1)), its gradient and the scratch of the error written over a(0); layer
    // 0's holds that error and one tile of its gradient, with the bias gradient.
    let mut net = network();
    let opt = Optimizer::Adam { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
    let mut trainer = BackpropTrainer::new(&net, opt);
    let peak = step_peak(|| {
        trainer.step(&mut net, &x, &labels).expect("step");
    });
    let forward = a0 + a1 + a2;
    let layer2 = a0 + a1 + a2 + (128 * 10 + 10) * F32 + dense_error_scratch_bytes(N, 128, threads);
    let layer1 = a0 + a1 + (512 * 128 + 128) * F32 + dense_error_scratch_bytes(N, 512, threads);
    // The first layer's gradient tiles: at most GRADIENT_TILE_ROWS rows, evened out (784
    // rows in 7 tiles of 112).
    let tile_rows = gradient_tile_rows(784);
    assert!(
        tile_rows <= GRADIENT_TILE_ROWS
            && 784usize.div_ceil(tile_rows) == 784usize.div_ceil(GRADIENT_TILE_ROWS)
    );
    let layer0 = a0 + (tile_rows * 512 + 512) * F32;
    let want = forward.max(layer2).max(layer1).max(layer0);
    assert_eq!(want, layer1);
    assert_eq!(peak, want, "peak {peak}: forward {forward}, layers {layer2} {layer1} {layer0}");

    // Muon (output layer by AdamW). Each hidden layer's update adds its orthogonalised
    // direction and the Newton-Schulz workspace to what the element-wise rules hold when
    // they apply it: layer 1 beside its gradient and the error written over a(0), layer 0
    // beside the consumed error and its last gradient tile. Layer 0's is the peak.
    let mut net = network();
    let opt = Optimizer::Muon {
        lr: 1e-3,
        momentum: 0.95,
        nesterov: true,
        ns_steps: 5,
        weight_decay: 0.01,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        adamw_output: true,
    };
    let mut trainer = BackpropTrainer::new(&net, opt);
    let peak = step_peak(|| {
        trainer.step(&mut net, &x, &labels).expect("step");
    });
    let layer1 = a0 + (512 * 128 + 128) * F32 + opt.update_workspace_bytes(512, 128);
    let layer0 = a0 + (tile_rows * 512 + 512) * F32 + opt.update_workspace_bytes(784, 512);
    assert!(layer1 < layer0 && forward < layer0);
    assert_eq!(peak, layer0, "muon peak {peak}: layers {layer1} {layer0}");

    // dlADMM. The batch's variables (z of every layer, a of the hidden ones, u) live through
    // the step; the largest block update is layer 0's weights: its residual, the gradient
    // and the residual's change.
    let mut net = network_with(Activation::Relu { clip: 10.0 });
    let mut trainer = AdmmTrainer::new(AdmmConfig { rho: 0.01, iterations: 1 });
    let peak = step_peak(|| {
        trainer.step(&mut net, &x, &labels).expect("step");
    });
    let vars = 2 * (a0 + a1) + 2 * a2;
    let layer0 = 2 * a0 + 784 * 512 * F32;
    assert_eq!(peak, vars + layer0, "admm peak {peak}: variables {vars}, layer 0's update {layer0}");
    assert_eq!(peak, admm_step_bytes(&[(784, 512), (512, 128), (128, 10)], N));
}

/// Every solve route's workspace formula is its ledger peak, to the byte (the f64 primal
/// route's partial systems' row slices may or may not overlap in time: its formula is the bound).
#[test]
fn solve_workspace_is_its_ledger_peak() {
    let _serial = SERIAL.lock();
    let random = |rows: usize, cols: usize, seed: u64| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        xavier_normal(rows, cols, &mut rng)
    };
    for (n, d, m, lambda) in
        [(64, 200, 150, 6.0), (500, 40, 10, 6.0), (64, 200, 150, 0.01), (500, 40, 10, 0.01)]
    {
        let (x, e) = (random(n, d, 1), random(n, m, 2));
        let cfg = RidgeConfig {
            alpha: 0.1,
            lambda,
            scale: RidgeScale::Relative,
            path: SolvePath::Auto,
            precision: Precision::Auto,
            error_checked: false,
        };
        let route = cfg.planned_route(n, d);
        for delivery in [Delivery::Whole, Delivery::Tiles, Delivery::TilesConsuming] {
            let peak = match delivery {
                Delivery::Whole => step_peak(|| drop(ridge_update(&x, &e, &cfg).expect("solve"))),
                Delivery::Tiles => step_peak(|| {
                    ridge_update_tiles(&x, &e, &cfg, &mut |_| {}).expect("solve");
                }),
                Delivery::TilesConsuming => {
                    // The peak beyond the consumed error, which is released by the solve.
                    let owned = Matrix::from_vec(n, m, e.as_slice().to_vec());
                    let before = ledger::current_bytes();
                    ledger::reset_peak();
                    ridge_update_tiles_consuming(&x, owned, &cfg, &mut |_| {}).expect("solve");
                    assert_eq!(ledger::current_bytes(), before - n * m * F32, "the error is released");
                    ledger::peak_bytes() - before
                }
            };
            let want = workspace_bytes(n, d, m, route, delivery);
            let case = format!("n={n} d={d} m={m} lambda {lambda} {route:?} {delivery:?}");
            if route.single || route.dual {
                assert_eq!(peak, want, "{case}");
            } else {
                assert!(peak <= want && peak > want / 2, "{case}: peak {peak}, bound {want}");
            }
        }
    }
}

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
