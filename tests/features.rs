//! End-to-end tests of feature extraction and feature-file pipelines. The real-data test needs
//! `$PLFLOW_DATA_DIR/cifar10` and `$PLFLOW_MODEL_DIR` (`.ci/run` sets both to `../shared`);
//! the others build their own images, tables and use the tiny ONNX model of `extract/tests`.

mod common;

use common::{plflow, root, text};
use std::path::{Path, PathBuf};

fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("summary.json")).expect("summary")).expect("json")
}

#[test]
fn cifar10_from_images_to_a_summary_then_reused_features() {
    let (Some(data), Some(models)) = (
        std::env::var_os("PLFLOW_DATA_DIR").map(PathBuf::from),
        std::env::var_os("PLFLOW_MODEL_DIR").map(PathBuf::from),
    ) else {
        eprintln!(
            "skipping: set PLFLOW_DATA_DIR (with cifar10/) and PLFLOW_MODEL_DIR (with the EfficientNet ONNX files)"
        );
        return;
    };
    if !data.join("cifar10").is_dir() || !models.join("efficientnet-lite0-features-96.onnx").is_file() {
        eprintln!(
            "skipping: {} has no cifar10/ or {} has no efficientnet-lite0-features-96.onnx",
            data.display(),
            models.display()
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    let env: Vec<(&str, &Path)> =
        vec![("PLFLOW_DATA_DIR", &data), ("PLFLOW_MODEL_DIR", &models), ("PLFLOW_CACHE_DIR", &cache)];
    let args = |out: &str| -> Vec<String> {
        ["run", "pipelines/cifar10.yaml", "--set", "data.limit=2000", "--set", "train.epochs=2", "--out"]
            .iter()
            .map(|s| s.to_string())
            .chain([dir.path().join(out).display().to_string()])
            .collect()
    };
    let first_args = args("first");
    let out = plflow(&root(), &first_args.iter().map(String::as_str).collect::<Vec<_>>(), &env);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("features: extracted 2400 images"), "{stdout}");
    let acc = summary(&dir.path().join("first"))["test_accuracy"].as_f64().expect("accuracy");
    assert!(acc > 0.55, "test accuracy {acc} on 2,000 images:\n{stdout}");

    let second_args = args("second");
    let out = plflow(&root(), &second_args.iter().map(String::as_str).collect::<Vec<_>>(), &env);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("the model was not run"), "the second run extracted again:\n{stdout}");
    let again = summary(&dir.path().join("second"))["test_accuracy"].as_f64().expect("accuracy");
    assert_eq!(acc, again, "same features, same seed, same result");

    // One extraction (cached here), three heads in one run, one summary section each; the
    // first head starts from the same weights as cifar10.yaml's network.
    let sets = ["data.limit=2000", "pl.epochs=2", "sgd.epochs=2", "adam.epochs=2"];
    let mut args = vec!["run", "pipelines/cifar10-compare.yaml"];
    args.extend(sets.iter().flat_map(|s| ["--set", s]));
    let out_dir = dir.path().join("compare");
    args.extend(["--out", out_dir.to_str().expect("utf8")]);
    let out = plflow(&root(), &args, &env);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("the model was not run"), "the compare run extracted again:\n{stdout}");
    let s = summary(&out_dir);
    let trainers = s["trainers"].as_array().expect("trainers");
    let stages: Vec<&str> = trainers.iter().map(|t| t["stage"].as_str().expect("stage")).collect();
    assert_eq!(stages, ["pl", "sgd", "adam"], "{s}");
    assert_eq!(trainers[0]["test_accuracy"].as_f64(), Some(acc), "the PL head is cifar10.yaml's network");
    for t in trainers {
        let solver = t["solver"]["kind"].as_str().expect("kind");
        let eval = format!("eval_{solver}");
        assert!(t["evaluations"][eval.as_str()].as_f64().is_some_and(|a| a > 0.5), "{t}");
        assert_eq!(t["epochs"], 2, "{t}");
    }
    assert_eq!(s["stage"], "adam", "the top level repeats the last trainer");
}

