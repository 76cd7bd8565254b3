//! Trained models as files: `model.safetensors` holds every layer's weights and biases (f32),
//! the connection masks of persistent-sparse layers (u32 flat indices) and the
//! standardisation statistics in front of the network; its metadata (key `plflow`, JSON)
//! holds what is needed to use the model without the pipeline file: the layers, the
//! preprocessing, the class names, the input shape, the resolved pipeline, plflow's version,
//! the epoch and its test accuracy.
//!
//! Tensor names: `layers.<node>.weight` (`inputs x outputs`; depthwise: `taps x channels`),
//! `layers.<node>.bias`, `layers.<node>.mask`, `preprocess.<stage>.mean` and `.std`.
//! Tensors are handed to the writer as views of the live buffers: the file is written with
//! no second copy of the model in memory, to a temporary name, synced, then renamed.

use crate::error::EngineError;
use crate::graph::{Node, Op};
use crate::plan::Plan;
use petgraph::graph::NodeIndex;
use plflow_datasets::format::partial_path;
use plflow_datasets::transform::Stats;
use plflow_ops::Matrix;
use plflow_ops::activation::Activation;
use plflow_ops::dense::Dense;
use plflow_ops::ff::Goodness;
use plflow_ops::network::{Layer, Network};
use plflow_ops::noprop::NoPropReadout;
use plflow_ops::readout::Readout;
use safetensors::tensor::{Dtype, SafeTensors, View};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

/// Version of the file layout described above.
pub const FORMAT: u32 = 1;
/// The metadata key holding [`ModelMeta`] as JSON.
pub const META_KEY: &str = "plflow";

/// What a model file says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    /// [`FORMAT`] when written.
    pub format: u32,
    /// plflow's version that wrote it.
    pub plflow_version: String,
    /// The training stage that trained it.
    pub stage: String,
    /// Epochs trained (from 1).
    pub epoch: usize,
    /// Test accuracy after that epoch (fraction), if measured.
    pub test_accuracy: Option<f64>,
    /// Shape of one example at the network's input (after the preprocessing).
    pub input_shape: Vec<usize>,
    /// Class names, in label order (empty when the dataset has none).
    pub class_names: Vec<String>,
    /// Classes at the output.
    pub classes: usize,
    /// The layers from input to output.
    pub layers: Vec<LayerMeta>,
    /// The stages in front of the network, from the dataset on.
    pub preprocessing: Vec<StepMeta>,
    /// The pipeline as run (overrides applied, defaults filled in).
    pub pipeline: String,
    /// How class scores are read when they are not the network's outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readout: Option<ReadoutMeta>,
}

/// A model whose class scores are not its outputs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ReadoutMeta {
    /// Forward-Forward: each label written into the first `classes` input features at
    /// `label_scale`, scored by the goodness it gives.
    Goodness {
        /// The value at the label's feature.
        label_scale: f32,
    },
    /// NoProp: `steps` denoising blocks, then the classifier (the network's last layer).
    Noprop {
        /// Blocks.
        steps: usize,
    },
}

impl ReadoutMeta {
    /// What a model file keeps of `readout`.
    pub fn of(readout: &Readout) -> Option<Self> {
        match readout {
            Readout::Outputs => None,
            Readout::Goodness(g) => Some(Self::Goodness { label_scale: g.label_scale }),
            Readout::NoProp(r) => Some(Self::Noprop { steps: r.schedule.steps() }),
        }
    }
}

/// One layer of a saved network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerMeta {
    /// Node name (`net.0`, `block1.dw`...): the prefix of its tensors.
    pub name: String,
    /// `dense`, `pointwise`, `depthwise` or `global_avg_pool`.
    pub kind: String,
    /// Input width (channels for maps).
    pub inputs: usize,
    /// Output width (channels for maps).
    pub outputs: usize,
    /// Positions per example at the input (1 for flat inputs).
    pub positions: usize,
    /// `elu` or `linear`.
    pub activation: String,
    /// ELU clip.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip: Option<f32>,
    /// Depthwise geometry: kernel size, stride, input height and width.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conv: Option<[usize; 4]>,
    /// Whether a persistent connection mask is stored.
    pub mask: bool,
    /// A residual connection: the index of the earlier layer whose output this layer adds
    /// before its activation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub residual: Option<usize>,
    /// A concatenation: the features of the layer it joins (`residual`) come first.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_first: bool,
}

