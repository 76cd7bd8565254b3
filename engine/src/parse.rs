//! Reading a pipeline file: YAML text (plus `--set` overrides) into a [`PipelineSpec`], with
//! errors that name the file, the stage, the field and the line.
//!
//! serde_norway is the YAML crate (the maintained fork of the deprecated serde_yaml); this is
//! the only module that calls it for pipelines.

use crate::error::SpecError;
use crate::spec::{PipelineSpec, stage_body_error};
use serde_norway::{Mapping, Value};
use std::path::Path;

/// Parse pipeline text read from `file`.
pub fn parse_pipeline(text: &str, file: &Path) -> Result<PipelineSpec, SpecError> {
    serde_norway::from_str::<PipelineSpec>(text).map_err(|e| explain(text, file, e, None))
}

/// Parse pipeline text and apply `--set key=value` overrides (`stage.field=value`, or
/// `field=value` for top-level fields). The file is checked on its own first, so its errors
/// keep their line numbers; then the overrides are applied and checked like the file.
pub fn parse_with_overrides(text: &str, file: &Path, sets: &[String]) -> Result<PipelineSpec, SpecError> {
    let spec = parse_pipeline(text, file)?;
    if sets.is_empty() {
        return Ok(spec);
    }
    let mut doc: Value = serde_norway::from_str(text).map_err(|e| explain(text, file, e, None))?;
    for set in sets {
        apply_set(&mut doc, set, file)?;
    }
    let origin = format!("--set {}", sets.join(" --set "));
    let yaml = serde_norway::to_string(&doc).map_err(|e| SpecError::new(file, e.to_string()))?;
    serde_norway::from_str::<PipelineSpec>(&yaml).map_err(|e| {
        let mut err = explain(&yaml, file, e, Some(&origin));
        err.line = None; // lines of the re-serialised text mean nothing to the user
        err
    })
}

fn apply_set(doc: &mut Value, set: &str, file: &Path) -> Result<(), SpecError> {
    let bad = |msg: String| SpecError::new(file, format!("--set {set}: {msg}"));
    let (key, raw) = set.split_once('=').ok_or_else(|| bad("expected stage.field=value".into()))?;
    let value: Value = if raw.is_empty() {
        return Err(bad("the value is empty (write null to switch a component off)".into()));
    } else {
        serde_norway::from_str(raw).map_err(|e| bad(format!("the value is not valid YAML: {e}")))?
    };
    let root = doc.as_mapping_mut().ok_or_else(|| bad("the pipeline is not a YAML mapping".into()))?;
    match key.split_once('.') {
        None => {
            root.insert(Value::String(key.to_owned()), value);
        }
        Some((stage, field)) => {
            let stages = root.get_mut("stages").and_then(Value::as_mapping_mut);
            let names = stages.as_ref().map(|s| stage_names(s)).unwrap_or_default();
            let body = stages
                .and_then(|s| s.get_mut(stage))
                .and_then(Value::as_mapping_mut)
                .ok_or_else(|| bad(format!("there is no stage `{stage}` (stages: {names})")))?;
            if field.is_empty() || field.contains('.') {
                return Err(bad(format!("`{field}` is not a field name")));
            }
            body.insert(Value::String(field.to_owned()), value);
        }
    }
    Ok(())
}

fn stage_names(stages: &Mapping) -> String {
    stages.keys().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")
}

/// Turn a serde error into a located [`SpecError`], re-checking each stage on its own to find
/// the stage and field that serde's message for tagged enums leaves out.
fn explain(text: &str, file: &Path, e: serde_norway::Error, origin: Option<&str>) -> SpecError {
    let mut err = SpecError::new(file, strip_location(&e.to_string()));
    err.origin = origin.map(str::to_owned);
    err.line = e.location().map(|l| l.line());
    let Ok(doc) = serde_norway::from_str::<Value>(text) else {
        return err;
    };
    let Some(stages) = doc.get("stages").and_then(Value::as_mapping) else {
        return err;
    };
    for (name, body) in stages {
        let Some(name) = name.as_str() else { continue };
        let Some(map) = body.as_mapping() else {
            return err
                .at_stage(text, name)
                .with_message(format!("a stage must be a mapping with a `kind`, found {}", describe(body)));
        };
        let Some(kind) = map.get("kind") else {
            return err.at_stage(text, name).with_message("missing field `kind`".into());
        };
        let kind = kind.as_str().unwrap_or_default();
        let mut rest = map.clone();
        rest.remove("kind");
        let Ok(body_text) = serde_norway::to_string(&Value::Mapping(rest)) else {
            continue;
        };
        if let Some(inner) = stage_body_error(kind, &body_text) {
            let msg = strip_location(&inner.to_string());
            let (field, msg) = split_field(&msg);
            let mut located = err.at_stage(text, name).with_message(msg);
            if let Some(field) = field {
                located = located.at_field(text, &field);
            }
            return located;
        }
    }
    err
}

fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// serde_norway appends " at line L column C"; the line is reported separately.
fn strip_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

