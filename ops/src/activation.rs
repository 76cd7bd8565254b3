//! Activations. PL hidden layers use ELU (alpha 1) clipped to `[-clip, clip]`; ReLU (clipped
//! to `[0, clip]`) is there for the methods written for it (dlADMM's closed-form `z` update);
//! the output layer is linear.
//!
//! Both derivatives are recovered from the stored activation (ELU: `a + 1` where `a < 0`,
//! else `1`; ReLU: `1` where `0 < a < clip`, else `0`), so the pre-activation `z` never has to
//! be kept: one buffer per layer instead of two.

use rayon::prelude::*;

/// Values per parallel task in [`Activation::apply`]: large maps (a 28x28x32 map of a batch
/// of 128 holds 3.2 million values) are split over the threads, small ones stay on one.
const PARALLEL_CHUNK: usize = 1 << 15;

/// `exp(x) - 1` for `x <= 0`, branch-free so that the loop calling it vectorises: the usual
/// reduction `x = k ln 2 + r` with `|r| <= ln 2 / 2`, a degree-7 Taylor polynomial for
/// `expm1(r)` (truncation error below `1e-8`), and `2^k` built from its exponent bits. For
/// `|x| < ln 2 / 2` the result is the polynomial itself, so it keeps its relative accuracy
/// near zero; arguments below `-87` return `-1` to within `f32` rounding.
#[inline(always)]
fn exp_m1_nonpositive(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding and subtracting rounds to an integer
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.max(-87.0);
    let rounded = x * std::f32::consts::LOG2_E + ROUND;
    let k = rounded - ROUND;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    // Every coefficient a constant to multiply by: `r / 5040.0` was a vector division per
    // value (16 cycles a vector on AVX-512), half the loop's time.
    const C7: f32 = 1.0 / 5040.0;
    let p = r
        * (1.0
            + r * (1.0 / 2.0
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * C7))))));
    // k (an integer in -126..=0) sits in the low bits of `rounded`'s mantissa: reading it
    // there keeps the loop in vector lanes (`k as i32`, a saturating cast, does not vectorise).
    let scale = f32::from_bits(rounded.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23);
    scale * p + (scale - 1.0)
}

widest_vectors! {
    /// Clipped ELU over `values` in place (the loop vectorises; compiled for the baseline
    /// x86-64 it gets four lanes, with AVX-512 sixteen).
    fn elu_in_place(values: &mut [f32], clip: f32) => elu_loop
}

#[inline(always)]
fn elu_loop(values: &mut [f32], clip: f32) {
    for v in values.iter_mut() {
        let e = exp_m1_nonpositive(v.min(0.0));
        *v = if *v > 0.0 { *v } else { e }.clamp(-clip, clip);
    }
}

/// The activation applied after a layer's affine map.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    /// `a = z`.
    Linear,
    /// `a = clip(ELU(z), -clip, clip)` with ELU alpha 1.
    Elu {
        /// Outputs are clipped to `[-clip, clip]`.
        clip: f32,
    },
    /// `a = clip(z, 0, clip)`.
    Relu {
        /// Outputs are clipped to `[0, clip]`.
        clip: f32,
    },
}

/// `f` over `values`, in chunks split over the threads when there are many.
fn for_chunks(values: &mut [f32], f: impl Fn(&mut [f32]) + Sync + Send) {
    if values.len() >= 2 * PARALLEL_CHUNK {
        values.par_chunks_mut(PARALLEL_CHUNK).for_each(f);
    } else {
        f(values);
    }
}

/// `f(err, a)` over matching chunks of `err` and `a`, split over the threads when there are
/// many.
fn by_chunks(err: &mut [f32], a: &[f32], f: impl Fn(&mut [f32], &[f32]) + Sync + Send) {
    if err.len() >= 2 * PARALLEL_CHUNK {
        err.par_chunks_mut(PARALLEL_CHUNK).zip(a.par_chunks(PARALLEL_CHUNK)).for_each(|(e, a)| f(e, a));
    } else {
        f(err, a);
    }
}

/// `err[i] *= slope(a[i])` (the slope is branch-free, so the loop vectorises).
#[inline(always)]
fn scale_by(err: &mut [f32], a: &[f32], slope: impl Fn(f32) -> f32) {
    for (e, &a) in err.iter_mut().zip(a) {
        *e *= slope(a);
    }
}

widest_vectors! {
    /// `err *= ELU'` recovered from the output `a` (`a + 1` below zero, else 1), in the widest
    /// vector lanes the CPU has: every error of an ELU network passes through it.
    fn scale_by_elu_slope(err: &mut [f32], a: &[f32]) => elu_slope_values
}

