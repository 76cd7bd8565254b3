//! End-to-end tests of the `plflow` binary on small synthetic data, in temporary folders.

mod common;

use common::{plflow, root, synthetic_mnist, text};
use std::path::Path;

fn mnist_pipeline() -> String {
    root().join("pipelines/mnist.yaml").display().to_string()
}

#[test]
fn check_prints_every_layer_with_shapes_and_memory() {
    let out = plflow(&root(), &["check", "pipelines/mnist.yaml"], &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    for want in
        ["net.0", "net.1", "net.2", "1x28x28", "401,920", "trainable parameters: 468,874", "memory estimate"]
    {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
    // Each solve's system and precision: lambda 6 (relative) bounds the condition numbers
    // well below the f32 limit; lambda 0.01 on the 513-wide layer does not.
    assert!(
        stdout.contains("solves: net.0 dual 256 f32, net.1 dual 256 f32, net.2 primal 129 f32"),
        "{stdout}"
    );
    let small = plflow(&root(), &["check", "pipelines/mnist.yaml", "--set", "train.lambda=0.01"], &[]);
    let (stdout, _) = text(&small);
    assert!(stdout.contains("net.0 dual 256 f64, net.1 dual 256 f64, net.2 primal 129 f64"), "{stdout}");
}

#[test]
fn schema_prints_the_pipeline_json_schema() {
    let out = plflow(&root(), &["schema"], &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let printed: serde_json::Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    assert_eq!(printed, plflow_engine::spec::json_schema());
    assert_eq!(printed["title"], "plflow pipeline");
}

#[test]
fn graph_prints_dot() {
    let out = plflow(&root(), &["graph", "pipelines/mnist.yaml"], &[]);
    let (stdout, _) = text(&out);
    assert!(out.status.success());
    assert!(stdout.starts_with("digraph \"mnist\"") && stdout.trim_end().ends_with('}'), "{stdout}");
    assert_eq!(stdout.matches(" -> n").count(), 6, "5 input edges and 1 batches edge:\n{stdout}");
}

#[test]
fn invalid_pipelines_fail_before_any_data_is_read_with_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text_of = |body: &str| {
        let p = dir.path().join("bad.yaml");
        std::fs::write(&p, body).expect("write");
        let out = plflow(dir.path(), &["run", "bad.yaml"], &[]);
        assert!(!out.status.success());
        text(&out).1
    };
    let good = std::fs::read_to_string(root().join("pipelines/mnist.yaml")).expect("read");
    let err = text_of(&good.replace("batch_size: 256", "batch_sise: 256"));
    assert!(err.contains("bad.yaml:18: stage `train`: unknown field `batch_sise`"), "{err}");
    let err = text_of(&good.replace("input: train", "input: nowhere"));
    assert!(err.contains("there is no stage `nowhere`"), "{err}");
    let err = text_of(&good.replace("input: net\n", "input: eval\n"));
    assert!(err.contains("form a cycle"), "{err}");
    let err = text_of(&good.replace("hidden: [512, 128]", "hidden: [512, 128]\n    outputs: 7"));
    assert!(err.contains("shape mismatch"), "{err}");
    let err = text_of("name: x\nstages: [\n");
    assert!(err.contains("bad.yaml:"), "{err}");
    assert!(!dir.path().join("runs").exists(), "no run folder for an invalid pipeline");
}

/// The plans that used to fail at run time (a panic, an aborted allocation) are refused by
/// `check` and `run` with exit code 1, naming the stages or the estimate and the limit.
#[test]
fn plans_that_cannot_run_are_refused_at_check_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = std::fs::read_to_string(root().join("pipelines/mnist.yaml")).expect("read");
    let refused = |body: &str, args: &[&str]| {
        let p = dir.path().join("p.yaml");
        std::fs::write(&p, body).expect("write");
        for cmd in ["check", "run"] {
            let mut all = vec![cmd, "p.yaml"];
            all.extend(args);
            let out = plflow(dir.path(), &all, &[]);
            let stderr = text(&out).1;
            assert_eq!(out.status.code(), Some(1), "{cmd} {args:?}: {stderr}");
            assert!(!stderr.contains("panicked") && !stderr.contains("memory allocation"), "{stderr}");
            if cmd == "run" {
                return stderr;
            }
        }
        unreachable!("run is the last command")
    };
    let two = format!("{good}  again:\n    kind: sgd\n    input: net\n    epochs: 1\n");
    let err = refused(&two, &[]);
    assert!(err.contains("`again`") && err.contains("`train`"), "{err}");
    let err = refused(&good.replace("hidden: [512, 128]", "hidden: [3000000000, 10]"), &[]);
    assert!(err.contains("stage `train`") && err.contains("available on this machine"), "{err}");
    let err = refused(&good, &["--max-memory", "1M"]);
    assert!(err.contains("more than the 1.0 MiB of memory allowed by --max-memory"), "{err}");
    let untrained = good.split("  train:").next().expect("head").to_owned();
    let err = refused(&untrained, &[]);
    assert!(err.contains("no training stage"), "{err}");
    // A value given with --set is blamed on the --set, not on a line of the file.
    let err = refused(&good, &["--set", "train.alpha=-1"]);
    assert!(err.contains("p.yaml (with --set train.alpha=-1): stage `train`: field `alpha`"), "{err}");
    let out = plflow(dir.path(), &["check", "p.yaml", "--max-memory", "lots"], &[]);
    assert_eq!(out.status.code(), Some(2), "a usage error, as clap reports them");
    assert!(text(&out).1.contains("`lots` is not a size"), "{}", text(&out).1);
    assert!(!dir.path().join("runs").exists(), "no run folder for a refused pipeline");
}

#[test]
fn missing_data_says_where_to_put_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = plflow(
        dir.path(),
        &["run", &mnist_pipeline(), "--set", "train.epochs=1"],
        &[("PLFLOW_DATA_DIR", dir.path())],
    );
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("train-images-idx3-ubyte") && stderr.contains("PLFLOW_DATA_DIR"), "{stderr}");
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("file exists")).expect("valid JSON")
}

