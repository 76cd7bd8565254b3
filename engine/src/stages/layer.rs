//! What the engine needs to know about a layer kind beyond its ops: how a graph node of that
//! kind is estimated and described at check time, how it starts at run time
//! ([`LayerKind`]), and how model files store and export it ([`LayerFormat`]).

use crate::error::EngineError;
use crate::export::OnnxBuilder;
use crate::model::{LayerMeta, LoadedModel};
use crate::solver::Solver;
use plflow_datasets::Source;
use plflow_ops::OpsError;
use plflow_ops::activation::Activation;
use plflow_ops::layer::Layer;
use plflow_ops::pl::PlConfig;
use rand_chacha::ChaCha8Rng;
use std::fmt;
use std::sync::Arc;

/// What a layer's initialisation may draw on.
pub struct InitContext<'a> {
    /// The run's generator: layers draw from it in graph order.
    pub rng: &'a mut ChaCha8Rng,
    /// The training split feeding the layer, when a dataset feeds it directly.
    pub input: Option<&'a dyn Source>,
}

impl fmt::Debug for InitContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InitContext").field("input", &self.input.map(|s| s.len())).finish_non_exhaustive()
    }
}

/// A layer node of the graph: the settings of one layer of a kind.
pub trait LayerKind: fmt::Debug + Send + Sync {
    /// The kind shown to users and written in model files (`dense`, `depthwise`...).
    fn kind(&self) -> &'static str;

    /// The activation after the layer.
    fn activation(&self) -> Activation;

    /// Trainable values.
    fn parameter_count(&self) -> usize;

    /// The description model files keep of layer `name`.
    fn meta(&self, name: &str) -> LayerMeta;

    /// The layer with its initial weights.
    fn init(&self, ctx: &mut InitContext<'_>) -> Result<Layer, OpsError>;

    /// `(inputs, units)` for a fully connected layer on flat inputs: chains of those get
    /// the step-by-step estimate of `plan::estimate_pl` and `plan::estimate_backprop`.
    fn flat_dense(&self) -> Option<(usize, usize)> {
        None
    }

    /// An upper bound, in `f64` so that no product overflows, of the bytes a training step
    /// holds for this layer beyond its activations: weights, state, solve or gradient.
    fn crude_bytes(&self, batch: usize, solver: &Solver) -> f64;

    /// Bytes of the largest transient of its update (PL workspace or backprop gradient).
    fn update_bytes(&self, _batch: usize, _solver: &Solver) -> Option<usize> {
        None
    }

    /// How PL solves it, for `plflow check` (`dual 512 f32`); `None` if it has nothing to
    /// solve.
    fn describe_solve(&self, _batch: usize, _config: &PlConfig) -> Option<String> {
        None
    }
}

/// A shared handle on a layer node, so that graphs stay cheap to clone.
#[derive(Debug, Clone)]
pub struct LayerNode(pub Arc<dyn LayerKind>);

impl LayerNode {
    /// Wrap a layer kind's node.
    pub fn new(kind: impl LayerKind + 'static) -> Self {
        Self(Arc::new(kind))
    }
}

impl std::ops::Deref for LayerNode {
    type Target = dyn LayerKind;
    fn deref(&self) -> &Self::Target {
        self.0.as_ref()
    }
}

/// How model files hold layers of a kind, and how they export.
pub trait LayerFormat: Sync {
    /// The `kind` strings model files name this format by.
    fn kinds(&self) -> &'static [&'static str];

    /// The layer `meta` describes, with its tensors from `model`.
    fn load(
        &self,
        meta: &LayerMeta,
        model: &LoadedModel,
        activation: Activation,
    ) -> Result<Layer, EngineError>;

    /// Append the ONNX nodes of `layer` (without its activation) to `b`; `flat` says whether
    /// the value flowing is already flat, `skip` names the value its skip connection reads
    /// (a kind that uses it takes it; one left is added, as a residual). `false` if `layer`
    /// is not of this format.
    fn onnx(
        &self,
        layer: &Layer,
        b: &mut OnnxBuilder,
        name: &str,
        flat: &mut bool,
        skip: &mut Option<&str>,
    ) -> bool;
}
