//! `kind: pointwise`: a 1x1 convolution over feature maps, i.e. a dense layer applied at
//! every position (the layer kind is [`super::dense::DenseNode`]).

use super::dense::{DenseNode, Init};
use super::depthwise::Placement;
use super::{Builder, LayerNode, Stage};
use crate::error::SpecError;
use crate::graph::{Node, Op, Port};
use crate::spec::{ActivationSpec, defaults};
use petgraph::graph::NodeIndex;
use plflow_ops::activation::Activation;
use serde::{Deserialize, Serialize};

/// `kind: pointwise`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PointwiseSpec {
    /// The stage feeding it (feature maps).
    pub input: String,
    /// Output channels.
    pub channels: usize,
    /// Activation after the convolution.
    #[serde(default)]
    pub activation: ActivationSpec,
    /// Activations are clipped to `[-clip, clip]` (ELU) or `[0, clip]` (ReLU).
    #[serde(default = "defaults::clip")]
    pub clip: f32,
}

impl Stage for PointwiseSpec {
    fn input(&self) -> Option<&str> {
        Some(&self.input)
    }

    fn build(&self, name: &str, b: &mut Builder<'_>) -> Result<NodeIndex, SpecError> {
        let (from, shape, classes) = b.map_input(name, &self.input, "a pointwise convolution")?;
        let activation = b.activation(name, self.activation, self.clip)?;
        let at = Placement { node: name, stage: name, from, shape, classes };
        add_pointwise(b, at, self.channels, activation)
    }
}

/// A pointwise node with `channels` outputs over the maps of `at.from` (He initialisation).
pub(crate) fn add_pointwise(
    b: &mut Builder<'_>,
    at: Placement<'_>,
    channels: usize,
    activation: Activation,
) -> Result<NodeIndex, SpecError> {
    let [c, h, w] = at.shape;
    b.range(at.stage, "channels", channels > 0, "at least 1", channels)?;
    let layer = DenseNode { inputs: c, units: channels, positions: h * w, activation, init: Init::He };
    let output = Port::Activations { shape: vec![channels, h, w], classes: at.classes };
    let op = Op::Layer(LayerNode::new(layer));
    Ok(b.add_node(Node { name: at.node.into(), stage: at.stage.into(), op, output }, Some(at.from)))
}