/// Split `field: message` (serde's path prefix) or find the field named in "unknown field
/// `x`" / "missing field `x`".
fn split_field(msg: &str) -> (Option<String>, String) {
    if let Some((path, rest)) = msg.split_once(": ")
        && !path.is_empty()
        && path.chars().all(|c| c.is_alphanumeric() || "_[].".contains(c))
    {
        let field = path.split(['.', '[']).next().unwrap_or(path).to_owned();
        return (Some(field), format!("field `{path}`: {rest}"));
    }
    for marker in ["unknown field `", "missing field `"] {
        if let Some(i) = msg.find(marker) {
            let tail = &msg[i + marker.len()..];
            if let Some(end) = tail.find('`') {
                let field = tail[..end].to_owned();
                // a missing field has no line of its own: locate the stage instead
                let located = marker.starts_with("unknown").then_some(field);
                return (located, msg.to_owned());
            }
        }
    }
    (None, msg.to_owned())
}

/// Line (1-based) where stage `name` starts under `stages:`, found by indentation.
pub(crate) fn stage_line(text: &str, name: &str) -> Option<usize> {
    let mut in_stages = false;
    let mut indent = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let depth = line.len() - trimmed.len();
        if depth == 0 {
            in_stages = trimmed.starts_with("stages:");
            continue;
        }
        if !in_stages {
            continue;
        }
        let stage_indent = *indent.get_or_insert(depth);
        if depth == stage_indent && key_of(trimmed) == Some(name) {
            return Some(i + 1);
        }
    }
    None
}

/// Line (1-based) of `field` inside stage `stage`.
pub(crate) fn field_line(text: &str, stage: &str, field: &str) -> Option<usize> {
    let start = stage_line(text, stage)?;
    let lines: Vec<&str> = text.lines().collect();
    let stage_depth = lines[start - 1].len() - lines[start - 1].trim_start().len();
    // inline mapping on the stage line: `data: {kind: mnist, path: x}`
    if lines[start - 1].contains(&format!("{field}:")) && lines[start - 1].contains('{') {
        return Some(start);
    }
    for (i, line) in lines.iter().enumerate().skip(start) {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if line.len() - trimmed.len() <= stage_depth {
            break;
        }
        if key_of(trimmed) == Some(field) {
            return Some(i + 1);
        }
    }
    None
}

fn key_of(trimmed: &str) -> Option<&str> {
    let (key, _) = trimmed.split_once(':')?;
    Some(key.trim().trim_matches(['"', '\'']))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "name: t\nstages:\n  data:\n    kind: mnist\n  net:\n    kind: mlp\n    input: data\n  train:\n    kind: pl\n    input: net\n    epochs: 3\n";

    fn err(text: &str) -> String {
        parse_pipeline(text, Path::new("p.yaml")).expect_err("must fail").to_string()
    }

    #[test]
    fn minimal_pipeline_gets_spec_defaults() {
        let spec = parse_pipeline(GOOD, Path::new("p.yaml")).expect("valid");
        assert_eq!(spec.seed, 42);
        let crate::spec::StageSpec::Pl(pl) = &spec.stages["train"] else { panic!("pl stage") };
        assert_eq!((pl.epochs, pl.batch_size, pl.momentum, pl.spectral_max), (3, 512, Some(0.9), Some(2.0)));
    }

    #[test]
    fn unknown_field_names_stage_field_and_line() {
        let msg = err(&GOOD.replace("    epochs: 3\n", "    epoch: 3\n"));
        assert!(msg.starts_with("p.yaml:11: stage `train`"), "{msg}");
        assert!(msg.contains("unknown field `epoch`"), "{msg}");
    }

    #[test]
    fn wrong_type_names_the_field() {
        let msg = err(&GOOD.replace("epochs: 3", "epochs: many"));
        assert!(msg.starts_with("p.yaml:11: stage `train`") && msg.contains("field `epochs`"), "{msg}");
        assert!(msg.contains("expected usize"), "{msg}");
    }

    #[test]
    fn missing_field_points_at_the_stage() {
        let msg = err(&GOOD.replace("    input: data\n", ""));
        assert!(msg.starts_with("p.yaml:5: stage `net`") && msg.contains("missing field `input`"), "{msg}");
    }

    #[test]
    fn unknown_kind_and_syntax_errors_have_lines() {
        let msg = err(&GOOD.replace("kind: mnist", "kind: mnsit"));
        assert!(msg.starts_with("p.yaml:4:") && msg.contains("unknown variant `mnsit`"), "{msg}");
        let msg = err("name: t\nstages:\n  data: [1, 2\n");
        assert!(msg.starts_with("p.yaml:"), "{msg}");
        let msg = err("name: t\nstagez: {}\n");
        assert!(msg.contains("unknown field `stagez`"), "{msg}");
    }

    #[test]
    fn overrides_are_validated_like_the_file() {
        let f = Path::new("p.yaml");
        let spec = parse_with_overrides(
            GOOD,
            f,
            &["train.epochs=7".into(), "seed=1".into(), "train.momentum=null".into()],
        )
        .expect("valid overrides");
        let crate::spec::StageSpec::Pl(pl) = &spec.stages["train"] else { panic!("pl stage") };
        assert_eq!((pl.epochs, pl.momentum, spec.seed), (7, None, 1));
        let msg = parse_with_overrides(GOOD, f, &["train.epochs=lots".into()]).expect_err("bad").to_string();
        assert!(msg.contains("--set train.epochs=lots") && msg.contains("field `epochs`"), "{msg}");
        let msg = parse_with_overrides(GOOD, f, &["trian.epochs=1".into()]).expect_err("bad").to_string();
        assert!(msg.contains("no stage `trian`") && msg.contains("data, net, train"), "{msg}");
        let msg = parse_with_overrides(GOOD, f, &["train.epoks=1".into()]).expect_err("bad").to_string();
        assert!(msg.contains("unknown field `epoks`"), "{msg}");
    }
}
