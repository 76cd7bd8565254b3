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
