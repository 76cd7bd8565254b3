//! Activations. PL hidden layers use ELU (alpha 1) clipped to `[-clip, clip]`; the output
//! layer is linear.
//!
//! The ELU derivative is recovered from the stored activation (`a + 1` where `a < 0`, else
//! `1`), so the pre-activation `z` never has to be kept: one buffer per layer instead of two.

/// The activation applied after a layer's affine map.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    /// `a = z`.
    Linear,
    /// `a = clip(ELU(z), -clip, clip)` with ELU alpha 1.
    Elu { clip: f32 },
}

impl Activation {
    /// Apply the activation to pre-activations in place.
    pub fn apply(self, z: &mut [f32]) {
        match self {
            Activation::Linear => {}
            Activation::Elu { clip } => {
                for v in z.iter_mut() {
                    let a = if *v > 0.0 { *v } else { v.exp_m1() };
                    *v = a.clamp(-clip, clip);
                }
            }
        }
    }

    /// Multiply `err` element-wise by the activation's derivative, recovered from the
    /// activation output `a` (same shape as `err`).
    pub fn scale_by_derivative(self, err: &mut [f32], a: &[f32]) {
        debug_assert_eq!(err.len(), a.len());
        match self {
            Activation::Linear => {}
            Activation::Elu { .. } => {
                for (e, &a) in err.iter_mut().zip(a) {
                    if a < 0.0 {
                        *e *= a + 1.0;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elu_matches_definition_and_clips() {
        let act = Activation::Elu { clip: 10.0 };
        let mut z = vec![-2.0f32, -0.5, 0.0, 0.7, 12.0];
        act.apply(&mut z);
        let want = [(-2.0f32).exp() - 1.0, (-0.5f32).exp() - 1.0, 0.0, 0.7, 10.0];
        for (g, w) in z.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{g} vs {w}");
        }
    }

    #[test]
    fn derivative_from_output_matches_finite_difference() {
        let act = Activation::Elu { clip: 10.0 };
        for &z in &[-3.0f32, -1.0, -0.1, 0.2, 4.0] {
            let h = 1e-3f32;
            let f = |x: f32| if x > 0.0 { x } else { x.exp_m1() };
            let fd = (f(z + h) - f(z - h)) / (2.0 * h);
            let mut a = [z];
            act.apply(&mut a);
            let mut e = [1.0f32];
            act.scale_by_derivative(&mut e, &a);
            assert!((e[0] - fd).abs() < 1e-3, "z={z}: {} vs {fd}", e[0]);
        }
    }
}
