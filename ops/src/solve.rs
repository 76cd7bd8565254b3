//! The Prospective Learning solve (SPEC section 2, step 4):
//! `dTheta = -alpha (X_aug^T X_aug + lambda I)^-1 X_aug^T e` with `X_aug = [X, 1]`.
//!
//! Two exact routes give the same `dTheta`:
//! - primal: factor the `(d+1) x (d+1)` Gram `X_aug^T X_aug + lambda I`;
//! - dual: factor the `n x n` kernel `X_aug X_aug^T + lambda I` and map back with
//!   `X_aug^T (X_aug X_aug^T + lambda I)^-1 e`.
//!
//! [`SolvePath::Auto`] takes the smaller system. Both accumulate in `f64` (with the paper's
//! `lambda = 1e-4` the system is far too ill-conditioned for `f32`), factor by Cholesky (never an
//! explicit inverse), compute only the lower triangle of the symmetric product, and solve in
//! place. All workspace is ledger-tracked and released before the function returns.

use crate::ledger::Buffer;
use crate::{Matrix, OpsError, par};
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt;
use faer::linalg::matmul::matmul;
use faer::linalg::matmul::triangular::{self, BlockStructure};
use faer::{Accum, MatMut, MatRef};

/// How `lambda` is interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RidgeScale {
    /// `lambda` is added to the Gram diagonal as it is (the paper's literal setting).
    Absolute,
    /// `lambda` is multiplied by the mean diagonal of `X_aug^T X_aug`, i.e. by
    /// `||X_aug||_F^2 / (d+1)`, so the regularisation follows the scale of the data and of
    /// the batch size. Both solve routes see the same value.
    Relative,
}

/// Which system to factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SolvePath {
    /// The smaller of the two.
    Auto,
    /// The `(d+1) x (d+1)` Gram.
    Primal,
    /// The `n x n` kernel.
    Dual,
}

/// Settings of one regularised least-squares update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RidgeConfig {
    /// Step size `alpha`.
    pub alpha: f64,
    /// Ridge `lambda`, read according to `scale`.
    pub lambda: f64,
    /// How `lambda` is read.
    pub scale: RidgeScale,
    /// Which system to factor.
    pub path: SolvePath,
}

/// The result of one solve: the update of a dense layer's weights and bias.
#[derive(Debug)]
pub struct RidgeUpdate {
    /// `d x m`, to be added to the weights.
    pub dw: Matrix,
    /// `1 x m`, to be added to the bias.
    pub db: Matrix,
    /// The `lambda` actually added to the diagonal.
    pub lambda_used: f64,
    /// `true` when the `n x n` system was factored.
    pub dual: bool,
}

