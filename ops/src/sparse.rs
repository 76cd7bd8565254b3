//! Sparse connectivity initialisation (SPEC section 3, paper Alg. 2): which inputs each output
//! neuron connects to, and the initial weights on those connections.
//!
//! - The first layer connects each output neuron `j` to the `k = max(1, floor(tau d_in))`
//!   inputs most correlated (in absolute Pearson correlation over the training set) with input
//!   `j`, plus input `j` itself; neurons `j >= d_in` get `k` random inputs. Ties (for example
//!   constant features, whose correlation is 0) are broken at random.
//! - Deeper layers use a Watts-Strogatz ring: neuron `j` connects to the `K + 3` inputs
//!   `c - floor(K/2) - 1 ..= c + floor(K/2) + 1` (mod `d_in`) around `c = floor(j d_in / d_out)`,
//!   `K = max(2, min(8, floor(min(d_in, d_out) / 4)))`, and each connection is rewired with
//!   probability `p` to a uniformly random input not yet connected to `j`.
//! - Weights are `N(0, 2 / (d_in + d_out))` on the mask, divided per column by the square
//!   root of its connection count, orthogonalised by QR, and masked again.
//!
//! All randomness comes from the caller's RNG, so one seed gives bit-identical masks and weights.

use crate::error::Dim;
use crate::ledger::Buffer;
use crate::{Matrix, OpsError};
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatMut, MatRef, Par};
use rand::seq::SliceRandom;
use rand::seq::index::sample;
use rand::{Rng, RngExt};
use rand_distr::{Distribution, StandardNormal};

/// Which weights of a `rows x cols` (inputs x outputs) matrix exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mask {
    rows: usize,
    cols: usize,
    /// Sorted flat row-major indices of the connections.
    indices: Buffer<u32>,
}

impl Mask {
    /// A mask from each output's list of inputs (`inputs[j]` for output `j`).
    ///
    /// # Panics
    /// If an input index is out of range or the matrix has more than `u32::MAX` entries.
    pub fn from_columns(rows: usize, inputs: &[Vec<usize>]) -> Self {
        let cols = inputs.len();
        assert!(rows * cols <= u32::MAX as usize, "mask of {rows}x{cols} is too large for u32 indices");
        let mut idx: Vec<u32> = inputs
            .iter()
            .enumerate()
            .flat_map(|(j, ins)| {
                ins.iter().map(move |&i| {
                    assert!(i < rows, "input {i} out of range for {rows} rows");
                    (i * cols + j) as u32
                })
            })
            .collect();
        idx.sort_unstable();
        idx.dedup();
        Self { rows, cols, indices: Buffer::from_vec(idx) }
    }

    /// A mask from sorted, distinct flat row-major indices into a `rows x cols` matrix (as
    /// [`Mask::indices`] gives them), e.g. read back from a model file.
    pub fn from_indices(rows: usize, cols: usize, indices: Vec<u32>) -> Result<Self, OpsError> {
        let size = rows.checked_mul(cols).filter(|&s| s <= u32::MAX as usize + 1);
        let bad = |detail: String| OpsError::Invalid { op: "sparse mask", detail };
        let Some(size) = size else {
            return Err(bad(format!("a {rows}x{cols} mask is too large for u32 indices")));
        };
        if let Some(w) = indices.windows(2).position(|w| w[0] >= w[1]) {
            return Err(bad(format!("indices are not sorted and distinct at position {}", w + 1)));
        }
        if let Some(&last) = indices.last().filter(|&&k| k as usize >= size) {
            return Err(bad(format!("index {last} is outside the {rows}x{cols} matrix")));
        }
        Ok(Self { rows, cols, indices: Buffer::from_vec(indices) })
    }

    /// Inputs (rows).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Outputs (columns).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The connections as sorted flat row-major indices into the weight matrix.
    pub fn indices(&self) -> &[u32] {
        &self.indices
    }

    /// Number of connections.
    pub fn nnz(&self) -> usize {
        self.indices.len()
    }

    /// Fraction of the matrix that is connected.
    pub fn density(&self) -> f64 {
        self.nnz() as f64 / (self.rows * self.cols).max(1) as f64
    }

    /// Whether input `i` feeds output `j`.
    pub fn contains(&self, i: usize, j: usize) -> bool {
        self.indices.binary_search(&((i * self.cols + j) as u32)).is_ok()
    }

