//! End-to-end test on the real MNIST. It needs `$PLFLOW_DATA_DIR/mnist` (`.ci/run` points
//! `PLFLOW_DATA_DIR` at `../shared/datasets`); without it the test prints why and passes.

mod common;

use common::{plflow, root, text};
use std::path::{Path, PathBuf};

/// The environment of a run on the real data: the data folder and, if set, the cache.
fn real_env(data: &Path) -> Vec<(&'static str, PathBuf)> {
    let mut env = vec![("PLFLOW_DATA_DIR", data.to_path_buf())];
    if let Some(cache) = std::env::var_os("PLFLOW_CACHE_DIR") {
        env.push(("PLFLOW_CACHE_DIR", PathBuf::from(cache)));
    }
    env
}

fn data_dir() -> Option<PathBuf> {
    let Some(dir) = std::env::var_os("PLFLOW_DATA_DIR").map(PathBuf::from) else {
        eprintln!("skipping: PLFLOW_DATA_DIR is not set (point it at a folder holding mnist/)");
        return None;
    };
    if !dir.join("mnist").is_dir() {
        eprintln!("skipping: {} has no mnist/ folder", dir.display());
        return None;
    }
    Some(std::fs::canonicalize(&dir).unwrap_or(dir))
}

/// Run `pipeline` for one epoch on the real data in a temporary run folder; returns its
/// `summary.json`.
fn run_one_epoch(data: &Path, pipeline: &str) -> serde_json::Value {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_dir = dir.path().join("run");
    let owned = real_env(data);
    let env: Vec<(&str, &Path)> = owned.iter().map(|(k, v)| (*k, v.as_path())).collect();
    let out = plflow(
        &root(),
        &["run", pipeline, "--set", "train.epochs=1", "--out", out_dir.to_str().expect("utf-8")],
        &env,
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    println!("{stdout}");
    serde_json::from_str(&std::fs::read_to_string(out_dir.join("summary.json")).expect("summary"))
        .expect("JSON")
}

#[test]
fn one_epoch_on_real_mnist_reaches_85_percent_within_100_mb() {
    let Some(data) = data_dir() else { return };
    let summary = run_one_epoch(&data, "pipelines/mnist.yaml");
    for key in ["test_accuracy", "epochs", "epoch_seconds_median", "peak_rss_mb", "ledger_peak_mb"] {
        assert!(summary.get(key).is_some_and(|v| !v.is_null()), "summary lacks {key}: {summary}");
    }
    let acc = summary["test_accuracy"].as_f64().expect("number");
    let rss = summary["peak_rss_mb"].as_f64().expect("number");
    assert!(acc >= 0.85, "test accuracy after one epoch {acc} < 0.85");
    assert!(rss < 100.0, "peak RSS {rss} MB >= 100 MB");
}

/// The comparison on real data: the default PL pipeline reaches 93% within 3 epochs, SGD
/// reaches 89% after its first, and the bench table has one row per pipeline.
#[test]
fn bench_pl_against_sgd_on_real_mnist() {
    let Some(data) = data_dir() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let out_dir = dir.path().join("bench");
    let owned = real_env(&data);
    let env: Vec<(&str, &Path)> = owned.iter().map(|(k, v)| (*k, v.as_path())).collect();
    let out = plflow(
        &root(),
        &[
            "bench",
            "pipelines/mnist.yaml",
            "pipelines/mnist-sgd.yaml",
            "--epochs",
            "3",
            "--out",
            out_dir.to_str().expect("utf-8"),
        ],
        &env,
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let accuracy = |run: &str, epoch: usize| -> f64 {
        let metrics = std::fs::read_to_string(out_dir.join(run).join("metrics.jsonl")).expect("metrics");
        let line = metrics.lines().nth(epoch - 1).expect("epoch line");
        let v: serde_json::Value = serde_json::from_str(line).expect("JSON line");
        v["test_accuracy"].as_f64().expect("number")
    };
    let pl = accuracy("mnist-r1", 3);
    let sgd = accuracy("mnist-sgd-r1", 1);
    println!("PL after 3 epochs: {pl}, SGD after 1 epoch: {sgd}");
    assert!(pl >= 0.93, "PL after 3 epochs: {pl} < 0.93");
    assert!(sgd >= 0.89, "SGD after 1 epoch: {sgd} < 0.89");
    let csv = std::fs::read_to_string(out_dir.join("bench.csv")).expect("table");
    assert_eq!(csv.lines().count(), 3, "a header and one row per pipeline:\n{csv}");
}

/// Issue 5's acceptance run: the reference CNN (three depthwise-separable blocks, pooling,
/// dense head) trained by PL for one epoch on the real MNIST beats 50% test accuracy (it
/// measures 87.15% on this machine; the seed makes it reproducible).
#[test]
fn pl_trains_the_reference_cnn_past_50_percent_in_one_epoch() {
    let Some(data) = data_dir() else { return };
    let summary = run_one_epoch(&data, "pipelines/mnist-cnn.yaml");
    let acc = summary["test_accuracy"].as_f64().expect("number");
    assert!(acc > 0.5, "test accuracy of the CNN after one epoch {acc} <= 0.5");
}
