//! `kind: global_avg_pool`: each channel of a map becomes its mean.

use super::{Builder, InitContext, LayerFormat, LayerKind, LayerNode, Stage};
use crate::error::{EngineError, SpecError};
use crate::export::{OnnxBuilder, int_attr};
use crate::graph::{Node, Op, Port};
use crate::model::{LayerMeta, LoadedModel};
use crate::solver::Solver;
use petgraph::graph::NodeIndex;
use plflow_ops::OpsError;
use plflow_ops::activation::Activation;
use plflow_ops::layer::Layer;
use plflow_ops::pool::GlobalAvgPool;
use serde::{Deserialize, Serialize};

/// `kind: global_avg_pool`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    /// The stage feeding it (feature maps).
    pub input: String,
}

impl Stage for PoolSpec {
    fn input(&self) -> Option<&str> {
        Some(&self.input)
    }

    fn build(&self, name: &str, b: &mut Builder<'_>) -> Result<NodeIndex, SpecError> {
        let (from, [c, h, w], classes) = b.map_input(name, &self.input, "global average pooling")?;
        let op = Op::Layer(LayerNode::new(PoolNode { channels: c, positions: h * w }));
        let output = Port::Activations { shape: vec![c], classes };
        Ok(b.add_node(Node { name: name.into(), stage: name.into(), op, output }, Some(from)))
    }
}

/// A global average pooling node.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolNode {
    /// Channels in and out.
    pub channels: usize,
    /// Positions averaged.
    pub positions: usize,
}

impl LayerKind for PoolNode {
    fn kind(&self) -> &'static str {
        "global_avg_pool"
    }

    fn activation(&self) -> Activation {
        Activation::Linear
    }

    fn parameter_count(&self) -> usize {
        0
    }

    fn meta(&self, name: &str) -> LayerMeta {
        LayerMeta::new(
            name,
            "global_avg_pool",
            Activation::Linear,
            [self.channels, self.channels, self.positions],
        )
    }

    fn init(&self, _ctx: &mut InitContext<'_>) -> Result<Layer, OpsError> {
        let pool = GlobalAvgPool { positions: self.positions, channels: self.channels };
        Ok(Layer::new(pool, Activation::Linear, self.positions))
    }

    fn crude_bytes(&self, _batch: usize, _solver: &Solver) -> f64 {
        0.0
    }
}

/// Pooling layers in model files: no tensors, only their shape.
#[derive(Debug)]
pub struct Format;

impl LayerFormat for Format {
    fn kinds(&self) -> &'static [&'static str] {
        &["global_avg_pool"]
    }

    fn load(
        &self,
        m: &LayerMeta,
        _model: &LoadedModel,
        _activation: Activation,
    ) -> Result<Layer, EngineError> {
        let pool = GlobalAvgPool { positions: m.positions, channels: m.inputs };
        Ok(Layer::new(pool, Activation::Linear, m.positions))
    }

    fn onnx(
        &self,
        layer: &Layer,
        b: &mut OnnxBuilder,
        name: &str,
        flat: &mut bool,
        _: &mut Option<&str>,
    ) -> bool {
        if layer.op_as::<GlobalAvgPool>().is_none() {
            return false;
        }
        b.node(&format!("{name}.pool"), "GlobalAveragePool", &[], vec![]);
        b.node(name, "Flatten", &[], vec![int_attr("axis", 1)]);
        *flat = true;
        true
    }
}