    /// Number of inputs of each output.
    pub fn column_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.cols];
        for &k in self.indices.iter() {
            counts[k as usize % self.cols] += 1;
        }
        counts
    }

    /// Zero every weight outside the mask.
    pub fn apply(&self, w: &mut Matrix) {
        self.apply_rows(w, 0, self.rows);
    }

    /// Zero the weights outside the mask in rows `row0..row0 + count` only.
    pub fn apply_rows(&self, w: &mut Matrix, row0: usize, count: usize) {
        let (start, stop) = (row0 * self.cols, ((row0 + count) * self.cols).min(w.as_slice().len()));
        let data = w.as_mut_slice();
        let idx = &self.indices[self.indices.partition_point(|&k| (k as usize) < start)..];
        let mut next = start;
        for &k in idx.iter().take_while(|&&k| (k as usize) < stop) {
            data[next..k as usize].iter_mut().for_each(|v| *v = 0.0);
            next = k as usize + 1;
        }
        data[next..stop].iter_mut().for_each(|v| *v = 0.0);
    }

    /// Bytes held by the mask.
    pub fn bytes(&self) -> usize {
        self.indices.len() * size_of::<u32>()
    }
}

/// Streaming accumulation of the statistics behind the Pearson correlation of `d` features:
/// one pass over the training set, `d x d` sums of products in `f64`.
#[derive(Debug)]
pub struct CorrelationPass {
    n: usize,
    d: usize,
    sum: Vec<f64>,
    cross: Buffer<f64>,
    scratch: Buffer<f64>,
}

impl CorrelationPass {
    /// Rows of `f64` converted at a time.
    const ROWS: usize = 128;

    /// A pass over examples of `d` features.
    pub fn new(d: usize) -> Self {
        Self {
            n: 0,
            d,
            sum: vec![0.0; d],
            cross: Buffer::zeros(d * d),
            scratch: Buffer::zeros(Self::ROWS * d),
        }
    }

    /// Add a batch of examples (`rows x d`).
    pub fn add(&mut self, x: &Matrix) -> Result<(), OpsError> {
        OpsError::check("correlation pass", "batch", &[Dim::Any, Dim::Exact(self.d)], &[x.rows(), x.cols()])?;
        let d = self.d;
        for r0 in (0..x.rows()).step_by(Self::ROWS) {
            let h = (x.rows() - r0).min(Self::ROWS);
            for (i, dst) in self.scratch.chunks_exact_mut(d).take(h).enumerate() {
                for ((o, &v), s) in dst.iter_mut().zip(x.row(r0 + i)).zip(self.sum.iter_mut()) {
                    *o = v as f64;
                    *s += v as f64;
                }
            }
            let xv = MatRef::from_row_major_slice(&self.scratch[..h * d], h, d);
            let cv = MatMut::from_column_major_slice_mut(&mut self.cross, d, d);
            matmul(cv, Accum::Add, xv.transpose(), xv, 1.0, Par::Seq);
            self.n += h;
        }
        Ok(())
    }

    /// `|C(j, i)|` for every input `i`: the absolute Pearson correlation of feature `j` with
    /// each feature. Constant features have correlation 0.
    pub fn abs_correlation_row(&self, j: usize) -> Vec<f64> {
        let n = self.n.max(1) as f64;
        let mean = |i: usize| self.sum[i] / n;
        let var = |i: usize| (self.cross[i * self.d + i] / n - mean(i).powi(2)).max(0.0);
        let (mj, vj) = (mean(j), var(j));
        (0..self.d)
            .map(|i| {
                let denom = (vj * var(i)).sqrt();
                if denom <= 1e-12 {
                    0.0
                } else {
                    ((self.cross[j * self.d + i] / n - mj * mean(i)) / denom).abs()
                }
            })
            .collect()
    }
}

/// The first layer's mask from input correlations (paper eq. 10).
pub fn correlation_mask<R: Rng + ?Sized>(
    corr: &CorrelationPass,
    d_out: usize,
    tau: f64,
    rng: &mut R,
) -> Mask {
    let d_in = corr.d;
    let k = ((tau * d_in as f64).floor() as usize).clamp(1, d_in.max(1));
    let inputs: Vec<Vec<usize>> = (0..d_out)
        .map(|j| {
            if j < d_in {
                let c = corr.abs_correlation_row(j);
                let mut order: Vec<usize> = (0..d_in).collect();
                order.shuffle(rng); // random tie-breaks
                order.sort_by(|&a, &b| c[b].total_cmp(&c[a]));
                let mut chosen: Vec<usize> = order[..k].to_vec();
                if !chosen.contains(&j) {
                    chosen.push(j);
                }
                chosen
            } else {
                sample(rng, d_in, k).into_vec()
            }
        })
        .collect();
    Mask::from_columns(d_in, &inputs)
}

