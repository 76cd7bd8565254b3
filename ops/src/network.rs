//! A chain of layers: weights and activations only. Trainers ([`crate::pl`], and the backprop
//! baselines) own their optimiser state and update the network in place.
//!
//! Layers exchange [`Matrix`] batches. Flat inputs have one row per sample; feature maps are
//! NHWC, one row per position (see [`crate::depthwise`]). Between layers an activation is
//! reshaped (without copying) to what the next layer reads, so a dense layer after a map sees
//! the map flattened, and an error is reshaped back to what its layer produced.

use crate::error::Dim;
pub use crate::layer::{ErrorMode, Layer};
use crate::{Matrix, OpsError};
use std::sync::{Mutex, PoisonError};

/// What one training step saw, for the run's metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepStats {
    /// Rows in the batch.
    pub rows: usize,
    /// PL: sum over the batch of the squared output error `||z - y_hat||^2`; backprop: sum of
    /// the cross-entropy losses.
    pub loss_sum: f64,
    /// Rows whose largest output was the true class (with the pre-update weights).
    pub correct: usize,
    /// Seconds spent in the forward pass.
    pub forward_seconds: f64,
    /// Seconds spent propagating errors (or deltas) to the layers below.
    pub propagate_seconds: f64,
    /// Seconds spent solving for updates (PL) or forming gradients (backprop) and applying them.
    pub solve_seconds: f64,
}

impl StepStats {
    /// Add another step's figures to these.
    pub fn add(&mut self, other: &StepStats) {
        self.rows += other.rows;
        self.loss_sum += other.loss_sum;
        self.correct += other.correct;
        self.forward_seconds += other.forward_seconds;
        self.propagate_seconds += other.propagate_seconds;
        self.solve_seconds += other.solve_seconds;
    }
}

/// A failure inside a step, with the index of the layer where it happened.
#[derive(Debug, thiserror::Error)]
#[error("layer {layer} failed")]
pub struct LayerError {
    /// Index of the layer in the chain (0 = first).
    pub layer: usize,
    /// What went wrong.
    #[source]
    pub source: OpsError,
}

pub(crate) fn at(layer: usize) -> impl Fn(OpsError) -> LayerError {
    move |source| LayerError { layer, source }
}

/// A chain of layers.
#[derive(Debug, Default)]
pub struct Network {
    /// Layers from input to output.
    pub layers: Vec<Layer>,
}

impl Network {
    /// Number of trainable values.
    pub fn parameter_count(&self) -> usize {
        self.layers.iter().map(Layer::parameter_count).sum()
    }

    /// Samples in a batch given to the first layer.
    pub fn batch_of(&self, x: &Matrix) -> usize {
        let per = self.layers.first().map_or(1, |l| l.input_shape(1).0);
        x.rows() / per.max(1)
    }

    /// The forward pass of training: every layer's output, each reshaped for the layer after
    /// it (the last is the output scores).
    pub(crate) fn forward_all(&self, x: &Matrix, batch: usize) -> Result<Vec<Matrix>, LayerError> {
        let mut acts: Vec<Matrix> = Vec::with_capacity(self.layers.len());
        for l in 0..self.layers.len() {
            let skip = self.residual_of(l)?.map(|r| &acts[r]);
            let out = self.forward_layer(l, acts.last().unwrap_or(x), skip, batch)?;
            acts.push(out);
        }
        Ok(acts)
    }

    /// The layer whose output layer `l` adds (its residual connection), checked to be below it.
    fn residual_of(&self, l: usize) -> Result<Option<usize>, LayerError> {
        match self.layers[l].residual {
            Some(r) if r >= l => Err(at(l)(OpsError::Invalid {
                op: "residual add",
                detail: format!("layer {l} adds the output of layer {r}, which is not below it"),
            })),
            r => Ok(r),
        }
    }

    /// Whether a layer after `l` adds the output of layer `r`.
    fn needed_after(&self, l: usize, r: usize) -> bool {
        self.layers[l + 1..].iter().any(|later| later.residual == Some(r))
    }

