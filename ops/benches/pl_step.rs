//! Benchmark of one Prospective Learning training step and its parts on fixed data: prints a
//! table of medians with the implied GFLOP/s.
//!
//!     cargo bench -p plflow-ops --bench pl_step -- [--sizes 784,512,128,10] [--batch 512] [--lambda 6] [--repeat 20]
//!
//! Flops are counted as performed: forward and error products `2 n d m`; the symmetric Gram or
//! kernel product (lower triangle) `n s^2` or `s n^2`; `X^T e` `2 n (d+1) m`; Cholesky `s^3/3`;
//! two triangular solves `2 s^2 m`, where `s` is the size of the system factored. The
//! machine's peak is measured as faer's matmul on the forward shapes, in f32 and f64; a lean
//! Adam step on the same network runs beside the PL step.

mod common;

use common::median_ms;
use plflow_ops::Matrix;
use plflow_ops::activation::Activation;
use plflow_ops::backprop::{BackpropTrainer, Optimizer};
use plflow_ops::dense::Dense;
use plflow_ops::init::xavier_normal;
use plflow_ops::ledger;
use plflow_ops::network::{Layer, Network};
use plflow_ops::pl::{PlConfig, PlTrainer};
use plflow_ops::solve::ridge_update;
use plflow_ops::update::newton_schulz_step;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

struct Args {
    sizes: Vec<usize>,
    batch: usize,
    repeat: usize,
    lambda: f64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { sizes: vec![784, 512, 128, 10], batch: 512, repeat: 20, lambda: 6.0 };
    // `cargo bench` passes `--bench`; skip it.
    let mut it = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &str| v.trim().parse::<usize>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--sizes" => args.sizes = value.split(',').map(num).collect::<Result<_, _>>()?,
            "--batch" => args.batch = num(&value)?,
            "--repeat" => args.repeat = num(&value)?.max(1),
            "--lambda" => args.lambda = value.parse().map_err(|e| format!("{flag} {value}: {e}"))?,
            _ => {
                return Err(format!("unknown flag {flag} (use --sizes, --batch, --lambda, --repeat)"));
            }
        }
    }
    if args.sizes.len() < 2 || args.sizes.contains(&0) || args.batch == 0 {
        return Err("--sizes needs at least two positive widths and --batch must be positive".into());
    }
    Ok(args)
}

fn solve_flops(n: usize, d: usize, m: usize) -> f64 {
    let (n, da, m) = (n as f64, d as f64 + 1.0, m as f64);
    let s = n.min(da);
    let gram = if n < da { n * n * da } else { da * da * n };
    gram + 2.0 * n * da * m + s.powi(3) / 3.0 + 2.0 * s * s * m
}

