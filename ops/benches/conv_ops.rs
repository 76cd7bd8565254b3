//! Benchmark of the convolution-side kernels at the shapes of the reference MNIST CNN (SPEC
//! section 4: 32 channels, 28x28 maps, batch 128): prints one line per kernel with the median
//! time of one call, so the per-step cost of each part of a PL step can be read off.
//!
//!     cargo bench -p plflow-ops --bench conv_ops -- [--batch 128] [--channels 32] [--repeat 15]

mod common;

use common::median_ms;
use plflow_ops::Matrix;
use plflow_ops::activation::Activation;
use plflow_ops::dense::Dense;
use plflow_ops::depthwise::{Depthwise, Geometry, depthwise_ridge_update};
use plflow_ops::init::{he_normal, xavier_normal};
use plflow_ops::pool::global_avg_pool;
use plflow_ops::solve::{Precision, RidgeConfig, RidgeScale, SolvePath, ridge_update};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn parse_args() -> Result<(usize, usize, usize), String> {
    let (mut batch, mut channels, mut repeat) = (128, 32, 15);
    let mut it = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let v = value.trim().parse::<usize>().map_err(|e| format!("{flag} {value}: {e}"))?;
        match flag.as_str() {
            "--batch" => batch = v.max(1),
            "--channels" => channels = v.max(1),
            "--repeat" => repeat = v.max(1),
            _ => return Err(format!("unknown flag {flag} (use --batch, --channels, --repeat)")),
        }
    }
    Ok((batch, channels, repeat))
}

fn main() {
    common::as_the_binary_does();
    let (batch, c, repeat) = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let ridge = RidgeConfig {
        alpha: 0.3,
        lambda: 0.01,
        scale: RidgeScale::Relative,
        path: SolvePath::Auto,
        precision: Precision::Auto,
        error_checked: false,
    };
    println!("batch {batch}, {c} channels, median of {repeat} calls");
    println!("{:<44} {:>10}", "kernel", "ms/call");
    let row = |name: String, ms: f64| println!("{name:<44} {ms:>10.2}");

    for (h, stride) in [(28usize, 1usize), (28, 2), (14, 2)] {
        let layer = Depthwise::new(he_normal(9, 9, c, &mut rng), Geometry { h, w: h, k: 3, stride });
        let x = xavier_normal(batch * h * h, c, &mut rng);
        let (oh, ow) = (layer.geometry.out_h(), layer.geometry.out_w());
        let e = xavier_normal(batch * oh * ow, c, &mut rng);
        let tag = format!("{h}x{h} s{stride}");
        row(format!("depthwise forward {tag}"), median_ms(|| drop(layer.forward(&x)), repeat));
        row(format!("depthwise input error {tag}"), median_ms(|| drop(layer.input_error(&e)), repeat));
        row(
            format!("depthwise PL solve {tag}"),
            median_ms(|| drop(depthwise_ridge_update(&layer, &x, &e, &ridge)), repeat),
        );
        row(format!("depthwise gradient {tag}"), median_ms(|| drop(layer.gradients(&x, &e)), repeat));
    }
    for h in [28usize, 14, 7] {
        let layer = Dense::new(he_normal(c, c, c, &mut rng));
        let x = xavier_normal(batch * h * h, c, &mut rng);
        let tag = format!("{h}x{h}");
        row(format!("pointwise forward {tag}"), median_ms(|| drop(layer.forward(&x)), repeat));
        row(format!("pointwise input error {tag}"), median_ms(|| drop(layer.input_error(&x)), repeat));
        row(format!("pointwise PL solve {tag}"), median_ms(|| drop(ridge_update(&x, &x, &ridge)), repeat));
    }
    let mut z = xavier_normal(batch * 28 * 28, c, &mut rng);
    let act = Activation::Elu { clip: 10.0 };
    let fresh = z.clone();
    row(
        "ELU 28x28".into(),
        median_ms(
            || {
                z.as_mut_slice().copy_from_slice(fresh.as_slice());
                act.apply(z.as_mut_slice());
            },
            repeat,
        ),
    );
    let mut e: Matrix = xavier_normal(batch * 28 * 28, c, &mut rng);
    row(
        "ELU derivative 28x28".into(),
        median_ms(|| act.scale_by_derivative(e.as_mut_slice(), z.as_slice()), repeat),
    );
    row("global average pool 7x7".into(), median_ms(|| drop(global_avg_pool(&z, 49 * 16)), repeat));
}