#[test]
fn run_trains_on_synthetic_data_and_writes_reports() {
    let dir = tempfile::tempdir().expect("tempdir");
    synthetic_mnist(&dir.path().join("mnist"), 2000, 500);
    let out_dir = dir.path().join("run");
    let out = plflow(
        dir.path(),
        &[
            "run",
            &mnist_pipeline(),
            "--set",
            "train.epochs=2",
            "--set",
            "net.hidden=[64, 32]",
            "--out",
            out_dir.to_str().expect("utf-8"),
        ],
        &[("PLFLOW_DATA_DIR", dir.path()), ("PLFLOW_CACHE_DIR", &dir.path().join("cache"))],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(stdout.matches("train epoch").count(), 2, "one line per epoch:\n{stdout}");

    let summary = read_json(&out_dir.join("summary.json"));
    for key in ["test_accuracy", "epochs", "epoch_seconds_median", "peak_rss_mb", "ledger_peak_mb"] {
        assert!(summary.get(key).is_some_and(|v| !v.is_null()), "summary lacks {key}: {summary}");
    }
    assert_eq!(summary["epochs"], 2);
    let acc = summary["test_accuracy"].as_f64().expect("number");
    assert!(acc > 0.9, "synthetic task should be learnt, got {acc}");
    assert!(summary["ledger_peak_mb"].as_f64().expect("number") > 0.0);

    let metrics = std::fs::read_to_string(out_dir.join("metrics.jsonl")).expect("metrics");
    let lines: Vec<serde_json::Value> =
        metrics.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    assert_eq!(lines.len(), 2);
    for key in
        ["epoch", "train_residual", "test_accuracy", "epoch_seconds", "samples_per_second", "solve_seconds"]
    {
        assert!(lines[1].get(key).is_some(), "metrics line lacks {key}");
    }
    let svg = std::fs::read_to_string(out_dir.join("curves.svg")).expect("the run draws its curves");
    assert!(svg.starts_with("<svg") && svg.contains("run: training curves") && svg.contains("accuracy"));
    let shares = &summary["time_shares"];
    let total: f64 =
        ["forward", "propagate", "solve"].iter().map(|k| shares[k].as_f64().expect("share")).sum();
    assert!((total - 1.0).abs() < 1e-9 && shares["solve"].as_f64() > Some(0.0), "{shares}");
    let resolved = std::fs::read_to_string(out_dir.join("pipeline.yaml")).expect("resolved pipeline");
    assert!(
        resolved.contains("epochs: 2")
            && resolved.contains("lambda_scale: relative")
            && resolved.contains("- 64"),
        "{resolved}"
    );

    // The same folder again is refused rather than overwritten.
    let again = plflow(
        dir.path(),
        &["run", &mnist_pipeline(), "--set", "train.epochs=1", "--out", out_dir.to_str().expect("utf-8")],
        &[("PLFLOW_DATA_DIR", dir.path())],
    );
    assert!(!again.status.success());
    assert_eq!(read_json(&out_dir.join("summary.json")), summary, "previous results untouched");
}

#[test]
fn same_seed_gives_the_same_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    synthetic_mnist(&dir.path().join("mnist"), 600, 100);
    let acc = |name: &str| {
        let out_dir = dir.path().join(name);
        let out = plflow(
            dir.path(),
            &[
                "run",
                &mnist_pipeline(),
                "--set",
                "train.epochs=1",
                "--set",
                "net.hidden=[32]",
                "--out",
                out_dir.to_str().expect("utf-8"),
            ],
            &[("PLFLOW_DATA_DIR", dir.path()), ("PLFLOW_CACHE_DIR", &dir.path().join("cache"))],
        );
        assert!(out.status.success(), "{}", text(&out).1);
        let s = read_json(&out_dir.join("summary.json"));
        (s["test_accuracy"].clone(), s["train_residual"].clone())
    };
    assert_eq!(acc("a"), acc("b"));
}

/// Issue 14's determinism: the same pipeline and seed give byte-identical models and the same
/// metrics (timings aside) on one, two and three threads, for every learning rule and the
/// CNN, whose parallel reductions must not depend on how the work is split.
#[test]
fn one_two_and_three_threads_give_the_same_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    synthetic_mnist(&dir.path().join("mnist"), 600, 100);
    let run = |pipeline: &str, threads: &str, sets: &[&str]| {
        let out_dir = dir.path().join(format!("{}-{threads}", pipeline.replace('/', "_")));
        let mut args = vec!["run", pipeline, "--no-progress", "--out", out_dir.to_str().expect("utf-8")];
        for s in sets {
            args.extend(["--set", s]);
        }
        let env = [
            ("PLFLOW_DATA_DIR", dir.path()),
            ("PLFLOW_CACHE_DIR", &dir.path().join("cache")),
            ("RAYON_NUM_THREADS", Path::new(threads)),
        ];
        let out = plflow(&root(), &args, &env);
        assert!(out.status.success(), "{pipeline} on {threads} threads: {}", text(&out).1);
        let model = std::fs::read(out_dir.join("model.safetensors")).expect("model");
        let metrics = common::metrics_of(&out_dir);
        (model, metrics)
    };
    let small = ["train.epochs=2", "data.limit=300"];
    for (pipeline, sets) in [
        ("pipelines/mnist.yaml", &small[..]),
        ("pipelines/mnist-sgd.yaml", &small[..]),
        ("pipelines/mnist-adam.yaml", &small[..]),
        ("pipelines/mnist-cnn.yaml", &["train.epochs=1", "data.limit=300"][..]),
        ("pipelines/mnist-muon.yaml", &small[..]),
        ("pipelines/mnist-admm.yaml", &small[..]),
        ("pipelines/mnist-ff.yaml", &small[..]),
        ("pipelines/mnist-noprop.yaml", &["train.epochs=1", "data.limit=300"][..]),
    ] {
        let one = run(pipeline, "1", sets);
        for threads in ["2", "3"] {
            let other = run(pipeline, threads, sets);
            assert_eq!(one.1, other.1, "{pipeline}: metrics differ between 1 and {threads} threads");
            assert!(one.0 == other.0, "{pipeline}: the model files differ between 1 and {threads} threads");
        }
    }
}