/// Solve for the update of a layer with input `x` (`n x d`) and error `e` (`n x m`).
pub fn ridge_update(x: &Matrix, e: &Matrix, cfg: &RidgeConfig) -> Result<RidgeUpdate, OpsError> {
    const OP: &str = "PL solve";
    let (n, d, m) = (x.rows(), x.cols(), e.cols());
    if e.rows() != n {
        return Err(OpsError::Shape {
            op: OP,
            detail: format!(
                "input has {n} rows but the error has {} ({}x{m})",
                e.rows(),
                e.rows()
            ),
        });
    }
    let da = d + 1;

    // Augmented input [X, 1] in f64, row-major, and its squared Frobenius norm (= trace of the Gram).
    let mut xa = Buffer::<f64>::zeros(n * da);
    let mut trace = n as f64;
    for (src, dst) in x
        .as_slice()
        .chunks_exact(d.max(1))
        .zip(xa.chunks_exact_mut(da))
    {
        for (o, &v) in dst.iter_mut().zip(src) {
            let v = v as f64;
            *o = v;
            trace += v * v;
        }
        dst[d] = 1.0;
    }
    if !trace.is_finite() {
        return Err(OpsError::NonFinite {
            op: OP,
            what: "the layer input",
            rows: n,
            cols: d,
        });
    }
    let mut e64 = Buffer::<f64>::from_vec(e.as_slice().iter().map(|&v| v as f64).collect());
    if !e64.iter().all(|v| v.is_finite()) {
        return Err(OpsError::NonFinite {
            op: OP,
            what: "the error",
            rows: n,
            cols: d,
        });
    }
    let lambda = match cfg.scale {
        RidgeScale::Absolute => cfg.lambda,
        RidgeScale::Relative => cfg.lambda * trace / da as f64,
    };
    let dual = match cfg.path {
        SolvePath::Auto => n < da,
        SolvePath::Primal => false,
        SolvePath::Dual => true,
    };

    let xa_v = MatRef::from_row_major_slice(&xa, n, da);
    // theta: (d+1) x m, column-major.
    let mut theta = Buffer::<f64>::zeros(da * m);
    if dual {
        let mut k = Buffer::<f64>::zeros(n * n);
        let mut kv = MatMut::from_column_major_slice_mut(&mut k, n, n);
        lower_gram(kv.as_mut(), xa_v, xa_v.transpose(), lambda);
        let e_v = MatMut::from_row_major_slice_mut(&mut e64, n, m);
        factor_and_solve(kv, e_v, OP)?;
        let z = MatRef::from_row_major_slice(&e64, n, m);
        let tv = MatMut::from_column_major_slice_mut(&mut theta, da, m);
        matmul(tv, Accum::Replace, xa_v.transpose(), z, 1.0, par());
    } else {
        let mut g = Buffer::<f64>::zeros(da * da);
        let mut gv = MatMut::from_column_major_slice_mut(&mut g, da, da);
        lower_gram(gv.as_mut(), xa_v.transpose(), xa_v, lambda);
        let mut tv = MatMut::from_column_major_slice_mut(&mut theta, da, m);
        let e_v = MatRef::from_row_major_slice(&e64, n, m);
        matmul(
            tv.as_mut(),
            Accum::Replace,
            xa_v.transpose(),
            e_v,
            1.0,
            par(),
        );
        drop(e64);
        factor_and_solve(gv, tv, OP)?;
    }
    drop(xa);

    let mut dw = Matrix::zeros(d, m);
    let mut db = Matrix::zeros(1, m);
    let scale = -cfg.alpha;
    for c in 0..m {
        let col = &theta[c * da..(c + 1) * da];
        for (j, &v) in col[..d].iter().enumerate() {
            dw.as_mut_slice()[j * m + c] = (scale * v) as f32;
        }
        db.as_mut_slice()[c] = (scale * col[d]) as f32;
    }
    if !dw
        .as_slice()
        .iter()
        .chain(db.as_slice())
        .all(|v| v.is_finite())
    {
        return Err(OpsError::NonFinite {
            op: OP,
            what: "the solved update",
            rows: n,
            cols: d,
        });
    }
    Ok(RidgeUpdate {
        dw,
        db,
        lambda_used: lambda,
        dual,
    })
}

/// Lower triangle of `a * b` (a symmetric product) plus `lambda` on the diagonal.
fn lower_gram(dst: MatMut<'_, f64>, a: MatRef<'_, f64>, b: MatRef<'_, f64>, lambda: f64) {
    let mut dst = dst;
    triangular::matmul(
        dst.as_mut(),
        BlockStructure::TriangularLower,
        Accum::Replace,
        a,
        BlockStructure::Rectangular,
        b,
        BlockStructure::Rectangular,
        1.0,
        par(),
    );
    for i in 0..dst.nrows() {
        dst[(i, i)] += lambda;
    }
}