#[inline(always)]
fn elu_slope_values(err: &mut [f32], a: &[f32]) {
    scale_by(err, a, |a| if a < 0.0 { a + 1.0 } else { 1.0 });
}

impl Activation {
    /// Apply the activation to pre-activations in place.
    pub fn apply(self, z: &mut [f32]) {
        match self {
            Activation::Linear => {}
            Activation::Elu { clip } => for_chunks(z, |chunk| elu_in_place(chunk, clip)),
            Activation::Relu { clip } => {
                for_chunks(z, |chunk| chunk.iter_mut().for_each(|v| *v = v.clamp(0.0, clip)))
            }
        }
    }

    /// Multiply `err` element-wise by the activation's derivative, recovered from the
    /// activation output `a` (same shape as `err`).
    pub fn scale_by_derivative(self, err: &mut [f32], a: &[f32]) {
        debug_assert_eq!(err.len(), a.len());
        match self {
            Activation::Linear => {}
            Activation::Elu { .. } => by_chunks(err, a, scale_by_elu_slope),
            // A clipped unit passes no error, like one below zero.
            Activation::Relu { clip } => {
                by_chunks(err, a, |e, a| scale_by(e, a, |a| if a > 0.0 && a < clip { 1.0 } else { 0.0 }))
            }
        }
    }

    /// The name in model files and pipeline YAML (`linear`, `elu`, `relu`).
    pub fn name(self) -> &'static str {
        match self {
            Activation::Linear => "linear",
            Activation::Elu { .. } => "elu",
            Activation::Relu { .. } => "relu",
        }
    }

    /// The clip of a clipped activation.
    pub fn clip(self) -> Option<f32> {
        match self {
            Activation::Linear => None,
            Activation::Elu { clip } | Activation::Relu { clip } => Some(clip),
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
    fn fast_exp_m1_matches_the_library_function() {
        let mut worst = 0.0f64;
        for i in 0..=200_000 {
            let x = -100.0 * i as f64 / 200_000.0;
            let got = exp_m1_nonpositive(x as f32) as f64;
            let want = (x as f32 as f64).exp_m1();
            // relative error near zero, absolute error elsewhere (|expm1| <= 1 here)
            let err = if want.abs() < 1e-3 {
                (got - want).abs() / want.abs().max(1e-30)
            } else {
                (got - want).abs()
            };
            worst = worst.max(err);
        }
        assert!(worst < 3e-7, "worst error {worst}");
        assert_eq!(exp_m1_nonpositive(0.0), 0.0);
        assert_eq!(exp_m1_nonpositive(-1000.0), -1.0);
    }

    #[test]
    fn parallel_and_serial_elu_agree() {
        let act = Activation::Elu { clip: 10.0 };
        let mut big: Vec<f32> = (0..3 * PARALLEL_CHUNK).map(|i| (i as f32 * 0.37).sin() * 12.0).collect();
        let want: Vec<f32> =
            big.iter().map(|&z| if z > 0.0 { z } else { z.exp_m1() }.clamp(-10.0, 10.0)).collect();
        act.apply(&mut big);
        for (g, w) in big.iter().zip(&want) {
            assert!((g - w).abs() < 1e-6, "{g} vs {w}");
        }
    }

    #[test]
    fn parallel_and_serial_derivatives_agree() {
        let act = Activation::Elu { clip: 10.0 };
        let n = 3 * PARALLEL_CHUNK + 5;
        let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos() * 3.0 - 1.0).collect();
        let mut e: Vec<f32> = (0..n).map(|i| (i as f32 * 0.07).sin()).collect();
        let want: Vec<f32> =
            e.iter().zip(&a).map(|(&e, &a)| if a < 0.0 { e * (a + 1.0) } else { e }).collect();
        act.scale_by_derivative(&mut e, &a);
        assert_eq!(e, want);
    }

    #[test]
    fn relu_clips_and_its_derivative_matches_finite_differences() {
        let act = Activation::Relu { clip: 6.0 };
        let f = |x: f32| x.clamp(0.0, 6.0);
        let zs = [-3.0f32, -0.1, 0.2, 4.0, 5.9, 7.0];
        let mut a = zs;
        act.apply(&mut a);
        assert_eq!(a, zs.map(f));
        let mut e = [1.0f32; 6];
        act.scale_by_derivative(&mut e, &a);
        for (&z, &g) in zs.iter().zip(&e) {
            let h = 1e-3f32;
            let fd = (f(z + h) - f(z - h)) / (2.0 * h);
            assert!((g - fd).abs() < 1e-2, "z={z}: {g} vs {fd}");
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