    /// Run layer `l` on `input` (adding `skip` before its activation) and reshape its output
    /// for layer `l + 1`.
    pub(crate) fn forward_layer(
        &self,
        l: usize,
        input: &Matrix,
        skip: Option<&Matrix>,
        batch: usize,
    ) -> Result<Matrix, LayerError> {
        let mut out = self.layers[l].forward_with(input, skip).map_err(at(l))?;
        if let Some(next) = self.layers.get(l + 1) {
            let (rows, cols) = next.input_shape(batch);
            if rows * cols != out.rows() * out.cols() {
                let (expected, actual) = ([Dim::Exact(rows), Dim::Exact(cols)], [out.rows(), out.cols()]);
                return Err(at(l + 1)(OpsError::mismatch(
                    "layer input",
                    "the layer below's output",
                    &expected,
                    &actual,
                )));
            }
            out.reshape(rows, cols);
        }
        Ok(out)
    }

    /// The error of layer `l - 1`'s output from layer `l`'s output error: propagated through
    /// layer `l` (across pooling as `mode` says), plus the errors `skips` of layers that add
    /// layer `l - 1`'s output (residual connections), times the derivative of layer `l - 1`'s
    /// activation (recovered from its output `below`), in layer `l - 1`'s output shape.
    #[cfg(test)]
    pub(crate) fn error_below(
        &self,
        l: usize,
        err: &Matrix,
        below: &Matrix,
        batch: usize,
        mode: ErrorMode,
        skips: &[&Matrix],
    ) -> Result<Matrix, LayerError> {
        let mut e = self.layers[l].op.input_error(err, mode).map_err(at(l))?;
        for k in skips {
            e.as_mut_slice().iter_mut().zip(k.as_slice()).for_each(|(e, k)| *e += k);
        }
        self.layers[l - 1].activation.scale_by_derivative(e.as_mut_slice(), below.as_slice());
        let (rows, cols) = self.layers[l - 1].output_shape(batch);
        e.reshape(rows, cols);
        Ok(e)
    }

    /// [`Network::error_below`] written over `below` (layer `l - 1`'s output, consumed): the
    /// error takes the place of the activation it was the last use of, so no second buffer of
    /// that size is allocated (on the MNIST CNN, a 12.8 MB map at the step's peak). The
    /// propagation runs on a block of rows, or one sample of a map, at a time into a small
    /// scratch buffer, and the blocks run in parallel.
    pub(crate) fn error_below_in_place(
        &self,
        l: usize,
        err: &Matrix,
        below: Matrix,
        batch: usize,
        mode: ErrorMode,
        skips: &[&Matrix],
    ) -> Result<Matrix, LayerError> {
        self.propagate_error(l, err, below, batch, (mode, skips), None)
    }

    /// [`Network::error_below_in_place`] and the sum of squares of the error formed, in
    /// `f64`: each block's share is summed while the block is still in cache (a separate pass
    /// over a CNN's error maps took 3.5% of its PL epoch), and the shares are added in the
    /// blocks' order, so the sum does not depend on which thread finished first. A finite
    /// sum also says that every value is finite.
    pub(crate) fn error_below_measured(
        &self,
        l: usize,
        err: &Matrix,
        below: Matrix,
        batch: usize,
        mode: ErrorMode,
        skips: &[&Matrix],
    ) -> Result<(Matrix, f64), LayerError> {
        let shares = Mutex::new(Vec::new());
        let below = self.propagate_error(l, err, below, batch, (mode, skips), Some(&shares))?;
        let mut shares = shares.into_inner().unwrap_or_else(PoisonError::into_inner);
        shares.sort_unstable_by_key(|&(offset, _)| offset);
        Ok((below, shares.iter().map(|&(_, s)| s).sum()))
    }

