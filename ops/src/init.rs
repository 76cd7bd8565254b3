//! Seeded weight initialisation. All randomness of a run flows from one seed, so the same
//! seed gives bit-identical weights.

use crate::Matrix;
use rand_distr::{Distribution, StandardNormal};

/// Xavier (Glorot) normal weights, `N(0, 2 / (inputs + outputs))`, shaped `inputs x outputs`.
pub fn xavier_normal<R: rand::Rng + ?Sized>(inputs: usize, outputs: usize, rng: &mut R) -> Matrix {
    let std = (2.0 / (inputs + outputs) as f64).sqrt();
    let values = (0..inputs * outputs)
        .map(|_| {
            let z: f64 = StandardNormal.sample(rng);
            (z * std) as f32
        })
        .collect();
    Matrix::from_vec(inputs, outputs, values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn same_seed_same_weights_and_right_scale() {
        let a = xavier_normal(300, 200, &mut ChaCha8Rng::seed_from_u64(42));
        let b = xavier_normal(300, 200, &mut ChaCha8Rng::seed_from_u64(42));
        assert_eq!(a.as_slice(), b.as_slice());
        let n = a.as_slice().len() as f64;
        let mean = a.as_slice().iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = a.as_slice().iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        let want = 2.0 / 500.0;
        assert!(mean.abs() < 0.002, "mean {mean}");
        assert!((var / want - 1.0).abs() < 0.05, "variance {var} vs {want}");
    }
}
