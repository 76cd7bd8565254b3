//! Errors raised by numeric ops; each names the op, the layer and the shapes involved.

use thiserror::Error;

/// Everything that can go wrong inside a numeric op.
#[derive(Debug, Error)]
pub enum OpsError {
    /// Two operands of an op do not fit together.
    #[error("{op}: shape mismatch: {detail}")]
    Shape { op: &'static str, detail: String },
    /// A solve met NaN or infinity in its inputs; training has diverged or the data is bad.
    #[error(
        "{op}: {what} contains NaN or infinity (layer input {rows}x{cols}); the run has diverged: \
         lower `alpha`, raise `lambda`, or check the input data for NaN"
    )]
    NonFinite { op: &'static str, what: &'static str, rows: usize, cols: usize },
    /// The regularised system was not positive definite (only possible with lambda <= 0 or
    /// overflow).
    #[error(
        "{op}: the {dim}x{dim} system is not positive definite (pivot {pivot}); raise `lambda` \
         (it must be > 0)"
    )]
    NotPositiveDefinite { op: &'static str, dim: usize, pivot: usize },
}
