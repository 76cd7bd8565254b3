//! Applying a solved update to a dense layer (SPEC section 2, step 6): momentum on the
//! weights, the spectral-norm clamp, and the bias added directly.
//!
//! The per-layer state is allocated only for the components that are switched on, so a run
//! without momentum holds no velocity buffer.

use crate::dense::Dense;
use crate::solve::RidgeUpdate;
use crate::{Matrix, OpsError};

/// Which stabilisers run after each solve. `None` switches a component off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpdateRule {
    /// Momentum coefficient `mu`: `V <- mu V + (1 - mu) dW; W <- W + V`.
    pub momentum: Option<f32>,
    /// Largest allowed spectral norm of `W`; above it `W` is scaled down to it.
    pub spectral_max: Option<f32>,
}

/// Power-iteration steps per update; the vector persists, so a few steps track the top
/// singular vector as the weights drift.
const POWER_STEPS_PER_UPDATE: usize = 2;
/// Power-iteration steps when the state is created from fresh weights.
const POWER_STEPS_AT_START: usize = 30;

/// Per-layer optimiser state of Prospective Learning.
#[derive(Debug)]
pub struct LayerState {
    velocity: Option<Matrix>,
    power: Option<Matrix>,
    /// Spectral norm estimated at the last update (0 when the clamp is off).
    pub spectral_norm: f32,
    /// Number of updates applied.
    pub steps: u64,
}

impl LayerState {
    /// Fresh state for `layer` under `rule`.
    pub fn new(layer: &Dense, rule: &UpdateRule) -> Self {
        let m = layer.outputs();
        let velocity = rule.momentum.map(|_| Matrix::zeros(layer.inputs(), m));
        let mut state = Self { velocity, power: None, spectral_norm: 0.0, steps: 0 };
        if rule.spectral_max.is_some() {
            let v = Matrix::from_vec(1, m, vec![1.0 / (m.max(1) as f32).sqrt(); m]);
            state.power = Some(v);
            state.spectral_norm = power_iteration(&layer.weights, state.power_mut(), POWER_STEPS_AT_START);
        }
        state
    }

    fn power_mut(&mut self) -> &mut [f32] {
        self.power.as_mut().map(|p| p.as_mut_slice()).unwrap_or_default()
    }

    /// Bytes of per-weight state this layer holds.
    pub fn bytes(&self) -> usize {
        self.velocity.as_ref().map_or(0, Matrix::bytes) + self.power.as_ref().map_or(0, Matrix::bytes)
    }

    /// Apply `update` to `layer`: fused momentum and weight update, bias, then the clamp.
    pub fn apply(
        &mut self,
        layer: &mut Dense,
        update: RidgeUpdate,
        rule: &UpdateRule,
    ) -> Result<(), OpsError> {
        if update.dw.rows() != layer.inputs() || update.dw.cols() != layer.outputs() {
            return Err(OpsError::Shape {
                op: "PL update",
                detail: format!(
                    "update is {}x{}, weights are {}x{}",
                    update.dw.rows(),
                    update.dw.cols(),
                    layer.inputs(),
                    layer.outputs()
                ),
            });
        }
        let w = layer.weights.as_mut_slice();
        match (&mut self.velocity, rule.momentum) {
            (Some(v), Some(mu)) => {
                for ((w, v), &dw) in w.iter_mut().zip(v.as_mut_slice()).zip(update.dw.as_slice()) {
                    *v = mu * *v + (1.0 - mu) * dw;
                    *w += *v;
                }
            }
            _ => {
                for (w, &dw) in w.iter_mut().zip(update.dw.as_slice()) {
                    *w += dw;
                }
            }
        }
        for (b, &db) in layer.bias.as_mut_slice().iter_mut().zip(update.db.as_slice()) {
            *b += db;
        }
        if let Some(max) = rule.spectral_max {
            let sigma = power_iteration(&layer.weights, self.power_mut(), POWER_STEPS_PER_UPDATE);
            self.spectral_norm = sigma;
            if sigma > max {
                let s = max / sigma;
                layer.weights.as_mut_slice().iter_mut().for_each(|w| *w *= s);
                self.spectral_norm = max;
            }
        }
        self.steps += 1;
        Ok(())
    }
}

