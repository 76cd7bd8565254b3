//! `plflow sweep`: one pipeline over a grid of settings, each point a run of its own, like
//! the paper's sensitivity figures (6-9). This module holds the plain data of a sweep: the
//! grid, its points and their folders, what a finished point measured, and the tables; the
//! command line runs the points.
//!
//! A sweep folder holds `point-NNN/settings.json` (the point's `--set` values, written before
//! it runs) and `point-NNN/run/` (the run). A rerun with the same grid skips the points whose
//! run wrote its `summary.json` (a run writes it last) and reruns the others from scratch, so
//! a sweep stopped at any instant resumes; a folder whose settings differ from the grid's is
//! refused rather than mixed in.

use crate::error::EngineError;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One `--grid stage.field=v1,v2,...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Axis {
    /// `stage.field`.
    pub key: String,
    /// Its values, as written.
    pub values: Vec<String>,
}

impl Axis {
    /// Parse `stage.field=v1,v2,...`. Values are split at commas outside brackets, so lists
    /// such as `net.hidden=[256],[512,128]` work.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let (key, text) =
            spec.split_once('=').ok_or_else(|| format!("--grid {spec}: expected stage.field=v1,v2,..."))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("--grid {spec}: the field before `=` is empty"));
        }
        let (mut values, mut depth, mut current) = (Vec::new(), 0i32, String::new());
        for c in text.chars() {
            match c {
                '[' | '{' => depth += 1,
                ']' | '}' => depth -= 1,
                ',' if depth == 0 => {
                    values.push(std::mem::take(&mut current));
                    continue;
                }
                _ => {}
            }
            current.push(c);
        }
        values.push(current);
        let values: Vec<String> =
            values.iter().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()).collect();
        if values.is_empty() {
            return Err(format!("--grid {spec}: no values after `=`"));
        }
        Ok(Self { key: key.to_owned(), values })
    }
}

/// Every combination of the axes' values, the last axis varying fastest, as `key=value`.
pub fn points(axes: &[Axis]) -> Vec<Vec<String>> {
    axes.iter().fold(vec![Vec::new()], |acc, axis| {
        acc.iter()
            .flat_map(|prefix| {
                axis.values.iter().map(move |v| {
                    let mut p = prefix.clone();
                    p.push(format!("{}={v}", axis.key));
                    p
                })
            })
            .collect()
    })
}

/// What `point-NNN/settings.json` records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointSettings {
    /// The grid's `key=value` settings of the point.
    pub grid: Vec<String>,
    /// The other `--set` values every point gets (epochs included).
    pub sets: Vec<String>,
}

/// The state of a point's folder before a sweep runs it.
#[derive(Debug, Clone, PartialEq)]
pub enum PointState {
    /// Never started.
    New,
    /// Started and not finished: its run folder is to be removed and run again.
    Interrupted,
    /// Finished: its figures are read, it does not run again.
    Done,
}

/// The folder of point `k` (0-based) of a sweep in `out`.
pub fn point_dir(out: &Path, k: usize) -> PathBuf {
    out.join(format!("point-{:03}", k + 1))
}

/// Where point `dir` stands for `settings`; an error when it holds another point's settings.
pub fn point_state(dir: &Path, settings: &PointSettings) -> Result<PointState, EngineError> {
    let file = dir.join("settings.json");
    if !file.exists() {
        return Ok(PointState::New);
    }
    let text = std::fs::read_to_string(&file).map_err(EngineError::io(&file, "cannot read"))?;
    let found: PointSettings = serde_json::from_str(&text).map_err(|e| {
        EngineError::io(&file, "not a sweep point's settings")(std::io::Error::other(e.to_string()))
    })?;
    if &found != settings {
        let message = format!(
            "holds the point {:?} with {:?}, not {:?} with {:?}: this folder holds another sweep's or bench's work (choose a new --out)",
            found.grid, found.sets, settings.grid, settings.sets
        );
        return Err(EngineError::io(&file, "a different sweep")(std::io::Error::other(message)));
    }
    Ok(if dir.join("run").join("summary.json").is_file() {
        PointState::Done
    } else {
        PointState::Interrupted
    })
}

/// Write `settings` into point folder `dir` (created), atomically.
pub fn write_settings(dir: &Path, settings: &PointSettings) -> Result<(), EngineError> {
    std::fs::create_dir_all(dir).map_err(EngineError::io(dir, "cannot create"))?;
    let text = serde_json::to_string_pretty(settings).expect("plain data");
    crate::report::write_atomic(&dir.join("settings.json"), text.as_bytes())
}

/// What a finished point measured (from its run's `summary.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct PointFigures {
    /// The point's grid values, one per axis.
    pub values: Vec<String>,
    /// Test accuracy after the last epoch.
    pub final_accuracy: f64,
    /// Best test accuracy over the epochs, and its 1-based epoch.
    pub best: (f64, usize),
    /// Median seconds per epoch.
    pub epoch_seconds: f64,
    /// Ledger peak, MB.
    pub ledger_peak_mb: f64,
    /// Process peak RSS, MB.
    pub peak_rss_mb: f64,
}

