//! Muon's orthogonalised update (Jordan et al. 2024, "Muon: an optimizer for hidden layers in
//! neural networks"; Liu et al. 2025, "Muon is scalable for LLM training"), for the backprop
//! trainer's [`Optimizer::Muon`](crate::backprop::Optimizer::Muon).
//!
//! Per weight matrix `W` (`d x m`) and step, with gradient `G`:
//! - momentum `M <- mu M + G`; the direction is `G + mu M` (Nesterov) or `M`;
//! - `O = NS5(direction)`: the quintic Newton-Schulz iteration of Jordan et al. on the
//!   direction scaled to unit Frobenius norm, `X <- a X + b (X X^T) X + c (X X^T)^2 X` with
//!   `(a, b, c) = (3.4445, -4.7750, 2.0315)`, five times; it drives every singular value of
//!   `X` towards 1 (into about [0.7, 1.2]) without computing them;
//! - `W <- W - lr (0.2 sqrt(max(d, m)) O + wd W)` (Liu et al., eq. 4: the factor gives the
//!   update the root-mean-square of an AdamW update, so AdamW's learning rate and weight
//!   decay carry over).
//!
//! The product `X X^T` is formed on the smaller side `s = min(d, m)` (orthogonalisation
//! commutes with transposition), and `X` is updated in place a block at a time: the
//! workspace beside the direction is two `s x s` matrices and one block.

use crate::ledger::Buffer;
use crate::{Matrix, par};
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef};

/// The quintic's coefficients (Jordan et al. 2024).
const ABC: (f32, f32, f32) = (3.4445, -4.7750, 2.0315);

/// Values per block of the in-place update (256 KiB).
const BLOCK_VALUES: usize = 1 << 16;

/// Liu et al.'s factor matching an AdamW update's root-mean-square.
pub const RMS_MATCH: f32 = 0.2;

/// Bytes of workspace [`orthogonalize`] allocates for a `d x m` matrix (beside the matrix).
pub fn workspace_bytes(d: usize, m: usize) -> usize {
    let s = d.min(m);
    let long = d.max(m);
    (2 * s * s + block_len(s, long) * s) * size_of::<f32>()
}

/// Lines (rows of a tall matrix, columns of a wide one) per block.
fn block_len(s: usize, long: usize) -> usize {
    (BLOCK_VALUES / s.max(1)).clamp(1, long.max(1))
}

/// Replace `x` (`d x m`, row-major) by `NS5(x / ||x||_F)` with `steps` iterations.
pub fn orthogonalize(x: &mut Matrix, steps: usize) {
    let (d, m) = (x.rows(), x.cols());
    let norm = x.as_slice().iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>().sqrt();
    let scale = (1.0 / (norm + 1e-7)) as f32;
    x.as_mut_slice().iter_mut().for_each(|v| *v *= scale);
    let (s, tall) = (d.min(m), d >= m);
    if s == 0 {
        return;
    }
    let (a, b, c) = ABC;
    let mut gram = Buffer::<f32>::zeros(s * s);
    let mut poly = Buffer::<f32>::zeros(s * s);
    let lines = block_len(s, d.max(m));
    let mut block = Buffer::<f32>::zeros(lines * s);
    for _ in 0..steps {
        // A = X^T X (tall) or X X^T (wide) and B = b A + c A^2, both symmetric s x s: each
        // product forms its lower triangle only (half the flops), mirrored before use.
        let xv = x.view();
        let mut av = MatMut::from_column_major_slice_mut(&mut gram, s, s);
        let (l, r) = if tall { (xv.transpose(), xv) } else { (xv, xv.transpose()) };
        lower(av.as_mut(), l, r, 1.0);
        mirror_lower(av.as_mut());
        let ar = MatRef::from_column_major_slice(&gram, s, s);
        let mut bv = MatMut::from_column_major_slice_mut(&mut poly, s, s);
        lower(bv.as_mut(), ar, ar, c);
        mirror_lower(bv.as_mut());
        for (p, &g) in poly.iter_mut().zip(gram.iter()) {
            *p += b * g;
        }
        let br = MatRef::from_column_major_slice(&poly, s, s);
        // X <- a X + X B (tall: each block of rows on its own) or a X + B X (wide: columns).
        for l0 in (0..d.max(m)).step_by(lines) {
            let h = lines.min(d.max(m) - l0);
            if tall {
                let mut tv = MatMut::from_row_major_slice_mut(&mut block[..h * s], h, s);
                matmul(tv.as_mut(), Accum::Replace, x.view().subrows(l0, h), br, 1.0, par());
                let rows = &mut x.as_mut_slice()[l0 * m..(l0 + h) * m];
                rows.iter_mut().zip(&block[..h * s]).for_each(|(v, &t)| *v = a * *v + t);
            } else {
                let mut tv = MatMut::from_row_major_slice_mut(&mut block[..s * h], s, h);
                matmul(tv.as_mut(), Accum::Replace, br, x.view().subcols(l0, h), 1.0, par());
                for (row, t) in x.as_mut_slice().chunks_exact_mut(m).zip(block[..s * h].chunks_exact(h)) {
                    row[l0..l0 + h].iter_mut().zip(t).for_each(|(v, &t)| *v = a * *v + t);
                }
            }
        }
    }
}