/// Advance the persistent right singular vector `v` of `w` (`d x m`) by `steps` power
/// iterations and return the estimate `||W v||` of the largest singular value.
pub fn power_iteration(w: &Matrix, v: &mut [f32], steps: usize) -> f32 {
    let (d, m) = (w.rows(), w.cols());
    if v.len() != m || m == 0 || d == 0 {
        return 0.0;
    }
    let mut u = vec![0.0f64; d];
    let mut next = vec![0.0f64; m];
    let w_times = |v: &[f32], u: &mut [f64]| {
        for (i, ui) in u.iter_mut().enumerate() {
            *ui = w.row(i).iter().zip(v).map(|(&a, &b)| a as f64 * b as f64).sum();
        }
        u.iter().map(|x| x * x).sum::<f64>().sqrt()
    };
    for _ in 0..steps.max(1) {
        w_times(v, &mut u);
        next.iter_mut().for_each(|x| *x = 0.0);
        for (i, &ui) in u.iter().enumerate() {
            for (n, &a) in next.iter_mut().zip(w.row(i)) {
                *n += a as f64 * ui;
            }
        }
        let norm = next.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm == 0.0 || !norm.is_finite() {
            break;
        }
        for (vj, nj) in v.iter_mut().zip(&next) {
            *vj = (nj / norm) as f32;
        }
    }
    // Rayleigh estimate with the refined vector: ||W v|| for unit v.
    w_times(v, &mut u) as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::solve::RidgeUpdate;

    fn update(dw: Vec<f32>, d: usize, m: usize) -> RidgeUpdate {
        RidgeUpdate {
            dw: Matrix::from_vec(d, m, dw),
            db: Matrix::from_vec(1, m, vec![0.5; m]),
            lambda_used: 0.0,
            dual: false,
        }
    }

    #[test]
    fn power_iteration_finds_largest_singular_value() {
        // diag(3, 1) rotated: singular values 3 and 1.
        let (c, s) = (0.6f32, 0.8f32);
        let w = Matrix::from_vec(2, 2, vec![3.0 * c, -s, 3.0 * s, c]);
        let mut v = vec![std::f32::consts::FRAC_1_SQRT_2; 2];
        let sigma = power_iteration(&w, &mut v, 50);
        assert!((sigma - 3.0).abs() < 1e-4, "{sigma}");
    }

    #[test]
    fn momentum_follows_its_recurrence() {
        let rule = UpdateRule { momentum: Some(0.9), spectral_max: None };
        let mut layer = Dense::new(Matrix::zeros(1, 2));
        let mut st = LayerState::new(&layer, &rule);
        st.apply(&mut layer, update(vec![1.0, -2.0], 1, 2), &rule).expect("apply");
        // V1 = 0.1 dW, W1 = V1
        assert!((layer.weights.as_slice()[0] - 0.1).abs() < 1e-7);
        st.apply(&mut layer, update(vec![1.0, -2.0], 1, 2), &rule).expect("apply");
        // V2 = 0.9*0.1 + 0.1 = 0.19, W2 = 0.1 + 0.19
        assert!((layer.weights.as_slice()[0] - 0.29).abs() < 1e-6);
        assert!((layer.weights.as_slice()[1] + 0.58).abs() < 1e-6);
        assert!((layer.bias.as_slice()[0] - 1.0).abs() < 1e-7, "bias takes db twice, no momentum");
    }

    #[test]
    fn clamp_scales_weights_to_max_norm() {
        let rule = UpdateRule { momentum: None, spectral_max: Some(2.0) };
        let mut layer = Dense::new(Matrix::zeros(2, 2));
        let mut st = LayerState::new(&layer, &rule);
        st.apply(&mut layer, update(vec![5.0, 0.0, 0.0, 1.0], 2, 2), &rule).expect("apply");
        let w = layer.weights.as_slice();
        assert!((w[0] - 2.0).abs() < 1e-3 && (w[3] - 0.4).abs() < 1e-3, "{w:?}");
        assert!(st.bytes() > 0 && st.velocity.is_none());
    }
}
