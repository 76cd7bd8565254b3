//! The pipeline file as written: plain serde types, one per stage kind, with the defaults of
//! SPEC section 5. Nothing here is checked beyond types and known keys; [`crate::plan`] turns a
//! [`PipelineSpec`] into a checked graph.
//!
//! Every stage is a map entry under `stages:` with a `kind`; stages that consume another
//! stage name it in `input`. New stage kinds (CIFAR and image-folder sources, Arrow/Parquet,
//! feature extraction, sparse init, convolutions, backprop solvers) are new variants of
//! [`StageSpec`], so files written today stay valid.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// A whole pipeline file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    /// Names the run (and its default run folder).
    pub name: String,
    /// Seeds every random choice of the run: initial weights and batch order.
    #[serde(default = "defaults::seed")]
    pub seed: u64,
    /// The stages, by name, in the order written.
    pub stages: IndexMap<String, StageSpec>,
}

/// One stage of a pipeline, selected by its `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StageSpec {
    /// MNIST-layout IDX files.
    Mnist(MnistSpec),
    /// CIFAR-10: binary batches, or an image folder / archive of 32x32 images.
    Cifar10(CifarSpec),
    /// CIFAR-100 (fine or coarse labels): binary files, or an image folder / archive.
    Cifar100(Cifar100Spec),
    /// Images in `<split>/<class>/` folders, in a directory or a tar(.gz) archive.
    ImageFolder(ImageFolderSpec),
    /// A feature table (Arrow IPC or Parquet) per split.
    Table(TableSpec),
    /// Features of every image from a frozen ONNX backbone, cached as Parquet files.
    Extract(ExtractSpec),
    /// Per-feature standardisation with the training split's mean and std.
    Standardize(TransformSpec),
    /// Examples as flat vectors.
    Flatten(TransformSpec),
    /// One fully connected layer.
    Dense(DenseSpec),
    /// A stack of fully connected layers; expands into one graph node per layer.
    Mlp(MlpSpec),
    /// A depthwise convolution over feature maps.
    Depthwise(DepthwiseSpec),
    /// A pointwise (1x1) convolution over feature maps.
    Pointwise(PointwiseSpec),
    /// A depthwise-separable block: depthwise then pointwise, each with the activation;
    /// expands into the nodes `<name>.dw` and `<name>.pw`.
    DsBlock(DsBlockSpec),
    /// Global average pooling: each channel of a map becomes its mean.
    GlobalAvgPool(PoolSpec),
    /// Trains the layers that feed `input` with Prospective Learning.
    #[serde(rename = "pl", alias = "prospective_learning")]
    Pl(PlSpec),
    /// Backprop baseline: SGD with momentum.
    Sgd(SgdSpec),
    /// Backprop baseline: Adam.
    Adam(AdamSpec),
    /// Backprop baseline: AdamW (decoupled weight decay).
    Adamw(AdamSpec),
    /// Measures a trained model on a split after every epoch and at the end.
    Evaluate(EvaluateSpec),
}

impl StageSpec {
    /// The `kind` string of this stage, as written in files.
    pub fn kind(&self) -> &'static str {
        match self {
            StageSpec::Mnist(_) => "mnist",
            StageSpec::Cifar10(_) => "cifar10",
            StageSpec::Cifar100(_) => "cifar100",
            StageSpec::ImageFolder(_) => "image_folder",
            StageSpec::Table(_) => "table",
            StageSpec::Extract(_) => "extract",
            StageSpec::Standardize(_) => "standardize",
            StageSpec::Flatten(_) => "flatten",
            StageSpec::Dense(_) => "dense",
            StageSpec::Mlp(_) => "mlp",
            StageSpec::Depthwise(_) => "depthwise",
            StageSpec::Pointwise(_) => "pointwise",
            StageSpec::DsBlock(_) => "ds_block",
            StageSpec::GlobalAvgPool(_) => "global_avg_pool",
            StageSpec::Pl(_) => "pl",
            StageSpec::Sgd(_) => "sgd",
            StageSpec::Adam(_) => "adam",
            StageSpec::Adamw(_) => "adamw",
            StageSpec::Evaluate(_) => "evaluate",
        }
    }

    /// The stage this one consumes, if any.
    pub fn input(&self) -> Option<&str> {
        match self {
            StageSpec::Mnist(_)
            | StageSpec::Cifar10(_)
            | StageSpec::Cifar100(_)
            | StageSpec::ImageFolder(_)
            | StageSpec::Table(_) => None,
            StageSpec::Standardize(s) | StageSpec::Flatten(s) => Some(&s.input),
            StageSpec::Extract(s) => Some(&s.input),
            StageSpec::Dense(s) => Some(&s.input),
            StageSpec::Mlp(s) => Some(&s.input),
            StageSpec::Depthwise(s) => Some(&s.input),
            StageSpec::Pointwise(s) => Some(&s.input),
            StageSpec::DsBlock(s) => Some(&s.input),
            StageSpec::GlobalAvgPool(s) => Some(&s.input),
            StageSpec::Pl(s) => Some(&s.input),
            StageSpec::Sgd(s) => Some(&s.input),
            StageSpec::Adam(s) | StageSpec::Adamw(s) => Some(&s.input),
            StageSpec::Evaluate(s) => Some(&s.input),
        }
    }
}