    fn propagate_error(
        &self,
        l: usize,
        err: &Matrix,
        mut below: Matrix,
        batch: usize,
        (mode, skips): (ErrorMode, &[&Matrix]),
        squares: Option<&Mutex<Vec<(usize, f64)>>>,
    ) -> Result<Matrix, LayerError> {
        let layer = &self.layers[l];
        let derivative = self.layers[l - 1].activation;
        let (rows, cols) = layer.input_shape(batch);
        let size = below.rows() * below.cols();
        if size != rows * cols {
            let (expected, actual) = ([Dim::Exact(rows), Dim::Exact(cols)], [below.rows(), below.cols()]);
            return Err(at(l)(OpsError::mismatch(
                "error propagation",
                "activation below",
                &expected,
                &actual,
            )));
        }
        for k in skips {
            OpsError::check("residual error", "skip", &[Dim::Exact(size)], &[k.as_slice().len()])
                .map_err(at(l))?;
        }
        below.reshape(rows, cols);
        // Propagate into `scratch`, add the residual errors, then `a <- scratch * f'(a)` where
        // `a` is the activation.
        let combine = |offset: usize, scratch: &mut [f32], a: &mut [f32]| {
            for k in skips {
                let k = &k.as_slice()[offset..offset + scratch.len()];
                scratch.iter_mut().zip(k).for_each(|(s, k)| *s += k);
            }
            derivative.scale_by_derivative(scratch, a);
            a.copy_from_slice(scratch);
            if let Some(squares) = squares {
                let share = crate::solve::block_sum_of_squares(scratch);
                squares.lock().unwrap_or_else(PoisonError::into_inner).push((offset, share));
            }
        };
        layer.op.error_in_place(err, &mut below, batch, mode, &combine).map_err(at(l))?;
        let (rows, cols) = self.layers[l - 1].output_shape(batch);
        below.reshape(rows, cols);
        Ok(below)
    }

    /// Outputs (pre-softmax scores) for a batch; each activation is dropped as soon as the
    /// next layer has consumed it (an output a residual connection adds is kept until then).
    pub fn forward(&self, x: &Matrix) -> Result<Matrix, LayerError> {
        let batch = self.batch_of(x);
        let mut current: Option<Matrix> = None;
        let mut kept: Vec<Option<Matrix>> = (0..self.layers.len()).map(|_| None).collect();
        for l in 0..self.layers.len() {
            let input = current.as_ref().unwrap_or(x);
            let residual = self.residual_of(l)?;
            let out = self.forward_layer(l, input, residual.and_then(|r| kept[r].as_ref()), batch)?;
            if let Some(r) = residual
                && !self.needed_after(l, r)
            {
                kept[r] = None;
            }
            if self.needed_after(l, l) {
                kept[l] = Some(out.clone());
            }
            current = Some(out);
        }
        Ok(current.unwrap_or_else(|| x.clone()))
    }

    /// The skip errors waiting for layer `l - 1`'s output error: `pending` holds `(r, error)`
    /// pairs for connections from layer `r`, and `own` is the part of layer `l`'s error
    /// that flows to its skip source ([`Layer::skip_error`]), used when that is layer `l - 1`.
    pub(crate) fn skips_for<'m>(
        &self,
        l: usize,
        own: Option<&'m Matrix>,
        pending: &'m [(usize, Matrix)],
    ) -> Vec<&'m Matrix> {
        let mut skips: Vec<&Matrix> = pending.iter().filter(|(r, _)| *r == l - 1).map(|(_, e)| e).collect();
        if let (Some(own), Some(r)) = (own, self.layers[l].residual)
            && r + 1 == l
        {
            skips.push(own);
        }
        skips
    }
}

