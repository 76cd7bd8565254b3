//! [`Matrix`]: the tensor every op passes around: row-major `f32`, rows are samples.

use crate::ledger::Buffer;
use faer::{MatMut, MatRef};

/// A ledger-tracked, row-major `f32` matrix. Rows index samples (or positions), columns
/// index features, so a batch copied out of a dataset is already in place.
#[derive(Debug)]
pub struct Matrix {
    rows: usize,
    cols: usize,
    data: Buffer<f32>,
}

impl Clone for Matrix {
    /// A copy, counted in the ledger at the caller's line.
    #[track_caller]
    fn clone(&self) -> Self {
        Self { rows: self.rows, cols: self.cols, data: self.data.clone() }
    }
}

impl Matrix {
    /// A `rows x cols` matrix of zeros.
    #[track_caller]
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Self { rows, cols, data: Buffer::zeros(rows * cols) }
    }

    /// Wrap row-major values; `data.len()` must be `rows * cols`.
    ///
    /// # Panics
    /// If the length does not match the shape (a programming error, not a user input).
    #[track_caller]
    pub fn from_vec(rows: usize, cols: usize, data: Vec<f32>) -> Self {
        assert_eq!(data.len(), rows * cols, "Matrix::from_vec: {rows}x{cols} needs {} values", rows * cols);
        Self { rows, cols, data: Buffer::from_vec(data) }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The values, row after row.
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }

    /// The values, row after row, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// The same values seen as `rows x cols` (row-major order is kept, nothing moves): how a
    /// batch of NHWC maps becomes one flat row per sample and back.
    ///
    /// # Panics
    /// If `rows * cols` differs from the number of values (a programming error).
    pub fn reshape(&mut self, rows: usize, cols: usize) {
        assert_eq!(
            rows * cols,
            self.rows * self.cols,
            "reshape {}x{} to {rows}x{cols}",
            self.rows,
            self.cols
        );
        self.rows = rows;
        self.cols = cols;
    }

    /// A faer view of the matrix.
    pub fn view(&self) -> MatRef<'_, f32> {
        MatRef::from_row_major_slice(&self.data, self.rows, self.cols)
    }

    /// A mutable faer view of the matrix.
    pub fn view_mut(&mut self) -> MatMut<'_, f32> {
        let (rows, cols) = (self.rows, self.cols);
        MatMut::from_row_major_slice_mut(&mut self.data, rows, cols)
    }

    /// Bytes held by the values.
    pub fn bytes(&self) -> usize {
        self.data.len() * size_of::<f32>()
    }
}