/// Ring size `K` of the small-world mask for a `d_in -> d_out` layer.
pub fn ring_k(d_in: usize, d_out: usize) -> usize {
    (d_in.min(d_out) / 4).clamp(2, 8)
}

/// A deeper layer's mask: a Watts-Strogatz ring spread over the inputs, rewired with
/// probability `p` (paper eq. 11-12 with SPEC section 3's centre).
pub fn small_world_mask<R: Rng + ?Sized>(d_in: usize, d_out: usize, p: f64, rng: &mut R) -> Mask {
    let half = ring_k(d_in, d_out) / 2;
    let inputs: Vec<Vec<usize>> = (0..d_out)
        .map(|j| {
            let c = j * d_in / d_out.max(1);
            let mut ins: Vec<usize> = Vec::new();
            for t in 0..2 * half + 3 {
                let i = (c + d_in * 2 + t - half - 1) % d_in;
                if !ins.contains(&i) {
                    ins.push(i);
                }
            }
            for slot in 0..ins.len() {
                if rng.random::<f64>() < p && ins.len() < d_in {
                    let free: Vec<usize> = (0..d_in).filter(|i| !ins.contains(i)).collect();
                    ins[slot] = free[rng.random_range(0..free.len())];
                }
            }
            ins
        })
        .collect();
    Mask::from_columns(d_in, &inputs)
}