/// Two colours of 6x6 PNG images in an image folder, the tiny test model as backbone.
#[test]
fn extract_stage_runs_a_model_over_an_image_folder_and_caches_its_features() {
    let dir = tempfile::tempdir().expect("tempdir");
    common::colour_images(&dir.path().join("imgs"), 40, 10, 6);
    let yaml = common::tiny_extract_pipeline("imgs", 3);
    std::fs::write(dir.path().join("p.yaml"), yaml).expect("write");
    let cache = dir.path().join("cache");
    let env: Vec<(&str, &Path)> = vec![("PLFLOW_DATA_DIR", dir.path()), ("PLFLOW_CACHE_DIR", &cache)];
    let out = plflow(dir.path(), &["run", "p.yaml", "--out", "r1"], &env);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("features: extracted 100 images"), "{stdout}");
    assert!(summary(&dir.path().join("r1"))["test_accuracy"].as_f64().expect("acc") > 0.95, "{stdout}");
    let out = plflow(dir.path(), &["run", "p.yaml", "--out", "r2"], &env);
    let (stdout, _) = text(&out);
    assert!(out.status.success() && stdout.contains("the model was not run"), "{stdout}");

    // The trained model on new images: through its backbone (found by name under
    // PLFLOW_MODEL_DIR), and as one ONNX file from pixels to outputs.
    let models = root().join("extract/tests/data");
    let with_models: Vec<(&str, &Path)> =
        env.iter().copied().chain([("PLFLOW_MODEL_DIR", models.as_path())]).collect();
    let out = plflow(dir.path(), &["predict", "r1", "imgs/test", "--out", "p.csv"], &with_models);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let csv = std::fs::read_to_string(dir.path().join("p.csv")).expect("csv");
    let right = csv
        .lines()
        .skip(1)
        .filter(|l| l.split(',').nth(1).is_some_and(|c| l.contains(&format!("/{c}/"))))
        .count();
    assert!(right >= 19, "{right} of 20 test images classified as their folder:\n{csv}");
    for with_backbone in [false, true] {
        let mut args = vec!["export", "r1", "--onnx", "m.onnx"];
        args.extend(with_backbone.then_some("--with-backbone"));
        let out = plflow(dir.path(), &args, &with_models);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout}\n{stderr}");
        let shape = if with_backbone { "[N, 3, 6, 6]" } else { "[N, 2]" };
        assert!(stdout.contains(shape) && stdout.contains("largest difference"), "{stdout}");
    }
    let elsewhere = dir.path().join("other-models");
    std::fs::create_dir_all(&elsewhere).expect("mkdir");
    std::fs::write(elsewhere.join("tiny.onnx"), b"not the backbone").expect("write");
    let swapped: Vec<(&str, &Path)> =
        env.iter().copied().chain([("PLFLOW_MODEL_DIR", elsewhere.as_path())]).collect();
    let out = plflow(dir.path(), &["predict", "r1", "imgs/test"], &swapped);
    let (_, stderr) = text(&out);
    assert!(!out.status.success() && stderr.contains("SHA-256"), "{stderr}");
    let wrong = std::fs::read_to_string(dir.path().join("p.yaml")).expect("read").replace("dim: 2", "dim: 3");
    std::fs::write(dir.path().join("w.yaml"), wrong).expect("write");
    let out = plflow(dir.path(), &["run", "w.yaml", "--out", "r3"], &env);
    let (_, stderr) = text(&out);
    assert!(!out.status.success() && stderr.contains("set `dim: 2`"), "{stderr}");
}

/// `pipelines/features.yaml` trains from feature files under `$PLFLOW_DATA_DIR/features/`.
#[test]
fn the_features_pipeline_trains_from_files_on_disk() {
    use plflow_engine::datasets::format::Columns;
    use plflow_engine::datasets::format::TableFormat;
    use plflow_engine::datasets::sink::{Element, TableSchema, TableWriter};
    let dir = tempfile::tempdir().expect("tempdir");
    let schema = TableSchema {
        shape: vec![16],
        element: Element::F32,
        class_names: vec![],
        metadata: Default::default(),
        columns: Columns::default(),
    };
    for (file, n) in [("train.parquet", 512), ("test.parquet", 128)] {
        let path = dir.path().join("features").join(file);
        let mut w = TableWriter::create(&path, TableFormat::Parquet, &schema).expect("create");
        let y: Vec<u32> = (0..n).map(|i| (i % 4) as u32).collect();
        let x: Vec<f32> = (0..n * 16)
            .map(|k| if k % 16 == 4 * y[k / 16] as usize { 3.0 } else { ((k * 31 % 13) as f32) / 13.0 })
            .collect();
        w.write_f32(&x, &y).expect("write");
        w.finish().expect("finish");
    }
    let pipeline = root().join("pipelines/features.yaml");
    let out = plflow(
        dir.path(),
        &[
            "run",
            pipeline.to_str().expect("utf8"),
            "--set",
            "train.epochs=3",
            "--set",
            "train.alpha=0.5",
            "--out",
            "run",
        ],
        &[("PLFLOW_DATA_DIR", dir.path()), ("PLFLOW_CACHE_DIR", &dir.path().join("cache"))],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("data: 512 train and 128 test examples of shape 16, 4 classes"), "{stdout}");
    assert!(summary(&dir.path().join("run"))["test_accuracy"].as_f64().expect("acc") > 0.9, "{stdout}");
}
