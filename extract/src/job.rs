//! Extracting a dataset's features: every image of both splits through the backbone, written
//! as a Parquet feature table per split (`<target>-train.parquet`, `<target>-test.parquet`).
//!
//! - Parallel: a chunk of images is preprocessed and run batch by batch on every core (rayon;
//!   each run of the shared model has its own state).
//! - Resumable: each chunk is first written as its own Arrow IPC part (atomically) in
//!   `<file>.parts/`; an interrupted run keeps its finished parts and the next run starts at
//!   the first missing one. The parts are then merged, one row group each, into the Parquet
//!   file, so a resumed extraction writes the same bytes as an uninterrupted one.
//! - Cached: the file's metadata records a fingerprint of the model bytes, the output name, the
//!   preprocessing and the input data (every pixel and label); when it matches, the files are
//!   reused without loading the model.
//! - Locked: one process extracts a target at a time; another waits, then reuses the files.

use crate::backbone::Backbone;
use crate::preprocess::Preprocess;
use plflow_datasets::format::TableFormat;
use plflow_datasets::format::{Columns, META_FINGERPRINT};
use plflow_datasets::inspect::read_metadata;
use plflow_datasets::lock::EntryLock;
use plflow_datasets::sink::{Element, TableSchema, TableWriter};
use plflow_datasets::stream::BatchStream;
use plflow_datasets::table::TableFile;
use plflow_datasets::{Dataset, DatasetError, Source};
use sha2::{Digest, Sha256};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;
use thiserror::Error;

/// Why an extraction did not finish.
#[derive(Debug, Error)]
pub enum ExtractError {
    /// Reading images or writing features failed.
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    /// The model could not be loaded or run.
    #[error("{}: {message}", .path.display())]
    Model {
        /// The model file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The progress callback asked to stop; finished parts are kept for the next run.
    #[error("extraction stopped after {parts} parts; run again to resume")]
    Stopped {
        /// Parts written before stopping.
        parts: usize,
    },
}

/// What to extract and where.
#[derive(Debug, Clone)]
pub struct ExtractJob {
    /// The ONNX file.
    pub model: PathBuf,
    /// Name of the model output to keep (e.g. `features`).
    pub output: String,
    /// Input preparation.
    pub preprocess: Preprocess,
    /// Images per model run.
    pub batch: usize,
    /// Images per part (one Parquet row group); a multiple of `batch` is best.
    pub chunk: usize,
    /// Output stem: files are `<target>-train.parquet` and `<target>-test.parquet`.
    pub target: PathBuf,
}

/// Progress after each finished part.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// `train` or `test`.
    pub split: &'static str,
    /// Images of the split done (including parts kept from an earlier run).
    pub done: usize,
    /// Images in the split.
    pub total: usize,
    /// Images extracted by this run so far, both splits.
    pub extracted: usize,
}

/// What an extraction did.
#[derive(Debug, Clone)]
pub struct ExtractReport {
    /// The files were up to date: the model was not loaded.
    pub reused: bool,
    /// Images run through the model by this run.
    pub extracted: usize,
    /// Wall seconds (fingerprint, extraction and merge).
    pub seconds: f64,
    /// Feature file of the training split.
    pub train: PathBuf,
    /// Feature file of the test split.
    pub test: PathBuf,
    /// The fingerprint recorded in both files.
    pub fingerprint: String,
}

impl ExtractJob {
    /// The two feature files.
    pub fn paths(&self) -> (PathBuf, PathBuf) {
        let with = |split: &str| {
            let mut name = self.target.file_name().map(|n| n.to_os_string()).unwrap_or_default();
            name.push(format!("-{split}.parquet"));
            self.target.with_file_name(name)
        };
        (with("train"), with("test"))
    }