/// Cholesky-factor the SPD matrix `a` (lower triangle) in place and overwrite `rhs` with
/// `a^-1 rhs`.
fn factor_and_solve(
    a: MatMut<'_, f64>,
    rhs: MatMut<'_, f64>,
    op: &'static str,
) -> Result<(), OpsError> {
    let mut a = a;
    let dim = a.nrows();
    let req = llt::factor::cholesky_in_place_scratch::<f64>(dim, par(), Default::default());
    let mut mem = MemBuffer::new(req);
    let stack = MemStack::new(&mut mem);
    llt::factor::cholesky_in_place(
        a.as_mut(),
        Default::default(),
        par(),
        stack,
        Default::default(),
    )
    .map_err(|err| match err {
        llt::factor::LltError::NonPositivePivot { index } => OpsError::NotPositiveDefinite {
            op,
            dim,
            pivot: index,
        },
    })?;
    llt::solve::solve_in_place(a.as_ref(), rhs, par(), stack);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use rand_distr::{Distribution, StandardNormal};

    fn random(rows: usize, cols: usize, seed: u64) -> Matrix {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let v = (0..rows * cols)
            .map(|_| StandardNormal.sample(&mut rng))
            .collect();
        Matrix::from_vec(rows, cols, v)
    }

    /// Residual of the normal equations `(X_aug^T X_aug + lambda I) dTheta + alpha X_aug^T e`,
    /// computed with plain loops in f64, relative to the size of `alpha X_aug^T e`.
    fn normal_equation_residual(x: &Matrix, e: &Matrix, u: &RidgeUpdate, alpha: f64) -> f64 {
        let (n, d, m) = (x.rows(), x.cols(), e.cols());
        let xa = |i: usize, j: usize| if j == d { 1.0 } else { x.row(i)[j] as f64 };
        let theta = |j: usize, c: usize| {
            if j == d {
                u.db.as_slice()[c] as f64
            } else {
                u.dw.row(j)[c] as f64
            }
        };
        let (mut worst, mut scale) = (0.0f64, 0.0f64);
        for j in 0..=d {
            for c in 0..m {
                let mut lhs = u.lambda_used * theta(j, c);
                for k in 0..=d {
                    let g: f64 = (0..n).map(|i| xa(i, j) * xa(i, k)).sum();
                    lhs += g * theta(k, c);
                }
                let rhs: f64 = alpha * (0..n).map(|i| xa(i, j) * e.row(i)[c] as f64).sum::<f64>();
                worst = worst.max((lhs + rhs).abs());
                scale = scale.max(rhs.abs());
            }
        }
        worst / scale
    }

    fn cfg(path: SolvePath, scale: RidgeScale, lambda: f64) -> RidgeConfig {
        RidgeConfig {
            alpha: 0.1,
            lambda,
            scale,
            path,
        }
    }

    #[test]
    fn primal_solve_satisfies_normal_equations() {
        let (x, e) = (random(40, 12, 1), random(40, 3, 2));
        let u =
            ridge_update(&x, &e, &cfg(SolvePath::Auto, RidgeScale::Absolute, 0.5)).expect("solve");
        assert!(!u.dual, "n=40 > d+1=13 must take the primal route");
        let r = normal_equation_residual(&x, &e, &u, 0.1);
        assert!(r < 1e-5, "relative residual {r}");
    }

    #[test]
    fn dual_solve_satisfies_normal_equations() {
        let (x, e) = (random(10, 30, 3), random(10, 4, 4));
        let u =
            ridge_update(&x, &e, &cfg(SolvePath::Auto, RidgeScale::Relative, 0.1)).expect("solve");
        assert!(u.dual, "n=10 < d+1=31 must take the dual route");
        let r = normal_equation_residual(&x, &e, &u, 0.1);
        assert!(r < 1e-5, "relative residual {r}");
    }

    #[test]
    fn both_routes_agree() {
        for (n, d) in [(20, 50), (50, 20), (31, 30)] {
            let (x, e) = (random(n, d, 5), random(n, 6, 6));
            let p = ridge_update(&x, &e, &cfg(SolvePath::Primal, RidgeScale::Relative, 1e-2))
                .expect("primal");
            let q = ridge_update(&x, &e, &cfg(SolvePath::Dual, RidgeScale::Relative, 1e-2))
                .expect("dual");
            assert_eq!(p.lambda_used, q.lambda_used);
            let max = p.dw.as_slice().iter().fold(0f32, |a, v| a.max(v.abs()));
            for (a, b) in
                p.dw.as_slice()
                    .iter()
                    .zip(q.dw.as_slice())
                    .chain(p.db.as_slice().iter().zip(q.db.as_slice()))
            {
                assert!((a - b).abs() <= 1e-4 * max, "n={n} d={d}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn relative_lambda_is_mean_gram_diagonal() {
        let x = Matrix::from_vec(2, 2, vec![1.0, 2.0, 3.0, 4.0]);
        let e = Matrix::from_vec(2, 1, vec![1.0, -1.0]);
        let u =
            ridge_update(&x, &e, &cfg(SolvePath::Auto, RidgeScale::Relative, 0.5)).expect("solve");
        // trace = 1 + 4 + 9 + 16 + 2 (ones column) = 32, over d+1 = 3 diagonal entries.
        assert!((u.lambda_used - 0.5 * 32.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn nan_input_is_reported_not_propagated() {
        let mut x = random(8, 4, 7);
        x.as_mut_slice()[5] = f32::NAN;
        let err = ridge_update(
            &x,
            &random(8, 2, 8),
            &cfg(SolvePath::Auto, RidgeScale::Absolute, 1.0),
        )
        .expect_err("NaN input");
        assert!(err.to_string().contains("NaN"), "{err}");
    }

    #[test]
    fn zero_lambda_on_rank_deficient_input_is_not_positive_definite() {
        let x = Matrix::zeros(10, 3);
        let e = random(10, 2, 9);
        let err = ridge_update(&x, &e, &cfg(SolvePath::Primal, RidgeScale::Absolute, 0.0))
            .expect_err("singular");
        assert!(err.to_string().contains("not positive definite"), "{err}");
    }
}
