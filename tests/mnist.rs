//! End-to-end test on the real MNIST. It needs `$PLFLOW_DATA_DIR/mnist` (`.ci/run` points
//! `PLFLOW_DATA_DIR` at `../shared/datasets`); without it the test prints why and passes.

mod common;

use common::{metrics_of, partials_under, plflow, root, summary_of, text};
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

/// The paper's other methods on real data (issue 16's end-to-end check): Muon, dlADMM,
/// Forward-Forward and NoProp each pass 80% test accuracy after 2 epochs of the MNIST MLP.
#[test]
fn the_other_methods_pass_80_percent_in_two_epochs_on_real_mnist() {
    let Some(data) = data_dir() else { return };
    let owned = real_env(&data);
    let env: Vec<(&str, &Path)> = owned.iter().map(|(k, v)| (*k, v.as_path())).collect();
    let pipelines = [
        "pipelines/mnist-muon.yaml",
        "pipelines/mnist-admm.yaml",
        "pipelines/mnist-ff.yaml",
        "pipelines/mnist-noprop.yaml",
    ];
    for pipeline in pipelines {
        let dir = tempfile::tempdir().expect("tempdir");
        let out_dir = dir.path().join("run");
        let args = ["run", pipeline, "--set", "train.epochs=2", "--out", out_dir.to_str().expect("utf-8")];
        let out = plflow(&root(), &args, &env);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{pipeline}\nstdout:\n{stdout}\nstderr:\n{stderr}");
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out_dir.join("summary.json")).expect("summary"))
                .expect("JSON");
        let acc = summary["test_accuracy"].as_f64().expect("number");
        println!("{pipeline}: {acc} after 2 epochs");
        assert!(acc > 0.80, "{pipeline}: test accuracy after 2 epochs {acc} <= 0.80");
    }
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

/// The residual CNN trains with PL through its adds on a share of real MNIST, and its model
/// file (adds included) exports to ONNX that tract runs like plflow on real test images.
#[test]
fn the_residual_cnn_trains_and_exports_with_its_adds() {
    let Some(data) = data_dir() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let owned = real_env(&data);
    let env: Vec<(&str, &Path)> = owned.iter().map(|(k, v)| (*k, v.as_path())).collect();
    let run = dir.path().join("run");
    let args = [
        "run",
        "pipelines/mnist-resnet.yaml",
        "--no-progress",
        "--set",
        "data.limit=10000",
        "--set",
        "train.epochs=1",
        "--out",
        run.to_str().expect("utf-8"),
    ];
    let out = plflow(&root(), &args, &env);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).expect("summary"))
            .expect("JSON");
    let acc = summary["test_accuracy"].as_f64().expect("number");
    // 55.6% when measured (chance is 10%; the full 60,000 give 92.6% in one epoch)
    assert!(acc > 0.4, "test accuracy {acc} after one epoch on 10,000 images");
    let onnx = dir.path().join("m.onnx");
    let run = run.to_str().expect("utf-8");
    let out =
        plflow(&root(), &["export", run, "--onnx", onnx.to_str().expect("utf-8"), "--verify", "200"], &env);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
}

/// Issue 11's crash test: a 4-epoch run killed with SIGKILL in the middle of epoch 3 and
/// resumed with `--resume` ends with the same model files, the same metrics (timings and
/// memory aside) and the same summary figures as an uninterrupted run.
#[cfg(unix)]
#[test]
fn a_run_killed_in_epoch_3_resumes_to_the_same_files() {
    let Some(data) = data_dir() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let owned = real_env(&data);
    let env: Vec<(&str, &Path)> = owned.iter().map(|(k, v)| (*k, v.as_path())).collect();
    let args = |out: &Path| -> Vec<String> {
        let sets = ["train.epochs=4", "net.hidden=[128]", "net.sparse={mask: persistent}"];
        let mut a = vec!["run".to_owned(), "pipelines/mnist.yaml".to_owned(), "--no-progress".to_owned()];
        for s in sets {
            a.extend(["--set".to_owned(), s.to_owned()]);
        }
        a.extend(["--out".to_owned(), out.to_str().expect("utf-8").to_owned()]);
        a
    };
    let whole = dir.path().join("whole");
    let argv = args(&whole);
    let out = plflow(&root(), &argv.iter().map(String::as_str).collect::<Vec<_>>(), &env);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");

    let cut = dir.path().join("cut");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_plflow"));
    child.current_dir(root()).args(args(&cut)).stdout(std::process::Stdio::null());
    for (k, v) in &env {
        child.env(k, v);
    }
    let mut child = child.spawn().expect("start the run");
    let metrics = cut.join("metrics.jsonl");
    let lines = || std::fs::read_to_string(&metrics).map_or(0, |t| t.lines().count());
    while lines() < 2 {
        assert!(child.try_wait().expect("wait").is_none(), "the run ended before epoch 3");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let first: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&metrics).expect("metrics").lines().next().expect("line"),
    )
    .expect("JSON");
    let epoch = first["epoch_seconds"].as_f64().expect("seconds");
    std::thread::sleep(std::time::Duration::from_secs_f64(epoch / 2.0));
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    println!("killed after {} epoch lines", lines());

    let out = plflow(&root(), &["run", "--resume", cut.to_str().expect("utf-8"), "--no-progress"], &env);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("resuming after epoch"), "{stdout}");

    for file in ["model.safetensors", "best.safetensors", "pipeline.yaml"] {
        let (a, b) = (std::fs::read(whole.join(file)), std::fs::read(cut.join(file)));
        assert!(a.expect(file) == b.expect(file), "{file} differs");
    }
    assert_eq!(metrics_of(&whole).len(), 4);
    assert_eq!(metrics_of(&whole), metrics_of(&cut));
    assert_eq!(summary_of(&whole), summary_of(&cut));
    let leftovers = partials_under(&cut);
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
