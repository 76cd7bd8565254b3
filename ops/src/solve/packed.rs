//! Symmetric positive definite systems in half the memory of a square matrix.
//!
//! The lower triangle of a `dim x dim` matrix is cut into blocks `[[A11, .], [A21, A22]]`,
//! `A11` of `k = ceil(dim / 2)` rows and `A22` of `r = dim - k`, and held in one column-major
//! `ld x (k + 1)` array, `ld` being `dim` rounded up to 16 values so that every column starts
//! on a cache line (LAPACK's "rectangular full packed" idea): `A11` and `A21` fill the first
//! `k` columns as they would a square matrix, and `A22`'s lower triangle lies transposed in
//! the upper corner this leaves free, one column to the right. Entry `(i, j)` of the lower
//! triangle is thus `data[i + j ld]` for `j < k` and `data[(j - k) + (i - k + 1) ld]` for
//! `j >= k`.
//!
//! Factor and solve are the blocked Cholesky over the three blocks (two half-size
//! factorisations, one triangular solve, one symmetric product), about as fast as the
//! whole-matrix factorisation; the memory is about `dim^2 / 2` values instead of `dim^2`. A
//! square system is the largest buffer of a PL step (the MNIST layers' 512 x 512 kernels), so
//! this takes about a quarter off the MLP's peak workspace.
//!
//! `A11` and `A22` share the array's first `k + 1` columns without sharing an entry: every
//! view here is read or written through its lower triangle only.

use super::{by_column_shares, factor, lower_product};
use crate::ledger::Buffer;
use crate::{OpsError, par};
use faer::linalg::matmul::matmul;
use faer::linalg::triangular_solve::{solve_lower_triangular_in_place, solve_upper_triangular_in_place};
use faer::traits::ComplexField;
use faer::{Accum, MatMut, MatRef, Par};

/// The lower triangle of a symmetric `dim x dim` matrix in packed storage.
#[derive(Debug)]
pub(super) struct Packed<T> {
    data: Buffer<T>,
    dim: usize,
}

/// The three blocks of a [`Packed`] matrix as views (see the module): `a11` and `a22` are
/// lower-triangular, `a21` rectangular.
pub(super) struct Blocks<'a, T> {
    pub a11: MatMut<'a, T>,
    pub a21: MatMut<'a, T>,
    pub a22: MatMut<'a, T>,
}

/// Read-only [`Blocks`].
struct BlocksRef<'a, T> {
    a11: MatRef<'a, T>,
    a21: MatRef<'a, T>,
    a22: MatRef<'a, T>,
}

