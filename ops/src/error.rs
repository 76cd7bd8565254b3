//! Errors raised by numeric ops; each names the op, the layer and the shapes involved.

use std::fmt;
use thiserror::Error;

/// One dimension of an expected shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    /// Exactly this many.
    Exact(usize),
    /// Any whole multiple of this (rows of a batch of maps: samples times positions).
    MultipleOf(usize),
    /// Any size (the batch's rows where only the columns matter).
    Any,
}

impl Dim {
    /// Whether `n` fits this dimension.
    pub fn admits(self, n: usize) -> bool {
        match self {
            Dim::Exact(d) => n == d,
            Dim::MultipleOf(d) => d > 0 && n.is_multiple_of(d),
            Dim::Any => true,
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Exact(n) => write!(f, "{n}"),
            Dim::MultipleOf(n) => write!(f, "(k*{n})"),
            Dim::Any => write!(f, "n"),
        }
    }
}

/// A shape as data: the dimensions of an operand, outermost first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape<D>(pub Vec<D>);

impl<D: fmt::Display> fmt::Display for Shape<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, "x")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// An operand whose shape is not the one its op needs.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{op}: shape mismatch: {what} is {actual}, expected {expected}")]
pub struct Mismatch {
    /// The op that checked.
    pub op: &'static str,
    /// The operand (`input`, `error`, `update`, ...).
    pub what: &'static str,
    /// What the op needs.
    pub expected: Shape<Dim>,
    /// What it got.
    pub actual: Shape<usize>,
}

/// Everything that can go wrong inside a numeric op.
#[derive(Debug, Error)]
pub enum OpsError {
    /// An operand of an op does not have the shape the op needs (boxed: errors stay small
    /// on the happy path's `Result`s).
    #[error("{0}")]
    Shape(Box<Mismatch>),
    /// A class label is not one of the output layer's units.
    #[error("{op}: label {label} but the output layer has {classes} units (labels 0..{classes})")]
    Label {
        /// The op that checked.
        op: &'static str,
        /// The label met.
        label: usize,
        /// Units of the output layer.
        classes: usize,
    },
    /// A structure (a mask's index list) is not well formed.
    #[error("{op}: {detail}")]
    Invalid {
        /// The op that checked.
        op: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// A solve met NaN or infinity in its inputs; training has diverged or the data is bad.
    #[error(
        "{op}: {what} contains NaN or infinity (layer input {rows}x{cols}); the run has diverged: \
         lower `alpha`, raise `lambda`, or check the input data for NaN"
    )]
    NonFinite {
        /// The operation.
        op: &'static str,
        /// The value that is not finite.
        what: &'static str,
        /// Rows of the layer input.
        rows: usize,
        /// Columns of the layer input.
        cols: usize,
    },
    /// The regularised system was not positive definite (only possible with lambda <= 0 or
    /// overflow).
    #[error(
        "{op}: the {dim}x{dim} system is not positive definite (pivot {pivot}); raise `lambda` \
         (it must be > 0)"
    )]
    NotPositiveDefinite {
        /// The operation.
        op: &'static str,
        /// Size of the system.
        dim: usize,
        /// The failing pivot.
        pivot: usize,
    },
    /// The workers of a distributed run could not exchange their sums (a process stopped,
    /// a connection dropped, or a worker did not answer in time).
    #[error("exchange between workers failed: {detail}")]
    Exchange {
        /// What failed, naming the process concerned.
        detail: String,
    },
}

impl OpsError {
    /// `Ok` when `actual` fits `expected` dimension by dimension, else a [`OpsError::Shape`].
    pub fn check(
        op: &'static str,
        what: &'static str,
        expected: &[Dim],
        actual: &[usize],
    ) -> Result<(), OpsError> {
        let fits = expected.len() == actual.len() && expected.iter().zip(actual).all(|(e, &a)| e.admits(a));
        if fits {
            return Ok(());
        }
        Err(OpsError::mismatch(op, what, expected, actual))
    }

    /// A [`OpsError::Shape`]: `what` of `op` is `actual`, not `expected`.
    pub fn mismatch(op: &'static str, what: &'static str, expected: &[Dim], actual: &[usize]) -> OpsError {
        let (expected, actual) = (Shape(expected.to_vec()), Shape(actual.to_vec()));
        OpsError::Shape(Box::new(Mismatch { op, what, expected, actual }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_errors_carry_and_print_both_shapes() {
        let err = OpsError::check("dense forward", "input", &[Dim::Any, Dim::Exact(4)], &[8, 3])
            .expect_err("3 != 4");
        assert_eq!(err.to_string(), "dense forward: shape mismatch: input is 8x3, expected nx4");
        let OpsError::Shape(m) = err else { panic!("a shape error") };
        assert_eq!((m.expected.0[1], m.actual.0[1]), (Dim::Exact(4), 3));
        assert!(OpsError::check("pool", "input", &[Dim::MultipleOf(49), Dim::Exact(2)], &[98, 2]).is_ok());
        let err = OpsError::check("pool", "input", &[Dim::MultipleOf(49), Dim::Exact(2)], &[50, 2]);
        assert!(err.expect_err("50 rows").to_string().contains("expected (k*49)x2"));
        assert!(!Dim::MultipleOf(0).admits(0));
    }
}
