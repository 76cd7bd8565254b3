//! Stage kinds: each in its own file, holding everything about that kind: its YAML fields,
//! its checks and the graph node(s) it becomes ([`Stage`]), and, for layer kinds, what a
//! node of that kind estimates, how it starts, how model files store it and how it exports
//! ([`LayerKind`], [`LayerFormat`]).
//!
//! `registry.rs` is the one list of kinds ([`StageSpec`], [`LAYER_FORMATS`]). Adding a layer kind touches its ops file
//! (`plflow_ops`, the [`plflow_ops::layer::Op`] trait), its file here and the registry.
//!
//! The scheduler ([`crate::run`]) stays generic: it initialises layer nodes through
//! [`LayerKind::init`], trains chains with the solver of a training node, and opens datasets
//! through the data nodes it walks.

mod builder;
mod layer;
mod registry;

pub mod adam;
pub mod admm;
mod backprop;
pub mod cifar;
pub mod concat;
pub mod dense;
pub mod depthwise;
pub mod ds_block;
pub mod evaluate;
pub mod extract;
pub mod ff;
pub mod image_folder;
pub mod mlp;
pub mod mnist;
pub mod muon;
pub mod noprop;
pub mod pl;
pub mod pointwise;
pub mod pool;
pub mod sgd;
pub mod table;
pub mod trainer;
pub mod transform;

pub use builder::Builder;
pub use layer::{InitContext, LayerFormat, LayerKind, LayerNode};
pub(crate) use registry::stage_body_error;
pub use registry::{LAYER_FORMATS, StageSpec, layer_format};

use crate::error::SpecError;
use petgraph::graph::NodeIndex;

/// A stage as written in a pipeline file.
pub trait Stage {
    /// The stage this one consumes, if any.
    fn input(&self) -> Option<&str>;

    /// Every stage this one names, with the field naming it: its `input` and any other.
    fn references(&self) -> Vec<(&'static str, &str)> {
        self.input().map(|i| vec![("input", i)]).unwrap_or_default()
    }

    /// Check the stage against what feeds it and add the node(s) it becomes; returns the node
    /// later stages get when they name this stage as their `input`.
    fn build(&self, name: &str, b: &mut Builder<'_>) -> Result<NodeIndex, SpecError>;
}
