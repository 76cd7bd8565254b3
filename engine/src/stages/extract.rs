//! `kind: extract`: features of every image from a frozen ONNX backbone, cached as Parquet
//! files (the run side is `plflow_extract`).

use super::{Builder, Stage};
use crate::error::SpecError;
use crate::graph::{ExtractOp, Node, Op, Port};
use crate::spec::defaults;
use petgraph::graph::NodeIndex;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Channel order a backbone expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChannelOrder {
    /// Red, green, blue.
    #[default]
    Rgb,
    /// Blue, green, red.
    Bgr,
}

/// `kind: extract`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtractSpec {
    /// An image dataset stage (`cifar10`, `cifar100`, `image_folder`).
    pub input: String,
    /// ONNX file; relative paths are looked up under `PLFLOW_MODEL_DIR` when it is set.
    pub model: PathBuf,
    /// The model output kept as features.
    #[serde(default = "defaults::extract_output")]
    pub output: String,
    /// Values per image of that output (checked against the model when it runs).
    pub dim: usize,
    /// Images are resized (bilinear) to `size x size`.
    pub size: usize,
    /// Per-channel mean subtracted from values in [0, 1] (ImageNet's by default).
    #[serde(default = "defaults::imagenet_mean")]
    pub mean: [f32; 3],
    /// Per-channel std divided by (ImageNet's by default).
    #[serde(default = "defaults::imagenet_std")]
    pub std: [f32; 3],
    /// `rgb` or `bgr`.
    #[serde(default)]
    pub channel_order: ChannelOrder,
    /// Images per model run.
    #[serde(default = "defaults::extract_batch")]
    pub batch: usize,
    /// Images per resumable part (one Parquet row group).
    #[serde(default = "defaults::extract_chunk")]
    pub chunk: usize,
    /// Feature files `<path>-train.parquet` and `<path>-test.parquet`; by default in the
    /// cache, under `features/<pipeline name>-<stage>`.
    #[serde(default)]
    pub path: Option<PathBuf>,
}

impl Stage for ExtractSpec {
    fn input(&self) -> Option<&str> {
        Some(&self.input)
    }

    fn build(&self, name: &str, b: &mut Builder<'_>) -> Result<NodeIndex, SpecError> {
        let from = b.output_of(&self.input);
        let images = match &b.node(from).output {
            Port::Examples { shape, classes } if shape.len() == 3 && matches!(shape[0], 1 | 3) => {
                Some(*classes)
            }
            _ => None,
        };
        let Some(classes) = images else {
            return Err(b.err(name, Some("input"), format!(
                "field `input`: extract runs a model over images (1 or 3 channels x height x width), but `{}` produces {}",
                self.input, b.node(from).output.describe()
            )));
        };
        for (field, v) in
            [("dim", self.dim), ("size", self.size), ("batch", self.batch), ("chunk", self.chunk)]
        {
            if v == 0 {
                return Err(b.err(name, Some(field), format!("field `{field}`: must be at least 1")));
            }
        }
        if let Some(c) = self.std.iter().position(|&v| v.is_nan() || v <= 0.0) {
            return Err(b.err(name, Some("std"), format!("field `std[{c}]`: must be > 0")));
        }
        let model = plflow_datasets::location::resolve_model(&self.model);
        if !model.is_file() {
            return Err(b.err(name, Some("model"), missing_model(&self.model, &model)));
        }
        let preprocess = plflow_extract::preprocess::Preprocess {
            size: self.size,
            mean: self.mean,
            std: self.std,
            bgr: self.channel_order == ChannelOrder::Bgr,
        };
        let op = Op::Extract(ExtractOp {
            model,
            output: self.output.clone(),
            dim: self.dim,
            preprocess,
            batch: self.batch,
            chunk: self.chunk,
            path: self.path.clone(),
        });
        let output = Port::Examples { shape: vec![self.dim], classes };
        Ok(b.add_node(Node { name: name.into(), stage: name.into(), op, output }, Some(from)))
    }
}

/// Which file was expected where, and the command that downloads it when `plflow fetch`
/// knows it.
fn missing_model(written: &std::path::Path, resolved: &std::path::Path) -> String {
    use plflow_datasets::location::MODEL_DIR_ENV;
    let set = std::env::var_os(MODEL_DIR_ENV).filter(|v| !v.is_empty());
    let place = match &set {
        Some(dir) if written.is_relative() => {
            format!("under ${MODEL_DIR_ENV} ({})", PathBuf::from(dir).display())
        }
        None if written.is_relative() => format!(
            "relative to the working folder (relative paths are looked up under ${MODEL_DIR_ENV} when it is set)"
        ),
        _ => "at that path".to_owned(),
    };
    let file = written.file_name().and_then(|f| f.to_str()).unwrap_or_default();
    let fetch = match (plflow_datasets::fetch::model_named(file), &set) {
        (Some(e), Some(_)) => format!("; `plflow fetch {}` downloads it there", e.name),
        (Some(e), None) => format!(
            "; `plflow fetch {}` downloads it into ./models, then run with {MODEL_DIR_ENV}=models",
            e.name
        ),
        (None, _) => String::new(),
    };
    format!(
        "field `model`: {} not found: the model file {file} was expected {place}{fetch}",
        resolved.display()
    )
}