    /// SHA-256 over the model file, the output name, the preprocessing and every example and
    /// label of both splits.
    pub fn fingerprint(&self, data: &Dataset) -> Result<String, ExtractError> {
        let mut h = Sha256::new();
        let model =
            std::fs::read(&self.model).map_err(DatasetError::io(&self.model, "cannot read the model"))?;
        h.update(Sha256::digest(&model));
        h.update(self.output.as_bytes());
        h.update(self.preprocess.describe().as_bytes());
        for split in [&data.train, &data.test] {
            h.update((split.len() as u64).to_le_bytes());
            for d in split.example_shape() {
                h.update((*d as u64).to_le_bytes());
            }
            let dim = split.example_len();
            let (mut x, mut y) = (vec![0.0f32; 256 * dim], vec![0u32; 256]);
            let mut stream = BatchStream::in_order(split.as_ref(), 256);
            while let Some(idx) = stream.next_batch() {
                let n = idx.len();
                split.read_into(idx, &mut x[..n * dim], &mut y[..n]);
                for v in &x[..n * dim] {
                    h.update(v.to_le_bytes());
                }
                for l in &y[..n] {
                    h.update(l.to_le_bytes());
                }
            }
        }
        Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Extract (or reuse) the features of `data`. `progress` is called after every part and
    /// may stop the job (finished parts stay for the next run).
    pub fn run(
        &self,
        data: &Dataset,
        progress: &mut dyn FnMut(Progress) -> ControlFlow<()>,
    ) -> Result<ExtractReport, ExtractError> {
        let started = Instant::now();
        let fingerprint = self.fingerprint(data)?;
        let (train_path, test_path) = self.paths();
        let current = |p: &Path| {
            read_metadata(p).ok().and_then(|m| m.get(META_FINGERPRINT).cloned()).as_deref()
                == Some(&fingerprint)
        };
        let report = |reused, extracted| ExtractReport {
            reused,
            extracted,
            seconds: started.elapsed().as_secs_f64(),
            train: train_path.clone(),
            test: test_path.clone(),
            fingerprint: fingerprint.clone(),
        };
        // A parts folder beside a finished file is what a run killed while removing it left.
        let tidy = |p: &Path| !parts_dir(p).exists();
        if current(&train_path) && current(&test_path) && tidy(&train_path) && tidy(&test_path) {
            return Ok(report(true, 0));
        }
        // One extraction of these files at a time: a second run waits, then reuses them.
        let lock = EntryLock::acquire(&train_path)?;
        for path in [&train_path, &test_path] {
            lock.remove_stale(path)?;
            let parts = parts_dir(path);
            if current(path) && parts.exists() {
                std::fs::remove_dir_all(&parts).map_err(DatasetError::io(&parts, "cannot remove"))?;
            } else {
                plflow_datasets::lock::remove_partials(&parts)?;
            }
        }
        if current(&train_path) && current(&test_path) {
            return Ok(report(true, 0));
        }
        let shape = data.train.example_shape().to_vec();
        let [channels, h, w] = shape[..] else {
            return Err(ExtractError::Model {
                path: self.model.clone(),
                message: format!(
                    "feature extraction needs images (channels x height x width), got shape {shape:?}"
                ),
            });
        };
        let backbone = Backbone::load(&self.model, &self.output, self.batch.max(1), self.preprocess.size)
            .map_err(|message| ExtractError::Model { path: self.model.clone(), message })?;
        let mut extracted = 0;
        let mut parts_done = 0;
        for (split, source, path) in [("train", &data.train, &train_path), ("test", &data.test, &test_path)] {
            if current(path) {
                continue;
            }
            let parts = parts_dir(path);
            std::fs::create_dir_all(&parts).map_err(DatasetError::io(&parts, "cannot create"))?;
            let n = source.len();
            let chunk = self.chunk.max(1);
            let schema = self.schema(backbone.dim(), &fingerprint, data);
            for (k, start) in (0..n).step_by(chunk).enumerate() {
                let part = parts.join(format!("part-{k:05}.arrow"));
                let rows: Vec<usize> = (start..(start + chunk).min(n)).collect();
                let kept = TableFile::open(&part, &Columns::default()).is_ok_and(|t| {
                    t.len() == rows.len() && t.metadata().get(META_FINGERPRINT) == Some(&fingerprint)
                });
                if !kept {
                    let (features, labels) =
                        self.features_of(&backbone, source.as_ref(), &rows, channels, h, w)?;
                    let mut writer = TableWriter::create(&part, TableFormat::ArrowIpc, &schema)?;
                    writer.write_f32(&features, &labels)?;
                    writer.finish()?;
                    extracted += rows.len();
                    parts_done += 1;
                }
                let p = Progress { split, done: start + rows.len(), total: n, extracted };
                if progress(p).is_break() {
                    return Err(ExtractError::Stopped { parts: parts_done });
                }
            }
            let mut writer = TableWriter::create(path, TableFormat::Parquet, &schema)?;
            for k in 0..n.div_ceil(chunk) {
                let part = TableFile::open(&parts.join(format!("part-{k:05}.arrow")), &Columns::default())?;
                let rows: Vec<usize> = (0..part.len()).collect();
                let mut x = vec![0.0f32; rows.len() * part.example_len()];
                let mut y = vec![0u32; rows.len()];
                part.read_into(&rows, &mut x, &mut y);
                writer.write_f32(&x, &y)?;
            }
            writer.finish()?;
            std::fs::remove_dir_all(&parts).map_err(DatasetError::io(&parts, "cannot remove"))?;
        }
        Ok(report(false, extracted))
    }

    fn schema(&self, dim: usize, fingerprint: &str, data: &Dataset) -> TableSchema {
        TableSchema {
            shape: vec![dim],
            element: Element::F32,
            class_names: data.class_names.clone(),
            metadata: [
                (META_FINGERPRINT.to_owned(), fingerprint.to_owned()),
                ("plflow.model".to_owned(), self.model.display().to_string()),
                ("plflow.output".to_owned(), self.output.clone()),
                ("plflow.preprocess".to_owned(), self.preprocess.describe()),
            ]
            .into_iter()
            .collect(),
            columns: Columns::default(),
        }
    }

    /// Features of `rows` (in order) and their labels.
    fn features_of(
        &self,
        backbone: &Backbone,
        source: &dyn Source,
        rows: &[usize],
        channels: usize,
        h: usize,
        w: usize,
    ) -> Result<(Vec<f32>, Vec<u32>), ExtractError> {
        let len = channels * h * w;
        let mut images = vec![0.0f32; rows.len() * len];
        let mut labels = vec![0u32; rows.len()];
        source.read_into(rows, &mut images, &mut labels);
        source.release(rows);
        let features = backbone
            .features(&images, [channels, h, w], &self.preprocess)
            .map_err(|message| ExtractError::Model { path: self.model.clone(), message })?;
        Ok((features, labels))
    }
}

fn parts_dir(file: &Path) -> PathBuf {
    let mut name = file.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".parts");
    file.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use plflow_datasets::cache::Cache;
    use std::sync::Arc;

