//! End-to-end tests on the shared CIFAR archives and MNIST (`$PLFLOW_DATA_DIR/cifar10`,
//! `cifar100`, `mnist`; `.ci/run` sets it). Without the data each test prints why and passes.

mod common;

use common::{plflow, root, text};
use std::path::{Path, PathBuf};

fn data_dir(needs: &str) -> Option<PathBuf> {
    let Some(dir) = std::env::var_os("PLFLOW_DATA_DIR").map(PathBuf::from) else {
        eprintln!("skipping: PLFLOW_DATA_DIR is not set (point it at a folder holding {needs}/)");
        return None;
    };
    if !dir.join(needs).is_dir() {
        eprintln!("skipping: {} has no {needs}/ folder", dir.display());
        return None;
    }
    Some(std::fs::canonicalize(&dir).unwrap_or(dir))
}

/// A pipeline reading `kind` at `path` with a tiny head, run for one epoch on a limited slice
/// in `cwd`, using `cache` as the cache; returns stdout.
fn load_run(cwd: &Path, data: &Path, cache: &Path, kind: &str, limit: usize) -> String {
    let yaml = format!(
        "name: load\nstages:\n  data:\n    kind: {kind}\n    limit: {limit}\n  net:\n    kind: mlp\n    input: data\n    hidden: [8]\n  train:\n    kind: pl\n    input: net\n    epochs: 1\n    batch_size: 256\n  eval:\n    kind: evaluate\n    input: train\n"
    );
    let file = cwd.join(format!("{kind}-{limit}.yaml"));
    std::fs::write(&file, yaml).expect("write pipeline");
    let out_dir = cwd.join(format!("run-{kind}-{limit}-{}", std::fs::read_dir(cwd).map_or(0, |d| d.count())));
    let out = plflow(
        cwd,
        &["run", file.to_str().expect("utf8"), "--out", out_dir.to_str().expect("utf8")],
        &[("PLFLOW_DATA_DIR", data), ("PLFLOW_CACHE_DIR", cache)],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{kind} run failed:\n{stdout}\n{stderr}");
    stdout
}

#[test]
fn the_cifar_archives_load_with_their_full_counts_and_reuse_the_decoded_cache() {
    for (kind, classes) in [("cifar10", 10), ("cifar100", 100)] {
        let Some(data) = data_dir(kind) else { continue };
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = dir.path().join("cache");
        // limit larger than the data: every example, so the counts are the full ones.
        let first = load_run(dir.path(), &data, &cache, kind, 1_000_000);
        assert!(
            first.contains(&format!(
                "data: 50000 train and 10000 test examples of shape 3x32x32, {classes} classes"
            )),
            "{first}"
        );
        assert!(first.contains("decoded 60000 images"), "{first}");
        let second = load_run(dir.path(), &data, &cache, kind, 2000);
        assert!(second.contains("mapped decoded images"), "second run decodes again:\n{second}");
        assert!(second.contains("data: 2000 train and 400 test examples"), "{second}");
    }
}

#[test]
fn cifar10_pixels_trains_above_35_percent_in_two_epochs() {
    let Some(data) = data_dir("cifar10") else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let out_dir = dir.path().join("run");
    let cache = dir.path().join("cache");
    let out = plflow(
        &root(),
        &[
            "run",
            "pipelines/cifar10-pixels.yaml",
            "--set",
            "train.epochs=2",
            "--out",
            out_dir.to_str().expect("utf8"),
        ],
        &[("PLFLOW_DATA_DIR", &data), ("PLFLOW_CACHE_DIR", &cache)],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("summary.json")).expect("summary")).expect("json");
    let acc = summary["test_accuracy"].as_f64().expect("accuracy");
    assert!(acc > 0.35, "test accuracy {acc} after 2 epochs:\n{stdout}");
    assert!(
        out_dir.join("scaled-stats.json").is_file(),
        "standardisation statistics are stored with the run"
    );
}

#[test]
fn inspect_reports_the_mnist_training_images() {
    let Some(data) = data_dir("mnist") else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let file = data.join("mnist/train-images-idx3-ubyte.gz");
    let out =
        plflow(dir.path(), &["inspect", file.to_str().expect("utf8")], &[("PLFLOW_CACHE_DIR", dir.path())]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("60000 rows of 28x28"), "{stdout}");
}