#[test]
fn bench_compares_pipelines_in_one_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    synthetic_mnist(&dir.path().join("mnist"), 600, 100);
    let out_dir = dir.path().join("bench");
    let pl = root().join("pipelines/mnist.yaml");
    let sgd = root().join("pipelines/mnist-sgd.yaml");
    let out = plflow(
        dir.path(),
        &[
            "bench",
            pl.to_str().expect("utf-8"),
            sgd.to_str().expect("utf-8"),
            "--epochs",
            "1",
            "--set",
            "net.hidden=[32]",
            "--out",
            out_dir.to_str().expect("utf-8"),
        ],
        &[("PLFLOW_DATA_DIR", dir.path()), ("PLFLOW_CACHE_DIR", &dir.path().join("cache"))],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let md = std::fs::read_to_string(out_dir.join("bench.md")).expect("markdown table");
    assert!(md.contains("| mnist | pl | 1 |") && md.contains("| mnist-sgd | sgd | 1 |"), "{md}");
    let csv = std::fs::read_to_string(out_dir.join("bench.csv")).expect("csv table");
    assert_eq!(csv.lines().count(), 3, "header and one row per pipeline:\n{csv}");
    assert!(
        out_dir.join("mnist-r1/summary.json").is_file()
            && out_dir.join("mnist-sgd-r1/metrics.jsonl").is_file()
    );
    let svg = std::fs::read_to_string(out_dir.join("bench.svg")).expect("bench chart");
    assert!(svg.contains("mnist-sgd") && svg.contains("time per epoch"), "the chart names the methods");

    // `plflow plot` overlays runs; a folder without metrics is named.
    let picture = dir.path().join("both.svg");
    let (a, b) = (out_dir.join("mnist-r1"), out_dir.join("mnist-sgd-r1"));
    let args = [
        "plot",
        a.to_str().expect("utf-8"),
        b.to_str().expect("utf-8"),
        "-o",
        picture.to_str().expect("utf-8"),
    ];
    let out = plflow(dir.path(), &args, &[]);
    assert!(out.status.success(), "{}", text(&out).1);
    let svg = std::fs::read_to_string(&picture).expect("plot");
    assert!(svg.contains("mnist-r1") && svg.contains("mnist-sgd-r1"));
    let out = plflow(dir.path(), &["plot", dir.path().to_str().expect("utf-8")], &[]);
    assert!(!out.status.success() && text(&out).1.contains("metrics.jsonl"), "{}", text(&out).1);
}

