//! `bf16` storage for optimiser state: the upper 16 bits of an `f32` (same exponent range,
//! 8 significant bits), rounded to nearest even. Half the bytes of `f32` for buffers such as
//! PL's momentum, whose values are averages of noisy updates and need no more precision; the
//! arithmetic stays `f32`, only the stored values are rounded.

use crate::Matrix;
use crate::ledger::Buffer;

/// The `bf16` nearest to `x` (ties to even); NaN stays NaN, infinities stay infinite, and
/// values beyond the largest finite `bf16` round to infinity, as IEEE rounding does.
#[inline]
pub fn from_f32(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        // Keep the sign, force a quiet NaN (the payload's upper bits may all be zero).
        return ((bits >> 16) as u16) | 0x0040;
    }
    let round = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(round) >> 16) as u16
}

/// The `f32` holding `bf16` value `h` exactly.
#[inline]
pub fn to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

widest_vectors! {
    /// `v <- bf16(mu v + (1 - mu) g)` over a run of values, and, given weights, `w += v` (the
    /// rounded value), in the widest vectors the CPU has: compiled for the baseline x86-64
    /// the loop gets four lanes, and it was a tenth of an MNIST step. Every lane does the
    /// scalar arithmetic (no fused multiply-add), so the bits do not depend on the CPU.
    pub fn momentum_run(v: &mut [u16], g: &[f32], mu: f32, w: Option<&mut [f32]>) => momentum_run_loop
}

#[inline(always)]
fn momentum_run_loop(v: &mut [u16], g: &[f32], mu: f32, w: Option<&mut [f32]>) {
    match w {
        Some(w) => {
            for ((w, v), &g) in w.iter_mut().zip(v.iter_mut()).zip(g) {
                *v = from_f32(mu * to_f32(*v) + (1.0 - mu) * g);
                *w += to_f32(*v);
            }
        }
        None => {
            for (v, &g) in v.iter_mut().zip(g) {
                *v = from_f32(mu * to_f32(*v) + (1.0 - mu) * g);
            }
        }
    }
}

/// A ledger-tracked, row-major matrix of `bf16` values.
#[derive(Debug, Clone)]
pub struct Bf16Matrix {
    rows: usize,
    cols: usize,
    data: Buffer<u16>,
}

impl Bf16Matrix {
    /// A `rows x cols` matrix of zeros.
    #[track_caller]
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Self { rows, cols, data: Buffer::zeros(rows * cols) }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The stored values, row after row.
    pub fn as_slice(&self) -> &[u16] {
        &self.data
    }