/// `kind: mnist`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MnistSpec {
    /// Folder of the four IDX files; relative paths are looked up under `PLFLOW_DATA_DIR`.
    #[serde(default = "defaults::mnist_path")]
    pub path: PathBuf,
    /// Use at most this many training examples (class-balanced, reproducible) and the same
    /// share of the test split; `null` for all.
    #[serde(default)]
    pub limit: Option<usize>,
}

/// `kind: cifar10`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CifarSpec {
    /// Folder with the binary batches (as `plflow fetch cifar10` leaves them), or with
    /// `train/<class>/*.jpg` and `test/...` folders, or with one archive of those.
    #[serde(default = "defaults::cifar10_path")]
    pub path: PathBuf,
    /// As for `mnist`.
    #[serde(default)]
    pub limit: Option<usize>,
}

/// Which CIFAR-100 labels are learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CifarLabels {
    /// The 100 classes.
    #[default]
    Fine,
    /// The 20 superclasses (binary format only).
    Coarse,
}

/// `kind: cifar100`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cifar100Spec {
    /// As for `cifar10`.
    #[serde(default = "defaults::cifar100_path")]
    pub path: PathBuf,
    /// `fine` (100 classes) or `coarse` (20).
    #[serde(default)]
    pub labels: CifarLabels,
    /// As for `mnist`.
    #[serde(default)]
    pub limit: Option<usize>,
}

/// `kind: image_folder`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageFolderSpec {
    /// A folder with `train/<class>/` and `test/<class>/`, a `.tar`/`.tar.gz` of that layout,
    /// or a folder holding one such archive.
    pub path: PathBuf,
    /// `[height, width]` of every example.
    pub size: [u32; 2],
    /// 3 (RGB) or 1 (grey).
    #[serde(default = "defaults::channels")]
    pub channels: u8,
    /// Scale images of another size (bilinear) instead of rejecting them.
    #[serde(default)]
    pub resize: bool,
    /// As for `mnist`.
    #[serde(default)]
    pub limit: Option<usize>,
}

/// `kind: table`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    /// Training table (`.arrow`/`.ipc`/`.feather` or `.parquet`).
    pub train: PathBuf,
    /// Test table, same layout.
    pub test: PathBuf,
    /// Feature column (a fixed-size list); when the table has none by that name, every
    /// float32 column but the label is a feature.
    #[serde(default = "defaults::features_column")]
    pub features: String,
    /// Integer label column.
    #[serde(default = "defaults::label_column")]
    pub label: String,
    /// As for `mnist`.
    #[serde(default)]
    pub limit: Option<usize>,
}

/// Channel order a backbone expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelOrder {
    /// Red, green, blue.
    #[default]
    Rgb,
    /// Blue, green, red.
    Bgr,
}

/// `kind: extract`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// `kind: standardize` and `kind: flatten`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformSpec {
    /// The dataset (or transform) stage transformed.
    pub input: String,
}

/// Activation after a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActivationSpec {
    /// ELU (alpha 1), clipped to `[-clip, clip]`.
    #[default]
    Elu,
    /// No activation.
    Linear,
}