impl<T> Packed<T>
where
    T: ComplexField + Copy + Default + Send + Sync + std::ops::AddAssign,
{
    /// A zero matrix of `dim` rows.
    #[track_caller]
    pub fn zeros(dim: usize) -> Self {
        Self { data: Buffer::zeros(Self::len(dim)), dim }
    }

    /// Values held for a matrix of `dim` rows.
    pub fn len(dim: usize) -> usize {
        Self::leading(dim) * (dim.div_ceil(2) + 1)
    }

    /// The array's leading dimension: `dim` rounded up to 16 values.
    fn leading(dim: usize) -> usize {
        dim.next_multiple_of(16)
    }

    /// Rows of `A11` and of `A22`.
    pub fn split(&self) -> (usize, usize) {
        let k = self.dim.div_ceil(2);
        (k, self.dim - k)
    }

    /// The blocks, to be written through their lower triangles (`a21` whole).
    pub fn blocks_mut(&mut self) -> Blocks<'_, T> {
        let (k, r) = self.split();
        let ld = Self::leading(self.dim);
        let base = self.data.as_mut_ptr();
        let stride = ld as isize;
        // SAFETY: the array is `ld x (k + 1)`, column-major. `a11` is rows 0..k of columns
        // 0..k, `a21` rows k..dim of them, `a22` the transpose of rows 0..r of columns
        // 1..=r (r <= k): all inside the buffer, which `&mut self` borrows for the views'
        // lifetime. `a11` and `a22` interleave in memory, but `a11`'s lower triangle lies on
        // or below the array's diagonal and `a22`'s lower triangle strictly above it, and
        // these views are only ever accessed through their lower triangles (module docs).
        unsafe {
            Blocks {
                a11: MatMut::from_raw_parts_mut(base, k, k, 1, stride),
                a21: MatMut::from_raw_parts_mut(base.wrapping_add(k), r, k, 1, stride),
                a22: MatMut::from_raw_parts_mut(base.wrapping_add(ld), r, r, stride, 1),
            }
        }
    }

    fn blocks(&self) -> BlocksRef<'_, T> {
        let (k, r) = self.split();
        let ld = Self::leading(self.dim);
        let base = self.data.as_ptr();
        let stride = ld as isize;
        // SAFETY: as in `blocks_mut`, read-only.
        unsafe {
            BlocksRef {
                a11: MatRef::from_raw_parts(base, k, k, 1, stride),
                a21: MatRef::from_raw_parts(base.wrapping_add(k), r, k, 1, stride),
                a22: MatRef::from_raw_parts(base.wrapping_add(ld), r, r, stride, 1),
            }
        }
    }

    /// Set the matrix to `S S^T` for `S = [top; bottom]` (`top` of `k` rows; `bottom` of up
    /// to `r`: rows past it are left as they are). The three blocks' products run as two
    /// tasks, `A11` and `A22` beside `A21`, each on half the threads: on two cores this is
    /// faster than one parallel product of the whole triangle (1.0 against 1.1 ms for the
    /// MNIST 512 x 512 kernel), whose triangle splits unevenly between threads.
    pub fn set_gram(&mut self, top: MatRef<'_, T>, bottom: MatRef<'_, T>) {
        let b = bottom.nrows();
        let inner = match crate::threads() {
            0..=2 => Par::Seq,
            t => Par::rayon(t / 2),
        };
        let Blocks { a11, a21, a22 } = self.blocks_mut();
        let (a21, a22) = (a21.subrows_mut(0, b), a22.submatrix_mut(0, 0, b, b));
        let one = T::one_impl();
        rayon::join(
            || {
                lower_product(a11, Accum::Replace, top, top.transpose(), one, inner);
                lower_product(a22, Accum::Replace, bottom, bottom.transpose(), one, inner);
            },
            || matmul(a21, Accum::Replace, bottom, top.transpose(), one, inner),
        );
    }

    /// Add `value` to every entry of the lower triangle, a contiguous run at a time: array
    /// column `c` holds `A11`/`A21`'s column `c` from row `c` down and `A22`'s row `c - 1`
    /// above row `c`.
    pub fn add_to_lower(&mut self, value: T) {
        let (k, r) = self.split();
        let (ld, dim) = (Self::leading(self.dim), self.dim);
        for (c, column) in self.data.chunks_exact_mut(ld).enumerate() {
            if c < k {
                column[c..dim].iter_mut().for_each(|v| *v += value);
            }
            if (1..=r).contains(&c) {
                column[..c].iter_mut().for_each(|v| *v += value);
            }
        }
    }

    /// Add `value` to every diagonal entry.
    pub fn add_diagonal(&mut self, value: T) {
        let Blocks { mut a11, mut a22, .. } = self.blocks_mut();
        for i in 0..a11.nrows() {
            a11[(i, i)] += value;
        }
        for i in 0..a22.nrows() {
            a22[(i, i)] += value;
        }
    }

    /// Replace the matrix by its Cholesky factor `L` (`A = L L^T`).
    pub fn factor(&mut self) -> Result<(), OpsError> {
        let (k, _) = self.split();
        let dim = self.dim;
        let par = if dim >= parallel_from::<T>() { par() } else { Par::Seq };
        let Blocks { mut a11, a21, a22 } = self.blocks_mut();
        factor_lower(a11.as_mut(), par).map_err(|e| at_pivot(e, dim, 0))?;
        eliminate(a11.as_ref(), a21, a22, par, 0).map_err(|e| at_pivot(e, dim, k))
    }

    /// Solve `L L^T Z = B` in place over `b` (`dim` rows) for the factor [`Packed::factor`]
    /// left. The columns are independent, so each thread solves a contiguous share of them on
    /// its own (as `super::solve_factored` does).
    pub fn solve_in_place(&self, b: MatMut<'_, T>) {
        by_column_shares(b, &|share: MatMut<'_, T>| self.solve_columns(share));
    }

    /// Forward then backward substitution over the blocks, on one thread.
    fn solve_columns(&self, b: MatMut<'_, T>) {
        let (k, _) = self.split();
        let BlocksRef { a11, a21, a22 } = self.blocks();
        let (mut b1, mut b2) = b.split_at_row_mut(k);
        let one = T::one_impl();
        solve_lower_triangular_in_place(a11, b1.as_mut(), Par::Seq);
        matmul(b2.as_mut(), Accum::Add, a21, b1.as_ref(), -one, Par::Seq);
        solve_lower_triangular_in_place(a22, b2.as_mut(), Par::Seq);
        solve_upper_triangular_in_place(a22.transpose(), b2.as_mut(), Par::Seq);
        matmul(b1.as_mut(), Accum::Add, a21.transpose(), b2.as_ref(), -one, Par::Seq);
        solve_upper_triangular_in_place(a11.transpose(), b1, Par::Seq);
    }
}

