//! `kind: concat`: features joined side by side, in one of two places:
//! - **datasets** (two or more data stages with the same examples: pixels and a backbone's
//!   features, two backbones' features): a data node whose examples are the inputs'
//!   examples flattened and concatenated ([`plflow_datasets::join`]);
//! - **layers of one model** (flat vectors side by side, or two maps' channels at each
//!   position): one input is the chain's previous layer, the other an earlier layer of the
//!   same chain (a skip connection, as in DenseNet). The node is a parameter-free layer with
//!   an `Edge::Residual` from the earlier one, and training splits the error reaching it
//!   between the two ([`plflow_ops::concat`]).

use super::{Builder, InitContext, LayerFormat, LayerKind, LayerNode, Stage};
use crate::error::{EngineError, SpecError};
use crate::export::{OnnxBuilder, int_attr};
use crate::graph::{Edge, Node, Op, Port};
use crate::model::{LayerMeta, LoadedModel};
use crate::solver::Solver;
use petgraph::graph::NodeIndex;
use plflow_ops::OpsError;
use plflow_ops::activation::Activation;
use plflow_ops::concat::Concat;
use plflow_ops::layer::Layer;
use serde::{Deserialize, Serialize};

/// `kind: concat`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConcatSpec {
    /// The stages joined, in the order their features appear: two or more data stages with
    /// the same examples (e.g. `[pixels, features]`), or two layers of one model, one of them
    /// feeding the other through the chain (e.g. `[block2, block1]`).
    pub inputs: Vec<String>,
}

impl Stage for ConcatSpec {
    fn input(&self) -> Option<&str> {
        self.inputs.first().map(String::as_str)
    }

    fn references(&self) -> Vec<(&'static str, &str)> {
        self.inputs.iter().map(|i| ("inputs", i.as_str())).collect()
    }

    fn build(&self, name: &str, b: &mut Builder<'_>) -> Result<NodeIndex, SpecError> {
        let fail =
            |b: &Builder<'_>, why: String| b.err(name, Some("inputs"), format!("field `inputs`: {why}"));
        let nodes: Vec<NodeIndex> = self.inputs.iter().map(|i| b.output_of(i)).collect();
        if nodes.len() >= 2 && nodes.iter().all(|&i| b.node(i).op.is_data()) {
            return self.join_data(name, b, &nodes);
        }
        let [first, second] = self.inputs.as_slice() else {
            return Err(fail(b, format!("give two stages to join, got {}", self.inputs.len())));
        };
        let (a, _, classes) = b.tensor_input(name, first, "concat")?;
        let (c, _, _) = b.tensor_input(name, second, "concat")?;
        // The chain continues from the later of the two; the earlier is the skip.
        let (chain, skip, skip_first) = if feeds(b, c, a) {
            (a, c, false)
        } else if feeds(b, a, c) {
            (c, a, true)
        } else {
            return Err(fail(
                b,
                format!(
                    "`{first}` and `{second}` must be layers of one model, one feeding the other \
                     (plflow trains chains with skip connections; joining two branches is not \
                     supported yet)"
                ),
            ));
        };
        if !matches!(b.node(skip).op, Op::Layer(_)) {
            let skip_name = &b.node(skip).name;
            return Err(fail(
                b,
                format!(
                    "`{skip_name}` is not a layer; concat joins two layers of one model, or two or more \
                     datasets"
                ),
            ));
        }
        let shape = |i: NodeIndex| b.node(i).output.tensor().map(|(s, _)| s.to_vec()).unwrap_or_default();
        let (cs, ss) = (shape(chain), shape(skip));
        let (positions, out_shape) = match (cs.as_slice(), ss.as_slice()) {
            (&[x], &[y]) => (1, vec![x + y]),
            (&[x, h, w], &[y, h2, w2]) if (h, w) == (h2, w2) => (h * w, vec![x + y, h, w]),
            _ => {
                let show = |s: &[usize]| s.iter().map(usize::to_string).collect::<Vec<_>>().join("x");
                return Err(fail(
                    b,
                    format!(
                        "shape mismatch: concat joins two flat outputs or two maps of the same height \
                         and width, got {} and {}",
                        show(&cs),
                        show(&ss)
                    ),
                ));
            }
        };
        let node = ConcatNode(Concat { positions, input: cs[0], skip: ss[0], skip_first });
        let op = Op::Layer(LayerNode::new(node));
        let output = Port::Activations { shape: out_shape, classes };
        let i = b.add_node(Node { name: name.into(), stage: name.into(), op, output }, Some(chain));
        b.add_edge(skip, i, Edge::Residual);
        Ok(i)
    }
}