/// One stage in front of the network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StepMeta {
    /// The dataset: its stage kind and example shape.
    Data {
        /// The pipeline stage.
        stage: String,
        /// The dataset stage kind.
        source: String,
        /// Shape of one example.
        shape: Vec<usize>,
    },
    /// A frozen backbone: its file name and SHA-256, the output kept, and how images are
    /// prepared.
    Extract {
        /// The pipeline stage.
        stage: String,
        /// The ONNX file name.
        model: String,
        /// SHA-256 of the ONNX file.
        sha256: String,
        /// The model output kept.
        output: String,
        /// Feature width.
        dim: usize,
        /// Images are resized to `size x size`.
        size: usize,
        /// Per-channel mean subtracted.
        mean: [f32; 3],
        /// Per-channel std divided by.
        std: [f32; 3],
        /// Channels in blue, green, red order.
        bgr: bool,
    },
    /// Standardisation with the tensors `preprocess.<stage>.mean` and `.std`.
    Standardize {
        /// The pipeline stage.
        stage: String,
        /// Features standardised.
        features: usize,
    },
    /// Examples viewed as flat vectors.
    Flatten {
        /// The pipeline stage.
        stage: String,
    },
    /// Several data stages' examples side by side (`concat` of datasets). The steps in
    /// front of each input are not recorded: the network's input starts here.
    Join {
        /// The pipeline stage.
        stage: String,
        /// The stages joined, in the order of their features.
        inputs: Vec<String>,
        /// Features per example after the join.
        features: usize,
    },
}

/// A tensor handed to the safetensors writer as a view of a live buffer.
pub(crate) enum Tensor<'a> {
    F32 {
        shape: Vec<usize>,
        values: &'a [f32],
    },
    U32 {
        shape: Vec<usize>,
        values: &'a [u32],
    },
    /// `bf16` values as their bit patterns (state kept at half size).
    Bf16 {
        shape: Vec<usize>,
        values: &'a [u16],
    },
}

impl<'a> Tensor<'a> {
    /// A view of `m` with its shape.
    pub(crate) fn matrix(m: &'a Matrix) -> Self {
        Tensor::F32 { shape: vec![m.rows(), m.cols()], values: m.as_slice() }
    }
}

impl View for Tensor<'_> {
    fn dtype(&self) -> Dtype {
        match self {
            Tensor::F32 { .. } => Dtype::F32,
            Tensor::U32 { .. } => Dtype::U32,
            Tensor::Bf16 { .. } => Dtype::BF16,
        }
    }

    fn shape(&self) -> &[usize] {
        match self {
            Tensor::F32 { shape, .. } | Tensor::U32 { shape, .. } | Tensor::Bf16 { shape, .. } => shape,
        }
    }

    fn data(&self) -> Cow<'_, [u8]> {
        // safetensors is little-endian, like every machine plflow runs on; elsewhere the
        // bytes are converted (a copy of one tensor at a time).
        match self {
            Tensor::F32 { values, .. } if cfg!(target_endian = "little") => {
                Cow::Borrowed(bytemuck::cast_slice(values))
            }
            Tensor::U32 { values, .. } if cfg!(target_endian = "little") => {
                Cow::Borrowed(bytemuck::cast_slice(values))
            }
            Tensor::Bf16 { values, .. } if cfg!(target_endian = "little") => {
                Cow::Borrowed(bytemuck::cast_slice(values))
            }
            Tensor::F32 { values, .. } => Cow::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
            Tensor::U32 { values, .. } => Cow::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
            Tensor::Bf16 { values, .. } => Cow::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        }
    }

    fn data_len(&self) -> usize {
        match self {
            Tensor::F32 { values, .. } => values.len() * 4,
            Tensor::U32 { values, .. } => values.len() * 4,
            Tensor::Bf16 { values, .. } => values.len() * 2,
        }
    }
}

/// Writes a training stage's model after every epoch: `model.safetensors`, and
/// `best.safetensors` whenever the test accuracy is the best so far.
#[derive(Debug)]
pub struct ModelFiles {
    model: PathBuf,
    best: PathBuf,
    /// The trainer's checkpoint (see [`crate::checkpoint`]).
    pub(crate) state: PathBuf,
    pub(crate) meta: ModelMeta,
    pub(crate) layer_names: Vec<String>,
    pub(crate) stats: Vec<(String, Stats)>,
    best_accuracy: Option<f64>,
}

