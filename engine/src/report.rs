//! What a run leaves behind and prints: the run folder with `pipeline.yaml` (resolved),
//! `metrics.jsonl` (one line per epoch) and `summary.json`; peak memory figures.
//!
//! Files are never left half-written: whole files are written to a temporary name and
//! renamed; metrics lines are written with one call each and flushed.

use crate::error::EngineError;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Whole-process peak resident memory (VmHWM) in MB, on Linux.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0 / 1e6)
}

/// This machine's physical memory in bytes (`MemTotal`), where the system says.
pub fn memory_total_bytes() -> Option<f64> {
    meminfo("MemTotal:")
}

/// Memory the system can give a new process without swapping (`MemAvailable`), in bytes.
pub fn memory_available_bytes() -> Option<f64> {
    meminfo("MemAvailable:")
}

fn meminfo(key: &str) -> Option<f64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with(key))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0)
}

/// Bytes to MB (10^6, like the RSS figure).
pub fn mb(bytes: usize) -> f64 {
    bytes as f64 / 1e6
}

/// Record which source lines hold the ledger's bytes, for [`print_peak_sites`].
pub fn trace_peak_sites() {
    plflow_ops::ledger::trace_sites(true);
}

/// Print, when site tracing is on (`PLFLOW_LEDGER_SITES=1`), which source lines held the
/// training stage's ledger peak: where a step's memory goes, for whoever is cutting it.
pub fn print_peak_sites(stage: &str) {
    if !plflow_ops::ledger::tracing_sites() {
        return;
    }
    let sites = plflow_ops::ledger::peak_sites();
    let total: usize = sites.iter().map(|s| s.1).sum();
    let mut text = format!("{stage}: ledger peak {:.3} MB held by\n", mb(total));
    for (site, bytes) in sites {
        text += &format!("  {:>10.3} MB  {site}\n", mb(bytes));
    }
    eprint!("{text}");
}

/// Write `bytes` to `path` atomically: a temporary file in the same folder, then a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), EngineError> {
    let tmp = plflow_datasets::format::partial_path(path);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(EngineError::io(path, "cannot write"))
}

/// Create the run folder: `out` if given (it must not already hold files), else
/// `runs/<name>-<UTC timestamp>` (with a numeric suffix if taken).
pub fn create_run_dir(out: Option<&Path>, name: &str) -> Result<PathBuf, EngineError> {
    let dir = match out {
        Some(dir) => {
            // What a run killed before it wrote anything complete left is not a run.
            if dir.is_dir() {
                crate::model::remove_partials(dir)?;
            }
            let lock = std::ffi::OsStr::new(crate::folder_lock::FOLDER_LOCK);
            if dir.read_dir().is_ok_and(|d| d.flatten().any(|e| e.file_name() != lock)) {
                return Err(EngineError::Io {
                    path: dir.to_path_buf(),
                    action: "refusing to write a run into a folder that is not empty",
                    source: std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "choose a new --out folder or remove this one",
                    ),
                });
            }
            dir.to_path_buf()
        }
        None => {
            let base = Path::new("runs").join(format!("{}-{}", sanitize(name), timestamp()));
            let mut dir = base.clone();
            let mut k = 2;
            while dir.exists() {
                dir = PathBuf::from(format!("{}-{k}", base.display()));
                k += 1;
            }
            dir
        }
    };
    std::fs::create_dir_all(&dir).map_err(EngineError::io(&dir, "cannot create the run folder"))?;
    Ok(dir)
}

fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_alphanumeric() || "-_".contains(c) { c } else { '_' }).collect()
}

/// `YYYYmmdd-HHMMSS` in UTC.
fn timestamp() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}{month:02}{day:02}-{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// Training stage.
    pub stage: String,
    /// 1-based epoch.
    pub epoch: usize,
    /// PL: mean squared output error `||z - y_hat||^2 / classes` over the epoch's steps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_residual: Option<f64>,
    /// Backprop: mean cross-entropy over the epoch's steps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_loss: Option<f64>,
    /// Fraction of training examples classified right during the epoch (pre-update weights).
    pub train_accuracy: f64,
    /// Accuracy on the test split after the epoch (from the first test-split evaluate stage).
    pub test_accuracy: Option<f64>,
    /// Accuracy after the epoch of every evaluate stage of the trainer, by stage name.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub evaluations: IndexMap<String, f64>,
    /// Wall seconds of the epoch's training steps (evaluation excluded).
    pub epoch_seconds: f64,
    /// Training examples per second.
    pub samples_per_second: f64,
    /// Wall seconds spent evaluating after the epoch.
    pub eval_seconds: f64,
    /// Wall seconds spent writing the model files and the checkpoint after the epoch (for
    /// the last epoch before a `--resume`, the model files only).
    pub save_seconds: f64,
    /// Seconds of the epoch's steps spent in forward passes.
    pub forward_seconds: f64,
    /// Seconds spent propagating errors (PL) or deltas (backprop) to the layers below.
    pub propagate_seconds: f64,
    /// Seconds spent solving for updates (PL) or forming gradients (backprop) and applying them.
    pub solve_seconds: f64,
    /// Ledger peak since the stage began training, MB.
    pub ledger_peak_mb: f64,
    /// Process peak RSS so far, MB.
    pub peak_rss_mb: Option<f64>,
}

