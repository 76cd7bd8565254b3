//! A fully connected layer: `z = x W + b`, with `W` stored `inputs x outputs`.

use crate::{Matrix, OpsError, par};
use faer::Accum;
use faer::linalg::matmul::matmul;

/// Weights and bias of a dense layer. Rows of `weights` index inputs, columns outputs, so
/// the PL solve's `dTheta` (one row per input plus the bias row) adds on directly.
#[derive(Debug, Clone)]
pub struct Dense {
    /// `inputs x outputs`.
    pub weights: Matrix,
    /// `1 x outputs`.
    pub bias: Matrix,
}

impl Dense {
    /// A layer from its weights; the bias starts at zero.
    pub fn new(weights: Matrix) -> Self {
        let bias = Matrix::zeros(1, weights.cols());
        Self { weights, bias }
    }

    /// Width of the input.
    pub fn inputs(&self) -> usize {
        self.weights.rows()
    }

    /// Width of the output.
    pub fn outputs(&self) -> usize {
        self.weights.cols()
    }

    /// Number of trainable values (weights and bias).
    pub fn parameter_count(&self) -> usize {
        self.inputs() * self.outputs() + self.outputs()
    }

    /// `x W + b` for a batch `x` of shape `n x inputs`.
    pub fn forward(&self, x: &Matrix) -> Result<Matrix, OpsError> {
        if x.cols() != self.inputs() {
            return Err(OpsError::Shape {
                op: "dense forward",
                detail: format!(
                    "input has {} features, layer expects {} ({}x{} weights)",
                    x.cols(),
                    self.inputs(),
                    self.inputs(),
                    self.outputs()
                ),
            });
        }
        let mut out = Matrix::zeros(x.rows(), self.outputs());
        let b = self.bias.as_slice();
        for row in out.as_mut_slice().chunks_exact_mut(b.len().max(1)) {
            row.copy_from_slice(b);
        }
        matmul(out.view_mut(), Accum::Add, x.view(), self.weights.view(), 1.0, par());
        Ok(out)
    }

    /// The error reaching this layer's input: `err W^T` (`n x outputs` -> `n x inputs`),
    /// before the input activation's derivative is applied.
    pub fn input_error(&self, err: &Matrix) -> Result<Matrix, OpsError> {
        if err.cols() != self.outputs() {
            return Err(OpsError::Shape {
                op: "dense error propagation",
                detail: format!("error has {} columns, layer has {} outputs", err.cols(), self.outputs()),
            });
        }
        let mut out = Matrix::zeros(err.rows(), self.inputs());
        matmul(out.view_mut(), Accum::Replace, err.view(), self.weights.view().transpose(), 1.0, par());
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &Matrix, w: &Matrix, b: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0; x.rows() * w.cols()];
        for i in 0..x.rows() {
            for j in 0..w.cols() {
                let mut s = b[j] as f64;
                for k in 0..x.cols() {
                    s += x.row(i)[k] as f64 * w.row(k)[j] as f64;
                }
                out[i * w.cols() + j] = s as f32;
            }
        }
        out
    }

    fn ramp(rows: usize, cols: usize, scale: f32) -> Matrix {
        let v = (0..rows * cols).map(|i| ((i * 7919 % 13) as f32 - 6.0) * scale).collect();
        Matrix::from_vec(rows, cols, v)
    }

    #[test]
    fn forward_matches_naive_loops() {
        let x = ramp(5, 7, 0.1);
        let mut layer = Dense::new(ramp(7, 3, 0.2));
        layer.bias = Matrix::from_vec(1, 3, vec![0.5, -1.0, 2.0]);
        let got = layer.forward(&x).expect("shapes fit");
        let want = naive(&x, &layer.weights, layer.bias.as_slice());
        for (g, w) in got.as_slice().iter().zip(&want) {
            assert!((g - w).abs() < 1e-4, "{g} vs {w}");
        }
    }

    #[test]
    fn input_error_is_product_with_transpose() {
        let e = ramp(4, 3, 0.3);
        let layer = Dense::new(ramp(6, 3, 0.1));
        let got = layer.input_error(&e).expect("shapes fit");
        for i in 0..4 {
            for k in 0..6 {
                let want: f32 = (0..3).map(|j| e.row(i)[j] * layer.weights.row(k)[j]).sum();
                assert!((got.row(i)[k] - want).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn wrong_input_width_is_a_shape_error() {
        let layer = Dense::new(Matrix::zeros(4, 2));
        let err = layer.forward(&Matrix::zeros(3, 5)).expect_err("5 != 4");
        assert!(err.to_string().contains("input has 5 features, layer expects 4"), "{err}");
    }
}