impl ModelFiles {
    /// Files for training stage `trainer` of `plan` in `dir` (`model.safetensors` and
    /// `best.safetensors` when the plan has one training stage, else prefixed with the
    /// stage's name). `stats` holds the standardisation statistics measured by the run, and
    /// `hashes` the SHA-256 of every extraction stage's backbone, by stage name.
    pub fn new(
        plan: &Plan,
        trainer: NodeIndex,
        dir: &Path,
        pipeline: &str,
        stats: &HashMap<String, Stats>,
        hashes: &HashMap<String, String>,
        class_names: &[String],
    ) -> Self {
        let node = plan.graph.node(trainer);
        let prefix = if plan.trainers().len() > 1 { format!("{}-", node.name) } else { String::new() };
        let Op::Train { layers, source, solver, .. } = &node.op else {
            unreachable!("model files are made for training nodes")
        };
        let readout = ReadoutMeta::of(&solver.readout());
        let (shape, classes) =
            plan.graph.node(*source).output.tensor().map_or((vec![], 0), |(s, c)| (s.to_vec(), c));
        let preprocessing = preprocessing(plan, *source, hashes);
        // Every standardisation in front of the network, in the branches of a join too (which
        // `eval` rebuilds from the pipeline).
        let kept = plan
            .graph
            .data_ancestors(*source)
            .into_iter()
            .filter(|&i| matches!(plan.graph.node(i).op, Op::Standardize))
            .filter_map(|i| {
                let stage = &plan.graph.node(i).name;
                stats.get(stage).map(|st| (stage.clone(), st.clone()))
            })
            .collect();
        let meta = ModelMeta {
            format: FORMAT,
            plflow_version: env!("CARGO_PKG_VERSION").to_owned(),
            stage: node.name.clone(),
            epoch: 0,
            test_accuracy: None,
            input_shape: shape,
            class_names: class_names.to_vec(),
            classes,
            layers: chain_metas(&plan.graph, layers),
            preprocessing,
            pipeline: pipeline.to_owned(),
            readout,
        };
        let layer_names = layers.iter().map(|&l| plan.graph.node(l).name.clone()).collect();
        Self {
            model: dir.join(format!("{prefix}model.safetensors")),
            best: dir.join(format!("{prefix}best.safetensors")),
            state: dir.join(format!("{prefix}state.safetensors")),
            meta,
            layer_names,
            stats: kept,
            best_accuracy: None,
        }
    }

    /// Files in `dir` for a network with `layer_names` described by `meta` (tests only).
    #[cfg(test)]
    pub(crate) fn in_dir(dir: &Path, meta: ModelMeta, layer_names: Vec<String>) -> Self {
        Self {
            model: dir.join("model.safetensors"),
            best: dir.join("best.safetensors"),
            state: dir.join("state.safetensors"),
            meta,
            layer_names,
            stats: Vec::new(),
            best_accuracy: None,
        }
    }

    /// The path of the latest model.
    pub fn model_path(&self) -> &Path {
        &self.model
    }

    /// Write `network` as trained after `epoch` epochs, and copy it to the best model when
    /// `test_accuracy` beats every earlier epoch's.
    pub fn save(
        &mut self,
        network: &Network,
        epoch: usize,
        test_accuracy: Option<f64>,
    ) -> Result<(), EngineError> {
        self.meta.epoch = epoch;
        self.meta.test_accuracy = test_accuracy;
        write_model(&self.model, network, &self.layer_names, &self.stats, &self.meta)?;
        if self.is_best(test_accuracy) {
            self.best_accuracy = test_accuracy;
            copy_atomic(&self.model, &self.best)?;
        }
        Ok(())
    }

    /// Account for epochs saved by an earlier process (a resumed run), in order, without
    /// writing: the next [`ModelFiles::save`] compares with the best of them.
    pub fn replay(&mut self, test_accuracies: impl IntoIterator<Item = Option<f64>>) {
        for accuracy in test_accuracies {
            if self.is_best(accuracy) {
                self.best_accuracy = accuracy;
            }
        }
    }

    /// Whether an epoch with `test_accuracy` replaces the best model so far.
    fn is_best(&self, test_accuracy: Option<f64>) -> bool {
        match (test_accuracy, self.best_accuracy) {
            (Some(a), Some(b)) => a > b,
            (Some(_), None) => true,
            (None, _) => self.best_accuracy.is_none(),
        }
    }
}

/// Remove the temporary files that a killed process left in run folder `dir` (their names
/// end in `.partial-<pid>`); the files they were replacing are intact.
pub fn remove_partials(dir: &Path) -> Result<(), EngineError> {
    let entries = std::fs::read_dir(dir).map_err(EngineError::io(dir, "cannot list the run folder"))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.to_string_lossy().contains(".partial-") {
            let path = entry.path();
            std::fs::remove_file(&path)
                .map_err(EngineError::io(&path, "cannot remove a stale partial file"))?;
            println!("removed {}, left by an interrupted run", path.display());
        }
    }
    Ok(())
}