impl PointFigures {
    /// Read the figures of the run in point folder `dir`, whose grid values are `values`.
    pub fn read(dir: &Path, values: Vec<String>) -> Result<Self, EngineError> {
        let path = dir.join("run").join("summary.json");
        let text = std::fs::read_to_string(&path).map_err(EngineError::io(&path, "cannot read"))?;
        let s: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| EngineError::io(&path, "not a valid summary")(std::io::Error::other(e)))?;
        let num = |k: &str| s.get(k).and_then(serde_json::Value::as_f64).unwrap_or(f64::NAN);
        let by_epoch: Vec<f64> = s["test_accuracy_by_epoch"]
            .as_array()
            .map_or(Vec::new(), |a| a.iter().filter_map(serde_json::Value::as_f64).collect());
        let best = by_epoch
            .iter()
            .enumerate()
            .fold((f64::NAN, 0), |b, (i, &a)| if b.0.is_nan() || a > b.0 { (a, i + 1) } else { b });
        Ok(Self {
            values,
            final_accuracy: num("test_accuracy"),
            best,
            epoch_seconds: num("epoch_seconds_median"),
            ledger_peak_mb: num("ledger_peak_mb"),
            peak_rss_mb: num("peak_rss_mb"),
        })
    }
}

const COLUMNS: [&str; 6] =
    ["final test %", "best test %", "best epoch", "s/epoch (median)", "ledger peak MB", "peak RSS MB"];

fn cells(p: &PointFigures) -> [String; 6] {
    [
        format!("{:.2}", p.final_accuracy * 100.0),
        format!("{:.2}", p.best.0 * 100.0),
        p.best.1.to_string(),
        format!("{:.2}", p.epoch_seconds),
        format!("{:.1}", p.ledger_peak_mb),
        format!("{:.1}", p.peak_rss_mb),
    ]
}

/// The sweep as a Markdown table: one row per point, one column per axis, then its figures.
pub fn markdown(axes: &[Axis], points: &[PointFigures]) -> String {
    let mut s = String::new();
    let head: Vec<&str> = axes.iter().map(|a| a.key.as_str()).chain(COLUMNS).collect();
    let _ = writeln!(s, "| {} |", head.join(" | "));
    let _ = writeln!(s, "|{}", "---|".repeat(head.len()));
    for p in points {
        let row: Vec<String> = p.values.iter().cloned().chain(cells(p)).collect();
        let _ = writeln!(s, "| {} |", row.join(" | "));
    }
    s
}

/// The sweep as CSV (values quoted, so lists with commas stay one field).
pub fn csv(axes: &[Axis], points: &[PointFigures]) -> String {
    let quote = |v: &str| format!("\"{}\"", v.replace('"', "\"\""));
    let mut s = String::new();
    let head: Vec<String> = axes.iter().map(|a| quote(&a.key)).chain(COLUMNS.map(quote)).collect();
    let _ = writeln!(s, "{}", head.join(","));
    for p in points {
        let row: Vec<String> = p.values.iter().map(|v| quote(v)).chain(cells(p)).collect();
        let _ = writeln!(s, "{}", row.join(","));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_parse_lists_and_expand_to_every_point() {
        let a = Axis::parse("train.alpha=1,2").expect("valid");
        let b = Axis::parse("net.hidden=[256], [512,128]").expect("valid");
        assert_eq!(b.values, ["[256]", "[512,128]"]);
        let p = points(&[a, b]);
        assert_eq!(p.len(), 4);
        assert_eq!(p[0], ["train.alpha=1", "net.hidden=[256]"]);
        assert_eq!(p[3], ["train.alpha=2", "net.hidden=[512,128]"]);
        for bad in ["train.alpha", "train.alpha=", "=1,2", "train.alpha= , "] {
            assert!(Axis::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn point_folders_are_new_interrupted_done_or_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = point_dir(dir.path(), 0);
        assert!(p.ends_with("point-001"));
        let settings =
            PointSettings { grid: vec!["train.alpha=1".into()], sets: vec!["train.epochs=2".into()] };
        assert_eq!(point_state(&p, &settings).expect("state"), PointState::New);
        write_settings(&p, &settings).expect("write");
        assert_eq!(point_state(&p, &settings).expect("state"), PointState::Interrupted);
        std::fs::create_dir_all(p.join("run")).expect("mkdir");
        let summary = r#"{"test_accuracy": 0.9, "test_accuracy_by_epoch": [0.8, 0.95, 0.9],
            "epoch_seconds_median": 1.5, "ledger_peak_mb": 8.0, "peak_rss_mb": 30.0}"#;
        std::fs::write(p.join("run/summary.json"), summary).expect("write");
        assert_eq!(point_state(&p, &settings).expect("state"), PointState::Done);
        let other = PointSettings { grid: vec!["train.alpha=2".into()], ..settings.clone() };
        let err = point_state(&p, &other).expect_err("another sweep's point");
        assert!(format!("{err}: {:?}", std::error::Error::source(&err)).contains("settings.json"));

        let figures = PointFigures::read(&p, vec!["1".into()]).expect("figures");
        assert_eq!(figures.best, (0.95, 2));
        let axes = [Axis::parse("train.alpha=1").expect("valid")];
        let md = markdown(&axes, std::slice::from_ref(&figures));
        assert!(
            md.contains("| train.alpha | final test % |")
                && md.contains("| 1 | 90.00 | 95.00 | 2 | 1.50 | 8.0 | 30.0 |"),
            "{md}"
        );
        assert_eq!(csv(&axes, &[figures]).lines().nth(1), Some("\"1\",90.00,95.00,2,1.50,8.0,30.0"));
    }
}
