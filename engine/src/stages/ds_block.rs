//! `kind: ds_block`: a depthwise-separable block, depthwise then pointwise, each with the
//! activation; it expands into the nodes `<name>.dw` and `<name>.pw`.

use super::depthwise::{Placement, add_depthwise};
use super::pointwise::add_pointwise;
use super::{Builder, Stage};
use crate::error::SpecError;
use crate::graph::{Edge, Op};
use crate::spec::{ActivationSpec, defaults};
use petgraph::graph::NodeIndex;
use serde::{Deserialize, Serialize};

/// `kind: ds_block`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
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
    /// Activations are clipped to `[-clip, clip]` (ELU) or `[0, clip]` (ReLU).
    #[serde(default = "defaults::clip")]
    pub clip: f32,
    /// Add the block's input to the pointwise result, before its activation (a residual
    /// block, `act(pw(dw(x)) + x)`); needs stride 1, `channels` equal to the input's, and a
    /// layer (not the dataset) as input.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub residual: bool,
}

impl Stage for DsBlockSpec {
    fn input(&self) -> Option<&str> {
        Some(&self.input)
    }

    fn build(&self, name: &str, b: &mut Builder<'_>) -> Result<NodeIndex, SpecError> {
        let (from, shape, classes) = b.map_input(name, &self.input, "a ds_block")?;
        let activation = b.activation(name, self.activation, self.clip)?;
        let dw_name = format!("{name}.dw");
        let at = Placement { node: &dw_name, stage: name, from, shape, classes };
        let dw = add_depthwise(b, at, self.kernel, self.stride, activation)?;
        let Some((&[c, h, w], _)) = b.node(dw).output.tensor() else { unreachable!("maps carry [C, H, W]") };
        let pw_name = format!("{name}.pw");
        let at = Placement { node: &pw_name, stage: name, from: dw, shape: [c, h, w], classes };
        let pw = add_pointwise(b, at, self.channels, activation)?;
        if self.residual {
            self.check_residual(name, b, from, shape)?;
            b.add_edge(from, pw, Edge::Residual);
        }
        Ok(pw)
    }
}

impl DsBlockSpec {
    /// A residual block's output has its input's shape, and its input is a layer.
    fn check_residual(
        &self,
        name: &str,
        b: &Builder<'_>,
        from: NodeIndex,
        shape: [usize; 3],
    ) -> Result<(), SpecError> {
        let why = if self.stride != 1 {
            Some(("stride", format!("a residual block needs stride 1, but `stride` is {}", self.stride)))
        } else if self.channels != shape[0] {
            Some((
                "channels",
                format!(
                    "a residual block keeps the channel count, but `channels` is {} and `{}` has {}",
                    self.channels, self.input, shape[0]
                ),
            ))
        } else if !matches!(b.node(from).op, Op::Layer(_)) {
            Some((
                "input",
                format!(
                    "`{}` is not a layer; add one (e.g. a pointwise stem) before a residual block",
                    self.input
                ),
            ))
        } else {
            None
        };
        match why {
            Some((field, why)) => Err(b.err(name, Some(field), format!("field `residual`: {why}"))),
            None => Ok(()),
        }
    }
}
