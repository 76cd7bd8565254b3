//! `kind: ds_block`: a depthwise-separable block, depthwise then pointwise, each with the
//! activation; it expands into the nodes `<name>.dw` and `<name>.pw`.

use super::depthwise::{Placement, add_depthwise};
use super::pointwise::add_pointwise;
use super::{Builder, Stage};
use crate::error::SpecError;
use crate::spec::{ActivationSpec, defaults};
use petgraph::graph::NodeIndex;
use serde::{Deserialize, Serialize};

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
        add_pointwise(b, at, self.channels, activation)
    }
}
