//! Global average pooling: `B*H*W x C` maps to `B x C`, each channel averaged over a map's
//! positions.

use crate::error::Dim;
use crate::layer::{Combine, ErrorMode, Op, PerSample};
use crate::ledger::Buffer;
use crate::{Matrix, OpsError};
use rayon::prelude::*;
use std::any::Any;

/// Global average pooling of maps with `positions` positions and `channels` channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GlobalAvgPool {
    /// Positions per map (`H * W`).
    pub positions: usize,
    /// Channels.
    pub channels: usize,
}

impl Op for GlobalAvgPool {
    fn kind(&self) -> &'static str {
        "global_avg_pool"
    }

    fn clone_op(&self) -> Box<dyn Op> {
        Box::new(*self)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn input(&self, _: usize) -> PerSample {
        PerSample { rows: self.positions, cols: self.channels }
    }

    fn output(&self, _: usize) -> PerSample {
        PerSample { rows: 1, cols: self.channels }
    }

    fn forward(&self, input: &Matrix) -> Result<Matrix, OpsError> {
        global_avg_pool(input, self.positions)
    }

    fn input_error(&self, err: &Matrix, mode: ErrorMode) -> Result<Matrix, OpsError> {
        Ok(global_avg_pool_error(err, self.positions, mode.share(self.positions)))
    }

    fn error_in_place(
        &self,
        err: &Matrix,
        below: &mut Matrix,
        batch: usize,
        mode: ErrorMode,
        combine: &Combine<'_>,
    ) -> Result<(), OpsError> {
        let (p, c) = (self.positions, self.channels);
        let op = "pooling error propagation";
        OpsError::check(op, "error", &[Dim::Exact(batch), Dim::Exact(c)], &[err.rows(), err.cols()])?;
        let share = mode.share(p);
        let chunks = below.as_mut_slice().par_chunks_mut(p * c).zip(err.as_slice().par_chunks(c));
        chunks.enumerate().for_each(|(i, (a, e))| {
            let mut scratch = Buffer::from_vec(e.iter().map(|v| v * share).cycle().take(a.len()).collect());
            combine(i * p * c, &mut scratch, a);
        });
        Ok(())
    }

    fn error_scratch_bytes(&self, _: usize, threads: usize) -> usize {
        threads * self.positions * self.channels * size_of::<f32>()
    }
}

/// Global average pooling of `B*H*W x C` maps into `B x C`.
pub fn global_avg_pool(x: &Matrix, positions: usize) -> Result<Matrix, OpsError> {
    OpsError::check(
        "global average pooling",
        "input",
        &[Dim::MultipleOf(positions), Dim::Any],
        &[x.rows(), x.cols()],
    )?;
    let (batch, c) = (x.rows() / positions, x.cols());
    let mut out = Matrix::zeros(batch, c);
    let scale = 1.0 / positions as f32;
    for (dst, src) in out.as_mut_slice().chunks_exact_mut(c).zip(x.as_slice().chunks_exact(positions * c)) {
        for row in src.chunks_exact(c) {
            for (d, &v) in dst.iter_mut().zip(row) {
                *d += v;
            }
        }
        dst.iter_mut().for_each(|d| *d *= scale);
    }
    Ok(out)
}

/// The error reaching the pooled maps: each sample's error times `share` at every one of its
/// positions (`1 / positions` for the gradient; see [`ErrorMode`]).
pub fn global_avg_pool_error(e: &Matrix, positions: usize, share: f32) -> Matrix {
    let c = e.cols();
    let mut out = Matrix::zeros(e.rows() * positions, c);
    let scale = share;
    for (dst, src) in out.as_mut_slice().chunks_exact_mut(positions * c).zip(e.as_slice().chunks_exact(c)) {
        for row in dst.chunks_exact_mut(c) {
            for (d, &v) in row.iter_mut().zip(src) {
                *d = v * scale;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_averages_and_spreads_evenly() {
        let x = Matrix::from_vec(4, 2, vec![1.0, 10.0, 3.0, 20.0, 5.0, 30.0, 7.0, 40.0]);
        let pooled = global_avg_pool(&x, 2).expect("2 samples of 2 positions");
        assert_eq!(pooled.as_slice(), &[2.0, 15.0, 6.0, 35.0]);
        let spread = global_avg_pool_error(&Matrix::from_vec(2, 2, vec![2.0, 4.0, 6.0, 8.0]), 2, 0.5);
        assert_eq!(spread.as_slice(), &[1.0, 2.0, 1.0, 2.0, 3.0, 4.0, 3.0, 4.0]);
        // adjoint: <pool(x), y> = <x, spread(y)>
        let y = Matrix::from_vec(2, 2, vec![0.5, -1.0, 2.0, 0.25]);
        let dot =
            |a: &Matrix, b: &Matrix| a.as_slice().iter().zip(b.as_slice()).map(|(p, q)| p * q).sum::<f32>();
        assert!((dot(&pooled, &y) - dot(&x, &global_avg_pool_error(&y, 2, 0.5))).abs() < 1e-5);
        assert!(global_avg_pool(&x, 3).is_err());
        // PL's target spread is the pseudo-inverse: pooling it gives the error back
        let e = Matrix::from_vec(2, 2, vec![0.5, -1.0, 2.0, 0.25]);
        let back = global_avg_pool(&global_avg_pool_error(&e, 3, 1.0), 3).expect("whole maps");
        assert_eq!(back.as_slice(), e.as_slice());
    }
}
