//! A chain of dense layers: weights and activations only. Trainers ([`crate::pl`], and the
//! backprop baselines) own their optimiser state and update the network in place.

use crate::activation::Activation;
use crate::dense::Dense;
use crate::sparse::Mask;
use crate::{Matrix, OpsError};

/// One layer of a network.
#[derive(Debug, Clone)]
pub struct Layer {
    /// Weights and bias.
    pub dense: Dense,
    /// The activation after the affine map.
    pub activation: Activation,
    /// Persistent sparse connectivity: weights outside the mask stay zero through training.
    pub mask: Option<Mask>,
}

/// What one training step saw, for the run's metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepStats {
    /// Rows in the batch.
    pub rows: usize,
    /// PL: sum over the batch of the squared output error `||z - y_hat||^2`; backprop: sum of
    /// the cross-entropy losses.
    pub loss_sum: f64,
    /// Rows whose largest output was the true class (with the pre-update weights).
    pub correct: usize,
}

/// A failure inside a step, with the index of the layer where it happened.
#[derive(Debug, thiserror::Error)]
#[error("layer {layer} failed")]
pub struct LayerError {
    /// Index of the layer in the chain (0 = first).
    pub layer: usize,
    /// What went wrong.
    #[source]
    pub source: OpsError,
}

pub(crate) fn at(layer: usize) -> impl Fn(OpsError) -> LayerError {
    move |source| LayerError { layer, source }
}

/// A chain of dense layers.
#[derive(Debug, Default)]
pub struct Network {
    /// Layers from input to output.
    pub layers: Vec<Layer>,
}

impl Network {
    /// Number of trainable values.
    pub fn parameter_count(&self) -> usize {
        self.layers.iter().map(|l| l.dense.parameter_count()).sum()
    }

    /// Outputs (pre-softmax scores) for a batch; each activation is dropped as soon as the
    /// next layer has consumed it.
    pub fn forward(&self, x: &Matrix) -> Result<Matrix, LayerError> {
        let mut current: Option<Matrix> = None;
        for (l, layer) in self.layers.iter().enumerate() {
            let input = current.as_ref().unwrap_or(x);
            let mut z = layer.dense.forward(input).map_err(at(l))?;
            layer.activation.apply(z.as_mut_slice());
            current = Some(z);
        }
        Ok(current.unwrap_or_else(|| x.clone()))
    }
}

/// Index of the largest value (the first one on ties).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_chains_layers_and_applies_activations() {
        let mut first = Dense::new(Matrix::from_vec(2, 2, vec![1.0, -1.0, 0.5, 2.0]));
        first.bias = Matrix::from_vec(1, 2, vec![0.0, -3.0]);
        let second = Dense::new(Matrix::from_vec(2, 1, vec![1.0, 1.0]));
        let net = Network {
            layers: vec![
                Layer { dense: first, activation: Activation::Elu { clip: 10.0 }, mask: None },
                Layer { dense: second, activation: Activation::Linear, mask: None },
            ],
        };
        let out = net.forward(&Matrix::from_vec(1, 2, vec![2.0, 1.0])).expect("shapes");
        // z1 = [2 + 0.5, -2 + 2 - 3] = [2.5, -3]; a1 = [2.5, e^-3 - 1]; z2 = a1[0] + a1[1]
        let want = 2.5 + ((-3.0f32).exp() - 1.0);
        assert!((out.as_slice()[0] - want).abs() < 1e-6);
        assert_eq!(argmax(&[0.1, 0.7, 0.7, -1.0]), 1);
    }
}