/// `plflow sweep`: a one-axis grid gives a row per point and a line chart; a rerun skips
/// finished points and reruns one left without its summary (what a kill leaves); a two-axis
/// grid draws a heatmap; a folder of another grid is refused.
#[test]
fn sweep_runs_each_point_once_and_resumes() {
    let dir = tempfile::tempdir().expect("tempdir");
    synthetic_mnist(&dir.path().join("mnist"), 400, 100);
    let env = [("PLFLOW_DATA_DIR", dir.path()), ("PLFLOW_CACHE_DIR", &dir.path().join("cache"))];
    let out_dir = dir.path().join("sweep");
    let out = out_dir.to_str().expect("utf-8");
    let args = [
        "sweep",
        &mnist_pipeline(),
        "--grid",
        "train.alpha=0.5,1",
        "--epochs",
        "1",
        "--set",
        "net.hidden=[16]",
        "--out",
        out,
    ];
    let first = plflow(dir.path(), &args, &env);
    let (stdout, stderr) = text(&first);
    assert!(first.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let md = std::fs::read_to_string(out_dir.join("sweep.md")).expect("table");
    assert!(
        md.starts_with("| train.alpha | final test % |")
            && md.contains("\n| 0.5 | ")
            && md.contains("\n| 1 | "),
        "{md}"
    );
    assert_eq!(std::fs::read_to_string(out_dir.join("sweep.csv")).expect("csv").lines().count(), 3);
    let svg = std::fs::read_to_string(out_dir.join("sweep.svg")).expect("chart");
    let doc = roxmltree::Document::parse(&svg).expect("well-formed SVG");
    let texts: Vec<&str> =
        doc.descendants().filter_map(|n| n.has_tag_name("text").then(|| n.text()).flatten()).collect();
    assert!(
        texts.iter().any(|t| t.contains("train.alpha")) && texts.iter().any(|t| t.trim() == "0.5"),
        "{texts:?}"
    );
    let summary = |k: usize| out_dir.join(format!("point-00{k}/run/summary.json"));
    let kept = std::fs::read(summary(1)).expect("point 1 finished");

    std::fs::remove_file(summary(2)).expect("as if killed before it finished");
    let again = plflow(dir.path(), &args, &env);
    let (stdout, stderr) = text(&again);
    assert!(again.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("point 1/2: train.alpha=0.5: finished before, skipped"), "{stdout}");
    assert!(stdout.contains("point 2/2: train.alpha=1: interrupted before, run again"), "{stdout}");
    assert_eq!(std::fs::read(summary(1)).expect("point 1"), kept, "a finished point is not rerun");
    assert!(summary(2).is_file());

    let other = ["sweep", &mnist_pipeline(), "--grid", "train.alpha=2,3", "--epochs", "1", "--out", out];
    let refused = plflow(dir.path(), &other, &env);
    assert!(!refused.status.success() && text(&refused).1.contains("another sweep"), "{}", text(&refused).1);

    let grid2 = dir.path().join("grid2");
    let args = [
        "sweep",
        &mnist_pipeline(),
        "--grid",
        "train.alpha=0.5,1",
        "--grid",
        "train.lambda=3,6",
        "--epochs",
        "1",
        "--set",
        "net.hidden=[16]",
        "--out",
        grid2.to_str().expect("utf-8"),
    ];
    let two = plflow(dir.path(), &args, &env);
    assert!(two.status.success(), "{}", text(&two).1);
    let svg = std::fs::read_to_string(grid2.join("sweep.svg")).expect("heatmap");
    let doc = roxmltree::Document::parse(&svg).expect("well-formed SVG");
    let cells = doc
        .descendants()
        .filter(|n| n.has_tag_name("rect") && n.attribute("fill") != Some("#FFFFFF"))
        .count();
    assert!(cells >= 4, "a cell per point: {cells}");
}

#[test]
fn check_prints_every_shape_of_the_cnn() {
    let out = plflow(&root(), &["check", "pipelines/mnist-cnn.yaml"], &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    for want in [
        "stem         pointwise       data         32x28x28",
        "block1.dw    depthwise       stem         32x28x28",
        "block2.dw    depthwise       block1.pw    32x14x14",
        "block3.pw    pointwise       block3.dw    32x7x7",
        "pool         global_avg_pool block3.pw    32 ",
        "head.2       dense           head.1       10 linear",
        "trainable parameters: 6,634",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
}

#[test]
fn convolutions_reject_flat_inputs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("bad.yaml");
    std::fs::write(
        &p,
        "name: x\nstages:\n  data:\n    kind: mnist\n  flat:\n    kind: dense\n    input: data\n    units: 16\n  conv:\n    kind: depthwise\n    input: flat\n",
    )
    .expect("write");
    let out = plflow(dir.path(), &["check", "bad.yaml"], &[]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains(
            "bad.yaml:11: stage `conv`: shape mismatch: a depthwise convolution needs feature maps"
        ),
        "{stderr}"
    );
}

/// The convolutional path runs end to end for PL and for Adam (forward, error propagation,
/// per-channel and pointwise solves, gradients, reports) on a small synthetic dataset. This
/// checks that the path works, not how well it learns (issue 5 is open).
#[test]
fn cnn_pipelines_run_end_to_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    synthetic_mnist(&dir.path().join("mnist"), 256, 64);
    for pipeline in ["pipelines/mnist-cnn.yaml", "pipelines/mnist-cnn-adam.yaml"] {
        let out_dir = dir.path().join(pipeline.replace(['/', '.'], "_"));
        let path = root().join(pipeline);
        let out = plflow(
            dir.path(),
            &[
                "run",
                path.to_str().expect("utf-8"),
                "--set",
                "train.epochs=1",
                "--out",
                out_dir.to_str().expect("utf-8"),
            ],
            &[("PLFLOW_DATA_DIR", dir.path()), ("PLFLOW_CACHE_DIR", &dir.path().join("cache"))],
        );
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{pipeline}\nstdout:\n{stdout}\nstderr:\n{stderr}");
        let summary = read_json(&out_dir.join("summary.json"));
        let acc = summary["test_accuracy"].as_f64().expect("number");
        assert!((0.0..=1.0).contains(&acc) && summary["parameters"] == 6634, "{summary}");
    }
}

/// Feature tables as pipeline input: a Parquet train file and an Arrow IPC test file of two
/// separable classes, standardised, limited, trained and evaluated.
#[test]
fn feature_tables_train_end_to_end() {
    use plflow_engine::datasets::format::Columns;
    use plflow_engine::datasets::format::TableFormat;
    use plflow_engine::datasets::sink::{Element, TableSchema, TableWriter};
    let dir = tempfile::tempdir().expect("tempdir");
    let schema = TableSchema {
        shape: vec![6],
        element: Element::F32,
        class_names: vec!["left".into(), "right".into()],
        metadata: Default::default(),
        columns: Columns { features: "emb".into(), label: "y".into(), ..Columns::default() },
    };
    for (file, n) in [("train.parquet", 600), ("test.arrow", 200)] {
        let path = dir.path().join(file);
        let mut w = TableWriter::create(&path, TableFormat::from_path(&path).expect("format"), &schema)
            .expect("create");
        let y: Vec<u32> = (0..n).map(|i| (i % 2) as u32).collect();
        let x: Vec<f32> = (0..n * 6)
            .map(|k| {
                let (i, j) = (k / 6, k % 6);
                let sign = if y[i] == 1 { 1.0 } else { -1.0 };
                100.0 + sign * (j as f32 + 1.0) * 3.0 + ((k * 37 % 11) as f32 - 5.0)
            })
            .collect();
        w.write_f32(&x, &y).expect("write");
        w.finish().expect("finish");
    }
    let yaml = "name: tables\nstages:\n  data:\n    kind: table\n    train: train.parquet\n    test: test.arrow\n    features: emb\n    label: y\n    limit: 400\n  scaled:\n    kind: standardize\n    input: data\n  net:\n    kind: mlp\n    input: scaled\n    hidden: [16]\n  train:\n    kind: pl\n    input: net\n    epochs: 3\n    batch_size: 64\n    alpha: 0.5\n  eval:\n    kind: evaluate\n    input: train\n";
    std::fs::write(dir.path().join("t.yaml"), yaml).expect("write");
    let out = plflow(
        dir.path(),
        &["run", "t.yaml", "--out", "run"],
        &[("PLFLOW_DATA_DIR", dir.path()), ("PLFLOW_CACHE_DIR", &dir.path().join("cache"))],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("data: 400 train and 134 test examples of shape 6, 2 classes"), "{stdout}");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("run/summary.json")).expect("summary"))
            .expect("json");
    assert!(summary["test_accuracy"].as_f64().expect("acc") > 0.95, "{stdout}");
    let check = plflow(dir.path(), &["check", "t.yaml"], &[("PLFLOW_DATA_DIR", &dir.path().join("nowhere"))]);
    let (_, err) = text(&check);
    assert!(
        !check.status.success() && err.contains("field `train`") && err.contains("train.parquet"),
        "{err}"
    );
}