impl ConcatSpec {
    /// Data stages joined into one dataset of flat examples.
    fn join_data(
        &self,
        name: &str,
        b: &mut Builder<'_>,
        nodes: &[NodeIndex],
    ) -> Result<NodeIndex, SpecError> {
        let mut width = 0;
        let mut classes = None;
        for input in &self.inputs {
            let (_, len, c) = b.tensor_input(name, input, "concat")?;
            match classes {
                Some(first) if first != c => {
                    let why = format!(
                        "field `inputs`: `{}` has {first} classes but `{input}` has {c}; joined datasets \
                         hold the same examples",
                        self.inputs[0]
                    );
                    return Err(b.err(name, Some("inputs"), why));
                }
                _ => classes = Some(c),
            }
            width += len;
        }
        let op = Op::Join { inputs: nodes.to_vec() };
        let output = Port::Examples { shape: vec![width], classes: classes.unwrap_or(0) };
        let node = b.add_node(Node { name: name.into(), stage: name.into(), op, output }, Some(nodes[0]));
        for &i in &nodes[1..] {
            b.add_edge(i, node, Edge::Input);
        }
        Ok(node)
    }
}

/// Whether `from` feeds `to` through a chain of `input` edges.
fn feeds(b: &Builder<'_>, from: NodeIndex, to: NodeIndex) -> bool {
    let mut at = b.input_of(to);
    while let Some(i) = at {
        if i == from {
            return true;
        }
        at = b.input_of(i);
    }
    false
}

/// A concatenation node: the chain's input beside an earlier layer's output, with the
/// geometry of the op it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct ConcatNode(pub Concat);

impl LayerKind for ConcatNode {
    fn kind(&self) -> &'static str {
        "concat"
    }

    fn activation(&self) -> Activation {
        Activation::Linear
    }

    fn parameter_count(&self) -> usize {
        0
    }

    fn meta(&self, name: &str) -> LayerMeta {
        let c = &self.0;
        let shape = [c.input, c.width(), c.positions];
        LayerMeta { skip_first: c.skip_first, ..LayerMeta::new(name, "concat", Activation::Linear, shape) }
    }

    fn init(&self, _ctx: &mut InitContext<'_>) -> Result<Layer, OpsError> {
        Ok(Layer::new(self.0, Activation::Linear, self.0.positions))
    }

    fn crude_bytes(&self, _batch: usize, _solver: &Solver) -> f64 {
        0.0
    }
}

/// Concatenations in model files: no tensors; the skip source is the layer's `residual`.
#[derive(Debug)]
pub struct Format;

impl LayerFormat for Format {
    fn kinds(&self) -> &'static [&'static str] {
        &["concat"]
    }

    fn load(
        &self,
        m: &LayerMeta,
        model: &LoadedModel,
        _activation: Activation,
    ) -> Result<Layer, EngineError> {
        if m.outputs <= m.inputs || m.residual.is_none() {
            let why = format!(
                "layer `{}`: a concatenation needs more outputs ({}) than inputs ({}) and a layer it joins",
                m.name, m.outputs, m.inputs
            );
            return Err(model.bad(None, why));
        }
        let cat = Concat {
            positions: m.positions,
            input: m.inputs,
            skip: m.outputs - m.inputs,
            skip_first: m.skip_first,
        };
        Ok(Layer::new(cat, Activation::Linear, m.positions))
    }

    fn onnx(
        &self,
        layer: &Layer,
        b: &mut OnnxBuilder,
        name: &str,
        _: &mut bool,
        skip: &mut Option<&str>,
    ) -> bool {
        let Some(cat) = layer.op_as::<Concat>() else {
            return false;
        };
        // Flat values are [N, F] and maps NCHW: the features are axis 1 either way.
        let Some(other) = skip.take() else {
            return false;
        };
        let chain = b.last().to_owned();
        let inputs = if cat.skip_first { [other.to_owned(), chain] } else { [chain, other.to_owned()] };
        b.node_on(name, "Concat", &inputs, vec![int_attr("axis", 1)]);
        true
    }
}
