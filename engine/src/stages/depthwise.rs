//! `kind: depthwise`: a depthwise convolution over feature maps, one k x k kernel per
//! channel.

use super::{Builder, InitContext, LayerFormat, LayerKind, LayerNode, Stage};
use crate::error::{EngineError, SpecError};
use crate::export::{OnnxBuilder, int_attr, ints_attr};
use crate::graph::{Node, Op, Port};
use crate::model::{LayerMeta, LoadedModel};
use crate::solver::Solver;
use crate::spec::{ActivationSpec, defaults};
use petgraph::graph::NodeIndex;
use plflow_ops::OpsError;
use plflow_ops::activation::Activation;
use plflow_ops::depthwise::{Depthwise, Geometry};
use plflow_ops::init::he_normal;
use plflow_ops::layer::Layer;
use plflow_ops::pl::PlConfig;
use serde::{Deserialize, Serialize};

/// `kind: depthwise`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
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
    /// Activations are clipped to `[-clip, clip]` (ELU) or `[0, clip]` (ReLU).
    #[serde(default = "defaults::clip")]
    pub clip: f32,
}

impl Stage for DepthwiseSpec {
    fn input(&self) -> Option<&str> {
        Some(&self.input)
    }

    fn build(&self, name: &str, b: &mut Builder<'_>) -> Result<NodeIndex, SpecError> {
        let (from, shape, classes) = b.map_input(name, &self.input, "a depthwise convolution")?;
        let activation = b.activation(name, self.activation, self.clip)?;
        let at = Placement { node: name, stage: name, from, shape, classes };
        add_depthwise(b, at, self.kernel, self.stride, activation)
    }
}

/// Where a convolution node goes: its name, its stage, and the maps `[C, H, W]` of `from`.
pub(crate) struct Placement<'s> {
    pub node: &'s str,
    pub stage: &'s str,
    pub from: NodeIndex,
    pub shape: [usize; 3],
    pub classes: usize,
}

/// A depthwise node with `kernel` and `stride` checked against the maps it reads.
pub(crate) fn add_depthwise(
    b: &mut Builder<'_>,
    at: Placement<'_>,
    kernel: usize,
    stride: usize,
    activation: Activation,
) -> Result<NodeIndex, SpecError> {
    let [c, h, w] = at.shape;
    b.range(
        at.stage,
        "kernel",
        kernel % 2 == 1 && kernel <= h.min(w).max(1) * 2 + 1,
        "odd (3, 5, ...)",
        kernel,
    )?;
    b.range(at.stage, "stride", (1..=2).contains(&stride), "1 or 2", stride)?;
    let geometry = Geometry { h, w, k: kernel, stride };
    let op = Op::Layer(LayerNode::new(DepthwiseNode { channels: c, geometry, activation }));
    let output =
        Port::Activations { shape: vec![c, geometry.out_h(), geometry.out_w()], classes: at.classes };
    Ok(b.add_node(Node { name: at.node.into(), stage: at.stage.into(), op, output }, Some(at.from)))
}

/// A depthwise convolution node.
#[derive(Debug, Clone, PartialEq)]
pub struct DepthwiseNode {
    /// Channels in and out.
    pub channels: usize,
    /// Input size, kernel and stride.
    pub geometry: Geometry,
    /// After the convolution.
    pub activation: Activation,
}

impl LayerKind for DepthwiseNode {
    fn kind(&self) -> &'static str {
        "depthwise"
    }

    fn activation(&self) -> Activation {
        self.activation
    }

    fn parameter_count(&self) -> usize {
        (self.geometry.k * self.geometry.k + 1) * self.channels
    }

    fn meta(&self, name: &str) -> LayerMeta {
        let g = self.geometry;
        LayerMeta {
            conv: Some([g.k, g.stride, g.h, g.w]),
            ..LayerMeta::new(name, "depthwise", self.activation, [self.channels, self.channels, g.h * g.w])
        }
    }

    fn init(&self, ctx: &mut InitContext<'_>) -> Result<Layer, OpsError> {
        let taps = self.geometry.k * self.geometry.k;
        // He scale over the k*k taps each output reads: the kernel matrix is taps x channels,
        // but a channel's fan-in is only its own taps.
        let w = he_normal(taps, taps, self.channels, ctx.rng);
        let positions = self.geometry.h * self.geometry.w;
        Ok(Layer::new(Depthwise::new(w, self.geometry), self.activation, positions))
    }

    fn crude_bytes(&self, _batch: usize, _solver: &Solver) -> f64 {
        16.0 * (self.geometry.k as f64).powi(2) * self.channels as f64 + 16.0 * self.channels as f64
    }

    fn describe_solve(&self, _batch: usize, _config: &PlConfig) -> Option<String> {
        Some("per-channel f64".into())
    }
}

/// Depthwise layers in model files: `weight` (k*k taps x channels), `bias`, and the geometry
/// in the layer's `conv` metadata.
#[derive(Debug)]
pub struct Format;

impl LayerFormat for Format {
    fn kinds(&self) -> &'static [&'static str] {
        &["depthwise"]
    }

    fn load(&self, m: &LayerMeta, model: &LoadedModel, activation: Activation) -> Result<Layer, EngineError> {
        let Some([k, stride, h, w]) = m.conv else {
            return Err(model.bad(None, format!("depthwise layer `{}` has no `conv` geometry", m.name)));
        };
        let dense = model.dense_params(&m.name, k * k, m.inputs)?;
        let mut dw = Depthwise::new(dense.weights, Geometry { h, w, k, stride });
        dw.params.bias = dense.bias;
        Ok(Layer::new(dw, activation, h * w))
    }

    fn onnx(
        &self,
        layer: &Layer,
        b: &mut OnnxBuilder,
        name: &str,
        _: &mut bool,
        _: &mut Option<&str>,
    ) -> bool {
        let Some(dw) = layer.op_as::<Depthwise>() else { return false };
        let (g, c) = (dw.geometry, dw.channels());
        let taps = g.k * g.k;
        let w = dw.params.weights.as_slice();
        // plflow's kernel is `taps x channels` with tap `dy * k + dx`; ONNX's `C x 1 x k x k`.
        let kernel: Vec<f32> = (0..c).flat_map(|ch| (0..taps).map(move |t| w[t * c + ch])).collect();
        let w = b.constant(&format!("{name}.weight"), &[c, 1, g.k, g.k], &kernel);
        let bias = b.constant(&format!("{name}.bias"), &[c], dw.params.bias.as_slice());
        let p = g.pad();
        let attributes = vec![
            int_attr("group", c as i64),
            ints_attr("kernel_shape", &[g.k, g.k]),
            ints_attr("pads", &[p, p, p, p]),
            ints_attr("strides", &[g.stride, g.stride]),
        ];
        b.node(name, "Conv", &[w, bias], attributes);
        true
    }
}
