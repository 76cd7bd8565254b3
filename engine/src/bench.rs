//! The comparison table of `plflow bench`: one row per pipeline (method), aggregated over
//! repeated runs from their `summary.json` files, like the paper's Table 1.

use crate::error::EngineError;
use std::fmt::Write as _;
use std::path::Path;

/// The figures of one run that the table needs.
#[derive(Debug, Clone, PartialEq)]
pub struct RunFigures {
    /// Final test accuracy (0..1).
    pub test_accuracy: f64,
    /// Median seconds per epoch.
    pub epoch_seconds: f64,
    /// Whole-process peak RSS, MB.
    pub peak_rss_mb: f64,
    /// Peak bytes of the engine's tensors, MB.
    pub ledger_peak_mb: f64,
    /// The solver kind (`pl`, `sgd`, ...).
    pub solver: String,
    /// Epochs trained.
    pub epochs: usize,
}

impl RunFigures {
    /// Read the figures of every training stage from a run folder's `summary.json`, with
    /// the stage names: one entry per trainer (summaries written before `trainers` existed
    /// give one, from the top level). The process's peak RSS is the run's, shared.
    pub fn read(run_dir: &Path) -> Result<Vec<(String, Self)>, EngineError> {
        let path = run_dir.join("summary.json");
        let text = std::fs::read_to_string(&path).map_err(EngineError::io(&path, "cannot read"))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| EngineError::io(&path, "not a valid summary")(std::io::Error::other(e)))?;
        let rss = v.get("peak_rss_mb").and_then(serde_json::Value::as_f64).unwrap_or(f64::NAN);
        let one = |t: &serde_json::Value| {
            let num = |k: &str| t.get(k).and_then(serde_json::Value::as_f64).unwrap_or(f64::NAN);
            let figures = Self {
                test_accuracy: num("test_accuracy"),
                epoch_seconds: num("epoch_seconds_median"),
                peak_rss_mb: rss,
                ledger_peak_mb: num("ledger_peak_mb"),
                solver: t["solver"]["kind"].as_str().unwrap_or("?").to_owned(),
                epochs: t["epochs"].as_u64().unwrap_or(0) as usize,
            };
            (t["stage"].as_str().unwrap_or_default().to_owned(), figures)
        };
        Ok(match v.get("trainers").and_then(serde_json::Value::as_array) {
            Some(trainers) if !trainers.is_empty() => trainers.iter().map(one).collect(),
            _ => vec![one(&v)],
        })
    }
}

/// One row of the table: a method and its repeated runs.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchRow {
    /// The pipeline's name.
    pub method: String,
    /// The runs.
    pub runs: Vec<RunFigures>,
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 { v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

impl BenchRow {
    fn cells(&self) -> [String; 7] {
        let acc: Vec<f64> = self.runs.iter().map(|r| r.test_accuracy * 100.0).collect();
        let (mean, std) = mean_std(&acc);
        let med =
            |f: fn(&RunFigures) -> f64| crate::report::median(&self.runs.iter().map(f).collect::<Vec<_>>());
        [
            self.method.clone(),
            self.runs.first().map_or("?".into(), |r| r.solver.clone()),
            self.runs.first().map_or(0, |r| r.epochs).to_string(),
            if self.runs.len() > 1 { format!("{mean:.2} ± {std:.2}") } else { format!("{mean:.2}") },
            format!("{:.2}", med(|r| r.epoch_seconds)),
            format!("{:.1}", med(|r| r.peak_rss_mb)),
            format!("{:.1}", med(|r| r.ledger_peak_mb)),
        ]
    }
}

const HEADER: [&str; 7] =
    ["method", "solver", "epochs", "test accuracy %", "s/epoch (median)", "peak RSS MB", "ledger peak MB"];

/// The table as Markdown.
pub fn markdown(rows: &[BenchRow]) -> String {
    let mut s = format!("| {} |\n|{}\n", HEADER.join(" | "), "---|".repeat(HEADER.len()));
    for row in rows {
        let _ = writeln!(s, "| {} |", row.cells().join(" | "));
    }
    s
}

/// The table as CSV (accuracy mean and spread in separate columns, every repeat counted).
pub fn csv(rows: &[BenchRow]) -> String {
    let mut s = String::from(
        "method,solver,epochs,repeats,test_accuracy_mean,test_accuracy_std,epoch_seconds_median,peak_rss_mb_median,ledger_peak_mb_median\n",
    );
    for row in rows {
        let acc: Vec<f64> = row.runs.iter().map(|r| r.test_accuracy).collect();
        let (mean, std) = mean_std(&acc);
        let med =
            |f: fn(&RunFigures) -> f64| crate::report::median(&row.runs.iter().map(f).collect::<Vec<_>>());
        let _ = writeln!(
            s,
            "{},{},{},{},{mean:.6},{std:.6},{:.4},{:.2},{:.3}",
            row.method.replace(',', ";"),
            row.runs.first().map_or("?", |r| r.solver.as_str()),
            row.runs.first().map_or(0, |r| r.epochs),
            row.runs.len(),
            med(|r| r.epoch_seconds),
            med(|r| r.peak_rss_mb),
            med(|r| r.ledger_peak_mb),
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(acc: f64, secs: f64) -> RunFigures {
        RunFigures {
            test_accuracy: acc,
            epoch_seconds: secs,
            peak_rss_mb: 70.0,
            ledger_peak_mb: 9.5,
            solver: "pl".into(),
            epochs: 3,
        }
    }

    #[test]
    fn rows_aggregate_repeats() {
        let rows = vec![BenchRow { method: "mnist".into(), runs: vec![run(0.96, 5.0), run(0.98, 7.0)] }];
        let md = markdown(&rows);
        assert!(md.contains("| mnist | pl | 3 | 97.00 ± 1.41 | 6.00 | 70.0 | 9.5 |"), "{md}");
        let csv = csv(&rows);
        assert!(
            csv.lines().nth(1).is_some_and(|l| l.starts_with("mnist,pl,3,2,0.970000,0.014142,6.0000")),
            "{csv}"
        );
    }

    #[test]
    fn summaries_give_one_entry_per_trainer_and_old_ones_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let head = |stage: &str, kind: &str, acc: f64| {
            serde_json::json!({"stage": stage, "test_accuracy": acc, "epoch_seconds_median": 1.5,
                "ledger_peak_mb": 4.0, "epochs": 2, "solver": {"kind": kind}})
        };
        let mut summary = head("adam", "adam", 0.7);
        summary["peak_rss_mb"] = 40.0.into();
        summary["trainers"] = serde_json::json!([head("pl", "pl", 0.6), head("adam", "adam", 0.7)]);
        std::fs::write(dir.path().join("summary.json"), summary.to_string()).expect("write");
        let got = RunFigures::read(dir.path()).expect("read");
        let stages: Vec<&str> = got.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(stages, ["pl", "adam"]);
        assert_eq!(
            (got[0].1.test_accuracy, got[0].1.peak_rss_mb, got[0].1.solver.as_str()),
            (0.6, 40.0, "pl")
        );
        summary.as_object_mut().expect("object").remove("trainers");
        std::fs::write(dir.path().join("summary.json"), summary.to_string()).expect("write");
        let got = RunFigures::read(dir.path()).expect("read");
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].0.as_str(), got[0].1.epochs), ("adam", 2));
    }
}