/// Initial weights on `mask` (paper eq. 13-15): masked Xavier normal, column normalisation by
/// the square root of the connection count, QR orthogonalisation, mask applied again.
pub fn masked_weights<R: Rng + ?Sized>(mask: &Mask, rng: &mut R) -> Matrix {
    let (d_in, d_out) = (mask.rows(), mask.cols());
    let std = (2.0 / (d_in + d_out) as f64).sqrt();
    let counts = mask.column_counts();
    let mut w = Mat::<f64>::zeros(d_in, d_out);
    for &k in mask.indices() {
        let (i, j) = (k as usize / d_out, k as usize % d_out);
        let z: f64 = StandardNormal.sample(rng);
        w[(i, j)] = z * std / (counts[j].max(1) as f64).sqrt();
    }
    if d_in.min(d_out) > 1 {
        w = if d_in >= d_out {
            w.qr().compute_thin_Q()
        } else {
            w.transpose().to_owned().qr().compute_thin_Q().transpose().to_owned()
        };
    }
    let mut out =
        Matrix::from_vec(d_in, d_out, (0..d_in * d_out).map(|k| w[(k / d_out, k % d_out)] as f32).collect());
    mask.apply(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn mask_queries_and_apply() {
        let m = Mask::from_columns(3, &[vec![0, 2], vec![1], vec![2, 2]]);
        assert_eq!((m.nnz(), m.column_counts()), (4, vec![2, 1, 1]));
        assert!(m.contains(2, 0) && m.contains(1, 1) && !m.contains(0, 1));
        let mut w = Matrix::from_vec(3, 3, vec![1.0; 9]);
        m.apply(&mut w);
        assert_eq!(w.as_slice(), &[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0]);
    }

    /// Features 0 and 1 are equal, 2 is their negative plus noise-free offset, 3 is unrelated,
    /// 4 is constant: the correlations are known exactly.
    #[test]
    fn correlation_top_k_on_known_data() {
        let rows: Vec<[f32; 5]> = (0..40)
            .map(|i| {
                let a = (i % 7) as f32;
                let b = ((i * 13) % 5) as f32 - 2.0;
                [a, a, 3.0 - 2.0 * a, b, 4.0]
            })
            .collect();
        let x = Matrix::from_vec(40, 5, rows.iter().flatten().copied().collect());
        let mut pass = CorrelationPass::new(5);
        pass.add(&x).expect("shape");
        let c0 = pass.abs_correlation_row(0);
        assert!((c0[1] - 1.0).abs() < 1e-12 && (c0[2] - 1.0).abs() < 1e-12 && c0[4] == 0.0, "{c0:?}");
        let plain = |i: usize, j: usize| {
            let (xi, xj): (Vec<f64>, Vec<f64>) = rows.iter().map(|r| (r[i] as f64, r[j] as f64)).unzip();
            let (mi, mj) = (xi.iter().sum::<f64>() / 40.0, xj.iter().sum::<f64>() / 40.0);
            let cov: f64 = xi.iter().zip(&xj).map(|(a, b)| (a - mi) * (b - mj)).sum();
            let vi: f64 = xi.iter().map(|a| (a - mi).powi(2)).sum();
            let vj: f64 = xj.iter().map(|b| (b - mj).powi(2)).sum();
            (cov / (vi * vj).sqrt()).abs()
        };
        assert!((c0[3] - plain(0, 3)).abs() < 1e-9);
        // tau 0.4 of 5 inputs: k = 2; output 3's top-2 are itself and one of the others;
        // outputs 0..2 connect to {0, 1, 2} (the perfectly correlated group).
        let mask = correlation_mask(&pass, 6, 0.4, &mut ChaCha8Rng::seed_from_u64(1));
        for j in 0..3 {
            let ins: Vec<usize> = (0..5).filter(|&i| mask.contains(i, j)).collect();
            assert!(
                ins.iter().all(|i| *i < 3) && ins.contains(&j) && (2..=3).contains(&ins.len()),
                "{j}: {ins:?}"
            );
        }
        assert!(mask.contains(3, 3));
        assert_eq!(mask.column_counts()[5], 2, "j >= d_in gets k random inputs");
    }

    #[test]
    fn ring_neighbourhood_without_rewiring() {
        // 128 -> 10: K = 2, so 5 inputs per output, centred at floor(j * 128 / 10).
        let mask = small_world_mask(128, 10, 0.0, &mut ChaCha8Rng::seed_from_u64(3));
        assert_eq!(mask.column_counts(), vec![5; 10]);
        for j in 0..10 {
            let c = j * 128 / 10;
            for t in 0..5 {
                assert!(mask.contains((c + 128 + t - 2) % 128, j), "output {j} misses offset {t}");
            }
        }
        // every input of a narrowing layer is reached by the spread centres
        let wide = small_world_mask(40, 10, 0.0, &mut ChaCha8Rng::seed_from_u64(3));
        assert_eq!(ring_k(40, 10), 2);
        assert!((0..40).all(|i| (0..10).any(|j| wide.contains(i, j))));
    }

    #[test]
    fn rewiring_statistics_match_p() {
        // Over many seeds, the share of connections that left the ring is close to p.
        let (d_in, d_out, p) = (64, 64, 0.1);
        let (mut moved, mut total) = (0usize, 0usize);
        for seed in 0..200 {
            let mask = small_world_mask(d_in, d_out, p, &mut ChaCha8Rng::seed_from_u64(seed));
            let counts = mask.column_counts();
            assert!(
                counts.iter().all(|&c| c == 11),
                "K = 8 gives 11 connections per output, kept by rewiring"
            );
            for j in 0..d_out {
                for i in 0..d_in {
                    if mask.contains(i, j) {
                        total += 1;
                        let off = (i + d_in - j) % d_in;
                        if !(off <= 5 || off >= d_in - 5) {
                            moved += 1;
                        }
                    }
                }
            }
        }
        let share = moved as f64 / total as f64;
        // a connection moves to an input not connected to j, which is almost never inside the
        // ring (only slots vacated earlier for the same neuron), so the share is close to p
        assert!((share - p).abs() < 0.01, "rewired share {share}");
    }

    #[test]
    fn weights_stay_on_the_mask_and_are_reproducible() {
        let mask = small_world_mask(50, 20, 0.1, &mut ChaCha8Rng::seed_from_u64(9));
        let a = masked_weights(&mask, &mut ChaCha8Rng::seed_from_u64(4));
        let b = masked_weights(&mask, &mut ChaCha8Rng::seed_from_u64(4));
        assert_eq!(a.as_slice(), b.as_slice(), "bit-identical for one seed");
        for i in 0..50 {
            for j in 0..20 {
                assert_eq!(a.row(i)[j] != 0.0, mask.contains(i, j), "({i}, {j})");
            }
        }
        let m2 = small_world_mask(50, 20, 0.1, &mut ChaCha8Rng::seed_from_u64(9));
        assert_eq!(mask, m2);
    }
}