/// Sync `tmp`, rename it to `path`; remove it on failure.
fn commit(tmp: &Path, path: &Path, result: std::io::Result<()>) -> Result<(), EngineError> {
    let result = result
        .and_then(|()| readable(tmp))
        .and_then(|()| std::fs::File::open(tmp)?.sync_all())
        .and_then(|()| std::fs::rename(tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    result.map_err(EngineError::io(path, "cannot write the model"))
}

/// Give a model file the usual permissions (the writer's temporary file is private).
#[cfg(unix)]
fn readable(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
}

#[cfg(not(unix))]
fn readable(_: &Path) -> std::io::Result<()> {
    Ok(())
}

fn copy_atomic(from: &Path, to: &Path) -> Result<(), EngineError> {
    let tmp = partial_path(to);
    let result = std::fs::copy(from, &tmp).map(|_| ());
    commit(&tmp, to, result)
}

/// Write one model file: the network's tensors, masks and statistics with `meta`.
pub fn write_model(
    path: &Path,
    network: &Network,
    layer_names: &[String],
    stats: &[(String, Stats)],
    meta: &ModelMeta,
) -> Result<(), EngineError> {
    let metadata = HashMap::from([(META_KEY.to_owned(), to_json(path, meta)?)]);
    write_tensors(path, model_tensors(network, layer_names, stats), metadata)
}

/// `value` as JSON for a file's metadata.
pub(crate) fn to_json(path: &Path, value: &impl Serialize) -> Result<String, EngineError> {
    serde_json::to_string(value).map_err(|e| EngineError::io(path, "cannot encode the metadata")(e.into()))
}

/// The tensors of a model file, as views of `network`'s buffers and of `stats`.
pub(crate) fn model_tensors<'a>(
    network: &'a Network,
    layer_names: &[String],
    stats: &'a [(String, Stats)],
) -> Vec<(String, Tensor<'a>)> {
    let mut tensors: Vec<(String, Tensor<'_>)> = Vec::new();
    for (layer, name) in network.layers.iter().zip(layer_names) {
        if let Some(p) = layer.params() {
            tensors.push((format!("layers.{name}.weight"), Tensor::matrix(&p.weights)));
            let shape = vec![p.outputs()];
            tensors.push((format!("layers.{name}.bias"), Tensor::F32 { shape, values: p.bias.as_slice() }));
        }
        if let Some(mask) = &layer.mask {
            let values = mask.indices();
            tensors.push((format!("layers.{name}.mask"), Tensor::U32 { shape: vec![values.len()], values }));
        }
    }
    for (stage, s) in stats {
        tensors.push((
            format!("preprocess.{stage}.mean"),
            Tensor::F32 { shape: vec![s.mean.len()], values: &s.mean },
        ));
        tensors.push((
            format!("preprocess.{stage}.std"),
            Tensor::F32 { shape: vec![s.std.len()], values: &s.std },
        ));
    }
    tensors
}

/// Stream `tensors` and `metadata` to a temporary sibling of `path`, sync it and rename it.
pub(crate) fn write_tensors(
    path: &Path,
    tensors: Vec<(String, Tensor<'_>)>,
    metadata: HashMap<String, String>,
) -> Result<(), EngineError> {
    let tmp = partial_path(path);
    let result = safetensors::serialize_to_file(tensors, Some(metadata), &tmp).map_err(|e| match e {
        // Kept as is, so that a full disk is reported as one.
        safetensors::SafeTensorError::IoError(io) => io,
        other => std::io::Error::other(other.to_string()),
    });
    commit(&tmp, path, result)
}

/// The descriptions of the layer nodes `chain`, in order, with their residual connections
/// as indices into the chain.
pub(crate) fn chain_metas(graph: &crate::graph::Graph, chain: &[NodeIndex]) -> Vec<LayerMeta> {
    chain
        .iter()
        .map(|&l| LayerMeta { residual: graph.residual_index(l, chain), ..layer_meta(graph.node(l)) })
        .collect()
}

/// The description of a layer node.
pub(crate) fn layer_meta(node: &Node) -> LayerMeta {
    match &node.op {
        Op::Layer(layer) => layer.meta(&node.name),
        other => LayerMeta::new(&node.name, other.kind(), Activation::Linear, [0, 0, 0]),
    }
}

impl LayerMeta {
    /// A layer without geometry or mask: `[inputs, outputs, positions]` and its activation.
    pub fn new(
        name: &str,
        kind: &str,
        activation: Activation,
        [inputs, outputs, positions]: [usize; 3],
    ) -> Self {
        let (activation, clip) = (activation.name(), activation.clip());
        LayerMeta {
            name: name.to_owned(),
            kind: kind.to_owned(),
            inputs,
            outputs,
            positions,
            activation: activation.to_owned(),
            clip,
            conv: None,
            mask: false,
            residual: None,
            skip_first: false,
        }
    }
}

impl LayerMeta {
    /// The layer as a phrase: `dense 784 -> 512 (elu, clip 10)`.
    fn describe(&self) -> String {
        let clip = self.clip.map_or(String::new(), |c| format!(", clip {c}"));
        let conv = self.conv.map_or(String::new(), |[k, s, h, w]| format!(" k{k} s{s} on {h}x{w}"));
        let mask = if self.mask { ", persistent mask" } else { "" };
        let mask = match self.residual {
            Some(r) if self.kind == "concat" => {
                format!("{mask}, joins layer {}{}", r + 1, if self.skip_first { " before" } else { " after" })
            }
            Some(r) => format!("{mask}, adds layer {}", r + 1),
            None => mask.to_owned(),
        };
        let positions =
            if self.positions > 1 { format!(" over {} positions", self.positions) } else { String::new() };
        format!(
            "{} {} -> {}{conv}{positions} ({}{clip}{mask})",
            self.kind, self.inputs, self.outputs, self.activation
        )
    }

    /// Whether a layer described by `self` computes with the same shapes and function.
    fn same_layer(&self, other: &Self) -> bool {
        Self { name: other.name.clone(), ..self.clone() } == *other
    }
}

/// Check that `saved` layers (a model file's) can stand in for `wanted` (a plan's), in order;
/// the error names the first layer that differs and both descriptions.
pub(crate) fn check_layers(saved: &[LayerMeta], wanted: &[LayerMeta]) -> Result<(), String> {
    for (k, w) in wanted.iter().enumerate() {
        let Some(s) = saved.get(k) else {
            return Err(format!("the saved model has {} layers, this model {}", saved.len(), wanted.len()));
        };
        if !s.same_layer(w) {
            let classes = if k + 1 == wanted.len() && s.outputs != w.outputs {
                format!(" (the saved model has {} classes, this dataset {})", s.outputs, w.outputs)
            } else {
                String::new()
            };
            return Err(format!(
                "layer {} `{}` is {}, but the saved model's layer {} `{}` is {}{classes}",
                k + 1,
                w.name,
                w.describe(),
                k + 1,
                s.name,
                s.describe()
            ));
        }
    }
    if saved.len() != wanted.len() {
        return Err(format!("the saved model has {} layers, this model {}", saved.len(), wanted.len()));
    }
    Ok(())
}

/// The stages from the dataset to `source` (the trainer's input), in order.
fn preprocessing(plan: &Plan, source: NodeIndex, hashes: &HashMap<String, String>) -> Vec<StepMeta> {
    let mut steps = Vec::new();
    let mut at = Some(source);
    while let Some(i) = at {
        let node = plan.graph.node(i);
        let stage = node.name.clone();
        let shape = node.output.tensor().map_or(vec![], |(s, _)| s.to_vec());
        let step = match &node.op {
            Op::Data { .. } => Some(StepMeta::Data { stage, source: node.op.kind().to_owned(), shape }),
            Op::Extract(x) => Some(StepMeta::Extract {
                model: x.model.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                sha256: hashes.get(&stage).cloned().unwrap_or_default(),
                output: x.output.clone(),
                dim: x.dim,
                size: x.preprocess.size,
                mean: x.preprocess.mean,
                std: x.preprocess.std,
                bgr: x.preprocess.bgr,
                stage,
            }),
            Op::Standardize => Some(StepMeta::Standardize { stage, features: shape.iter().product() }),
            Op::Flatten => Some(StepMeta::Flatten { stage }),
            Op::Join { inputs } => {
                let inputs = inputs.iter().map(|&j| plan.graph.node(j).name.clone()).collect();
                steps.push(StepMeta::Join { stage, inputs, features: shape.iter().product() });
                break;
            }
            _ => None,
        };
        steps.extend(step);
        at = plan.graph.input_of(i);
    }
    steps.reverse();
    steps
}

/// A model file read back: its metadata and tensors.
#[derive(Debug)]
pub struct LoadedModel {
    /// The file.
    pub path: PathBuf,
    /// What it says about itself.
    pub meta: ModelMeta,
    /// Every metadata entry of the header, [`META_KEY`]'s included.
    pub metadata: HashMap<String, String>,
    f32s: HashMap<String, (Vec<usize>, Vec<f32>)>,
    u32s: HashMap<String, (Vec<usize>, Vec<u32>)>,
    bf16s: HashMap<String, (Vec<usize>, Vec<u16>)>,
}

/// A model file that cannot be used, naming the file and, where it applies, the tensor.
pub(crate) fn bad_model(path: &Path, tensor: Option<&str>, message: impl Into<String>) -> EngineError {
    EngineError::Model {
        path: path.to_path_buf(),
        tensor: tensor.map(str::to_owned),
        message: message.into(),
    }
}

impl LoadedModel {
    /// Read and check a model file: a safetensors header, every tensor f32 or u32 with
    /// exactly the bytes its shape says, and plflow metadata of a known format.
    pub fn read(path: &Path) -> Result<Self, EngineError> {
        let bytes = crate::files::read_regular(path, u64::MAX, "cannot read the model")?;
        let file = SafeTensors::deserialize(&bytes).map_err(|e| {
            bad_model(
                path,
                None,
                format!("not a complete safetensors file ({e}); it may be truncated or corrupted"),
            )
        })?;
        let (_, header) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| bad_model(path, None, format!("unreadable header ({e})")))?;
        let metadata = header.metadata().clone().unwrap_or_default();
        let json = metadata
            .get(META_KEY)
            .ok_or_else(|| bad_model(path, None, format!("no `{META_KEY}` metadata: not a plflow model")))?;
        let meta: ModelMeta = serde_json::from_str(json)
            .map_err(|e| bad_model(path, None, format!("its `{META_KEY}` metadata does not parse ({e})")))?;
        if meta.format != FORMAT {
            return Err(bad_model(
                path,
                None,
                format!(
                    "format {} (written by plflow {}); this plflow reads format {FORMAT}",
                    meta.format, meta.plflow_version
                ),
            ));
        }
        let (mut f32s, mut u32s, mut bf16s) = (HashMap::new(), HashMap::new(), HashMap::new());
        for (name, view) in file.tensors() {
            let shape = view.shape().to_vec();
            let words = view.data().chunks_exact(4).map(|c| [c[0], c[1], c[2], c[3]]);
            match view.dtype() {
                Dtype::F32 => {
                    f32s.insert(name, (shape, words.map(f32::from_le_bytes).collect()));
                }
                Dtype::U32 => {
                    u32s.insert(name, (shape, words.map(u32::from_le_bytes).collect()));
                }
                Dtype::BF16 => {
                    let halves =
                        view.data().chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
                    bf16s.insert(name, (shape, halves));
                }
                other => {
                    return Err(bad_model(
                        path,
                        Some(&name),
                        format!("dtype {other:?}; plflow writes F32, U32 and BF16"),
                    ));
                }
            }
        }
        Ok(Self { path: path.to_path_buf(), meta, metadata, f32s, u32s, bf16s })
    }

    /// The f32 tensor `name`, which must have `shape`.
    pub(crate) fn f32_tensor(&self, name: &str, shape: &[usize]) -> Result<&[f32], EngineError> {
        self.shaped(&self.f32s, name, shape, "f32")
    }

    /// The bf16 tensor `name` (bit patterns), which must have `shape`.
    pub(crate) fn bf16_tensor(&self, name: &str, shape: &[usize]) -> Result<&[u16], EngineError> {
        self.shaped(&self.bf16s, name, shape, "bf16")
    }

    fn shaped<'a, T>(
        &self,
        tensors: &'a HashMap<String, (Vec<usize>, Vec<T>)>,
        name: &str,
        shape: &[usize],
        dtype: &str,
    ) -> Result<&'a [T], EngineError> {
        let Some((got, values)) = tensors.get(name) else {
            let elsewhere =
                self.f32s.contains_key(name) || self.bf16s.contains_key(name) || self.u32s.contains_key(name);
            let message = if elsewhere { format!("not {dtype}") } else { "missing".to_owned() };
            return Err(bad_model(&self.path, Some(name), message));
        };
        if got != shape {
            return Err(bad_model(
                &self.path,
                Some(name),
                format!("shape {got:?}, the layer needs {shape:?}"),
            ));
        }
        Ok(values)
    }

    /// The standardisation statistics saved for `stage`.
    pub fn stats(&self, stage: &str, features: usize) -> Result<Stats, EngineError> {
        let mean = self.f32_tensor(&format!("preprocess.{stage}.mean"), &[features])?.to_vec();
        let std = self.f32_tensor(&format!("preprocess.{stage}.std"), &[features])?.to_vec();
        Ok(Stats { mean, std })
    }

    /// The network of `plan`'s layer nodes `chain` with this file's weights, checked against
    /// the layer shapes (an error names the layer and both descriptions).
    pub fn network(&self, plan: &Plan, chain: &[NodeIndex]) -> Result<Network, EngineError> {
        let wanted = chain_metas(&plan.graph, chain);
        check_layers(&self.meta.layers, &wanted).map_err(|m| bad_model(&self.path, None, m))?;
        self.saved_network()
    }

    /// How the network's class scores are read, checked against the model's shapes.
    pub fn readout(&self) -> Result<Readout, EngineError> {
        let (classes, width) = (self.meta.classes, self.meta.input_shape.iter().product::<usize>());
        match self.meta.readout {
            None => Ok(Readout::Outputs),
            Some(ReadoutMeta::Goodness { label_scale }) => {
                if !(label_scale > 0.0 && label_scale.is_finite()) || classes > width {
                    let message = format!(
                        "its Forward-Forward readout writes {classes} labels at scale {label_scale} into {width} input features"
                    );
                    return Err(self.bad(None, message));
                }
                Ok(Readout::Goodness(Goodness { classes, label_scale }))
            }
            Some(ReadoutMeta::Noprop { steps }) => {
                let layers = self.meta.layers.len();
                if steps == 0 || steps > layers {
                    let message = format!("its NoProp readout has {steps} blocks in {layers} layers");
                    return Err(self.bad(None, message));
                }
                Ok(Readout::NoProp(NoPropReadout::new(steps, classes)))
            }
        }
    }

    /// The network the file describes (its `layers` metadata) with its weights: what
    /// `predict` and `export` use, with no pipeline at hand.
    pub fn saved_network(&self) -> Result<Network, EngineError> {
        let mut layers = Vec::with_capacity(self.meta.layers.len());
        for (k, m) in self.meta.layers.iter().enumerate() {
            let mut layer = self.layer(m)?;
            if let Some(r) = m.residual {
                if r >= k {
                    let message = format!(
                        "layer `{}` adds the output of layer {}, which is not below it",
                        m.name,
                        r + 1
                    );
                    return Err(self.bad(None, message));
                }
                layer.residual = Some(r);
            }
            layers.push(layer);
        }
        Ok(Network { layers })
    }

    fn layer(&self, m: &LayerMeta) -> Result<Layer, EngineError> {
        let name = &m.name;
        let activation = match (m.activation.as_str(), m.clip) {
            ("elu", Some(clip)) => Activation::Elu { clip },
            ("relu", Some(clip)) => Activation::Relu { clip },
            ("linear", _) => Activation::Linear,
            (other, clip) => {
                let message = format!(
                    "layer `{name}` has activation `{other}` (clip {clip:?}); plflow knows elu and relu with a clip, and linear"
                );
                return Err(self.bad(None, message));
            }
        };
        let Some(format) = crate::stages::layer_format(&m.kind) else {
            return Err(self.bad(None, format!("layer `{name}` of unknown kind `{}`", m.kind)));
        };
        format.load(m, self, activation)
    }

    /// The `weight` (`rows x cols`) and `bias` tensors of layer `name`, as a dense op.
    pub(crate) fn dense_params(&self, name: &str, rows: usize, cols: usize) -> Result<Dense, EngineError> {
        let w = self.f32_tensor(&format!("layers.{name}.weight"), &[rows, cols])?;
        let b = self.f32_tensor(&format!("layers.{name}.bias"), &[cols])?;
        let mut dense = Dense::new(Matrix::from_vec(rows, cols, w.to_vec()));
        dense.bias = Matrix::from_vec(1, cols, b.to_vec());
        Ok(dense)
    }

    /// The u32 tensor `name`, if the file has it.
    pub(crate) fn u32_tensor(&self, name: &str) -> Option<&[u32]> {
        self.u32s.get(name).map(|(_, v)| v.as_slice())
    }

    /// This file cannot be used: `message`, naming `tensor` where it applies.
    pub(crate) fn bad(&self, tensor: Option<&str>, message: impl Into<String>) -> EngineError {
        bad_model(&self.path, tensor, message)
    }
}

