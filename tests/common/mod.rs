//! Helpers shared by the end-to-end tests: running the real binary and making small
//! MNIST-layout datasets.

#![allow(dead_code)] // each test file uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root (where `pipelines/` lives).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Run `plflow args...` in `cwd` with extra environment variables.
pub fn plflow(cwd: &Path, args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_plflow"));
    cmd.current_dir(cwd).args(args).env_remove("PLFLOW_DATA_DIR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the plflow binary runs")
}

/// Standard output and error of a finished command, for assertion messages.
pub fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn write_idx(path: &Path, dims: &[u32], body: &[u8]) {
    let mut v = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(body);
    std::fs::write(path, v).expect("write IDX");
}

/// Write an MNIST-layout dataset to `dir` where class `c` lights a 4x4 block at a position of
/// its own, plus deterministic noise: learnable in one or two epochs.
pub fn synthetic_mnist(dir: &Path, train: usize, test: usize) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let mut state = 12345u32;
    let mut noise = move || {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        ((state >> 16) % 60) as u8
    };
    for (images, labels, n) in [
        ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", train),
        ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", test),
    ] {
        let mut pixels = Vec::with_capacity(n * 784);
        let mut ys = Vec::with_capacity(n);
        for i in 0..n {
            let c = (i * 7 + i / 13) % 10;
            ys.push(c as u8);
            let (r0, c0) = (2 + (c / 5) * 12, 2 + (c % 5) * 5);
            for r in 0..28 {
                for col in 0..28 {
                    let lit = (r0..r0 + 4).contains(&r) && (c0..c0 + 4).contains(&col);
                    pixels.push(if lit { 200 + noise() / 2 } else { noise() });
                }
            }
        }
        write_idx(&dir.join(images), &[n as u32, 28, 28], &pixels);
        write_idx(&dir.join(labels), &[n as u32], &ys);
    }
}

/// Write an image folder `dir/{train,test}/{blue,red}/NNN.png` of `side` x `side` images,
/// `train` and `test` per class: two colours with a little texture, learnable from the tiny
/// model's two features (which takes 6x6 images).
pub fn colour_images(dir: &Path, train: u32, test: u32, side: u32) {
    for (split, n) in [("train", train), ("test", test)] {
        for (class, rgb) in [("blue", [20u8, 40, 220]), ("red", [220u8, 30, 20])] {
            let folder = dir.join(split).join(class);
            std::fs::create_dir_all(&folder).expect("mkdir");
            for i in 0..n {
                let img = image::RgbImage::from_fn(side, side, |x, y| {
                    let j = ((x + y + i) % 7) as u8;
                    image::Rgb([rgb[0] + j, rgb[1] + j, rgb[2] - j])
                });
                img.save(folder.join(format!("{i:03}.png"))).expect("png");
            }
        }
    }
}

/// A pipeline over the image folder `images` (relative to `PLFLOW_DATA_DIR`): the tiny
/// ONNX model of `extract/tests` as backbone, then a PL-trained MLP for `epochs` epochs.
pub fn tiny_extract_pipeline(images: &str, epochs: usize) -> String {
    let model = root().join("extract/tests/data/tiny.onnx");
    format!(
        "name: tiny\nstages:\n  data:\n    kind: image_folder\n    path: {images}\n    size: [6, 6]\n  features:\n    kind: extract\n    input: data\n    model: {}\n    dim: 2\n    size: 8\n    batch: 4\n    chunk: 16\n  scaled:\n    kind: standardize\n    input: features\n  net:\n    kind: mlp\n    input: scaled\n    hidden: [8]\n  train:\n    kind: pl\n    input: net\n    epochs: {epochs}\n    batch_size: 16\n    alpha: 0.5\n  eval:\n    kind: evaluate\n    input: train\n",
        model.display()
    )
}

/// Keys of run reports that measure time or memory, which differ between equal runs.
const MEASURED: [&str; 6] = ["seconds", "per_second", "peak", "wall", "time_shares", "run_dir"];

/// `v` without its timings and memory figures, at any depth (the summary's `trainers`
/// sections carry their own): what two runs of the same pipeline and seed must agree on.
pub fn without_timings(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(map) => map
            .into_iter()
            .filter(|(k, _)| !MEASURED.iter().any(|t| k.contains(t)))
            .map(|(k, v)| (k, without_timings(v)))
            .collect(),
        serde_json::Value::Array(items) => items.into_iter().map(without_timings).collect(),
        other => other,
    }
}

/// The run folder's `metrics.jsonl` records, timings removed.
pub fn metrics_of(run: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).expect("metrics.jsonl");
    text.lines().map(|l| without_timings(serde_json::from_str(l).expect("JSON line"))).collect()
}

/// The run folder's `summary.json`, timings removed.
pub fn summary_of(run: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(run.join("summary.json")).expect("summary.json");
    without_timings(serde_json::from_str(&text).expect("JSON"))
}

/// Every `*.partial-<pid>` file or folder under `dir`: what a killed writer left behind.
pub fn partials_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(listing) = std::fs::read_dir(dir) else { return found };
    for item in listing.flatten() {
        let path = item.path();
        if item.file_name().to_string_lossy().contains(".partial-") {
            found.push(path);
        } else if path.is_dir() {
            found.extend(partials_under(&path));
        }
    }
    found
}