/// The lower triangle of `alpha * l * r` into `dst`.
fn lower(dst: MatMut<'_, f32>, l: MatRef<'_, f32>, r: MatRef<'_, f32>, alpha: f32) {
    use faer::linalg::matmul::triangular::{BlockStructure, matmul as triangular};
    let rect = BlockStructure::Rectangular;
    triangular(dst, BlockStructure::TriangularLower, Accum::Replace, l, rect, r, rect, alpha, par());
}

/// Copy the lower triangle of a square matrix onto its upper one.
fn mirror_lower(mut a: MatMut<'_, f32>) {
    for j in 0..a.ncols() {
        for i in 0..j {
            a[(i, j)] = a[(j, i)];
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The same iteration in `f64` with plain loops, on the full (not the smaller) Gram.
    pub(crate) fn naive(x: &[f64], d: usize, m: usize, steps: usize) -> Vec<f64> {
        let norm = x.iter().map(|v| v * v).sum::<f64>().sqrt() + 1e-7;
        let mut x: Vec<f64> = x.iter().map(|v| v / norm).collect();
        let (a, b, c) = (3.4445, -4.7750, 2.0315);
        for _ in 0..steps {
            // A = X X^T (d x d), B = b A + c A A, X = a X + B X
            let mut am = vec![0.0; d * d];
            for i in 0..d {
                for j in 0..d {
                    am[i * d + j] = (0..m).map(|k| x[i * m + k] * x[j * m + k]).sum();
                }
            }
            let mut bm = vec![0.0; d * d];
            for i in 0..d {
                for j in 0..d {
                    let aa: f64 = (0..d).map(|k| am[i * d + k] * am[k * d + j]).sum();
                    bm[i * d + j] = b * am[i * d + j] + c * aa;
                }
            }
            let mut next = vec![0.0; d * m];
            for i in 0..d {
                for j in 0..m {
                    next[i * m + j] =
                        a * x[i * m + j] + (0..d).map(|k| bm[i * d + k] * x[k * m + j]).sum::<f64>();
                }
            }
            x = next;
        }
        x
    }

    #[test]
    fn matches_the_plain_iteration_on_tall_and_wide_matrices() {
        // Tall and wide shapes, and a tall and a wide one longer than a block holds.
        for (d, m) in [(7, 3), (3, 7), (5, 5), (300, 260), (260, 300)] {
            let values: Vec<f32> = (0..d * m).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.05).collect();
            let mut x = Matrix::from_vec(d, m, values.clone());
            orthogonalize(&mut x, 5);
            let want = naive(&values.iter().map(|&v| v as f64).collect::<Vec<_>>(), d, m, 5);
            let worst =
                x.as_slice().iter().zip(&want).map(|(&g, w)| (g as f64 - w).abs()).fold(0.0, f64::max);
            assert!(worst < 2e-4, "{d}x{m}: differs by {worst}");
        }
    }

    #[test]
    fn singular_values_end_near_one() {
        // A 6 x 4 matrix with orthogonal columns of very different lengths: afterwards every
        // column has a length in the quintic's band around 1 and they stay orthogonal.
        let (d, m) = (6, 4);
        let lengths = [10.0f32, 1.0, 0.1, 0.02];
        let mut x = Matrix::zeros(d, m);
        for (j, &l) in lengths.iter().enumerate() {
            x.as_mut_slice()[j * m + j] = l;
        }
        orthogonalize(&mut x, 5);
        for j in 0..m {
            let len: f32 = (0..d).map(|i| x.row(i)[j].powi(2)).sum::<f32>().sqrt();
            assert!((0.6..1.25).contains(&len), "column {j}: length {len}");
            for k in 0..j {
                let dot: f32 = (0..d).map(|i| x.row(i)[j] * x.row(i)[k]).sum();
                assert!(dot.abs() < 1e-5, "columns {j} and {k}: {dot}");
            }
        }
    }

    #[test]
    fn zero_stays_zero() {
        let mut x = Matrix::zeros(4, 3);
        orthogonalize(&mut x, 5);
        assert!(x.as_slice().iter().all(|&v| v == 0.0));
    }
}