/// `plflow fetch` against a local server that returns corrupted bytes: rejected by the
/// checksum, and nothing is left in the data folder.
#[test]
fn fetch_rejects_a_corrupted_download() {
    use std::io::{BufRead, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = std::io::BufReader::new(stream);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let body = b"these are not the MNIST bytes";
            let mut s = reader.into_inner();
            let _ = s.write_all(
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())
                    .as_bytes(),
            );
            let _ = s.write_all(body);
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let mirror = format!("http://{addr}");
    for (name, folder) in [("mnist", "data"), ("resnet18", "models")] {
        let data = dir.path().join(folder);
        let out = plflow(
            dir.path(),
            &["fetch", name, "--dir", data.to_str().expect("utf8"), "--mirror", &mirror],
            &[],
        );
        let (stdout, stderr) = text(&out);
        assert!(!out.status.success(), "{stdout}");
        assert!(stderr.contains("checksum mismatch"), "{stderr}");
        assert_eq!(
            std::fs::read_dir(&data).map_or(0, |d| d.count()),
            0,
            "nothing left in {}",
            data.display()
        );
    }
    let out = plflow(
        dir.path(),
        &["fetch", "resnet18", "--mirror", &mirror],
        &[("PLFLOW_MODEL_DIR", Path::new(""))],
    );
    let (_, stderr) = text(&out);
    assert!(stderr.contains("resnet18-v2-7.onnx") && stderr.contains("3b4d0480578540222"), "{stderr}");
    assert!(!dir.path().join("models/resnet18-v2-7.onnx").exists());
}

/// The ResNet-18 pipelines check with a stand-in for the model (the tiny test model under the
/// expected name); without it, the error names the file, where it was looked for, and the
/// `plflow fetch` command.
#[test]
fn resnet18_pipelines_check_and_say_how_to_fetch_the_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).expect("mkdir");
    for p in ["pipelines/cifar10-resnet18.yaml", "pipelines/cifar100-resnet18.yaml"] {
        let out = plflow(&root(), &["check", p], &[("PLFLOW_MODEL_DIR", &models)]);
        let (_, stderr) = text(&out);
        assert!(!out.status.success());
        assert!(
            stderr.contains("field `model`")
                && stderr.contains(&format!("under $PLFLOW_MODEL_DIR ({})", models.display()))
                && stderr.contains("`plflow fetch resnet18` downloads it there"),
            "{stderr}"
        );
    }
    std::fs::copy(root().join("extract/tests/data/tiny.onnx"), models.join("resnet18-v2-7.onnx"))
        .expect("copy");
    for p in ["pipelines/cifar10-resnet18.yaml", "pipelines/cifar100-resnet18.yaml"] {
        let out = plflow(&root(), &["check", p], &[("PLFLOW_MODEL_DIR", &models)]);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stderr}");
        assert!(stdout.contains("extract") && stdout.contains("512"), "{stdout}");
    }
}

/// A run leaves its model behind: `eval` on the run folder reproduces the run's test accuracy
/// exactly, counts every test example in a per-class CSV, measures another dataset of the
/// same shape given by `--set` (the figure the run's own `evaluate` stage with `data:` on
/// that dataset recorded), and refuses a truncated model naming the file.
#[test]
fn eval_reproduces_the_run_and_measures_other_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    synthetic_mnist(&dir.path().join("mnist"), 1200, 300);
    synthetic_mnist(&dir.path().join("other"), 100, 70);
    let run_dir = dir.path().join("run");
    let env = [("PLFLOW_DATA_DIR", dir.path()), ("PLFLOW_CACHE_DIR", &dir.path().join("cache"))];
    let pipeline = dir.path().join("two-datasets.yaml");
    let mut text_of = std::fs::read_to_string(mnist_pipeline()).expect("pipeline");
    text_of.push_str(
        "  other:\n    kind: mnist\n    path: other\n  eval_other:\n    kind: evaluate\n    input: train\n    data: other\n",
    );
    std::fs::write(&pipeline, text_of).expect("write");
    let run = plflow(
        dir.path(),
        &[
            "run",
            pipeline.to_str().expect("utf-8"),
            "--set",
            "train.epochs=2",
            "--set",
            "net.hidden=[48]",
            "--set",
            "net.sparse={mask: persistent}",
            "--out",
            run_dir.to_str().expect("utf-8"),
        ],
        &env,
    );
    let (stdout, stderr) = text(&run);
    assert!(run.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    for file in ["model.safetensors", "best.safetensors"] {
        assert!(run_dir.join(file).is_file(), "{file} written");
    }
    let summary = read_json(&run_dir.join("summary.json"));
    let acc = summary["test_accuracy"].as_f64().expect("number");
    let on_other = summary["evaluations"]["eval_other"].as_f64().expect("the other dataset measured");

    let run_arg = run_dir.to_str().expect("utf-8");
    let eval = plflow(dir.path(), &["eval", run_arg], &env);
    let (stdout, stderr) = text(&eval);
    assert!(eval.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains(&format!("test accuracy {:.2}% over 300 examples", acc * 100.0)), "{stdout}");
    let csv = std::fs::read_to_string(run_dir.join("eval-test.csv")).expect("csv");
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 11, "a header and one row per class:\n{csv}");
    let examples: u64 = rows[1..]
        .iter()
        .map(|r| r.split(',').nth(1).and_then(|v| v.parse::<u64>().ok()).expect("count"))
        .sum();
    assert_eq!(examples, 300);

    let other = plflow(dir.path(), &["eval", run_arg, "--set", "data.path=other"], &env);
    let (stdout, stderr) = text(&other);
    assert!(other.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let want = format!("test accuracy {:.2}% over 70 examples", on_other * 100.0);
    assert!(stdout.contains(&want), "{want} in:\n{stdout}");

    let bytes = std::fs::read(run_dir.join("model.safetensors")).expect("model");
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
    let bad = plflow(dir.path(), &["eval", cut.to_str().expect("utf-8")], &env);
    let (_, stderr) = text(&bad);
    assert!(
        !bad.status.success() && stderr.contains("cut.safetensors") && stderr.contains("truncated"),
        "{stderr}"
    );
}

