//! How a trained network's answer for an example becomes one score per class: its outputs
//! (every rule that trains an output layer), or Forward-Forward's goodness per label.

use crate::Matrix;
use crate::ff::Goodness;
use crate::network::{LayerError, Network};

/// How class scores are read from a network; the prediction is the largest.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Readout {
    /// The last layer's outputs, one per class.
    #[default]
    Outputs,
    /// Every label written into the input in turn, scored by the goodness it gives.
    Goodness(Goodness),
}

impl Readout {
    /// One row of class scores per example of `x`.
    pub fn scores(&self, net: &Network, x: &Matrix) -> Result<Matrix, LayerError> {
        match self {
            Readout::Outputs => net.forward(x),
            Readout::Goodness(g) => g.scores(net, x),
        }
    }
}
