//! A saved model applied to new files: each input goes through the model's own preprocessing
//! (the saved extraction, with its backbone found under `PLFLOW_MODEL_DIR` by name and
//! refused if its SHA-256 differs; the saved standardisation statistics), then the network,
//! and comes out as its top classes with softmax probabilities. Inputs stream in batches
//! (see `plflow_datasets::inputs`): memory does not grow with their number.

use crate::error::EngineError;
use crate::model::{LoadedModel, StepMeta, bad_model, sha256_file};
use crate::run::network_input;
use plflow_datasets::cache::Cache;
use plflow_datasets::images::ImageOptions;
use plflow_datasets::inputs::{Batch, for_each_batch};
use plflow_datasets::transform::Stats;
use plflow_datasets::{DatasetError, location};
use plflow_extract::backbone::Backbone;
use plflow_extract::preprocess::Preprocess;
use plflow_ops::Matrix;
use plflow_ops::network::Network;
use plflow_ops::readout::Readout;
use std::path::{Path, PathBuf};

/// Images per backbone run: one, as in extraction (tract's fastest and leanest; the images of
/// a batch run in parallel).
const BACKBONE_BATCH: usize = 1;

/// One input's prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The input's id: its path, `archive:member`, or `file:row`.
    pub id: String,
    /// The top classes, most probable first: (class index, probability).
    pub top: Vec<(usize, f64)>,
}

/// A saved extraction stage: its backbone (loaded on the first images, as inputs that are
/// already features do not need it) and its preprocessing.
#[derive(Debug)]
struct Extraction {
    file: PathBuf,
    sha256: String,
    output: String,
    dim: usize,
    preprocess: Preprocess,
    backbone: std::cell::OnceCell<Backbone>,
}

impl Extraction {
    /// The backbone, found by name under `PLFLOW_MODEL_DIR` and checked against its SHA-256.
    fn backbone(&self, model: &Path) -> Result<&Backbone, EngineError> {
        if let Some(b) = self.backbone.get() {
            return Ok(b);
        }
        let path = backbone_path(model, &self.file, &self.sha256)?;
        let backbone = Backbone::load(&path, &self.output, BACKBONE_BATCH, self.preprocess.size)
            .map_err(|e| bad_model(&path, None, e))?;
        Ok(self.backbone.get_or_init(|| backbone))
    }
}

/// Where the backbone `file` recorded in `model` is (under `PLFLOW_MODEL_DIR`), refused
/// when missing or when its SHA-256 is not the recorded `sha256`.
pub(crate) fn backbone_path(model: &Path, file: &Path, sha256: &str) -> Result<PathBuf, EngineError> {
    let path = location::resolve_model(file);
    let found = sha256_file(&path).map_err(|e| {
        let message = format!(
            "the model was trained on features of the backbone `{}`, not found as {} ({e}); put it under ${}",
            file.display(),
            path.display(),
            location::MODEL_DIR_ENV
        );
        bad_model(model, None, message)
    })?;
    if found != sha256 {
        let message = format!(
            "{} has SHA-256 {found}, the model was trained with {sha256}: another backbone",
            path.display()
        );
        return Err(bad_model(model, None, message));
    }
    Ok(path)
}

/// A saved model with its preprocessing, ready to classify inputs.
#[derive(Debug)]
pub struct Predictor {
    /// The model file.
    path: PathBuf,
    network: Network,
    readout: Readout,
    /// Class names, in label order (numbered when the model has none).
    pub class_names: Vec<String>,
    /// Shape of one example at the data stage (channels x height x width for pixels).
    data_shape: Vec<usize>,
    extraction: Option<Extraction>,
    stats: Option<Stats>,
    /// Shape of one example at the network's input.
    input_shape: Vec<usize>,
    /// What the network reads when its input is a join of datasets, which predict cannot
    /// make from raw inputs.
    joined: Option<String>,
}

impl Predictor {
    /// Load the model file at `path` and its preprocessing.
    pub fn load(path: &Path) -> Result<Self, EngineError> {
        let model = LoadedModel::read(path)?;
        let network = model.saved_network()?;
        let readout = model.readout()?;
        let meta = &model.meta;
        let mut data_shape = Vec::new();
        let (mut extraction, mut stats, mut joined) = (None, None, None);
        for step in &meta.preprocessing {
            match step {
                StepMeta::Data { shape, .. } => data_shape.clone_from(shape),
                StepMeta::Extract { model: file, sha256, output, dim, size, mean, std, bgr, .. } => {
                    extraction = Some(Extraction {
                        file: PathBuf::from(file),
                        sha256: sha256.clone(),
                        output: output.clone(),
                        dim: *dim,
                        preprocess: Preprocess { size: *size, mean: *mean, std: *std, bgr: *bgr },
                        backbone: std::cell::OnceCell::new(),
                    });
                }
                StepMeta::Standardize { stage, features } => stats = Some(model.stats(stage, *features)?),
                StepMeta::Flatten { .. } => {}
                // The network's input starts at a join: predict takes the joined features.
                StepMeta::Join { stage, inputs, features } => {
                    data_shape = vec![*features];
                    (extraction, stats) = (None, None);
                    joined = Some(format!("the joined features of stage `{stage}` ({})", inputs.join(" + ")));
                }
            }
        }
        let classes = meta.classes;
        let class_names = if meta.class_names.len() == classes {
            meta.class_names.clone()
        } else {
            (0..classes).map(|c| c.to_string()).collect()
        };
        let input_shape = meta.input_shape.clone();
        Ok(Self {
            path: path.to_path_buf(),
            network,
            readout,
            class_names,
            data_shape,
            extraction,
            stats,
            input_shape,
            joined,
        })
    }