/// `kind: dense`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenseSpec {
    /// The stage feeding this layer; its output is flattened.
    pub input: String,
    /// Output width.
    pub units: usize,
    /// Activation after the affine map.
    #[serde(default)]
    pub activation: ActivationSpec,
    /// Activations are clipped to `[-clip, clip]`.
    #[serde(default = "defaults::clip")]
    pub clip: f32,
    /// Sparse connectivity initialisation; `null` (the default) for dense Xavier weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sparse: Option<SparseSpec>,
    /// Scale of dense initial weights: `xavier` (the default) or `he`; ignored by `sparse`,
    /// which sets its own.
    #[serde(default)]
    pub init: InitSpec,
}

/// Sparse connectivity (SPEC section 3): correlation top-k for a layer fed by a dataset, a
/// rewired small-world ring for deeper layers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SparseSpec {
    /// Fraction of inputs each first-layer neuron connects to (`k = max(1, floor(tau d_in))`).
    #[serde(default = "defaults::tau")]
    pub tau: f64,
    /// Probability of rewiring each ring connection of deeper layers.
    #[serde(default = "defaults::rewire")]
    pub rewire: f64,
    /// `persistent` keeps every update inside the mask; `init_only` only shapes the initial weights.
    #[serde(default = "defaults::mask")]
    pub mask: MaskSpec,
}

/// The distribution of dense initial weights.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InitSpec {
    /// `N(0, 2 / (fan_in + fan_out))` (Glorot): the paper's choice for its MLPs.
    #[default]
    Xavier,
    /// `N(0, 2 / fan_in)` (He): keeps the activations' scale through deep ELU stacks;
    /// convolutions always use it.
    He,
}

/// How long a sparse mask lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskSpec {
    /// Through training: the layer stays sparse and its per-weight state is stored sparse.
    Persistent,
    /// Only the initial weights (the paper's literal Alg. 1).
    InitOnly,
}

/// `kind: mlp`: hidden layers with `activation`, then a linear output layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlpSpec {
    /// The stage feeding the first layer; its output is flattened.
    pub input: String,
    /// Widths of the hidden layers.
    #[serde(default = "defaults::hidden")]
    pub hidden: Vec<usize>,
    /// Width of the output layer; by default the number of classes of the dataset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<usize>,
    /// Activation of the hidden layers.
    #[serde(default)]
    pub activation: ActivationSpec,
    /// Hidden activations are clipped to `[-clip, clip]`.
    #[serde(default = "defaults::clip")]
    pub clip: f32,
    /// Sparse connectivity initialisation of every layer; `null` (the default) for dense
    /// Xavier weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sparse: Option<SparseSpec>,
    /// Scale of dense initial weights: `xavier` (the default) or `he`; ignored by `sparse`,
    /// which sets its own.
    #[serde(default)]
    pub init: InitSpec,
}

/// `kind: depthwise`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DepthwiseSpec {
    /// The stage feeding it (feature maps).
    pub input: String,
    /// Kernel size (odd); padding is `kernel / 2`.
    #[serde(default = "defaults::kernel")]
    pub kernel: usize,
    /// Stride, 1 or 2.
    #[serde(default = "defaults::stride")]
    pub stride: usize,
    /// Activation after the convolution.
    #[serde(default)]
    pub activation: ActivationSpec,
    /// Activations are clipped to `[-clip, clip]`.
    #[serde(default = "defaults::clip")]
    pub clip: f32,
}

/// `kind: pointwise`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointwiseSpec {
    /// The stage feeding it (feature maps).
    pub input: String,
    /// Output channels.
    pub channels: usize,
    /// Activation after the convolution.
    #[serde(default)]
    pub activation: ActivationSpec,
    /// Activations are clipped to `[-clip, clip]`.
    #[serde(default = "defaults::clip")]
    pub clip: f32,
}

/// `kind: ds_block`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DsBlockSpec {
    /// The stage feeding it (feature maps).
    pub input: String,
    /// Output channels of the pointwise convolution.
    pub channels: usize,
    /// Kernel size of the depthwise convolution.
    #[serde(default = "defaults::kernel")]
    pub kernel: usize,
    /// Stride of the depthwise convolution, 1 or 2.
    #[serde(default = "defaults::stride")]
    pub stride: usize,
    /// Activation after each convolution.
    #[serde(default)]
    pub activation: ActivationSpec,
    /// Activations are clipped to `[-clip, clip]`.
    #[serde(default = "defaults::clip")]
    pub clip: f32,
}

/// `kind: global_avg_pool`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    /// The stage feeding it (feature maps).
    pub input: String,
}