    /// Images of constant channels: image `i` has channel `c` equal to `(i + c) / 10`.
    #[derive(Debug)]
    struct Flat {
        n: usize,
        shape: [usize; 3],
        bump: f32,
    }

    impl Source for Flat {
        fn len(&self) -> usize {
            self.n
        }
        fn example_shape(&self) -> &[usize] {
            &self.shape
        }
        fn classes(&self) -> usize {
            3
        }
        fn label(&self, i: usize) -> u32 {
            (i % 3) as u32
        }
        fn read_into(&self, indices: &[usize], features: &mut [f32], labels: &mut [u32]) {
            let plane = self.shape[1] * self.shape[2];
            for ((&i, out), l) in
                indices.iter().zip(features.chunks_exact_mut(3 * plane)).zip(labels.iter_mut())
            {
                for c in 0..3 {
                    out[c * plane..(c + 1) * plane].fill(((i + c) % 10) as f32 / 10.0 + self.bump);
                }
                *l = self.label(i);
            }
        }
    }

    fn data(n: usize, bump: f32) -> Dataset {
        Dataset {
            train: Arc::new(Flat { n, shape: [3, 4, 4], bump }),
            test: Arc::new(Flat { n: n / 2, shape: [3, 4, 4], bump }),
            class_names: vec!["a".into(), "b".into(), "c".into()],
        }
    }

