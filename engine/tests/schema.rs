//! `plflow schema`'s JSON Schema against the pipelines plflow ships and against files the
//! parser refuses, checked by an independent JSON Schema validator.

use plflow_engine::parse::parse_pipeline;
use plflow_engine::spec::json_schema;
use std::path::{Path, PathBuf};

/// Every `.yaml` file under `dir`, recursively, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("pipelines folder") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(yaml_files(&path));
        } else if path.extension().is_some_and(|e| e == "yaml") {
            out.push(path);
        }
    }
    out.sort();
    out
}

fn as_json(text: &str) -> serde_json::Value {
    serde_norway::from_str(text).expect("YAML")
}

#[test]
fn every_shipped_pipeline_validates_against_the_schema() {
    let schema = json_schema();
    let validator = jsonschema::validator_for(&schema).expect("the schema is a valid JSON Schema");
    let files = yaml_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines"));
    assert!(files.len() >= 15, "found only {files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read");
        let errors: Vec<String> = validator.iter_errors(&as_json(&text)).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{}: {errors:?}", file.display());
    }
}

#[test]
fn what_the_parser_refuses_the_schema_refuses() {
    let validator = jsonschema::validator_for(&json_schema()).expect("valid schema");
    let good = "name: t\nstages:\n  data:\n    kind: mnist\n  net:\n    kind: mlp\n    input: data\n    hidden: [32]\n  train:\n    kind: muon\n    input: net\n    epochs: 2\n";
    assert!(validator.is_valid(&as_json(good)));
    parse_pipeline(good, Path::new("p.yaml")).expect("the parser takes it too");
    for (what, bad) in [
        ("an unknown field", good.replace("epochs: 2", "epoch: 2")),
        ("an unknown kind", good.replace("kind: muon", "kind: lion")),
        ("a string for a number", good.replace("epochs: 2", "epochs: two")),
        ("a stage without its kind", good.replace("    kind: mnist\n", "    path: mnist\n")),
        ("an unknown top-level key", format!("{good}extra: 1\n")),
    ] {
        assert!(!validator.is_valid(&as_json(&bad)), "the schema takes {what}:\n{bad}");
        assert!(parse_pipeline(&bad, Path::new("p.yaml")).is_err(), "the parser takes {what}");
    }
}