/// How `lambda` is read (see `plflow_ops::solve::RidgeScale`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LambdaScale {
    /// `lambda` times the mean diagonal of the Gram matrix: follows the data's scale.
    Relative,
    /// `lambda` as it is (the paper's literal setting).
    Absolute,
}

/// Which system the solve factors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SolveSpec {
    /// The smaller of the two.
    Auto,
    /// The `(d+1) x (d+1)` Gram.
    Primal,
    /// The `n x n` kernel.
    Dual,
}

/// The arithmetic of the PL solve (see `plflow_ops::solve::Precision`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrecisionSpec {
    /// `f32` where the ridge bounds the condition number well enough, else `f64`.
    #[default]
    Auto,
    /// Always `f64`.
    F64,
}

/// `kind: pl`: Prospective Learning. Components set to `null` are switched off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlSpec {
    /// The model's output stage; every layer between it and the dataset is trained.
    pub input: String,
    /// Passes over the training split.
    #[serde(default = "defaults::epochs")]
    pub epochs: usize,
    /// Examples per step.
    #[serde(default = "defaults::batch_size")]
    pub batch_size: usize,
    /// Start from a trained model (a run folder, for its `model.safetensors`, or a model
    /// file) instead of fresh weights; its layers must have this model's shapes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<std::path::PathBuf>,
    /// Step size of the solved update.
    #[serde(default = "defaults::alpha")]
    pub alpha: f64,
    /// Ridge added to the Gram diagonal, read according to `lambda_scale`.
    #[serde(default = "defaults::lambda")]
    pub lambda: f64,
    /// `relative` (default) or `absolute` (the paper's literal setting).
    #[serde(default = "defaults::lambda_scale")]
    pub lambda_scale: LambdaScale,
    /// Which system to factor.
    #[serde(default = "defaults::solve")]
    pub solve: SolveSpec,
    /// `auto` (f32 where the ridge bounds the condition number by 1000, else f64) or `f64`.
    #[serde(default)]
    pub precision: PrecisionSpec,
    /// Metaplasticity (paper eq. 16-19); `null` switches it off, `{}` takes the paper's settings.
    #[serde(default = "defaults::metaplasticity")]
    pub metaplasticity: Option<MetaplasticitySpec>,
    /// Momentum coefficient; `null` switches momentum off.
    #[serde(default = "defaults::momentum")]
    pub momentum: Option<f32>,
    /// Newton-Schulz orthogonalisation of the momentum; `null` switches it off.
    #[serde(default = "defaults::orthogonalize")]
    pub orthogonalize: Option<OrthogonalizeSpec>,
    /// Largest spectral norm of each weight matrix; `null` switches the clamp off.
    #[serde(default = "defaults::spectral_max")]
    pub spectral_max: Option<f32>,
    /// Label smoothing `eps` of the targets.
    #[serde(default = "defaults::label_smoothing")]
    pub label_smoothing: f32,
    /// The size of the error each hidden layer solves for: `raw` (default, the paper's rule)
    /// or `output` (rescaled to the output error's root mean square; needed by deep stacks
    /// such as the CNN).
    #[serde(default)]
    pub error_scale: ErrorScaleSpec,
    /// Per-epoch factor of `alpha`: epoch `k` (from 1) uses `alpha * alpha_decay^(k-1)`;
    /// 1 (the default) keeps the step constant.
    #[serde(default = "defaults::alpha_decay")]
    pub alpha_decay: f64,
}

/// See `plflow_ops::pl::ErrorScale`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorScaleSpec {
    /// The backpropagated error as it is.
    #[default]
    Raw,
    /// Rescaled to the output error's root mean square.
    Output,
}

/// Metaplasticity settings (defaults from SPEC section 5).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaplasticitySpec {
    /// Decay of each weight's activity trace.
    #[serde(default = "defaults::mp_beta")]
    pub beta: f32,
    /// Sensitivity of the modulation to the trace.
    #[serde(default = "defaults::mp_gamma")]
    pub gamma: f32,
    /// Traces below this count as inactive and are boosted.
    #[serde(default = "defaults::mp_tau_inactive")]
    pub tau_inactive: f32,
    /// Boost factor of inactive weights.
    #[serde(default = "defaults::mp_xi")]
    pub xi: f32,
    /// Initial trace.
    #[serde(default = "defaults::mp_theta0")]
    pub theta0: f32,
}