    fn tiny() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny.onnx")
    }

    fn job(dir: &Path) -> ExtractJob {
        ExtractJob {
            model: tiny(),
            output: "features".into(),
            preprocess: Preprocess { size: 8, mean: [0.5, 0.5, 0.5], std: [0.25, 0.5, 1.0], bgr: false },
            batch: 4,
            chunk: 8,
            target: dir.join("feats/tiny"),
        }
    }

    fn read(path: &Path, cache: &Cache) -> (Vec<f32>, Vec<u32>) {
        let t = plflow_datasets::parquet_source::open(path, &Columns::default(), cache).expect("open");
        let rows: Vec<usize> = (0..t.len()).collect();
        let (mut x, mut y) = (vec![0.0; rows.len() * t.example_len()], vec![0; rows.len()]);
        t.read_into(&rows, &mut x, &mut y);
        (x, y)
    }

    #[test]
    fn features_of_a_tiny_model_match_the_hand_computation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = Cache::new(dir.path().join("cache"));
        let j = job(dir.path());
        let r = j.run(&data(21, 0.0), &mut |_| ControlFlow::Continue(())).expect("extract");
        assert!(!r.reused);
        assert_eq!(r.extracted, 21 + 10);
        let (x, y) = read(&r.train, &cache);
        assert_eq!((x.len(), y.len()), (42, 21));
        for i in 0..21 {
            let m: Vec<f32> =
                (0..3).map(|c| (((i + c) % 10) as f32 / 10.0 - 0.5) / [0.25, 0.5, 1.0][c]).collect();
            let want = [m[0] + m[2] + 0.5, 2.0 * m[1] - m[2] - 0.5];
            assert!((x[2 * i] - want[0]).abs() < 1e-5 && (x[2 * i + 1] - want[1]).abs() < 1e-5, "row {i}");
            assert_eq!(y[i], (i % 3) as u32);
        }
        let other = ExtractJob { output: "logits".into(), ..job(&dir.path().join("b")) };
        let r = other.run(&data(21, 0.0), &mut |_| ControlFlow::Continue(())).expect("logits");
        let (l, _) = read(&r.train, &cache);
        assert!((l[0] - 10.0 * x[0]).abs() < 1e-4, "the named output is the one kept");
        let missing = ExtractJob { output: "nope".into(), ..job(&dir.path().join("c")) };
        let err = missing.run(&data(3, 0.0), &mut |_| ControlFlow::Continue(())).expect_err("no output");
        let err = err.to_string();
        assert!(err.contains("no tensor `nope` (outputs: features, logits;"), "{err}");
        assert!(err.contains("before them: pooled, flat, features, logits)"), "{err}");
    }

    #[test]
    fn an_intermediate_tensor_can_be_the_features() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = Cache::new(dir.path().join("cache"));
        // `flat` is the flattened global average pool, before the model's Gemm: the
        // per-channel means of the normalised image.
        let j = ExtractJob { output: "flat".into(), ..job(dir.path()) };
        let r = j.run(&data(7, 0.0), &mut |_| ControlFlow::Continue(())).expect("extract");
        let (x, _) = read(&r.train, &cache);
        assert_eq!(x.len(), 7 * 3);
        for i in 0..7 {
            for c in 0..3 {
                let want = (((i + c) % 10) as f32 / 10.0 - 0.5) / [0.25, 0.5, 1.0][c];
                assert!((x[3 * i + c] - want).abs() < 1e-5, "row {i} channel {c}: {}", x[3 * i + c]);
            }
        }
    }

    #[test]
    fn the_fingerprint_follows_model_data_and_preprocessing_and_reuse_skips_the_model() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = job(dir.path());
        let base = j.fingerprint(&data(6, 0.0)).expect("fp");
        assert_ne!(base, j.fingerprint(&data(6, 0.01)).expect("fp"), "data");
        let p2 = ExtractJob { preprocess: Preprocess { bgr: true, ..j.preprocess.clone() }, ..j.clone() };
        assert_ne!(base, p2.fingerprint(&data(6, 0.0)).expect("fp"), "preprocessing");
        let copy = dir.path().join("other.onnx");
        let mut bytes = std::fs::read(tiny()).expect("read");
        bytes.push(0);
        std::fs::write(&copy, bytes).expect("write");
        let m2 = ExtractJob { model: copy, ..j.clone() };
        assert_ne!(base, m2.fingerprint(&data(6, 0.0)).expect("fp"), "model");

        let first = j.run(&data(6, 0.0), &mut |_| ControlFlow::Continue(())).expect("first");
        let again = j.run(&data(6, 0.0), &mut |_| ControlFlow::Continue(())).expect("again");
        assert!(again.reused && again.extracted == 0, "unchanged inputs reuse the files");
        let changed = j.run(&data(6, 0.01), &mut |_| ControlFlow::Continue(())).expect("changed");
        assert!(!changed.reused && changed.extracted == 9, "changed data is extracted again");
        assert_ne!(first.fingerprint, changed.fingerprint);
    }

    #[test]
    fn an_interrupted_extraction_resumes_into_an_identical_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let whole = job(&dir.path().join("whole"));
        let w = whole.run(&data(30, 0.0), &mut |_| ControlFlow::Continue(())).expect("whole");
        let cut = job(&dir.path().join("cut"));
        let mut calls = 0;
        let err = cut
            .run(&data(30, 0.0), &mut |_| {
                calls += 1;
                if calls == 2 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
            })
            .expect_err("stopped");
        assert!(matches!(err, ExtractError::Stopped { parts: 2 }), "{err}");
        assert!(!cut.paths().0.exists(), "no feature file before the extraction is complete");
        let r = cut.run(&data(30, 0.0), &mut |_| ControlFlow::Continue(())).expect("resume");
        assert_eq!(r.extracted, 30 - 16 + 15, "the two finished train parts were kept");
        for (a, b) in [(&w.train, &r.train), (&w.test, &r.test)] {
            assert_eq!(std::fs::read(a).expect("a"), std::fs::read(b).expect("b"), "same bytes");
        }
    }

    #[test]
    fn parts_left_beside_a_finished_file_are_removed_and_the_file_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = job(dir.path());
        let first = j.run(&data(30, 0.0), &mut |_| ControlFlow::Continue(())).expect("first");
        // A run killed inside its final remove_dir_all leaves some parts of a split it finished.
        let parts = parts_dir(&first.test);
        std::fs::create_dir_all(&parts).expect("mkdir");
        std::fs::write(parts.join("part-00003.arrow"), b"left over").expect("write");
        let again = j.run(&data(30, 0.0), &mut |_| ControlFlow::Continue(())).expect("again");
        assert!(again.reused && again.extracted == 0, "the finished files are reused");
        assert!(!parts.exists(), "the leftover parts are removed");
        assert_eq!(std::fs::read(&first.test).expect("a"), std::fs::read(&again.test).expect("b"));
    }
}