fn main() {
    common::as_the_binary_does();
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let (n, sizes) = (args.batch, &args.sizes);
    let cfg = PlConfig::foundation(0.1, args.lambda);
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let last = sizes.len() - 2;
    let mut net = Network {
        layers: sizes
            .windows(2)
            .enumerate()
            .map(|(i, w)| {
                let dense = Dense::new(xavier_normal(w[0], w[1], &mut rng));
                let activation = if i == last { Activation::Linear } else { Activation::Elu { clip: 10.0 } };
                Layer::dense(dense, activation)
            })
            .collect(),
    };
    let x =
        Matrix::from_vec(n, sizes[0], (0..n * sizes[0]).map(|i| (i * 7919 % 256) as f32 / 255.0).collect());
    let classes = sizes[sizes.len() - 1] as u32;
    let labels: Vec<u32> = (0..n as u32).map(|i| i % classes).collect();

    // Inputs of each layer, for timing the solves alone.
    let mut inputs = vec![x.clone()];
    for layer in &net.layers[..net.layers.len() - 1] {
        let z = layer.forward(inputs.last().expect("non-empty")).expect("shapes");
        inputs.push(z);
    }

    let mut rows: Vec<(String, f64, f64)> = Vec::new();
    let fwd_flops: f64 = sizes.windows(2).map(|w| 2.0 * (n * w[0] * w[1]) as f64).sum();
    let ms = median_ms(|| drop(net.forward(&x)), args.repeat);
    rows.push(("forward".into(), ms, fwd_flops));
    let mut solves = 0.0;
    for (l, w) in sizes.windows(2).enumerate() {
        let e = xavier_normal(n, w[1], &mut rng);
        let flops = solve_flops(n, w[0], w[1]);
        solves += flops;
        let route = if cfg.ridge.dual(n, w[0]) { "dual" } else { "primal" };
        let single = cfg.ridge.single_precision(w[0]).unwrap_or(false);
        let ms = median_ms(|| drop(ridge_update(&inputs[l], &e, &cfg.ridge)), args.repeat);
        let (s, p) = (n.min(w[0] + 1), if single { "f32" } else { "f64" });
        rows.push((format!("solve layer {l} ({}x{}, {route} {s} {p})", w[0], w[1]), ms, flops));
    }
    // The momentum's orthogonalisation (every few steps): one Newton-Schulz step on a
    // weight-sized matrix, the Gram's lower triangle `s^2 l` and the product `2 s^2 l` with
    // `s`, `l` the smaller and larger side.
    for w in sizes.windows(2) {
        let (s, l) = (w[0].min(w[1]) as f64, w[0].max(w[1]) as f64);
        let v = xavier_normal(w[0], w[1], &mut rng);
        let ms = median_ms(|| drop(newton_schulz_step(&v)), args.repeat);
        rows.push((format!("Newton-Schulz step {}x{}", w[0], w[1]), ms, 3.0 * s * s * l));
    }
    let err_flops: f64 = sizes.windows(2).skip(1).map(|w| 2.0 * (n * w[0] * w[1]) as f64).sum();
    let step_flops = fwd_flops + err_flops + solves;
    let mut trainer = PlTrainer::new(&net, cfg);
    ledger::reset_peak();
    let base = ledger::current_bytes();
    let ms = median_ms(|| drop(trainer.step(&mut net, &x, &labels)), args.repeat);
    rows.push(("full PL step".into(), ms, step_flops));
    let pl_peak = ledger::peak_bytes() - base;
    let pl_ms = ms;

    // Lean Adam on the same network: forward, weight gradients, errors for the layers below.
    let grad_flops: f64 = sizes.windows(2).map(|w| 2.0 * (n * w[0] * w[1]) as f64).sum();
    let adam = Optimizer::Adam { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
    let mut bp = BackpropTrainer::new(&net, adam);
    ledger::reset_peak();
    let base = ledger::current_bytes();
    let ms = median_ms(|| drop(bp.step(&mut net, &x, &labels)), args.repeat);
    rows.push(("full Adam step".into(), ms, fwd_flops + grad_flops + err_flops));
    let adam_peak = ledger::peak_bytes() - base;
    let adam_ms = ms;

    // The machine's matmul peak on the forward shapes, in each precision.
    for w in sizes.windows(2) {
        let flops = 2.0 * (n * w[0] * w[1]) as f64;
        rows.push((
            format!("faer matmul f32 {n}x{}x{}", w[0], w[1]),
            matmul_ms::<f32>(n, w[0], w[1], args.repeat),
            flops,
        ));
        rows.push((
            format!("faer matmul f64 {n}x{}x{}", w[0], w[1]),
            matmul_ms::<f64>(n, w[0], w[1], args.repeat),
            flops,
        ));
    }

    println!(
        "PL step benchmark: sizes {sizes:?}, batch {n}, {} threads, median of {} runs",
        rayon::current_num_threads(),
        args.repeat
    );
    println!("{:<44} {:>10} {:>10} {:>10}", "part", "ms", "GFLOP", "GFLOP/s");
    for (name, ms, flops) in &rows {
        println!("{name:<44} {ms:>10.2} {:>10.3} {:>10.1}", flops / 1e9, flops / 1e9 / (ms / 1e3));
    }
    let peak = |prec: &str| {
        rows.iter()
            .filter(|(name, _, _)| name.contains(prec))
            .map(|(_, ms, f)| f / 1e9 / (ms / 1e3))
            .fold(0.0, f64::max)
    };
    let step_rate = step_flops / 1e9 / (pl_ms / 1e3);
    println!(
        "PL step: {step_rate:.1} GFLOP/s = {:.0}% of the measured f32 matmul peak ({:.1}), {:.0}% of f64's ({:.1}); {:.2}x the Adam step's time",
        100.0 * step_rate / peak("matmul f32"),
        peak("matmul f32"),
        100.0 * step_rate / peak("matmul f64"),
        peak("matmul f64"),
        pl_ms / adam_ms
    );
    println!(
        "ledger peak during a step, above the network, batch and optimiser state: PL {:.2} MB, Adam {:.2} MB",
        pl_peak as f64 / 1e6,
        adam_peak as f64 / 1e6
    );
}

/// Median milliseconds of faer's `n x d` times `d x m` product in precision `T`, on both
/// threads, from row-major operands as the layers hold them.
fn matmul_ms<T: faer::traits::ComplexField + Copy + From<f32>>(
    n: usize,
    d: usize,
    m: usize,
    repeat: usize,
) -> f64 {
    use faer::{Accum, MatMut, MatRef, Par};
    let a: Vec<T> = (0..n * d).map(|i| T::from((i % 7) as f32 * 0.1)).collect();
    let b: Vec<T> = (0..d * m).map(|i| T::from((i % 5) as f32 * 0.1)).collect();
    let mut c: Vec<T> = vec![T::from(0.0); n * m];
    let (av, bv) = (MatRef::from_row_major_slice(&a, n, d), MatRef::from_row_major_slice(&b, d, m));
    median_ms(
        || {
            let cv = MatMut::from_row_major_slice_mut(&mut c, n, m);
            faer::linalg::matmul::matmul(cv, Accum::Replace, av, bv, T::from(1.0), Par::rayon(0));
        },
        repeat,
    )
}
