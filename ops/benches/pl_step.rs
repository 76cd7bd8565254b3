//! Benchmark of one Prospective Learning training step and its parts on fixed data: prints a
//! table of medians with the implied GFLOP/s.
//!
//!     cargo bench -p plflow-ops --bench pl_step -- [--sizes 784,512,128,10] [--batch 512] [--repeat 20]
//!
//! Flops are counted as performed: forward and error products `2 n d m`; the symmetric Gram or
//! kernel product (lower triangle) `n s^2` or `s n^2`; `X^T e` `2 n (d+1) m`; Cholesky `s^3/3`;
//! two triangular solves `2 s^2 m`, where `s` is the size of the system factored.

mod common;

use common::median_ms;
use plflow_ops::Matrix;
use plflow_ops::activation::Activation;
use plflow_ops::dense::Dense;
use plflow_ops::init::xavier_normal;
use plflow_ops::ledger;
use plflow_ops::network::{Layer, Network};
use plflow_ops::pl::{PlConfig, PlTrainer};
use plflow_ops::solve::ridge_update;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

struct Args {
    sizes: Vec<usize>,
    batch: usize,
    repeat: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { sizes: vec![784, 512, 128, 10], batch: 512, repeat: 20 };
    // `cargo bench` passes `--bench`; skip it.
    let mut it = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &str| v.trim().parse::<usize>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--sizes" => args.sizes = value.split(',').map(num).collect::<Result<_, _>>()?,
            "--batch" => args.batch = num(&value)?,
            "--repeat" => args.repeat = num(&value)?.max(1),
            _ => {
                return Err(format!("unknown flag {flag} (use --sizes, --batch, --repeat)"));
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
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let (n, sizes) = (args.batch, &args.sizes);
    let cfg = PlConfig::foundation(0.1, 0.1);
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
        let route = if n < w[0] + 1 { "dual" } else { "primal" };
        let ms = median_ms(|| drop(ridge_update(&inputs[l], &e, &cfg.ridge)), args.repeat);
        rows.push((format!("solve layer {l} ({}x{}, {route} {})", w[0], w[1], n.min(w[0] + 1)), ms, flops));
    }
    let err_flops: f64 = sizes.windows(2).skip(1).map(|w| 2.0 * (n * w[0] * w[1]) as f64).sum();
    let step_flops = fwd_flops + err_flops + solves;
    ledger::reset_peak();
    let base = ledger::current_bytes();
    let mut trainer = PlTrainer::new(&net, cfg);
    let ms = median_ms(|| drop(trainer.step(&mut net, &x, &labels)), args.repeat);
    rows.push(("full PL step".into(), ms, step_flops));

    println!(
        "PL step benchmark: sizes {sizes:?}, batch {n}, {} threads, median of {} runs",
        rayon::current_num_threads(),
        args.repeat
    );
    println!("{:<44} {:>10} {:>10} {:>10}", "part", "ms", "GFLOP", "GFLOP/s");
    for (name, ms, flops) in &rows {
        println!("{name:<44} {ms:>10.2} {:>10.3} {:>10.1}", flops / 1e9, flops / 1e9 / (ms / 1e3));
    }
    println!(
        "ledger peak during a step: {:.1} MB above the network and batch",
        (ledger::peak_bytes() - base) as f64 / 1e6
    );
}