    /// The stored values, row after row, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [u16] {
        &mut self.data
    }

    /// Bytes held by the values.
    pub fn bytes(&self) -> usize {
        self.data.len() * size_of::<u16>()
    }

    /// The values widened to `f32` (exact), as a new matrix.
    #[track_caller]
    pub fn to_matrix(&self) -> Matrix {
        Matrix::from_vec(self.rows, self.cols, self.data.iter().map(|&h| to_f32(h)).collect())
    }

    /// Store `m`'s values, rounded; `m` must have this matrix's shape.
    ///
    /// # Panics
    /// If the shapes differ (a programming error).
    pub fn store(&mut self, m: &Matrix) {
        assert_eq!((m.rows(), m.cols()), (self.rows, self.cols), "Bf16Matrix::store: shapes differ");
        for (h, &x) in self.data.iter_mut().zip(m.as_slice()) {
            *h = from_f32(x);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversion_matches_known_bit_patterns() {
        // Exact values: 1, -2, 0.5, 0 and -0 keep their upper halves.
        for (x, h) in [(1.0f32, 0x3f80u16), (-2.0, 0xc000), (0.5, 0x3f00), (0.0, 0x0000), (-0.0, 0x8000)] {
            assert_eq!(from_f32(x), h, "{x}");
            assert_eq!(to_f32(h).to_bits(), x.to_bits(), "{x}");
        }
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even one (1).
        assert_eq!(from_f32(1.0 + 2f32.powi(-8)), 0x3f80);
        // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6: up to the even one.
        assert_eq!(from_f32(1.0 + 3.0 * 2f32.powi(-8)), 0x3f82);
        // Just above halfway rounds up.
        assert_eq!(from_f32(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert_eq!(from_f32(f32::INFINITY), 0x7f80);
        assert_eq!(from_f32(f32::NEG_INFINITY), 0xff80);
        assert_eq!(from_f32(f32::MAX), 0x7f80, "beyond the largest bf16: infinity");
        assert!(to_f32(from_f32(f32::NAN)).is_nan());
        // A NaN whose payload lives only in the lower bits stays a NaN.
        assert!(to_f32(from_f32(f32::from_bits(0x7f80_0001))).is_nan());
        // Subnormals round like any other value.
        assert_eq!(from_f32(f32::from_bits(0x0000_8000)), 0x0000, "halfway to the smallest, even: 0");
        assert_eq!(from_f32(f32::from_bits(0x0001_8000)), 0x0002);
    }

    /// The vectorised momentum run gives, value by value, the bits of the scalar recurrence
    /// written out here, over ties, subnormals, infinities and NaN, at every length around
    /// the vector widths.
    #[test]
    fn momentum_run_is_the_scalar_recurrence() {
        let specials = [
            1.0 + 2f32.powi(-8),
            f32::from_bits(0x0001_8000),
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -0.0,
            3.0e38,
        ];
        for len in [0, 1, 15, 16, 17, 33, 100] {
            let g: Vec<f32> =
                (0..len).map(|i| specials.get(i % 11).copied().unwrap_or(i as f32 * 0.37 - 5.0)).collect();
            let v0: Vec<u16> = (0..len).map(|i| from_f32(0.5 - i as f32 * 0.01)).collect();
            let w0: Vec<f32> = (0..len).map(|i| i as f32 * 0.1).collect();
            let (mu, mut v, mut w) = (0.9f32, v0.clone(), w0.clone());
            momentum_run(&mut v, &g, mu, Some(&mut w));
            let mut deferred = v0.clone();
            momentum_run(&mut deferred, &g, mu, None);
            for i in 0..len {
                let expect = from_f32(mu * to_f32(v0[i]) + (1.0 - mu) * g[i]);
                let same = |a: u16| a == expect || (to_f32(a).is_nan() && to_f32(expect).is_nan());
                assert!(same(v[i]) && same(deferred[i]), "len {len}, value {i}: {} vs {expect}", v[i]);
                let want = w0[i] + to_f32(expect);
                assert!(
                    w[i].to_bits() == want.to_bits() || (w[i].is_nan() && want.is_nan()),
                    "len {len}, weight {i}"
                );
            }
        }
    }

    #[test]
    fn rounding_error_is_within_half_an_ulp() {
        // Against an independent rounding: the nearest of the two bf16 neighbours, by f64
        // distance, over values spread across the exponent range.
        let mut x = 1.0e-30f32;
        while x < 1.0e30 {
            for v in [x, -x, x * 1.37, x * 1.999] {
                let lo = f32::from_bits(v.to_bits() & 0xffff_0000);
                let hi = f32::from_bits((v.to_bits() & 0xffff_0000) + 0x1_0000);
                let (dl, dh) = ((v as f64 - lo as f64).abs(), (hi as f64 - v as f64).abs());
                let got = to_f32(from_f32(v));
                let best = if dl <= dh { dl } else { dh };
                assert_eq!((got as f64 - v as f64).abs(), best, "{v:e}");
            }
            x *= 3.3;
        }
    }

    #[test]
    fn a_matrix_round_trips_through_storage() {
        let m = Matrix::from_vec(2, 3, vec![1.0, -0.5, 3.0e-3, 1.0e20, 0.0, 7.25]);
        let mut b = Bf16Matrix::zeros(2, 3);
        b.store(&m);
        assert_eq!(b.bytes(), 12);
        let back = b.to_matrix();
        for (&x, &y) in m.as_slice().iter().zip(back.as_slice()) {
            assert!((x - y).abs() <= x.abs() * 2f32.powi(-8), "{x} {y}");
        }
        assert_eq!(back.as_slice()[0], 1.0);
        assert_eq!(back.as_slice()[5], 7.25);
    }
}