#[test]
fn init_from_continues_a_trained_model_and_refuses_other_shapes() {
    let dir = tempfile::tempdir().expect("tempdir");
    synthetic_mnist(&dir.path().join("mnist"), 600, 200);
    let env = [("PLFLOW_DATA_DIR", dir.path()), ("PLFLOW_CACHE_DIR", &dir.path().join("cache"))];
    let pipeline = mnist_pipeline();
    let first_epoch = |run: &str| -> f64 {
        let metrics = std::fs::read_to_string(dir.path().join(run).join("metrics.jsonl")).expect("metrics");
        let v: serde_json::Value = serde_json::from_str(metrics.lines().next().expect("line")).expect("JSON");
        v["test_accuracy"].as_f64().expect("number")
    };
    let base = ["--set", "train.epochs=1", "--set", "net.hidden=[24]", "--set", "train.alpha=0.5"];
    let mut args = vec!["run", pipeline.as_str(), "--out", "first"];
    args.extend(base);
    let first = plflow(dir.path(), &args, &env);
    let (stdout, stderr) = text(&first);
    assert!(first.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");

    let mut args = vec!["run", pipeline.as_str(), "--out", "second", "--set", "train.init_from=first"];
    args.extend(base);
    let second = plflow(dir.path(), &args, &env);
    let (stdout, stderr) = text(&second);
    assert!(second.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("starting from first/model.safetensors"), "{stdout}");
    let (a, b) = (first_epoch("first"), first_epoch("second"));
    println!("first epoch: {a} fresh, {b} from the first run");
    assert!(b > a, "the continued run's first epoch ({b}) beats the first run's ({a})");

    let wrong = plflow(
        dir.path(),
        &["check", &pipeline, "--set", "net.hidden=[32]", "--set", "train.init_from=first"],
        &env,
    );
    let (stdout, stderr) = text(&wrong);
    assert!(!wrong.status.success(), "{stdout}");
    assert!(
        stderr.contains("field `init_from`")
            && stderr.contains("layer 1 `net.0` is dense 784 -> 32 (elu, clip 10)")
            && stderr.contains("`net.0` is dense 784 -> 24"),
        "{stderr}"
    );
}

/// `predict` on the test IDX file counts exactly the run's test accuracy; the same digits
/// written as PNG files into class folders get the same classes, row for row.
#[test]
fn predict_classifies_idx_files_and_png_folders_alike() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("mnist");
    synthetic_mnist(&data, 600, 60);
    let env = [("PLFLOW_DATA_DIR", dir.path()), ("PLFLOW_CACHE_DIR", &dir.path().join("cache"))];
    let sets = ["--set", "train.epochs=1", "--set", "net.hidden=[24]", "--set", "train.alpha=0.5"];
    let mut args = vec!["run", "PIPELINE", "--out", "run"];
    let pipeline = mnist_pipeline();
    args[1] = &pipeline;
    args.extend(sets);
    let run = plflow(dir.path(), &args, &env);
    let (stdout, stderr) = text(&run);
    assert!(run.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let acc = read_json(&dir.path().join("run/summary.json"))["test_accuracy"].as_f64().expect("number");
    assert!(acc > 0.15 && acc < 1.0, "a model that is right on some digits and wrong on others: {acc}");

    let idx = data.join("t10k-images-idx3-ubyte");
    let bytes = std::fs::read(&idx).expect("idx");
    let labels = std::fs::read(data.join("t10k-labels-idx1-ubyte")).expect("labels")[8..].to_vec();
    let pngs = dir.path().join("pngs");
    for (i, pixels) in bytes[16..].chunks_exact(784).enumerate() {
        let class_dir = pngs.join(labels[i].to_string());
        std::fs::create_dir_all(&class_dir).expect("mkdir");
        image::GrayImage::from_raw(28, 28, pixels.to_vec())
            .expect("28x28")
            .save(class_dir.join(format!("{i:03}.png")))
            .expect("png");
    }
    let predict = |input: &Path, out: &str| -> Vec<Vec<String>> {
        let args = ["predict", "run", input.to_str().expect("utf-8"), "--top", "3", "--out", out];
        let p = plflow(dir.path(), &args, &env);
        let (stdout, stderr) = text(&p);
        assert!(p.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
        assert!(stderr.contains("predicted 60 inputs"), "{stderr}");
        let csv = std::fs::read_to_string(dir.path().join(out)).expect("csv");
        let mut lines = csv.lines();
        assert_eq!(lines.next(), Some("id,class,probability,class_2,probability_2,class_3,probability_3"));
        lines.map(|l| l.split(',').map(str::to_owned).collect()).collect()
    };
    let from_idx = predict(&idx, "idx.csv");
    let correct = from_idx.iter().enumerate().filter(|(i, r)| r[1] == labels[*i].to_string()).count();
    assert_eq!(correct as f64 / 60.0, acc, "predict agrees with the run's evaluation");
    for r in &from_idx {
        let p: Vec<f64> = [2, 4, 6].iter().map(|&k| r[k].parse().expect("probability")).collect();
        assert!(p[0] >= p[1] && p[1] >= p[2] && p[0] <= 1.0, "ranked probabilities: {r:?}");
    }

    let from_png = predict(&pngs, "png.csv");
    let by_row = |rows: &[Vec<String>], id: &dyn Fn(&str) -> usize| -> Vec<(usize, String)> {
        let mut v: Vec<_> = rows.iter().map(|r| (id(&r[0]), r[1].clone())).collect();
        v.sort();
        v
    };
    let idx_row = |id: &str| id.rsplit(':').next().and_then(|n| n.parse().ok()).expect("row");
    let png_row = |id: &str| {
        Path::new(id).file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse().ok()).expect("file number")
    };
    assert_eq!(by_row(&from_idx, &idx_row), by_row(&from_png, &png_row));

    let parquet =
        plflow(dir.path(), &["predict", "run", idx.to_str().expect("utf-8"), "--out", "p.parquet"], &env);
    assert!(parquet.status.success(), "{}", text(&parquet).1);
    let bytes = std::fs::read(dir.path().join("p.parquet")).expect("parquet written");
    assert!(bytes.starts_with(b"PAR1") && bytes.ends_with(b"PAR1"));

    let wrong = plflow(dir.path(), &["predict", "run", "run/summary.json"], &env);
    let (_, stderr) = text(&wrong);
    assert!(!wrong.status.success() && stderr.contains("summary.json"), "{stderr}");
}

/// Forward-Forward (goodness per label) and NoProp (a chain of denoising blocks) models do not
/// classify by their outputs: the model file says how, `eval` and `predict` reproduce the
/// run's test accuracy exactly, and `export` refuses them with the reason.
#[test]
fn ff_and_noprop_models_evaluate_and_predict_as_their_runs_did() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("mnist");
    synthetic_mnist(&data, 600, 60);
    let env = [("PLFLOW_DATA_DIR", dir.path()), ("PLFLOW_CACHE_DIR", &dir.path().join("cache"))];
    let idx = data.join("t10k-images-idx3-ubyte");
    let labels = std::fs::read(data.join("t10k-labels-idx1-ubyte")).expect("labels")[8..].to_vec();
    let cases: [(&str, &str, &[&str], &str); 2] = [
        (
            "ff",
            "pipelines/mnist-ff.yaml",
            &["h1.units=32", "h2.units=16", "train.epochs=8"],
            "Forward-Forward",
        ),
        (
            "noprop",
            "pipelines/mnist-noprop.yaml",
            &["train.hidden=[24]", "train.steps=3", "train.epochs=4"],
            "NoProp",
        ),
    ];
    for (kind, pipeline, sets, named) in cases {
        let pipeline = root().join(pipeline).display().to_string();
        let mut args = vec!["run", pipeline.as_str(), "--out", kind, "--set", "train.batch_size=64"];
        for s in sets {
            args.extend(["--set", s]);
        }
        let run = plflow(dir.path(), &args, &env);
        let (stdout, stderr) = text(&run);
        assert!(run.status.success(), "{kind}\nstdout:\n{stdout}\nstderr:\n{stderr}");
        let summary = read_json(&dir.path().join(kind).join("summary.json"));
        let acc = summary["test_accuracy"].as_f64().expect("number");
        assert!(acc > 0.3, "{kind} learns the synthetic digits: {acc}");
        assert_eq!(summary["trainers"][0]["solver"]["kind"], kind, "{summary}");

        let eval = plflow(dir.path(), &["eval", kind], &env);
        let (stdout, stderr) = text(&eval);
        assert!(eval.status.success(), "{kind}\nstdout:\n{stdout}\nstderr:\n{stderr}");
        assert!(stdout.contains(&format!("test accuracy {:.2}% over 60 examples", acc * 100.0)), "{stdout}");

        let csv = format!("{kind}.csv");
        let p = plflow(dir.path(), &["predict", kind, idx.to_str().expect("utf-8"), "--out", &csv], &env);
        assert!(p.status.success(), "{}", text(&p).1);
        let csv = std::fs::read_to_string(dir.path().join(csv)).expect("csv");
        let correct = csv
            .lines()
            .skip(1)
            .enumerate()
            .filter(|(i, l)| l.split(',').nth(1) == Some(&labels[*i].to_string()))
            .count();
        assert_eq!(correct as f64 / 60.0, acc, "{kind}: predict agrees with the run's evaluation");

        let onnx = format!("{kind}.onnx");
        let export = plflow(dir.path(), &["export", kind, "--onnx", &onnx], &env);
        let (_, stderr) = text(&export);
        assert!(!export.status.success() && stderr.contains(named), "{stderr}");
        assert!(!dir.path().join(onnx).exists());
    }
}

