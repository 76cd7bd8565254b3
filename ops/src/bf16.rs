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
