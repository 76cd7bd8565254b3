//! How a trained network's answer for an example becomes one score per class: its outputs
//! (every rule that trains an output layer), Forward-Forward's goodness per label, or
//! NoProp's chain of denoising blocks.

use crate::Matrix;
use crate::ff::Goodness;
use crate::network::{LayerError, Network};
use crate::noprop::NoPropReadout;

/// How class scores are read from a network; the prediction is the largest.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Readout {
    /// The last layer's outputs, one per class.
    #[default]
    Outputs,
    /// Every label written into the input in turn, scored by the goodness it gives.
    Goodness(Goodness),
    /// The blocks denoise a class embedding in turn; a classifier reads the last.
    NoProp(NoPropReadout),
}

impl Readout {
    /// One row of class scores per example of `x`.
    pub fn scores(&self, net: &Network, x: &Matrix) -> Result<Matrix, LayerError> {
        match self {
            Readout::Outputs => net.forward(x),
            Readout::Goodness(g) => g.scores(net, x),
            Readout::NoProp(r) => r.scores(net, x),
        }
    }
}