    /// How images are decoded for this model, if it takes pixels.
    fn image_options(&self) -> Option<ImageOptions> {
        let (c, h, w) = match self.data_shape[..] {
            [c, h, w] => (c, h, w),
            [h, w] => (1, h, w),
            _ => return None,
        };
        let channels = u8::try_from(c).ok().filter(|&c| c == 1 || c == 3)?;
        Some(ImageOptions { height: h as u32, width: w as u32, channels, resize: true })
    }

    /// Classify every input in `paths`, `batch` at a time, handing each prediction (its
    /// `top` classes) to `out` in input order. Returns the number of inputs.
    pub fn predict(
        &self,
        paths: &[PathBuf],
        top: usize,
        batch: usize,
        cache: &Cache,
        out: &mut dyn FnMut(Prediction) -> Result<(), EngineError>,
    ) -> Result<usize, EngineError> {
        let mut failure = None;
        let mut scratch = Matrix::zeros(0, 0);
        let mut on_batch = |b: Batch<'_>| -> Result<(), DatasetError> {
            let result = self.logits(&b, &mut scratch).and_then(|logits| {
                for (r, id) in b.ids.iter().enumerate() {
                    out(Prediction { id: id.clone(), top: top_k(logits.row(r), top) })?;
                }
                Ok(())
            });
            result.map_err(|e| {
                failure = Some(e);
                DatasetError::format(b.file, "prediction stopped")
            })
        };
        let n = for_each_batch(paths, self.image_options(), batch, cache, &mut on_batch);
        match (failure, n) {
            (Some(e), _) => Err(e),
            (None, n) => n.map_err(|source| EngineError::Dataset { stage: "predict".into(), source }),
        }
    }

    /// The network's outputs for a batch, one row per example.
    pub(crate) fn logits(&self, b: &Batch<'_>, scratch: &mut Matrix) -> Result<Matrix, EngineError> {
        let mut x = self.features(b)?;
        self.forward(&mut x, b.ids.len(), scratch, b.file)
    }

    /// A batch as the network's input features: extracted and standardised as in training.
    fn features(&self, b: &Batch<'_>) -> Result<Matrix, EngineError> {
        let n = b.ids.len();
        let data_len: usize = self.data_shape.iter().product();
        let mismatch = |what: &str, want: usize| {
            let message = format!("{} values per example; the model takes {want} ({what})", b.len);
            EngineError::DataMismatch { stage: b.file.display().to_string(), message }
        };
        let mut x = match &self.extraction {
            Some(e) if b.pixels || b.len == data_len => self.extract(e, b)?,
            Some(e) if b.len == e.dim => b.values.to_vec(),
            Some(e) => return Err(mismatch("pixels for its backbone, or the backbone's features", e.dim)),
            None if b.len == data_len => b.values.to_vec(),
            None => return Err(mismatch(self.joined.as_deref().unwrap_or("its input shape"), data_len)),
        };
        if let Some(stats) = &self.stats {
            stats.apply(&mut x);
        }
        let len: usize = self.input_shape.iter().product();
        Ok(Matrix::from_vec(n, len, x))
    }

    /// Run the backbone over a batch of images (padding its last run).
    fn extract(&self, e: &Extraction, b: &Batch<'_>) -> Result<Vec<f32>, EngineError> {
        let [c, h, w] = match self.data_shape[..] {
            [c, h, w] => [c, h, w],
            [h, w] => [1, h, w],
            _ => return Err(bad_model(b.file, None, "the model's data stage does not hold images")),
        };
        let backbone = e.backbone(&self.path)?;
        backbone.features(b.values, [c, h, w], &e.preprocess).map_err(|m| bad_model(b.file, None, m))
    }

    fn forward(
        &self,
        x: &mut Matrix,
        n: usize,
        scratch: &mut Matrix,
        file: &Path,
    ) -> Result<Matrix, EngineError> {
        let x_in = network_input(&self.network, &self.input_shape, x, scratch, n);
        self.readout.scores(&self.network, x_in).map_err(|e| EngineError::DataMismatch {
            stage: file.display().to_string(),
            message: format!("layer {} cannot take the input: {}", e.layer + 1, e.source),
        })
    }
}

/// The `k` largest softmax probabilities of `logits`, most probable first (ties: lower class).
pub fn top_k(logits: &[f32], k: usize) -> Vec<(usize, f64)> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f64> = logits.iter().map(|&z| f64::from(z - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    let mut ranked: Vec<(usize, f64)> = exp.into_iter().map(|e| e / sum).enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked.truncate(k.max(1));
    ranked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_is_the_softmax_ranked() {
        let top = top_k(&[1.0, 3.0, 2.0, 3.0], 3);
        let z: f64 = [1f64, 3.0, 2.0, 3.0].iter().map(|v| v.exp()).sum();
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 3, 2]);
        assert!((top[0].1 - 3f64.exp() / z).abs() < 1e-12);
        assert!((top[2].1 - 2f64.exp() / z).abs() < 1e-12);
        assert_eq!(top_k(&[0.5, 0.1], 9).len(), 2);
    }
}