/// `export` writes an ONNX file that plflow checks in tract (`--verify`) and that tract, used
/// directly here, loads and runs from pixels to ten outputs.
#[test]
fn export_writes_onnx_that_tract_runs() {
    use tract_onnx::prelude::*;
    let dir = tempfile::tempdir().expect("tempdir");
    synthetic_mnist(&dir.path().join("mnist"), 300, 50);
    let env = [("PLFLOW_DATA_DIR", dir.path()), ("PLFLOW_CACHE_DIR", &dir.path().join("cache"))];
    let pipeline = mnist_pipeline();
    let sets =
        ["--set", "train.epochs=1", "--set", "net.hidden=[24]", "--set", "net.sparse={mask: persistent}"];
    let mut args = vec!["run", pipeline.as_str(), "--out", "run"];
    args.extend(sets);
    let run = plflow(dir.path(), &args, &env);
    let (stdout, stderr) = text(&run);
    assert!(run.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");

    let export = plflow(dir.path(), &["export", "run", "--onnx", "m.onnx", "--verify", "300"], &env);
    let (stdout, stderr) = text(&export);
    assert!(export.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("input `input` [N, 1, 28, 28] -> output `logits`"), "{stdout}");
    let diff: f64 = stdout
        .split("largest difference from plflow ")
        .nth(1)
        .and_then(|s| s.trim().parse().ok())
        .expect("the check's figure");
    assert!(diff <= 1e-4, "{stdout}");

    let model = tract_onnx::onnx()
        .model_for_path(dir.path().join("m.onnx"))
        .and_then(|m| m.with_input_fact(0, f32::fact([2, 1, 28, 28]).into()))
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .expect("tract loads the file");
    let input = tract_ndarray::Array4::<f32>::from_elem((2, 1, 28, 28), 0.5);
    let out = model.run(tvec!(Tensor::from(input).into())).expect("runs");
    assert_eq!(out[0].shape(), &[2, 10]);
}

/// `concat` at both levels in one pipeline: the pixels joined with their standardised copy
/// (a dataset join), and a head reading two hidden layers (a skip concatenation). The run
/// trains, `eval` reproduces it, `export` checks in tract from the joined features, `predict`
/// refuses what it cannot feed, and datasets that do not hold the same examples are refused
/// naming the stage.
#[test]
fn concat_joins_datasets_and_layers_end_to_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    synthetic_mnist(&dir.path().join("mnist"), 1200, 300);
    synthetic_mnist(&dir.path().join("other"), 1000, 300);
    let env = [("PLFLOW_DATA_DIR", dir.path()), ("PLFLOW_CACHE_DIR", &dir.path().join("cache"))];
    let pipeline = dir.path().join("joined.yaml");
    std::fs::write(
        &pipeline,
        "name: joined\nseed: 3\nstages:\n  data:\n    kind: mnist\n    path: mnist\n  scaled:\n    kind: standardize\n    input: data\n  both:\n    kind: concat\n    inputs: [data, scaled]\n  h1:\n    kind: dense\n    input: both\n    units: 32\n  h2:\n    kind: dense\n    input: h1\n    units: 16\n  join:\n    kind: concat\n    inputs: [h2, h1]\n  out:\n    kind: dense\n    input: join\n    units: 10\n    activation: linear\n  train:\n    kind: pl\n    input: out\n    epochs: 2\n    batch_size: 128\n  eval:\n    kind: evaluate\n    input: train\n",
    )
    .expect("write");
    let run = plflow(dir.path(), &["run", pipeline.to_str().expect("utf-8"), "--out", "run"], &env);
    let (stdout, stderr) = text(&run);
    assert!(run.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("both: 1568 features per example from data + scaled"), "{stdout}");
    let acc = read_json(&dir.path().join("run/summary.json"))["test_accuracy"].as_f64().expect("number");
    assert!(acc > 0.8, "the synthetic task is learnt through both joins: {acc}");

    let eval = plflow(dir.path(), &["eval", "run"], &env);
    let (stdout, stderr) = text(&eval);
    assert!(eval.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains(&format!("test accuracy {:.2}%", acc * 100.0)),
        "eval reproduces {acc}:\n{stdout}"
    );

    let export = plflow(dir.path(), &["export", "run", "--onnx", "model.onnx", "--verify", "50"], &env);
    let (stdout, stderr) = text(&export);
    assert!(export.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("[N, 1568]"), "the network's input is the joined features:\n{stdout}");

    let idx = dir.path().join("mnist/t10k-images-idx3-ubyte");
    let predict = plflow(dir.path(), &["predict", "run", idx.to_str().expect("utf-8")], &env);
    let (_, stderr) = text(&predict);
    assert_eq!(predict.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("this model takes feature vectors: give Arrow IPC or Parquet tables"),
        "{stderr}"
    );

    let mismatched = std::fs::read_to_string(&pipeline)
        .expect("read")
        .replace("inputs: [data, scaled]", "inputs: [data, other]")
        .replace("  h1:\n", "  other:\n    kind: mnist\n    path: other\n  h1:\n");
    std::fs::write(&pipeline, mismatched).expect("write");
    let run = plflow(dir.path(), &["run", pipeline.to_str().expect("utf-8"), "--out", "bad"], &env);
    let (_, stderr) = text(&run);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("both") && stderr.contains("input 1 has 1200 examples, input 2 has 1000"),
        "{stderr}"
    );
}

/// `plflow inspect` on an ONNX model lists its input, outputs and the tensors before them,
/// with shapes; a file that is not a model is refused naming it.
#[test]
fn inspect_lists_the_tensors_of_an_onnx_model() {
    let out = plflow(&root(), &["inspect", "extract/tests/data/tiny.onnx"], &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    for want in
        ["inputs:\n  input  N,3,H,W,F32", "outputs:\n  features  N,2,F32\n  logits  N,2,F32", "flat  N,3,F32"]
    {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("bad.onnx"), b"not a protobuf at all").expect("write");
    let out = plflow(dir.path(), &["inspect", "bad.onnx"], &[]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success() && stderr.contains("cannot inspect bad.onnx"), "{stderr}");
}
