//! `plflow-sweep`: run one pipeline over a grid of settings and print how each combination
//! trained (final and best test accuracy, and when each was reached). Each run is a separate
//! `plflow run` process, so every run's memory figures are its own.
//!
//!     cargo build --release --workspace
//!     target/release/plflow-sweep pipelines/mnist.yaml --grid train.alpha=1,2,4 --grid train.lambda=3,6 --epochs 10
//!
//! The runs go to `--out` (default `runs/sweep-<pipeline file stem>`), one folder each, with
//! `sweep.csv` summarising them.

use anyhow::{Context, bail, ensure};
use clap::Parser;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Run a pipeline over a grid of `--set` values.
#[derive(Debug, Parser)]
#[command(name = "plflow-sweep")]
struct Args {
    /// The pipeline file.
    pipeline: PathBuf,
    /// A field and its values: `stage.field=v1,v2,...`; repeat for a grid (every combination runs).
    #[arg(long = "grid", value_name = "STAGE.FIELD=V1,V2", required = true)]
    grids: Vec<String>,
    /// Epochs per run (sets `train.epochs`).
    #[arg(long)]
    epochs: Option<usize>,
    /// Folder for the runs.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The plflow binary (default: the one next to this tool).
    #[arg(long)]
    plflow: Option<PathBuf>,
}

fn parse_grid(spec: &str) -> anyhow::Result<(String, Vec<String>)> {
    let (key, values) =
        spec.split_once('=').with_context(|| format!("--grid {spec}: expected stage.field=v1,v2"))?;
    let values: Vec<String> =
        values.split(',').map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned).collect();
    ensure!(!values.is_empty(), "--grid {spec}: no values");
    Ok((key.to_owned(), values))
}

/// Every combination of the grids' values, as `key=value` lists.
fn combinations(grids: &[(String, Vec<String>)]) -> Vec<Vec<String>> {
    grids.iter().fold(vec![Vec::new()], |acc, (key, values)| {
        acc.iter()
            .flat_map(|prefix| {
                values.iter().map(move |v| {
                    let mut c = prefix.clone();
                    c.push(format!("{key}={v}"));
                    c
                })
            })
            .collect()
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let grids = args.grids.iter().map(|g| parse_grid(g)).collect::<anyhow::Result<Vec<_>>>()?;
    let plflow = match &args.plflow {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name(format!("plflow{}", std::env::consts::EXE_SUFFIX)),
    };
    ensure!(
        plflow.is_file(),
        "{} not found: build it (cargo build --release) or pass --plflow",
        plflow.display()
    );
    let stem = args.pipeline.file_stem().map_or("pipeline".into(), |s| s.to_string_lossy().into_owned());
    let out = args.out.clone().unwrap_or_else(|| Path::new("runs").join(format!("sweep-{stem}")));
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;

    let mut csv = String::from(
        "settings,final_accuracy,best_accuracy,best_epoch,epoch_seconds_median,ledger_peak_mb\n",
    );
    println!("{:<44} {:>8} {:>14} {:>8}", "settings", "final %", "best % (epoch)", "s/epoch");
    for (k, combo) in combinations(&grids).into_iter().enumerate() {
        let dir = out.join(format!("run-{:03}", k + 1));
        if dir.exists() {
            bail!("{} exists: choose a new --out", dir.display());
        }
        let mut cmd = Command::new(&plflow);
        cmd.arg("run").arg(&args.pipeline).arg("--no-progress").arg("--out").arg(&dir);
        for set in combo.iter().cloned().chain(args.epochs.map(|e| format!("train.epochs={e}"))) {
            cmd.arg("--set").arg(set);
        }
        let output = cmd.output().with_context(|| format!("cannot start {}", plflow.display()))?;
        let label = combo.join(" ");
        if !output.status.success() {
            println!(
                "{label:<44} failed: {}",
                String::from_utf8_lossy(&output.stderr).lines().last().unwrap_or("")
            );
            let _ = writeln!(csv, "\"{label}\",,,,,");
            continue;
        }
        let text = std::fs::read_to_string(dir.join("summary.json"))?;
        let s: serde_json::Value = serde_json::from_str(&text)?;
        let by_epoch: Vec<f64> = s["test_accuracy_by_epoch"]
            .as_array()
            .map_or(Vec::new(), |a| a.iter().filter_map(|v| v.as_f64()).collect());
        let (best_epoch, best) = by_epoch
            .iter()
            .copied()
            .enumerate()
            .fold((0, f64::NAN), |b, (i, a)| if b.1.is_nan() || a > b.1 { (i + 1, a) } else { b });
        let last = by_epoch.last().copied().unwrap_or(f64::NAN);
        let secs = s["epoch_seconds_median"].as_f64().unwrap_or(f64::NAN);
        println!("{label:<44} {:>8.2} {:>9.2} ({best_epoch:>2}) {secs:>8.2}", last * 100.0, best * 100.0);
        let _ =
            writeln!(csv, "\"{label}\",{last:.4},{best:.4},{best_epoch},{secs:.3},{}", s["ledger_peak_mb"]);
    }
    std::fs::write(out.join("sweep.csv"), csv)?;
    println!("runs and sweep.csv in {}", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_expands_to_every_combination() {
        let grids = vec![
            parse_grid("train.alpha=1,2").expect("valid"),
            parse_grid("train.lambda=3,6,9").expect("valid"),
        ];
        let c = combinations(&grids);
        assert_eq!(c.len(), 6);
        assert_eq!(c[0], vec!["train.alpha=1", "train.lambda=3"]);
        assert_eq!(c[5], vec!["train.alpha=2", "train.lambda=9"]);
        assert!(parse_grid("train.alpha").is_err() && parse_grid("train.alpha=").is_err());
    }
}
