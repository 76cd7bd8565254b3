//! The one list of stage kinds and of the layer formats model files hold. A new kind is a
//! line in [`stage_kinds!`]'s call below (and, for a layer kind, one in [`LAYER_FORMATS`]).

use super::{LayerFormat, Stage};
use super::{
    adam, admm, cifar, concat, dense, depthwise, ds_block, evaluate, extract, ff, image_folder, mlp, mnist,
    muon, noprop, pl, pointwise, pool, sgd, table, transform,
};
use serde::{Deserialize, Serialize};

/// Generates [`StageSpec`] (serde picks the variant by `kind`), its `kind` and `stage`
/// accessors, and [`stage_body_error`], from one line per kind.
macro_rules! stage_kinds {
    ($( $(#[doc = $doc:literal])* $variant:ident($ty:ty) = $kind:literal $(| $alias:literal)*; )*) => {
        /// One stage of a pipeline, selected by its `kind`.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
        #[serde(tag = "kind")]
        pub enum StageSpec {
            $( $(#[doc = $doc])* #[serde(rename = $kind $(, alias = $alias)*)] $variant($ty), )*
        }

        impl StageSpec {
            /// The `kind` string of this stage, as written in files.
            pub fn kind(&self) -> &'static str {
                match self { $( StageSpec::$variant(_) => $kind, )* }
            }

            /// The stage's own behaviour.
            pub fn stage(&self) -> &dyn Stage {
                match self { $( StageSpec::$variant(s) => s, )* }
            }

            /// The stage this one consumes, if any.
            pub fn input(&self) -> Option<&str> {
                self.stage().input()
            }
        }

        /// Deserialize the body of a stage of kind `kind` as its own struct, to get the
        /// field-level error serde loses inside an internally tagged enum. `None` when the
        /// body is valid or the kind is unknown.
        pub(crate) fn stage_body_error(kind: &str, body: &str) -> Option<serde_norway::Error> {
            match kind {
                $( $kind $(| $alias)* => serde_norway::from_str::<$ty>(body).err(), )*
                _ => None,
            }
        }
    };
}

stage_kinds! {
    /// MNIST-layout IDX files.
    Mnist(mnist::MnistSpec) = "mnist";
    /// CIFAR-10: binary batches, or an image folder / archive of 32x32 images.
    Cifar10(cifar::CifarSpec) = "cifar10";
    /// CIFAR-100 (fine or coarse labels): binary files, or an image folder / archive.
    Cifar100(cifar::Cifar100Spec) = "cifar100";
    /// Images in `<split>/<class>/` folders, in a directory or a tar(.gz) archive.
    ImageFolder(image_folder::ImageFolderSpec) = "image_folder";
    /// A feature table (Arrow IPC or Parquet) per split.
    Table(table::TableSpec) = "table";
    /// Features of every image from a frozen ONNX backbone, cached as Parquet files.
    Extract(extract::ExtractSpec) = "extract";
    /// Per-feature standardisation with the training split's mean and std.
    Standardize(transform::StandardizeSpec) = "standardize";
    /// Examples as flat vectors.
    Flatten(transform::FlattenSpec) = "flatten";
    /// One fully connected layer.
    Dense(dense::DenseSpec) = "dense";
    /// A stack of fully connected layers; expands into one graph node per layer.
    Mlp(mlp::MlpSpec) = "mlp";
    /// A depthwise convolution over feature maps.
    Depthwise(depthwise::DepthwiseSpec) = "depthwise";
    /// A pointwise (1x1) convolution over feature maps.
    Pointwise(pointwise::PointwiseSpec) = "pointwise";
    /// A depthwise-separable block: depthwise then pointwise, each with the activation;
    /// expands into the nodes `<name>.dw` and `<name>.pw`.
    DsBlock(ds_block::DsBlockSpec) = "ds_block";
    /// Global average pooling: each channel of a map becomes its mean.
    GlobalAvgPool(pool::PoolSpec) = "global_avg_pool";
    /// Two outputs of one model side by side (a layer's input beside an earlier layer's
    /// output), feature by feature.
    Concat(concat::ConcatSpec) = "concat";
    /// Trains the layers that feed `input` with Prospective Learning.
    Pl(pl::PlSpec) = "pl" | "prospective_learning";
    /// Backprop baseline: SGD with momentum.
    Sgd(sgd::SgdSpec) = "sgd";
    /// Backprop baseline: Adam.
    Adam(adam::AdamSpec) = "adam";
    /// Backprop baseline: AdamW (decoupled weight decay).
    Adamw(adam::AdamwSpec) = "adamw";
    /// Backprop with Muon (orthogonalised momentum; AdamW for biases and the output layer).
    Muon(muon::MuonSpec) = "muon";
    /// dlADMM: block updates of weights, activations and the output multiplier (ReLU MLPs).
    Admm(admm::AdmmSpec) = "admm";
    /// Forward-Forward: every ReLU layer trained by its own goodness on positive and
    /// wrong-label data; prediction by the label with the most goodness.
    Ff(ff::FfSpec) = "ff" | "forward_forward";
    /// NoProp (discrete time): blocks made by the stage, each trained alone to denoise a
    /// class embedding; prediction by the chain of blocks and a classifier.
    Noprop(noprop::NoPropSpec) = "noprop";
    /// Measures a trained model on a split after every epoch and at the end.
    Evaluate(evaluate::EvaluateSpec) = "evaluate";
}

/// The layer formats of model files, each knowing its `kind` strings.
pub static LAYER_FORMATS: &[&dyn LayerFormat] =
    &[&dense::Format, &depthwise::Format, &pool::Format, &concat::Format];

/// The format of layers of kind `kind` in model files.
pub fn layer_format(kind: &str) -> Option<&'static dyn LayerFormat> {
    LAYER_FORMATS.iter().copied().find(|f| f.kinds().contains(&kind))
}