/// Orthogonalisation settings (defaults from SPEC section 5).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrthogonalizeSpec {
    /// Period in steps.
    #[serde(default = "defaults::ortho_every")]
    pub every: u64,
    /// Blend `s` in `V <- (1 - s) V + s NS(V)`.
    #[serde(default = "defaults::ortho_strength")]
    pub strength: f32,
}

/// `kind: sgd`: backprop with SGD and momentum, cross-entropy on the softmax outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SgdSpec {
    /// The model's output stage; every layer between it and the dataset is trained.
    pub input: String,
    /// Passes over the training split.
    #[serde(default = "defaults::epochs")]
    pub epochs: usize,
    /// Examples per step.
    #[serde(default = "defaults::batch_size")]
    pub batch_size: usize,
    /// Start from a trained model (a run folder, for its `model.safetensors`, or a model
    /// file) instead of fresh weights; its layers must have this model's shapes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<std::path::PathBuf>,
    /// Learning rate.
    #[serde(default = "defaults::sgd_lr")]
    pub lr: f32,
    /// Momentum coefficient (0 for plain SGD).
    #[serde(default = "defaults::sgd_momentum")]
    pub momentum: f32,
    /// L2 penalty added to the weight gradients.
    #[serde(default)]
    pub weight_decay: f32,
}

/// `kind: adam` and `kind: adamw`: backprop with Adam, cross-entropy on the softmax outputs.
/// For `adam` the weight decay is an L2 penalty on the gradient; for `adamw` it is decoupled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamSpec {
    /// The model's output stage; every layer between it and the dataset is trained.
    pub input: String,
    /// Passes over the training split.
    #[serde(default = "defaults::epochs")]
    pub epochs: usize,
    /// Examples per step.
    #[serde(default = "defaults::batch_size")]
    pub batch_size: usize,
    /// Start from a trained model (a run folder, for its `model.safetensors`, or a model
    /// file) instead of fresh weights; its layers must have this model's shapes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<std::path::PathBuf>,
    /// Learning rate.
    #[serde(default = "defaults::adam_lr")]
    pub lr: f32,
    /// First-moment decay.
    #[serde(default = "defaults::beta1")]
    pub beta1: f32,
    /// Second-moment decay.
    #[serde(default = "defaults::beta2")]
    pub beta2: f32,
    /// Denominator guard.
    #[serde(default = "defaults::adam_eps")]
    pub eps: f32,
    /// Weight decay; defaults to 0 for `adam` and 0.01 for `adamw`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f32>,
}

/// Which split of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitSpec {
    /// The training split.
    Train,
    /// The test split.
    #[default]
    Test,
}

/// `kind: evaluate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluateSpec {
    /// The training stage whose model is measured.
    pub input: String,
    /// The split measured.
    #[serde(default)]
    pub split: SplitSpec,
}

/// Defaults from SPEC section 5, except where SPEC section 2 "Stability" shows they do not
/// train (the ridge and step size; see `PlSpec`).
pub mod defaults {
    use super::*;