/// Index of the largest value (the first one on ties).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activation::Activation;
    use crate::dense::Dense;
    use crate::depthwise::Depthwise;
    use crate::pool::GlobalAvgPool;

    #[test]
    fn forward_chains_layers_and_applies_activations() {
        let mut first = Dense::new(Matrix::from_vec(2, 2, vec![1.0, -1.0, 0.5, 2.0]));
        first.bias = Matrix::from_vec(1, 2, vec![0.0, -3.0]);
        let second = Dense::new(Matrix::from_vec(2, 1, vec![1.0, 1.0]));
        let net = Network {
            layers: vec![
                Layer::dense(first, Activation::Elu { clip: 10.0 }),
                Layer::dense(second, Activation::Linear),
            ],
        };
        let out = net.forward(&Matrix::from_vec(1, 2, vec![2.0, 1.0])).expect("shapes");
        // z1 = [2 + 0.5, -2 + 2 - 3] = [2.5, -3]; a1 = [2.5, e^-3 - 1]; z2 = a1[0] + a1[1]
        let want = 2.5 + ((-3.0f32).exp() - 1.0);
        assert!((out.as_slice()[0] - want).abs() < 1e-6);
        assert_eq!(argmax(&[0.1, 0.7, 0.7, -1.0]), 1);
    }

    /// The in-place error equals the allocating one for every kind of layer, on a small CNN
    /// (pointwise, depthwise with stride 2, pooling, dense head) with a batch of 3.
    #[test]
    fn in_place_error_matches_the_allocating_one() {
        use crate::depthwise::Geometry;
        use crate::init::xavier_normal;
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let elu = Activation::Elu { clip: 10.0 };
        let geometry = Geometry { h: 5, w: 6, k: 3, stride: 2 };
        let (oh, ow) = (geometry.out_h(), geometry.out_w());
        let net = Network {
            layers: vec![
                Layer { input_positions: 30, ..Layer::dense(Dense::new(xavier_normal(2, 4, &mut rng)), elu) },
                Layer::new(Depthwise::new(xavier_normal(9, 4, &mut rng), geometry), elu, 30),
                Layer::new(GlobalAvgPool { positions: oh * ow, channels: 4 }, Activation::Linear, oh * ow),
                Layer::dense(Dense::new(xavier_normal(4, 3, &mut rng)), Activation::Linear),
            ],
        };
        let batch = 3;
        let x = xavier_normal(batch * 30, 2, &mut rng);
        let acts = net.forward_all(&x, batch).expect("shapes");
        for pool in [ErrorMode::Gradient, ErrorMode::Target] {
            for l in 1..net.layers.len() {
                let (rows, cols) = net.layers[l].output_shape(batch);
                let err = xavier_normal(rows, cols, &mut rng);
                // with and without a residual error added at the activation below (its
                // blocks must line up with the propagation's)
                let below = &acts[l - 1];
                let skip = xavier_normal(below.rows(), below.cols(), &mut rng);
                for skips in [vec![], vec![&skip]] {
                    let want = net.error_below(l, &err, below, batch, pool, &skips).expect("allocating");
                    let got = net
                        .error_below_in_place(l, &err, below.clone(), batch, pool, &skips)
                        .expect("in place");
                    assert_eq!((got.rows(), got.cols()), (want.rows(), want.cols()), "layer {l}");
                    for (g, w) in got.as_slice().iter().zip(want.as_slice()) {
                        assert!((g - w).abs() < 1e-6, "layer {l}, {pool:?}: {g} vs {w}");
                    }
                    // The measured variant: the same error, and its sum of squares.
                    let (measured, squares) = net
                        .error_below_measured(l, &err, below.clone(), batch, pool, &skips)
                        .expect("measured");
                    assert_eq!(measured.as_slice(), got.as_slice(), "layer {l}");
                    let plain: f64 = got.as_slice().iter().map(|&v| f64::from(v) * f64::from(v)).sum();
                    assert!(
                        (squares - plain).abs() <= 1e-12 * plain.max(1.0),
                        "layer {l}: {squares} vs {plain}"
                    );
                }
            }
        }
    }

    /// A non-finite value in the error formed makes its sum of squares non-finite: the sum
    /// is what lets PL's solve skip its own scan of the error.
    #[test]
    fn a_non_finite_error_shows_in_its_sum_of_squares() {
        let net = Network {
            layers: vec![
                Layer::dense(
                    Dense::new(Matrix::from_vec(2, 2, vec![1.0, 0.5, -1.0, 2.0])),
                    Activation::Linear,
                ),
                Layer::dense(Dense::new(Matrix::from_vec(2, 1, vec![1.0, 1.0])), Activation::Linear),
            ],
        };
        let below = Matrix::from_vec(2, 2, vec![0.5, 1.0, -0.5, 2.0]);
        for (bad, finite) in [(1.0, true), (f32::NAN, false), (f32::INFINITY, false)] {
            let err = Matrix::from_vec(2, 1, vec![0.25, bad]);
            let (_, squares) =
                net.error_below_measured(1, &err, below.clone(), 2, ErrorMode::Target, &[]).expect("shapes");
            assert_eq!(squares.is_finite(), finite, "{bad}");
        }
    }
}