impl Packed<f32> {
    /// The sum of the diagonal entries, in `f64`.
    pub fn diagonal_sum(&self) -> f64 {
        let BlocksRef { a11, a22, .. } = self.blocks();
        let sum = |a: MatRef<'_, f32>| (0..a.nrows()).map(|i| f64::from(a[(i, i)])).sum::<f64>();
        sum(a11) + sum(a22)
    }
}

/// Largest block factored by faer directly (through a copy, see [`factor_lower`]).
const LEAF: usize = 64;

/// Rows from which the factorisation's products run on every thread (as `super::factor`).
fn parallel_from<T>() -> usize {
    if size_of::<T>() <= 4 { 900 } else { 700 }
}

/// Cholesky-factor the lower triangle of `a` in place without writing above its diagonal:
/// faer's factorisation writes there (it takes the strict upper triangle as its own), which
/// in a packed matrix is the other block. Recursive halving, with faer's triangular solve
/// and symmetric product between the halves and its factorisation on blocks of [`LEAF`]
/// rows copied to a square of their own.
fn factor_lower<T>(a: MatMut<'_, T>, par: Par) -> Result<(), OpsError>
where
    T: ComplexField + Copy + Default,
{
    let n = a.nrows();
    if n <= LEAF {
        return factor_leaf(a);
    }
    let h = n / 2;
    let (mut a11, _, a21, a22) = a.split_at_mut(h, h);
    factor_lower(a11.as_mut(), par)?;
    eliminate(a11.as_ref(), a21, a22, par, h)
}

/// With `l11` factored: `L21 = A21 L11^-T`, then the factor of `A22 - L21 L21^T` in place
/// (a failed pivot is reported `offset` rows further).
fn eliminate<T>(
    l11: MatRef<'_, T>,
    mut a21: MatMut<'_, T>,
    mut a22: MatMut<'_, T>,
    par: Par,
    offset: usize,
) -> Result<(), OpsError>
where
    T: ComplexField + Copy + Default,
{
    solve_lower_triangular_in_place(l11, a21.as_mut().transpose_mut(), par);
    lower_product(a22.as_mut(), Accum::Add, a21.as_ref(), a21.as_ref().transpose(), -T::one_impl(), par);
    factor_lower(a22, par).map_err(|e| at_pivot_offset(e, offset))
}

/// faer's factorisation of a small block, on a copy of its lower triangle (on the stack:
/// 16 KiB in `f32`, no allocation inside the step).
fn factor_leaf<T: ComplexField + Copy + Default>(mut a: MatMut<'_, T>) -> Result<(), OpsError> {
    let n = a.nrows();
    let mut square = [T::default(); LEAF * LEAF];
    let mut s = MatMut::from_column_major_slice_mut(&mut square[..n * n], n, n);
    for j in 0..n {
        for i in j..n {
            s[(i, j)] = a[(i, j)];
        }
    }
    factor(s.as_mut())?;
    for j in 0..n {
        for i in j..n {
            a[(i, j)] = s[(i, j)];
        }
    }
    Ok(())
}

/// A failed pivot of a trailing block, counted from the start of the matrix it belongs to.
fn at_pivot_offset(err: OpsError, offset: usize) -> OpsError {
    match err {
        OpsError::NotPositiveDefinite { op, dim, pivot } => {
            OpsError::NotPositiveDefinite { op, dim, pivot: pivot + offset }
        }
        other => other,
    }
}

/// A failed factorisation of a block starting at row `offset`, reported for the whole matrix.
fn at_pivot(err: OpsError, dim: usize, offset: usize) -> OpsError {
    match err {
        OpsError::NotPositiveDefinite { op, pivot, .. } => {
            OpsError::NotPositiveDefinite { op, dim, pivot: pivot + offset }
        }
        other => other,
    }
}

#[cfg(test)]
impl<T: ComplexField + Copy + Default + Send + Sync + std::ops::AddAssign> Packed<T> {
    /// Apply `f(i, j, value)` to every entry of the lower triangle.
    pub fn for_each_lower(&mut self, mut f: impl FnMut(usize, usize, &mut T)) {
        let (k, _) = self.split();
        let Blocks { mut a11, mut a21, mut a22 } = self.blocks_mut();
        for j in 0..k {
            for i in j..k {
                f(i, j, &mut a11[(i, j)]);
            }
            for i in 0..a21.nrows() {
                f(k + i, j, &mut a21[(i, j)]);
            }
        }
        for j in 0..a22.ncols() {
            for i in j..a22.nrows() {
                f(k + i, k + j, &mut a22[(i, j)]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use rand_distr::{Distribution, StandardNormal};

    /// A random SPD matrix `M M^T / cols + I`, as plain rows in `f64`.
    fn spd(dim: usize, seed: u64) -> Vec<Vec<f64>> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let cols = dim + 3;
        let m: Vec<f64> = (0..dim * cols).map(|_| StandardNormal.sample(&mut rng)).collect();
        (0..dim)
            .map(|i| {
                (0..dim)
                    .map(|j| {
                        let dot: f64 = (0..cols).map(|c| m[i * cols + c] * m[j * cols + c]).sum();
                        dot / cols as f64 + if i == j { 1.0 } else { 0.0 }
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn entries_land_where_the_layout_says_and_nowhere_else() {
        for dim in [1, 2, 3, 7, 8, 16, 33] {
            let mut p = Packed::<f64>::zeros(dim);
            let ld = dim.next_multiple_of(16);
            let k = dim.div_ceil(2);
            assert_eq!(p.data.len(), ld * (k + 1));
            p.for_each_lower(|i, j, v| *v = (i * 100 + j + 1) as f64);
            let mut seen = vec![false; p.data.len()];
            for j in 0..dim {
                for i in j..dim {
                    let at = if j < k { i + j * ld } else { (j - k) + (i - k + 1) * ld };
                    assert_eq!(p.data[at], (i * 100 + j + 1) as f64, "dim {dim} entry ({i}, {j})");
                    assert!(!seen[at], "dim {dim}: entry ({i}, {j}) shares a place");
                    seen[at] = true;
                }
            }
            assert_eq!(seen.iter().filter(|&&s| s).count(), dim * (dim + 1) / 2);
        }
    }

    #[test]
    fn adding_to_the_lower_triangle_touches_its_entries_only() {
        for dim in [1, 2, 3, 7, 8, 16, 33] {
            let mut p = Packed::<f64>::zeros(dim);
            p.for_each_lower(|i, j, v| *v = (i * 100 + j) as f64);
            p.add_to_lower(0.5);
            let mut seen = 0;
            p.for_each_lower(|i, j, v| {
                assert_eq!(*v, (i * 100 + j) as f64 + 0.5, "dim {dim} ({i}, {j})");
                seen += 1;
            });
            assert_eq!(seen, dim * (dim + 1) / 2);
            let total: f64 = p.data.iter().sum();
            let want: f64 = (0..dim).flat_map(|j| (j..dim).map(move |i| (i * 100 + j) as f64 + 0.5)).sum();
            assert_eq!(total, want, "dim {dim}: nothing outside the triangle changed");
        }
    }

    /// Factor and solve against the system itself: `A z = b` checked with plain loops.
    #[test]
    fn solve_satisfies_the_system() {
        for dim in [1, 2, 5, 64, 129, 300] {
            let a = spd(dim, dim as u64);
            let mut p = Packed::<f64>::zeros(dim);
            p.for_each_lower(|i, j, v| *v = a[i][j]);
            p.factor().expect("SPD");
            let m = 40;
            let b: Vec<f64> = (0..dim * m).map(|t| ((t * 7919) % 23) as f64 - 11.0).collect();
            let mut z = b.clone();
            p.solve_in_place(MatMut::from_column_major_slice_mut(&mut z, dim, m));
            for c in 0..m {
                for i in 0..dim {
                    let lhs: f64 = (0..dim).map(|j| a[i][j] * z[c * dim + j]).sum();
                    let want = b[c * dim + i];
                    assert!((lhs - want).abs() < 1e-9 * (1.0 + want.abs()), "dim {dim} ({i}, {c})");
                }
            }
        }
    }

    #[test]
    fn a_matrix_that_is_not_positive_definite_names_its_pivot() {
        for (dim, bad) in [(6, 1), (6, 4), (5, 3), (300, 40), (300, 151), (300, 299)] {
            let mut p = Packed::<f64>::zeros(dim);
            p.for_each_lower(|i, j, v| *v = if i == j { if i == bad { -1.0 } else { 1.0 } } else { 0.0 });
            match p.factor() {
                Err(OpsError::NotPositiveDefinite { dim: d, pivot, .. }) => {
                    assert_eq!((d, pivot), (dim, bad));
                }
                other => panic!("dim {dim}: {other:?}"),
            }
        }
    }
}