    pub(crate) fn seed() -> u64 {
        42
    }
    pub(crate) fn mnist_path() -> PathBuf {
        PathBuf::from("mnist")
    }
    pub(crate) fn cifar10_path() -> PathBuf {
        PathBuf::from("cifar10")
    }
    pub(crate) fn cifar100_path() -> PathBuf {
        PathBuf::from("cifar100")
    }
    pub(crate) fn extract_output() -> String {
        "features".into()
    }
    pub(crate) fn imagenet_mean() -> [f32; 3] {
        [0.485, 0.456, 0.406]
    }
    pub(crate) fn imagenet_std() -> [f32; 3] {
        [0.229, 0.224, 0.225]
    }
    pub(crate) fn extract_batch() -> usize {
        32
    }
    pub(crate) fn extract_chunk() -> usize {
        1024
    }
    pub(crate) fn channels() -> u8 {
        3
    }
    pub(crate) fn features_column() -> String {
        "features".into()
    }
    pub(crate) fn label_column() -> String {
        "label".into()
    }
    pub(crate) fn clip() -> f32 {
        10.0
    }
    pub(crate) fn hidden() -> Vec<usize> {
        vec![512, 128]
    }
    pub(crate) fn epochs() -> usize {
        200
    }
    pub(crate) fn batch_size() -> usize {
        512
    }
    /// Step size. Measured on MNIST [512, 128], batch 512, with `lambda` below: the stable
    /// region has `alpha / lambda` near 1/3 with a large ridge (see README, "Choosing alpha
    /// and lambda"); the paper's 0.01 with an absolute 1e-4 collapses (SPEC section 2).
    pub fn alpha() -> f64 {
        2.0
    }
    /// Relative ridge: a multiple of the mean diagonal of the Gram matrix.
    pub fn lambda() -> f64 {
        6.0
    }
    pub(crate) fn lambda_scale() -> LambdaScale {
        LambdaScale::Relative
    }
    pub(crate) fn solve() -> SolveSpec {
        SolveSpec::Auto
    }
    pub(crate) fn kernel() -> usize {
        3
    }
    pub(crate) fn stride() -> usize {
        1
    }
    pub(crate) fn tau() -> f64 {
        0.3
    }
    pub(crate) fn rewire() -> f64 {
        0.1
    }
    pub(crate) fn mask() -> MaskSpec {
        MaskSpec::Persistent
    }
    pub(crate) fn metaplasticity() -> Option<MetaplasticitySpec> {
        None
    }
    pub(crate) fn mp_beta() -> f32 {
        0.7
    }
    pub(crate) fn mp_gamma() -> f32 {
        0.15
    }
    pub(crate) fn mp_tau_inactive() -> f32 {
        1e-3
    }
    pub(crate) fn mp_xi() -> f32 {
        3.0
    }
    pub(crate) fn mp_theta0() -> f32 {
        0.1
    }
    pub(crate) fn orthogonalize() -> Option<OrthogonalizeSpec> {
        None
    }
    pub(crate) fn ortho_every() -> u64 {
        5
    }
    pub(crate) fn ortho_strength() -> f32 {
        0.1
    }
    pub(crate) fn momentum() -> Option<f32> {
        Some(0.9)
    }
    pub(crate) fn spectral_max() -> Option<f32> {
        Some(2.0)
    }
    pub(crate) fn alpha_decay() -> f64 {
        1.0
    }

    pub(crate) fn label_smoothing() -> f32 {
        0.01
    }
    pub(crate) fn sgd_lr() -> f32 {
        0.01
    }
    pub(crate) fn sgd_momentum() -> f32 {
        0.9
    }
    pub(crate) fn adam_lr() -> f32 {
        1e-3
    }
    pub(crate) fn beta1() -> f32 {
        0.9
    }
    pub(crate) fn beta2() -> f32 {
        0.999
    }
    pub(crate) fn adam_eps() -> f32 {
        1e-8
    }
    /// AdamW's decoupled weight decay.
    pub fn adamw_weight_decay() -> f32 {
        0.01
    }
}

/// Deserialize the body of a stage of kind `kind` from YAML text as its own struct, to get
/// the field-level error serde loses inside an internally tagged enum. `None` when the body
/// is valid or the kind is unknown. Add a line here with every new stage kind.
pub(crate) fn stage_body_error(kind: &str, body: &str) -> Option<serde_norway::Error> {
    fn as_type<T: serde::de::DeserializeOwned>(body: &str) -> Option<serde_norway::Error> {
        serde_norway::from_str::<T>(body).err()
    }
    match kind {
        "mnist" => as_type::<MnistSpec>(body),
        "cifar10" => as_type::<CifarSpec>(body),
        "cifar100" => as_type::<Cifar100Spec>(body),
        "image_folder" => as_type::<ImageFolderSpec>(body),
        "table" => as_type::<TableSpec>(body),
        "standardize" | "flatten" => as_type::<TransformSpec>(body),
        "extract" => as_type::<ExtractSpec>(body),
        "dense" => as_type::<DenseSpec>(body),
        "mlp" => as_type::<MlpSpec>(body),
        "depthwise" => as_type::<DepthwiseSpec>(body),
        "pointwise" => as_type::<PointwiseSpec>(body),
        "ds_block" => as_type::<DsBlockSpec>(body),
        "global_avg_pool" => as_type::<PoolSpec>(body),
        "pl" | "prospective_learning" => as_type::<PlSpec>(body),
        "sgd" => as_type::<SgdSpec>(body),
        "adam" | "adamw" => as_type::<AdamSpec>(body),
        "evaluate" => as_type::<EvaluateSpec>(body),
        _ => None,
    }
}