/// Appends epoch records to `metrics.jsonl`, one complete line per write.
#[derive(Debug)]
pub struct MetricsFile {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsFile {
    /// Create `metrics.jsonl` in `dir`.
    pub fn create(dir: &Path) -> Result<Self, EngineError> {
        let path = dir.join("metrics.jsonl");
        let file = std::fs::File::create(&path).map_err(EngineError::io(&path, "cannot create"))?;
        Ok(Self { path, file })
    }

    /// The run folder holding the file.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// Append one record.
    pub fn append(&mut self, record: &EpochRecord) -> Result<(), EngineError> {
        let mut line =
            serde_json::to_vec(record).map_err(|e| EngineError::io(&self.path, "cannot encode")(e.into()))?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .and_then(|()| self.file.flush())
            .map_err(EngineError::io(&self.path, "cannot write"))
    }
}

/// `summary.json`: the figures of a whole run, and of each training stage under
/// `trainers`. The top-level trainer figures (`test_accuracy`, `epochs`,
/// `epoch_seconds_median`, `ledger_peak_mb`, ...) are those of the pipeline's last training
/// stage, so single-trainer pipelines and the scripts reading them need not look further.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Pipeline name.
    pub name: String,
    /// Pipeline file.
    pub pipeline: PathBuf,
    /// Run folder.
    pub run_dir: PathBuf,
    /// Seed of the run.
    pub seed: u64,
    /// The last training stage's figures, at the top level.
    #[serde(flatten)]
    pub last: TrainerSummary,
    /// Every training stage's figures, in the order they ran.
    pub trainers: Vec<TrainerSummary>,
    /// Whole-process peak RSS (VmHWM), MB.
    pub peak_rss_mb: Option<f64>,
    /// Peak of the whole run, MB: also one-off passes before training, such as the
    /// correlation pass of a sparse initialisation or the standardisation statistics.
    pub run_ledger_peak_mb: f64,
    /// Wall seconds of the whole run.
    pub wall_seconds: f64,
}

/// The figures of one training stage.
#[derive(Debug, Clone, Serialize)]
pub struct TrainerSummary {
    /// The training stage.
    pub stage: String,
    /// Final test accuracy (fraction 0..1), from the stage's first test-split evaluation.
    pub test_accuracy: Option<f64>,
    /// Test accuracy after each epoch.
    pub test_accuracy_by_epoch: Vec<f64>,
    /// Final accuracy of every evaluate stage of this trainer, by stage name.
    #[serde(skip_serializing_if = "IndexMap::is_empty")]
    pub evaluations: IndexMap<String, f64>,
    /// Epochs trained.
    pub epochs: usize,
    /// Median wall seconds per training epoch.
    pub epoch_seconds_median: f64,
    /// Median training examples per second.
    pub samples_per_second_median: f64,
    /// PL: train residual of the last epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_residual: Option<f64>,
    /// Backprop: train loss of the last epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_loss: Option<f64>,
    /// Train accuracy of the last epoch (measured during training).
    pub train_accuracy: f64,
    /// Peak bytes held by the engine's tensors while the stage trained (weights, optimiser
    /// state, batches, steps and evaluation), MB: what the solvers are compared on, and what
    /// `plflow check` estimates.
    pub ledger_peak_mb: f64,
    /// What `plflow check` predicted for the training ledger peak, MB.
    pub ledger_estimate_mb: f64,
    /// Trainable parameters.
    pub parameters: usize,
    /// Bytes of optimiser state (PL: momentum and power vectors; backprop: moments), MB.
    pub optimizer_state_mb: f64,
    /// Shares of the training steps' time: `forward`, `propagate` (errors to lower layers)
    /// and `solve` (updates formed and applied), summing to 1.
    pub time_shares: serde_json::Value,
    /// The solver settings actually used.
    pub solver: serde_json::Value,
}

/// Median of `v` (0 for an empty slice).
pub fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return 0.0;
    }
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 { s[m] } else { (s[m - 1] + s[m]) / 2.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn timestamp_has_fixed_shape() {
        let t = timestamp();
        assert_eq!(t.len(), 15, "{t}");
        assert!(t.starts_with("20") && t.as_bytes()[8] == b'-', "{t}");
    }

    #[test]
    fn out_folder_with_files_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("summary.json"), "{}").expect("write");
        assert!(create_run_dir(Some(dir.path()), "x").is_err());
        let fresh = dir.path().join("new");
        assert_eq!(create_run_dir(Some(&fresh), "x").expect("fresh"), fresh);
    }

    #[test]
    fn atomic_write_replaces_whole_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("s.json");
        write_atomic(&p, b"one").expect("write");
        write_atomic(&p, b"two").expect("write");
        assert_eq!(std::fs::read(&p).expect("read"), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 1, "no temp files left");
    }
}