/// SHA-256 of a file, in hex, read in blocks.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut block = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut block)?;
        if n == 0 {
            break;
        }
        hasher.update(&block[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use plflow_ops::depthwise::{Depthwise, Geometry};
    use plflow_ops::pool::GlobalAvgPool;
    use plflow_ops::sparse::Mask;

    fn network() -> (Network, Vec<String>) {
        let values = |n: usize, k: f32| (0..n).map(|i| (i as f32 * 0.37 + k).sin()).collect::<Vec<f32>>();
        let mut dense = Dense::new(Matrix::from_vec(6, 4, values(24, 0.1)));
        dense.bias = Matrix::from_vec(1, 4, values(4, 0.2));
        let mask = Mask::from_indices(6, 4, vec![0, 5, 6, 11, 23]).expect("valid mask");
        let dw =
            Depthwise::new(Matrix::from_vec(9, 4, values(36, 0.3)), Geometry { h: 3, w: 3, k: 3, stride: 1 });
        let layers = vec![
            Layer { mask: Some(mask), ..Layer::dense(dense, Activation::Elu { clip: 10.0 }) },
            Layer::new(dw, Activation::Linear, 9),
            Layer::new(GlobalAvgPool { positions: 9, channels: 4 }, Activation::Linear, 9),
        ];
        (Network { layers }, vec!["a".into(), "b".into(), "pool".into()])
    }

    pub(crate) fn meta() -> ModelMeta {
        ModelMeta {
            format: FORMAT,
            plflow_version: "0.1.0".into(),
            stage: "train".into(),
            epoch: 3,
            test_accuracy: Some(0.875),
            input_shape: vec![6],
            class_names: vec!["x".into(), "y \"quoted\"".into()],
            classes: 2,
            layers: vec![],
            preprocessing: vec![StepMeta::Standardize { stage: "scaled".into(), features: 3 }],
            pipeline: "name: t\nstages: {}\n".into(),
            readout: None,
        }
    }

    #[test]
    fn every_tensor_and_metadata_field_round_trips_bit_for_bit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("model.safetensors");
        let (net, names) = network();
        let stats = vec![(
            "scaled".to_owned(),
            Stats { mean: vec![0.5, -1.25, f32::MIN_POSITIVE], std: vec![1.0, 2.0, 3.5] },
        )];
        write_model(&path, &net, &names, &stats, &meta()).expect("write");
        let loaded = LoadedModel::read(&path).expect("read");
        assert_eq!(loaded.meta, meta());
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for (layer, name) in net.layers.iter().zip(&names) {
            let Some(p) = layer.params() else { continue };
            let (shape, w) = &loaded.f32s[&format!("layers.{name}.weight")];
            assert_eq!(
                (shape.as_slice(), bits(w)),
                (&[p.inputs(), p.outputs()][..], bits(p.weights.as_slice()))
            );
            assert_eq!(bits(&loaded.f32s[&format!("layers.{name}.bias")].1), bits(p.bias.as_slice()));
        }
        assert_eq!(loaded.u32s["layers.a.mask"].1, vec![0, 5, 6, 11, 23]);
        assert_eq!(loaded.stats("scaled", 3).expect("stats"), stats[0].1);
        assert_eq!(
            loaded.f32s.len() + loaded.u32s.len(),
            4 + 1 + 2,
            "weights and biases of 2 layers, a mask, 2 stats"
        );
        assert!(
            !dir.path().read_dir().expect("ls").any(|e| e
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .contains("partial"))
        );
    }

    /// A device is refused by its kind, not read: `/dev/zero` would never end.
    #[cfg(unix)]
    #[test]
    fn devices_are_refused_before_they_are_read() {
        let chain = |e: EngineError| {
            format!("{e}: {}", std::error::Error::source(&e).map(ToString::to_string).unwrap_or_default())
        };
        let err = chain(LoadedModel::read(Path::new("/dev/zero")).expect_err("a device"));
        assert!(err.contains("/dev/zero") && err.contains("not a regular file"), "{err}");
        let dir = tempfile::tempdir().expect("tempdir");
        let err = chain(LoadedModel::read(dir.path()).expect_err("a folder"));
        assert!(err.contains("not a regular file"), "{err}");
    }

    #[test]
    fn truncated_or_foreign_files_are_refused_naming_the_file_and_tensor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("model.safetensors");
        let (net, names) = network();
        write_model(&path, &net, &names, &[], &meta()).expect("write");
        let bytes = std::fs::read(&path).expect("read");
        let cut = dir.path().join("cut.safetensors");
        std::fs::write(&cut, &bytes[..bytes.len() - 10]).expect("write");
        let err = LoadedModel::read(&cut).expect_err("truncated").to_string();
        assert!(err.contains("cut.safetensors") && err.contains("truncated"), "{err}");
        let foreign = dir.path().join("foreign.safetensors");
        let plain = vec![("w", Tensor::F32 { shape: vec![2], values: &[1.0, 2.0] })];
        safetensors::serialize_to_file(plain, None, &foreign).expect("write");
        let err = LoadedModel::read(&foreign).expect_err("no metadata").to_string();
        assert!(err.contains("foreign.safetensors") && err.contains("not a plflow model"), "{err}");
        let loaded = LoadedModel::read(&path).expect("read");
        let err = loaded.f32_tensor("layers.a.weight", &[7, 4]).expect_err("shape").to_string();
        assert!(
            err.contains("tensor `layers.a.weight`") && err.contains("[6, 4]") && err.contains("[7, 4]"),
            "{err}"
        );
        let err = loaded.stats("missing", 3).expect_err("missing").to_string();
        assert!(err.contains("preprocess.missing.mean") && err.contains("missing"), "{err}");
    }
}
