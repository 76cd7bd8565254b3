//! Concatenation of a layer's input with the output of an earlier layer (a skip connection),
//! feature by feature: flat vectors side by side, or maps' channels at each position.
//!
//! A chain with skips carries it as a parameter-free layer: the op places its input in its
//! own columns of a wider result and leaves the skip's columns zero; the network adds the
//! skip source's output there ([`Op::skip_columns`]), as it adds a residual. On the way
//! back the error is split: the input's columns go down the chain ([`Op::input_error`]),
//! the skip's columns to the earlier layer ([`crate::layer::Layer::skip_error`]). Both
//! PL's target change and backprop's gradient split the same way, since concatenation is
//! a coordinate projection.

use crate::error::Dim;
use crate::layer::{Combine, ErrorMode, Op, PerSample};
use crate::ledger::Buffer;
use crate::{Matrix, OpsError};
use rayon::prelude::*;
use std::any::Any;

/// Rows of input propagated per block of [`Op::error_in_place`] (each block's scratch is
/// at most this many values, 128 KiB).
const BLOCK_VALUES: usize = 32 * 1024;

/// `[input | skip]` (or `[skip | input]`) at every row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Concat {
    /// Rows per sample (1 for flat vectors, `H * W` for maps).
    pub positions: usize,
    /// Columns of the input (the chain's previous layer).
    pub input: usize,
    /// Columns of the skip source.
    pub skip: usize,
    /// The skip's columns come first.
    pub skip_first: bool,
}

impl Concat {
    /// Width of the result.
    pub fn width(&self) -> usize {
        self.input + self.skip
    }

    /// First column of the input in the result.
    fn input_at(&self) -> usize {
        if self.skip_first { self.skip } else { 0 }
    }

    /// Rows per block of the in-place error propagation.
    fn block_rows(&self) -> usize {
        (BLOCK_VALUES / self.input.max(1)).max(1)
    }

    fn check_error(&self, err: &Matrix) -> Result<(), OpsError> {
        let op = "concat error propagation";
        OpsError::check(
            op,
            "error",
            &[Dim::MultipleOf(self.positions), Dim::Exact(self.width())],
            &[err.rows(), err.cols()],
        )
    }
}

impl Op for Concat {
    fn kind(&self) -> &'static str {
        "concat"
    }

    fn clone_op(&self) -> Box<dyn Op> {
        Box::new(*self)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn input(&self, _: usize) -> PerSample {
        PerSample { rows: self.positions, cols: self.input }
    }

    fn output(&self, _: usize) -> PerSample {
        PerSample { rows: self.positions, cols: self.width() }
    }

    fn skip_columns(&self) -> Option<(usize, usize)> {
        Some((if self.skip_first { 0 } else { self.input }, self.skip))
    }

    fn forward(&self, input: &Matrix) -> Result<Matrix, OpsError> {
        let (k, w, at) = (self.input, self.width(), self.input_at());
        OpsError::check(
            "concat",
            "input",
            &[Dim::MultipleOf(self.positions), Dim::Exact(k)],
            &[input.rows(), input.cols()],
        )?;
        let mut out = Matrix::zeros(input.rows(), w);
        for (dst, src) in out.as_mut_slice().chunks_exact_mut(w).zip(input.as_slice().chunks_exact(k.max(1)))
        {
            dst[at..at + k].copy_from_slice(src);
        }
        Ok(out)
    }

    fn input_error(&self, err: &Matrix, _mode: ErrorMode) -> Result<Matrix, OpsError> {
        self.check_error(err)?;
        Ok(columns(err, self.input_at(), self.input))
    }

    fn error_in_place(
        &self,
        err: &Matrix,
        below: &mut Matrix,
        batch: usize,
        _mode: ErrorMode,
        combine: &Combine<'_>,
    ) -> Result<(), OpsError> {
        self.check_error(err)?;
        let (k, w, at) = (self.input, self.width(), self.input_at());
        let rows = batch * self.positions;
        OpsError::check(
            "concat error propagation",
            "error",
            &[Dim::Exact(rows), Dim::Any],
            &[err.rows(), err.cols()],
        )?;
        let block = self.block_rows();
        let blocks = below.as_mut_slice().par_chunks_mut(block * k.max(1));
        blocks.zip(err.as_slice().par_chunks(block * w)).enumerate().for_each(|(i, (a, e))| {
            let mut scratch = Buffer::zeros(a.len());
            for (s, row) in scratch.chunks_exact_mut(k.max(1)).zip(e.chunks_exact(w)) {
                s.copy_from_slice(&row[at..at + k]);
            }
            combine(i * block * k, &mut scratch, a);
        });
        Ok(())
    }

    fn error_scratch_bytes(&self, rows: usize, threads: usize) -> usize {
        threads.min(rows.div_ceil(self.block_rows()).max(1)) * self.block_rows().min(rows) * self.input * 4
    }
}

/// Columns `first..first + count` of every row of `m`, as a new matrix.
pub(crate) fn columns(m: &Matrix, first: usize, count: usize) -> Matrix {
    let w = m.cols().max(1);
    let mut out = Matrix::zeros(m.rows(), count);
    for (dst, src) in out.as_mut_slice().chunks_exact_mut(count.max(1)).zip(m.as_slice().chunks_exact(w)) {
        dst.copy_from_slice(&src[first..first + count]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_places_the_input_and_the_error_splits_back() {
        // Two samples of two positions (maps), 2 input channels, 1 skip channel, skip first.
        let cat = Concat { positions: 2, input: 2, skip: 1, skip_first: true };
        let x = Matrix::from_vec(4, 2, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
        let out = cat.forward(&x).expect("shapes fit");
        assert_eq!((out.rows(), out.cols()), (4, 3));
        assert_eq!(out.as_slice(), &[0.0, 1.0, 2.0, 0.0, 3.0, 4.0, 0.0, 5.0, 6.0, 0.0, 7.0, 8.0]);
        assert_eq!(cat.skip_columns(), Some((0, 1)));
        let err = Matrix::from_vec(4, 3, (0..12).map(|v| v as f32).collect());
        let down = cat.input_error(&err, ErrorMode::Target).expect("shapes fit");
        assert_eq!(down.as_slice(), &[1.0, 2.0, 4.0, 5.0, 7.0, 8.0, 10.0, 11.0]);
        assert!(cat.forward(&Matrix::zeros(4, 3)).is_err());
        assert!(cat.input_error(&Matrix::zeros(4, 2), ErrorMode::Target).is_err());
    }

    #[test]
    fn in_place_error_equals_the_allocating_one_over_several_blocks() {
        // 700 input columns: 46 rows per block, so 200 rows span five blocks.
        let cat = Concat { positions: 1, input: 700, skip: 3, skip_first: false };
        let err = Matrix::from_vec(200, 703, (0..200 * 703).map(|v| (v % 97) as f32 - 40.0).collect());
        let want = cat.input_error(&err, ErrorMode::Gradient).expect("shapes fit");
        let mut below = Matrix::from_vec(200, 700, vec![0.5; 200 * 700]);
        // The combine a network would pass, for a linear activation below: the error as it is.
        let combine = |_: usize, s: &mut [f32], a: &mut [f32]| a.copy_from_slice(s);
        cat.error_in_place(&err, &mut below, 200, ErrorMode::Gradient, &combine).expect("shapes fit");
        assert_eq!(below.as_slice(), want.as_slice());
        assert_eq!(columns(&err, 700, 3).as_slice()[..3], err.as_slice()[700..703]);
    }
}
