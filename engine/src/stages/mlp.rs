//! `kind: mlp`: hidden layers with `activation`, then a linear output layer; expands into
//! one dense node per layer, `<name>.0`, `<name>.1`...

use super::dense::{DenseNode, init_of};
use super::{Builder, LayerNode, Stage};
use crate::error::SpecError;
use crate::graph::{Node, Op, Port};
use crate::spec::{ActivationSpec, InitSpec, SparseSpec, defaults};
use petgraph::graph::NodeIndex;
use plflow_ops::activation::Activation;
use serde::{Deserialize, Serialize};

/// `kind: mlp`: hidden layers with `activation`, then a linear output layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
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
    /// Hidden activations are clipped to `[-clip, clip]` (ELU) or `[0, clip]` (ReLU).
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

impl Stage for MlpSpec {
    fn input(&self) -> Option<&str> {
        Some(&self.input)
    }

    fn build(&self, name: &str, b: &mut Builder<'_>) -> Result<NodeIndex, SpecError> {
        let (mut from, mut inputs, classes) = b.tensor_input(name, &self.input, "an mlp")?;
        if let Some(i) = self.hidden.iter().position(|&h| h == 0) {
            return Err(b.err(
                name,
                Some("hidden"),
                format!("field `hidden[{i}]`: a layer needs at least 1 unit"),
            ));
        }
        let outputs = self.outputs.unwrap_or(classes);
        if outputs == 0 {
            return Err(b.err(name, Some("outputs"), "field `outputs`: must be at least 1".into()));
        }
        let hidden = b.activation(name, self.activation, self.clip)?;
        let widths: Vec<usize> = self.hidden.iter().copied().chain([outputs]).collect();
        for (k, &units) in widths.iter().enumerate() {
            let activation = if k + 1 == widths.len() { Activation::Linear } else { hidden };
            let init = init_of(b, name, self.init, self.sparse, from)?;
            let layer = DenseNode { inputs, units, positions: 1, activation, init };
            let output = Port::Activations { shape: vec![units], classes };
            let op = Op::Layer(LayerNode::new(layer));
            from =
                b.add_node(Node { name: format!("{name}.{k}"), stage: name.into(), op, output }, Some(from));
            inputs = units;
        }
        Ok(from)
    }
}
