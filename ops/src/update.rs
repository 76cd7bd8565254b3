//! Applying a solved update to a dense layer (SPEC section 2, steps 5-6): metaplasticity
//! modulation, momentum, Newton-Schulz orthogonalisation of the momentum every few steps, the
//! weight update, the spectral-norm clamp, and the bias added directly.
//!
//! The per-layer state is allocated only for the components that are switched on, so a run
//! without momentum holds no velocity buffer.

use crate::bf16::{self, Bf16Matrix};
use crate::dense::Dense;
use crate::error::Dim;
use crate::ledger::Buffer;
use crate::solve::{RidgeUpdate, SolveInfo, Tile, TileCollector, TileSink};
use crate::sparse::Mask;
use crate::state::{StateTensor, StateTensorMut};
use crate::{Matrix, OpsError};

/// Which stabilisers run after each solve. `None` switches a component off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpdateRule {
    /// Per-weight modulation of the update by its history (paper eq. 16-19).
    pub metaplasticity: Option<Metaplasticity>,
    /// Momentum coefficient `mu`: `V <- mu V + (1 - mu) dW~; W <- W + V`.
    pub momentum: Option<f32>,
    /// How the momentum `V` is stored between steps.
    pub momentum_storage: Storage,
    /// Newton-Schulz orthogonalisation of the momentum (or, without momentum, of the update).
    pub orthogonalize: Option<Orthogonalize>,
    /// Largest allowed spectral norm of `W`; above it `W` is scaled down to it.
    pub spectral_max: Option<f32>,
}

/// How a per-weight state buffer is stored between steps; the arithmetic is `f32` either way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Storage {
    /// `f32` values.
    #[default]
    F32,
    /// `bf16` values (half the bytes), rounded to nearest even after every update.
    Bf16,
}

/// The momentum buffer in its storage.
#[derive(Debug)]
enum Velocity {
    F32(Matrix),
    Bf16(Bf16Matrix),
}

impl Velocity {
    fn bytes(&self) -> usize {
        match self {
            Self::F32(v) => v.bytes(),
            Self::Bf16(v) => v.bytes(),
        }
    }

    /// The stored values, for a streamed update to fold into.
    fn values_mut(&mut self) -> VelocityMut<'_> {
        match self {
            Self::F32(v) => VelocityMut::F32(v.as_mut_slice()),
            Self::Bf16(v) => VelocityMut::Bf16(v.as_mut_slice()),
        }
    }

    /// `V <- mu V + (1 - mu) g` over `step` (the update, in the state's layout), which then
    /// holds the new `V` as stored (so the weights move by exactly what is kept).
    fn accumulate(&mut self, mu: f32, step: &mut [f32]) {
        match self {
            Self::F32(v) => {
                for (v, g) in v.as_mut_slice().iter_mut().zip(step) {
                    *v = mu * *v + (1.0 - mu) * *g;
                    *g = *v;
                }
            }
            Self::Bf16(v) => {
                for (v, g) in v.as_mut_slice().iter_mut().zip(step) {
                    *v = bf16::from_f32(mu * bf16::to_f32(*v) + (1.0 - mu) * *g);
                    *g = bf16::to_f32(*v);
                }
            }
        }
    }

    /// Orthogonalise `V` (see [`orthogonalize_in_layout`]); `scratch`, of `V`'s size, receives
    /// the new `V` as stored. A `bf16` velocity is widened into `scratch` for the products.
    fn orthogonalize(
        &mut self,
        scratch: &mut Matrix,
        mask: Option<&Mask>,
        d: usize,
        m: usize,
        strength: f32,
    ) {
        match self {
            Self::F32(v) => {
                orthogonalize_in_layout(v, mask, d, m, strength);
                scratch.as_mut_slice().copy_from_slice(v.as_slice());
            }
            Self::Bf16(v) => Self::orthogonalize_bf16(v, scratch, mask, d, m, strength),
        }
    }

    fn orthogonalize_bf16(
        v: &mut Bf16Matrix,
        scratch: &mut Matrix,
        mask: Option<&Mask>,
        d: usize,
        m: usize,
        strength: f32,
    ) {
        for (s, &h) in scratch.as_mut_slice().iter_mut().zip(v.as_slice()) {
            *s = bf16::to_f32(h);
        }
        orthogonalize_in_layout(scratch, mask, d, m, strength);
        v.store(scratch);
        for (s, &h) in scratch.as_mut_slice().iter_mut().zip(v.as_slice()) {
            *s = bf16::to_f32(h);
        }
    }
}

/// Metaplasticity settings: `Theta <- beta Theta + (1 - beta) |dW|`, `rho = 1 / (1 + gamma
/// Theta)`, times `xi` where `Theta < tau_inactive`; the update becomes `rho * dW`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metaplasticity {
    /// Decay of the activity trace.
    pub beta: f32,
    /// Sensitivity of the modulation to the trace.
    pub gamma: f32,
    /// Traces below this count as inactive.
    pub tau_inactive: f32,
    /// Boost of inactive weights.
    pub xi: f32,
    /// Initial trace.
    pub theta0: f32,
}

/// Orthogonalisation settings: every `every` steps, `V <- (1 - strength) V + strength NS(V)`
/// with one Newton-Schulz step (paper Alg. 4).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Orthogonalize {
    /// Period in steps.
    pub every: u64,
    /// Blend of the orthogonalised matrix.
    pub strength: f32,
}

/// Power-iteration steps per update; the vector persists, so a few steps track the top
/// singular vector as the weights drift.
const POWER_STEPS_PER_UPDATE: usize = 2;
/// Power-iteration steps when the state is created from fresh weights.
const POWER_STEPS_AT_START: usize = 30;

/// Per-layer optimiser state of Prospective Learning.
#[derive(Debug)]
pub struct LayerState {
    theta: Option<Matrix>,
    velocity: Option<Velocity>,
    power: Option<Matrix>,
    /// Spectral norm estimated at the last update (0 when the clamp is off).
    pub spectral_norm: f32,
    /// Number of updates applied.
    pub steps: u64,
}

impl LayerState {
    /// Fresh state for `layer` under `rule`. With a persistent `mask`, per-weight state is kept
    /// only for the mask's connections.
    pub fn new(layer: &Dense, mask: Option<&Mask>, rule: &UpdateRule) -> Self {
        let m = layer.outputs();
        let (rows, cols) = match mask {
            Some(mask) => (1, mask.nnz()),
            None => (layer.inputs(), m),
        };
        let velocity = rule.momentum.map(|_| match rule.momentum_storage {
            Storage::F32 => Velocity::F32(Matrix::zeros(rows, cols)),
            Storage::Bf16 => Velocity::Bf16(Bf16Matrix::zeros(rows, cols)),
        });
        let theta = rule.metaplasticity.map(|mp| Matrix::from_vec(rows, cols, vec![mp.theta0; rows * cols]));
        let mut state = Self { theta, velocity, power: None, spectral_norm: 0.0, steps: 0 };
        if rule.spectral_max.is_some() {
            let v = Matrix::from_vec(1, m, vec![1.0 / (m.max(1) as f32).sqrt(); m]);
            state.power = Some(v);
            state.spectral_norm = power_iteration(&layer.weights, state.power_mut(), POWER_STEPS_AT_START);
        }
        state
    }

    fn power_mut(&mut self) -> &mut [f32] {
        self.power.as_mut().map(|p| p.as_mut_slice()).unwrap_or_default()
    }

    /// The state buffers this layer holds, by name (for checkpoints).
    pub fn buffers(&self) -> Vec<(&'static str, StateTensor<'_>)> {
        let velocity = self.velocity.as_ref().map(|v| match v {
            Velocity::F32(v) => StateTensor::F32(v),
            Velocity::Bf16(v) => StateTensor::Bf16(v),
        });
        let named = [("theta", self.theta.as_ref().map(Into::into)), ("velocity", velocity)];
        let power = ("power", self.power.as_ref().map(Into::into));
        named.into_iter().chain([power]).filter_map(|(n, b)| b.map(|b| (n, b))).collect()
    }

    /// The state buffers, in the order of [`LayerState::buffers`], to be overwritten.
    pub fn buffers_mut(&mut self) -> Vec<(&'static str, StateTensorMut<'_>)> {
        let velocity = self.velocity.as_mut().map(|v| match v {
            Velocity::F32(v) => StateTensorMut::F32(v),
            Velocity::Bf16(v) => StateTensorMut::Bf16(v),
        });
        let named = [("theta", self.theta.as_mut().map(Into::into)), ("velocity", velocity)];
        let power = ("power", self.power.as_mut().map(Into::into));
        named.into_iter().chain([power]).filter_map(|(n, b)| b.map(|b| (n, b))).collect()
    }

    /// Bytes of per-weight state this layer holds.
    pub fn bytes(&self) -> usize {
        let matrices =
            [&self.theta, &self.power].iter().map(|b| b.as_ref().map_or(0, Matrix::bytes)).sum::<usize>();
        matrices + self.velocity.as_ref().map_or(0, Velocity::bytes)
    }

    /// Apply `update` to `layer`: metaplasticity, momentum (orthogonalised every few steps),
    /// the weight update, the bias, then the clamp. With a persistent `mask` (the one the
    /// state was created with) only the mask's weights change.
    pub fn apply(
        &mut self,
        layer: &mut Dense,
        mask: Option<&Mask>,
        update: RidgeUpdate,
        rule: &UpdateRule,
    ) -> Result<(), OpsError> {
        let (d, m) = (layer.inputs(), layer.outputs());
        let expected = [Dim::Exact(d), Dim::Exact(m)];
        OpsError::check("PL update", "update", &expected, &[update.dw.rows(), update.dw.cols()])?;
        if let Some(k) = mask {
            OpsError::check("PL update", "mask", &expected, &[k.rows(), k.cols()])?;
        }
        // The update in the state's layout: dense, or gathered at the mask's connections.
        let mut du = match mask {
            Some(mask) => {
                let dense = update.dw.as_slice();
                let v: Vec<f32> = mask.indices().iter().map(|&k| dense[k as usize]).collect();
                drop(update.dw);
                Matrix::from_vec(1, v.len(), v)
            }
            None => update.dw,
        };
        if let (Some(theta), Some(mp)) = (&mut self.theta, rule.metaplasticity) {
            modulate(du.as_mut_slice(), theta.as_mut_slice(), &mp);
        }
        let ortho = self.begin(rule);
        // `du` becomes the step the weights take: the velocity as stored, or the update.
        match (&mut self.velocity, rule.momentum) {
            (Some(v), Some(mu)) => {
                v.accumulate(mu, du.as_mut_slice());
                if let Some(o) = ortho {
                    v.orthogonalize(&mut du, mask, d, m, o.strength);
                }
            }
            _ => {
                if let Some(o) = ortho {
                    orthogonalize_in_layout(&mut du, mask, d, m, o.strength);
                }
            }
        }
        add_step(layer.weights.as_mut_slice(), mask, du.as_slice());
        for (b, &db) in layer.bias.as_mut_slice().iter_mut().zip(update.db.as_slice()) {
            *b += db;
        }
        self.finish(layer, rule);
        Ok(())
    }

    /// Count the step; `Some` when this step orthogonalises.
    fn begin(&mut self, rule: &UpdateRule) -> Option<Orthogonalize> {
        self.steps += 1;
        rule.orthogonalize.filter(|o| o.every > 0 && self.steps.is_multiple_of(o.every))
    }

    /// The spectral-norm clamp, after the weights have changed.
    fn finish(&mut self, layer: &mut Dense, rule: &UpdateRule) {
        if let Some(max) = rule.spectral_max {
            let sigma = power_iteration(&layer.weights, self.power_mut(), POWER_STEPS_PER_UPDATE);
            self.spectral_norm = sigma;
            if sigma > max {
                let s = max / sigma;
                layer.weights.as_mut_slice().iter_mut().for_each(|w| *w *= s);
                self.spectral_norm = max;
            }
        }
    }

    /// Apply the update that `produce` streams into the sink it is given (see
    /// `crate::solve::ridge_update_tiles`), folding each tile into the traces, the velocity and
    /// the weights as it arrives, so the `d x m` update never exists. Same result as [`apply`]
    /// (up to rounding); on a step that orthogonalises without momentum the whole update is
    /// needed, so it is collected first.
    ///
    /// [`apply`]: LayerState::apply
    pub fn stream_update(
        &mut self,
        layer: &mut Dense,
        mask: Option<&Mask>,
        rule: &UpdateRule,
        produce: impl FnOnce(&mut TileSink<'_>) -> Result<(), OpsError>,
    ) -> Result<(), OpsError> {
        let (d, m) = (layer.inputs(), layer.outputs());
        let next = self.steps + 1;
        let ortho_next = rule.orthogonalize.is_some_and(|o| o.every > 0 && next.is_multiple_of(o.every));
        if ortho_next && (self.velocity.is_none() || rule.momentum.is_none()) {
            let mut collected = TileCollector::new(d, m);
            produce(&mut |tile| collected.absorb(tile))?;
            let update = collected.finish(SolveInfo { lambda_used: 0.0, dual: false, single: false });
            return self.apply(layer, mask, update, rule);
        }
        let ortho = self.begin(rule);
        let mu = rule.momentum.filter(|_| self.velocity.is_some());
        let mut fold = Fold {
            w: layer.weights.as_mut_slice(),
            theta: self.theta.as_mut().map(|t| t.as_mut_slice()),
            velocity: self.velocity.as_mut().map(Velocity::values_mut),
            mp: rule.metaplasticity,
            mu,
            defer_weights: ortho.is_some(),
            w0: 0,
            k0: 0,
        };
        let b = layer.bias.as_mut_slice();
        produce(&mut |tile| fold_tile_par(&mut fold, b, tile, (d, m), mask))?;
        if let (Some(o), Some(v)) = (ortho, self.velocity.as_mut()) {
            let w = layer.weights.as_mut_slice();
            match v {
                Velocity::F32(v) => {
                    orthogonalize_in_layout(v, mask, d, m, o.strength);
                    add_step(w, mask, v.as_slice());
                }
                Velocity::Bf16(b) => {
                    let mut step = Matrix::zeros(b.rows(), b.cols());
                    Velocity::orthogonalize_bf16(b, &mut step, mask, d, m, o.strength);
                    add_step(w, mask, step.as_slice());
                }
            }
        }
        self.finish(layer, rule);
        Ok(())
    }
}

/// A hidden layer's update that has reached its state but not yet its weights (the error
/// below the layer still needs the old ones): see [`LayerState::stream_deferred`].
#[derive(Debug)]
pub enum Pending {
    /// The whole update, to be applied by [`LayerState::apply`] (no momentum to hold it).
    Whole(RidgeUpdate),
    /// The velocity holds the step the weights take; the bias update waits here.
    Velocity {
        /// This step orthogonalises the velocity before the weights move.
        ortho: Option<Orthogonalize>,
        /// `1 x m` bias update.
        db: Buffer<f32>,
    },
}

impl LayerState {
    /// Fold the update that `produce` streams (see [`LayerState::stream_update`]) into the
    /// traces and the velocity of a `d x m` layer without touching its weights, so that no
    /// `d x m` update buffer exists while the error below is computed; the weights move in
    /// [`LayerState::finish_deferred`]. Without momentum the velocity cannot hold the step,
    /// and the whole update is collected instead.
    pub fn stream_deferred(
        &mut self,
        (d, m): (usize, usize),
        mask: Option<&Mask>,
        rule: &UpdateRule,
        produce: impl FnOnce(&mut TileSink<'_>) -> Result<(), OpsError>,
    ) -> Result<Pending, OpsError> {
        let (Some(velocity), Some(mu)) = (self.velocity.as_mut(), rule.momentum) else {
            let mut collected = TileCollector::new(d, m);
            produce(&mut |tile| collected.absorb(tile))?;
            let info = SolveInfo { lambda_used: 0.0, dual: false, single: false };
            return Ok(Pending::Whole(collected.finish(info)));
        };
        let mut fold = Fold {
            w: &mut [],
            theta: self.theta.as_mut().map(|t| t.as_mut_slice()),
            velocity: Some(velocity.values_mut()),
            mp: rule.metaplasticity,
            mu: Some(mu),
            defer_weights: true,
            w0: 0,
            k0: 0,
        };
        let mut db = Buffer::<f32>::zeros(m);
        produce(&mut |tile| fold_tile_par(&mut fold, &mut db, tile, (d, m), mask))?;
        let ortho = self.begin(rule);
        Ok(Pending::Velocity { ortho, db })
    }

    /// Move the weights of a layer whose update [`LayerState::stream_deferred`] folded in:
    /// orthogonalise the velocity if this step does, add it to the weights and the bias
    /// update to the bias, then clamp.
    pub fn finish_deferred(
        &mut self,
        layer: &mut Dense,
        mask: Option<&Mask>,
        pending: Pending,
        rule: &UpdateRule,
    ) -> Result<(), OpsError> {
        let (ortho, db) = match pending {
            Pending::Whole(update) => return self.apply(layer, mask, update, rule),
            Pending::Velocity { ortho, db } => (ortho, db),
        };
        let (d, m) = (layer.inputs(), layer.outputs());
        let w = layer.weights.as_mut_slice();
        match self.velocity.as_mut() {
            Some(Velocity::F32(v)) => {
                if let Some(o) = ortho {
                    orthogonalize_in_layout(v, mask, d, m, o.strength);
                }
                add_step(w, mask, v.as_slice());
            }
            Some(Velocity::Bf16(b)) => match ortho {
                Some(o) => {
                    let mut step = Matrix::zeros(b.rows(), b.cols());
                    Velocity::orthogonalize_bf16(b, &mut step, mask, d, m, o.strength);
                    add_step(w, mask, step.as_slice());
                }
                None => add_bf16_step(w, mask, b.as_slice()),
            },
            None => {
                let detail = "a deferred update without a velocity".to_string();
                return Err(OpsError::Invalid { op: "PL update", detail });
            }
        }
        for (b, &g) in layer.bias.as_mut_slice().iter_mut().zip(db.iter()) {
            *b += g;
        }
        self.finish(layer, rule);
        Ok(())
    }
}

/// Tiles of at least this many values are folded in two halves on two threads (recursively).
/// Folding is a pass over the weights, the velocity and the traces; the MNIST first layer's
/// 402 K values took 0.45 ms of its step on one thread.
const PARALLEL_FOLD_VALUES: usize = 1 << 15;

/// [`fold_tile`] with a large tile's rows split between threads: the two halves touch
/// disjoint entries (rows are disjoint ranges of the flat layout, and of the mask's compact
/// one), and each entry's arithmetic is unchanged, so the bits are those of one thread.
fn fold_tile_par(
    fold: &mut Fold<'_>,
    db: &mut [f32],
    tile: Tile<'_>,
    (d, m): (usize, usize),
    mask: Option<&Mask>,
) {
    let rows = tile.rows();
    if tile.values.len() < PARALLEL_FOLD_VALUES || rows < 2 {
        return fold_tile(fold, db, tile, (d, m), mask);
    }
    let h = rows / 2;
    let (top, bottom) = tile.values.split_at(h * tile.cols);
    let top = Tile { values: top, ..tile };
    let bottom = Tile { values: bottom, row0: tile.row0 + h, ..tile };
    let flat = bottom.row0 * m;
    let k = mask.map_or(flat, |mask| mask.indices().partition_point(|&i| (i as usize) < flat));
    let (mut a, mut b) = fold.split(flat, k);
    // Row `d` (the bias) can only be the tile's last row, so it is in the bottom half.
    rayon::join(
        || fold_tile_par(&mut a, &mut [], top, (d, m), mask),
        || fold_tile_par(&mut b, db, bottom, (d, m), mask),
    );
}

/// Fold one streamed tile of a `d x m` update into `fold`, its bias row into `db`.
fn fold_tile(
    fold: &mut Fold<'_>,
    db: &mut [f32],
    tile: Tile<'_>,
    (d, m): (usize, usize),
    mask: Option<&Mask>,
) {
    for j in 0..tile.rows() {
        let (row, g) = (tile.row0 + j, tile.row(j));
        if row == d {
            for (b, &g) in db[tile.col0..].iter_mut().zip(g) {
                *b += g;
            }
            continue;
        }
        let first = row * m + tile.col0;
        match mask {
            None => fold.dense(first, g),
            Some(mask) => {
                let idx = mask.indices();
                let lo = idx.partition_point(|&k| (k as usize) < first);
                let hi = idx.partition_point(|&k| (k as usize) < first + g.len());
                for (k, &flat) in idx.iter().enumerate().take(hi).skip(lo) {
                    fold.one(k, flat as usize, g[flat as usize - first]);
                }
            }
        }
    }
}

/// `W += step` for a `bf16` step, widened value by value (no `f32` copy of it).
fn add_bf16_step(w: &mut [f32], mask: Option<&Mask>, step: &[u16]) {
    match mask {
        Some(mask) => {
            for (&k, &s) in mask.indices().iter().zip(step) {
                w[k as usize] += bf16::to_f32(s);
            }
        }
        None => {
            for (w, &s) in w.iter_mut().zip(step) {
                *w += bf16::to_f32(s);
            }
        }
    }
}

/// `W += step`, with `step` dense or at `mask`'s connections.
fn add_step(w: &mut [f32], mask: Option<&Mask>, step: &[f32]) {
    match mask {
        Some(mask) => {
            for (&k, &s) in mask.indices().iter().zip(step) {
                w[k as usize] += s;
            }
        }
        None => {
            for (w, &s) in w.iter_mut().zip(step) {
                *w += s;
            }
        }
    }
}

/// A velocity's values as a streamed update folds into them.
enum VelocityMut<'a> {
    F32(&'a mut [f32]),
    Bf16(&'a mut [u16]),
}

/// Folds streamed update values into a layer's traces, velocity and weights.
struct Fold<'a> {
    w: &'a mut [f32],
    theta: Option<&'a mut [f32]>,
    velocity: Option<VelocityMut<'a>>,
    mp: Option<Metaplasticity>,
    mu: Option<f32>,
    /// Weights move after the velocity is orthogonalised, not as tiles arrive.
    defer_weights: bool,
    /// Flat index of `w[0]` and state index of `theta[0]` and the velocity's first value
    /// (non-zero in the second part of a [`Fold::split`]).
    w0: usize,
    k0: usize,
}

impl Fold<'_> {
    /// Two folds over disjoint entries: those before weight `flat` (state entry `k`) and the
    /// rest. A fold without weights (a deferred update) splits its state alone.
    fn split(&mut self, flat: usize, k: usize) -> (Fold<'_>, Fold<'_>) {
        let (wa, wb): (&mut [f32], &mut [f32]) =
            if self.w.is_empty() { (&mut [], &mut []) } else { self.w.split_at_mut(flat - self.w0) };
        let (ta, tb) = match self.theta.as_mut() {
            Some(t) => {
                let (a, b) = t.split_at_mut(k - self.k0);
                (Some(a), Some(b))
            }
            None => (None, None),
        };
        let (va, vb) = match self.velocity.as_mut() {
            Some(VelocityMut::F32(v)) => {
                let (a, b) = v.split_at_mut(k - self.k0);
                (Some(VelocityMut::F32(a)), Some(VelocityMut::F32(b)))
            }
            Some(VelocityMut::Bf16(v)) => {
                let (a, b) = v.split_at_mut(k - self.k0);
                (Some(VelocityMut::Bf16(a)), Some(VelocityMut::Bf16(b)))
            }
            None => (None, None),
        };
        let part = |w, theta, velocity, w0, k0| Fold {
            w,
            theta,
            velocity,
            mp: self.mp,
            mu: self.mu,
            defer_weights: self.defer_weights,
            w0,
            k0,
        };
        (part(wa, ta, va, self.w0, self.k0), part(wb, tb, vb, flat, k))
    }

    /// Update value `g` of state entry `k`, which is weight `idx`.
    #[inline]
    fn one(&mut self, k: usize, idx: usize, g: f32) {
        let (k, idx) = (k - self.k0, idx - self.w0);
        let g = match (&mut self.theta, self.mp) {
            (Some(t), Some(mp)) => modulate_one(g, &mut t[k], &mp),
            _ => g,
        };
        let stored = match (&mut self.velocity, self.mu) {
            (Some(VelocityMut::F32(v)), Some(mu)) => {
                v[k] = mu * v[k] + (1.0 - mu) * g;
                v[k]
            }
            (Some(VelocityMut::Bf16(v)), Some(mu)) => {
                v[k] = bf16::from_f32(mu * bf16::to_f32(v[k]) + (1.0 - mu) * g);
                bf16::to_f32(v[k])
            }
            _ => {
                self.w[idx] += g;
                return;
            }
        };
        if !self.defer_weights {
            self.w[idx] += stored;
        }
    }

    /// Update values `g` of the dense entries `first..` (state and weights alike).
    fn dense(&mut self, first: usize, g: &[f32]) {
        let range = first - self.k0..first - self.k0 + g.len();
        match (&mut self.velocity, self.mu, self.mp, self.defer_weights) {
            // The common case, as one vectorisable loop over the row.
            (Some(VelocityMut::F32(v)), Some(mu), None, false) => {
                for ((w, v), &g) in self.w[range.clone()].iter_mut().zip(&mut v[range]).zip(g) {
                    *v = mu * *v + (1.0 - mu) * g;
                    *w += *v;
                }
            }
            (Some(VelocityMut::Bf16(v)), Some(mu), None, false) => {
                bf16::momentum_run(&mut v[range.clone()], g, mu, Some(&mut self.w[range]));
            }
            // A hidden layer's deferred update: the velocity alone (the weights move later).
            (Some(VelocityMut::F32(v)), Some(mu), None, true) => {
                for (v, &g) in v[range].iter_mut().zip(g) {
                    *v = mu * *v + (1.0 - mu) * g;
                }
            }
            (Some(VelocityMut::Bf16(v)), Some(mu), None, true) => {
                bf16::momentum_run(&mut v[range], g, mu, None)
            }
            _ => {
                for (c, &g) in g.iter().enumerate() {
                    self.one(first + c, first + c, g);
                }
            }
        }
    }
}

/// Orthogonalise a `d x m` matrix held densely, or held compactly at `mask`'s connections
/// (scattered to dense for the products, gathered back: the mask stays authoritative).
fn orthogonalize_in_layout(x: &mut Matrix, mask: Option<&Mask>, d: usize, m: usize, strength: f32) {
    match mask {
        None => blend_orthogonalized(x, strength),
        Some(mask) => {
            let mut dense = Matrix::zeros(d, m);
            for (&k, &v) in mask.indices().iter().zip(x.as_slice()) {
                dense.as_mut_slice()[k as usize] = v;
            }
            blend_orthogonalized(&mut dense, strength);
            for (&k, v) in mask.indices().iter().zip(x.as_mut_slice()) {
                *v = dense.as_slice()[k as usize];
            }
        }
    }
}

/// Metaplasticity (paper eq. 16-19) in place: update the traces `theta` from `|dw|`, then
/// scale each update by its modulation factor.
pub fn modulate(dw: &mut [f32], theta: &mut [f32], mp: &Metaplasticity) {
    for (d, t) in dw.iter_mut().zip(theta.iter_mut()) {
        *d = modulate_one(*d, t, mp);
    }
}

/// Metaplasticity for one weight: update its trace `t` from `|d|` and return the modulated
/// update.
#[inline]
fn modulate_one(d: f32, t: &mut f32, mp: &Metaplasticity) -> f32 {
    *t = mp.beta * *t + (1.0 - mp.beta) * d.abs();
    let mut rho = 1.0 / (1.0 + mp.gamma * *t);
    if *t < mp.tau_inactive {
        rho *= mp.xi;
    }
    d * rho
}

/// `x <- (1 - s) x + s NS(x)`, where `NS` is one Newton-Schulz step (paper Alg. 4): normalise
/// by the Frobenius norm when it exceeds 1, then `X (1.5 I - 0.5 X^T X)` (or
/// `(1.5 I - 0.5 X X^T) X` for wide matrices), using the smaller Gram matrix.
pub fn blend_orthogonalized(x: &mut Matrix, s: f32) {
    let ns = newton_schulz_step(x);
    for (v, &o) in x.as_mut_slice().iter_mut().zip(ns.as_slice()) {
        *v = (1.0 - s) * *v + s * o;
    }
}

/// One Newton-Schulz step of paper Alg. 4 (see [`blend_orthogonalized`]).
pub fn newton_schulz_step(x: &Matrix) -> Matrix {
    use faer::Accum;
    use faer::linalg::matmul::matmul;
    let (d, m) = (x.rows(), x.cols());
    let norm = x.as_slice().iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>().sqrt() as f32;
    let scale = if norm > 1.0 { 1.0 / norm } else { 1.0 };
    let mut out = Matrix::zeros(d, m);
    // The Gram is symmetric: its lower triangle is formed (half the products of the full one)
    // and mirrored.
    let gram = |a: faer::MatRef<'_, f32>, b: faer::MatRef<'_, f32>| {
        let mut g = Matrix::zeros(a.nrows(), a.nrows());
        crate::solve::lower_product(g.view_mut(), Accum::Replace, a, b, scale * scale, crate::par());
        let s = g.rows();
        let v = g.as_mut_slice();
        for i in 0..s {
            for j in i + 1..s {
                v[i * s + j] = v[j * s + i];
            }
        }
        g
    };
    if d >= m {
        // X (1.5 I - 0.5 X^T X) = 1.5 X - 0.5 X (X^T X), with X already scaled
        let g = gram(x.view().transpose(), x.view());
        matmul(out.view_mut(), Accum::Replace, x.view(), g.view(), -0.5 * scale, crate::par());
    } else {
        let g = gram(x.view(), x.view().transpose());
        matmul(out.view_mut(), Accum::Replace, g.view(), x.view(), -0.5 * scale, crate::par());
    }
    for (o, &v) in out.as_mut_slice().iter_mut().zip(x.as_slice()) {
        *o += 1.5 * scale * v;
    }
    out
}

/// Advance the persistent right singular vector `v` of `w` (`d x m`) by `steps` power
/// iterations and return the estimate `||W v||` of the largest singular value. The products
/// run in `f32` (an estimate to about 1e-6 is plenty for a clamp) on one thread: faer splits
/// a parallel matrix-vector product along its inner dimension, so its rounding would depend on
/// the thread count, and with it every later update (a 784 x 512 product takes well under a
/// millisecond). Norms are summed in `f64`.
pub fn power_iteration(w: &Matrix, v: &mut [f32], steps: usize) -> f32 {
    use faer::linalg::matmul::matmul;
    use faer::{Accum, MatMut, MatRef, Par};
    let (d, m) = (w.rows(), w.cols());
    if v.len() != m || m == 0 || d == 0 {
        return 0.0;
    }
    let mut u = Buffer::<f32>::zeros(d);
    let mut next = Buffer::<f32>::zeros(m);
    let norm = |x: &[f32]| x.iter().map(|&a| (a as f64) * (a as f64)).sum::<f64>().sqrt();
    let w_times = |v: &[f32], u: &mut [f32]| {
        let uv = MatMut::from_column_major_slice_mut(u, d, 1);
        matmul(uv, Accum::Replace, w.view(), MatRef::from_column_major_slice(v, m, 1), 1.0, Par::Seq);
    };
    for _ in 0..steps.max(1) {
        w_times(v, &mut u);
        let nv = MatMut::from_column_major_slice_mut(&mut next, m, 1);
        matmul(
            nv,
            Accum::Replace,
            w.view().transpose(),
            MatRef::from_column_major_slice(&u, d, 1),
            1.0,
            Par::Seq,
        );
        let size = norm(&next);
        if size == 0.0 || !size.is_finite() {
            break;
        }
        for (vj, &nj) in v.iter_mut().zip(next.iter()) {
            *vj = (nj as f64 / size) as f32;
        }
    }
    // Rayleigh estimate with the refined vector: ||W v|| for unit v.
    w_times(v, &mut u);
    norm(&u) as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::solve::RidgeUpdate;

    fn update(dw: Vec<f32>, d: usize, m: usize) -> RidgeUpdate {
        RidgeUpdate {
            dw: Matrix::from_vec(d, m, dw),
            db: Matrix::from_vec(1, m, vec![0.5; m]),
            lambda_used: 0.0,
            dual: false,
        }
    }

    const OFF: UpdateRule = UpdateRule {
        metaplasticity: None,
        momentum: None,
        momentum_storage: Storage::F32,
        orthogonalize: None,
        spectral_max: None,
    };

    /// The velocity's values in `f32`.
    fn velocity(st: &LayerState) -> Vec<f32> {
        match st.velocity.as_ref().expect("momentum") {
            Velocity::F32(v) => v.as_slice().to_vec(),
            Velocity::Bf16(v) => v.to_matrix().as_slice().to_vec(),
        }
    }
    const MP: Metaplasticity =
        Metaplasticity { beta: 0.7, gamma: 0.15, tau_inactive: 1e-3, xi: 3.0, theta0: 0.1 };

    #[test]
    fn metaplasticity_factors_follow_the_formula() {
        // trace 0.1 -> 0.7*0.1 + 0.3*|2| = 0.67, rho = 1/(1 + 0.15*0.67)
        // trace 0.0005 with dw 0 -> 0.00035 < 1e-3: boosted, rho = 3/(1 + 0.15*0.00035), dw stays 0
        // trace 0.001 with dw -0.001 -> 0.7e-3 + 0.3e-3 = 1e-3: not below the threshold
        let mut dw = [2.0f32, 0.0, -0.001];
        let mut theta = [0.1f32, 0.0005, 0.001];
        modulate(&mut dw, &mut theta, &MP);
        assert!((theta[0] - 0.67).abs() < 1e-6 && (dw[0] - 2.0 / (1.0 + 0.15 * 0.67)).abs() < 1e-6);
        assert!((theta[1] - 0.00035).abs() < 1e-9 && dw[1] == 0.0);
        assert!((theta[2] - 0.001).abs() < 1e-9);
        assert!((dw[2] + 0.001 / (1.0 + 0.15 * 0.001)).abs() < 1e-9, "not boosted: {}", dw[2]);
        let mut boosted = [0.0001f32];
        let mut t = [0.0f32];
        modulate(&mut boosted, &mut t, &MP);
        assert!((boosted[0] - 0.0001 * 3.0 / (1.0 + 0.15 * 0.00003)).abs() < 1e-9, "{}", boosted[0]);
    }

    /// One Newton-Schulz step against plain loops, for tall and wide matrices, with and
    /// without the normalisation.
    #[test]
    fn newton_schulz_step_matches_dense_computation() {
        for (d, m, scale) in [(5usize, 3usize, 1.0f32), (3, 5, 1.0), (4, 4, 0.05)] {
            let x = Matrix::from_vec(
                d,
                m,
                (0..d * m).map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.1 * scale).collect(),
            );
            let norm = x.as_slice().iter().map(|v| v * v).sum::<f32>().sqrt();
            let c = if norm > 1.0 { 1.0 / norm } else { 1.0 };
            let xs: Vec<f64> = x.as_slice().iter().map(|&v| (v * c) as f64).collect();
            let at = |i: usize, j: usize| xs[i * m + j];
            let mut want = vec![0.0f64; d * m];
            for i in 0..d {
                for j in 0..m {
                    let mut v = 1.5 * at(i, j);
                    if d >= m {
                        for k in 0..m {
                            let g: f64 = (0..d).map(|r| at(r, k) * at(r, j)).sum();
                            v -= 0.5 * at(i, k) * g;
                        }
                    } else {
                        for k in 0..d {
                            let g: f64 = (0..m).map(|cc| at(i, cc) * at(k, cc)).sum();
                            v -= 0.5 * g * at(k, j);
                        }
                    }
                    want[i * m + j] = v;
                }
            }
            let got = newton_schulz_step(&x);
            for (g, w) in got.as_slice().iter().zip(&want) {
                assert!((*g as f64 - w).abs() < 1e-5, "{d}x{m}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn orthogonalization_runs_every_k_steps_only() {
        let rule = UpdateRule {
            momentum: Some(0.5),
            orthogonalize: Some(Orthogonalize { every: 2, strength: 0.1 }),
            ..OFF
        };
        let mut layer = Dense::new(Matrix::zeros(2, 2));
        let mut st = LayerState::new(&layer, None, &rule);
        let dw = vec![1.0, 0.0, 0.0, 0.5];
        st.apply(&mut layer, None, update(dw.clone(), 2, 2), &rule).expect("apply");
        // step 1: V = 0.5 dW exactly
        assert_eq!(velocity(&st), &[0.5, 0.0, 0.0, 0.25]);
        st.apply(&mut layer, None, update(dw, 2, 2), &rule).expect("apply");
        // step 2: V = 0.5*V + 0.5 dW = [0.75, 0, 0, 0.375], then blended with NS(V):
        // ||V||_F < 1, so NS(V) = 1.5 V - 0.5 V^3 (diagonal)
        let v = &velocity(&st);
        let ns = |x: f32| 1.5 * x - 0.5 * x * x * x;
        assert!((v[0] - (0.9 * 0.75 + 0.1 * ns(0.75))).abs() < 1e-6, "{v:?}");
        assert!((v[3] - (0.9 * 0.375 + 0.1 * ns(0.375))).abs() < 1e-6, "{v:?}");
    }

    #[test]
    fn power_iteration_finds_largest_singular_value() {
        // diag(3, 1) rotated: singular values 3 and 1.
        let (c, s) = (0.6f32, 0.8f32);
        let w = Matrix::from_vec(2, 2, vec![3.0 * c, -s, 3.0 * s, c]);
        let mut v = vec![std::f32::consts::FRAC_1_SQRT_2; 2];
        let sigma = power_iteration(&w, &mut v, 50);
        assert!((sigma - 3.0).abs() < 1e-4, "{sigma}");
    }

    #[test]
    fn momentum_follows_its_recurrence() {
        let rule = UpdateRule { momentum: Some(0.9), spectral_max: None, ..OFF };
        let mut layer = Dense::new(Matrix::zeros(1, 2));
        let mut st = LayerState::new(&layer, None, &rule);
        st.apply(&mut layer, None, update(vec![1.0, -2.0], 1, 2), &rule).expect("apply");
        // V1 = 0.1 dW, W1 = V1
        assert!((layer.weights.as_slice()[0] - 0.1).abs() < 1e-7);
        st.apply(&mut layer, None, update(vec![1.0, -2.0], 1, 2), &rule).expect("apply");
        // V2 = 0.9*0.1 + 0.1 = 0.19, W2 = 0.1 + 0.19
        assert!((layer.weights.as_slice()[0] - 0.29).abs() < 1e-6);
        assert!((layer.weights.as_slice()[1] + 0.58).abs() < 1e-6);
        assert!((layer.bias.as_slice()[0] - 1.0).abs() < 1e-7, "bias takes db twice, no momentum");
    }

    /// A `bf16` velocity keeps the recurrence of an independent loop that rounds `V` after
    /// every update, moves the weights by the rounded `V`, and holds half the bytes.
    #[test]
    fn bf16_momentum_is_the_rounded_recurrence() {
        let rule = UpdateRule { momentum: Some(0.9), momentum_storage: Storage::Bf16, ..OFF };
        let (d, m) = (3, 5);
        let mut layer = Dense::new(Matrix::zeros(d, m));
        let mut st = LayerState::new(&layer, None, &rule);
        let f32_state = LayerState::new(&layer, None, &UpdateRule { momentum_storage: Storage::F32, ..rule });
        assert_eq!(2 * st.bytes(), f32_state.bytes());
        let (mut v, mut w) = (vec![0.0f32; d * m], vec![0.0f32; d * m]);
        for step in 0..7 {
            let dw: Vec<f32> = (0..d * m).map(|i| ((i * 7 + step * 3) % 11) as f32 / 7.0 - 0.6).collect();
            for i in 0..d * m {
                let exact = 0.9 * v[i] + 0.1 * dw[i];
                v[i] = f32::from_bits(exact.to_bits() & 0xffff_0000);
                // round to nearest: the truncation or the next bf16 up, whichever is closer
                let up = f32::from_bits(v[i].to_bits() + 0x1_0000);
                if (up - exact).abs() < (exact - v[i]).abs() {
                    v[i] = up;
                }
                w[i] += v[i];
            }
            st.apply(&mut layer, None, update(dw, d, m), &rule).expect("apply");
            assert_eq!(velocity(&st), v, "step {step}");
            assert_eq!(layer.weights.as_slice(), &w[..], "step {step}");
        }
    }

    #[test]
    fn clamp_scales_weights_to_max_norm() {
        let rule = UpdateRule { momentum: None, spectral_max: Some(2.0), ..OFF };
        let mut layer = Dense::new(Matrix::zeros(2, 2));
        let mut st = LayerState::new(&layer, None, &rule);
        st.apply(&mut layer, None, update(vec![5.0, 0.0, 0.0, 1.0], 2, 2), &rule).expect("apply");
        let w = layer.weights.as_slice();
        assert!((w[0] - 2.0).abs() < 1e-3 && (w[3] - 0.4).abs() < 1e-3, "{w:?}");
        assert!(st.bytes() > 0 && st.velocity.is_none());
    }

    /// Streaming the solve into the state gives the weights that materialising the update
    /// and applying it gives, for dense and masked layers, across an orthogonalisation step.
    #[test]
    fn streamed_update_matches_materialized_update() {
        use crate::init::xavier_normal;
        use crate::solve::{Precision, RidgeConfig, RidgeScale, SolvePath, ridge_update, ridge_update_tiles};
        use rand::SeedableRng;
        use rand_chacha::ChaCha8Rng;
        let ridge = RidgeConfig {
            alpha: 0.5,
            lambda: 0.3,
            scale: RidgeScale::Relative,
            path: SolvePath::Auto,
            precision: Precision::F64,
            error_checked: false,
        };
        let cases = [
            (false, Some(0.9), Storage::F32),
            (true, Some(0.9), Storage::F32),
            (false, None, Storage::F32),
            (true, None, Storage::F32),
            (false, Some(0.9), Storage::Bf16),
            (true, Some(0.9), Storage::Bf16),
        ];
        for (masked, momentum, momentum_storage) in cases {
            let rule = UpdateRule {
                metaplasticity: Some(MP),
                momentum,
                momentum_storage,
                orthogonalize: Some(Orthogonalize { every: 5, strength: 0.1 }),
                spectral_max: Some(2.0),
            };
            // A streamed value that differs in its last bit may round to the neighbouring
            // bf16 (2^-8 relative apart) where the materialised one did not.
            let tol = match momentum_storage {
                Storage::F32 => 1e-5,
                Storage::Bf16 => 2e-2,
            };
            let mut rng = ChaCha8Rng::seed_from_u64(5);
            let (mask, mut a, mut b, mut sa, mut sb) = twin_layers(masked, &rule, &mut rng);
            for step in 0..6 {
                let x = xavier_normal(30, 20, &mut rng);
                let e = xavier_normal(30, 140, &mut rng);
                let u = ridge_update(&x, &e, &ridge).expect("solve");
                sa.apply(&mut a, mask.as_ref(), u, &rule).expect("apply");
                sb.stream_update(&mut b, mask.as_ref(), &rule, |sink| {
                    ridge_update_tiles(&x, &e, &ridge, sink).map(|_| ())
                })
                .expect("stream");
                for (p, q) in a
                    .weights
                    .as_slice()
                    .iter()
                    .chain(a.bias.as_slice())
                    .zip(b.weights.as_slice().iter().chain(b.bias.as_slice()))
                {
                    assert!(
                        (p - q).abs() <= tol * p.abs().max(1e-2),
                        "masked {masked}, momentum {momentum:?} {momentum_storage:?}, step {step}: {p} vs {q}"
                    );
                }
            }
        }
    }

    /// Two identical 20 x 140 layers (masked at 10% small-world connections if `masked`) with
    /// fresh state under `rule`, for comparing two ways of applying the same updates.
    fn twin_layers(
        masked: bool,
        rule: &UpdateRule,
        rng: &mut rand_chacha::ChaCha8Rng,
    ) -> (Option<Mask>, Dense, Dense, LayerState, LayerState) {
        use crate::init::xavier_normal;
        use crate::sparse::small_world_mask;
        let mask = masked.then(|| small_world_mask(20, 140, 0.1, rng));
        let mut w0 = xavier_normal(20, 140, rng);
        if let Some(m) = &mask {
            m.apply(&mut w0);
        }
        let (a, b) = (Dense::new(w0.clone()), Dense::new(w0));
        let (sa, sb) = (LayerState::new(&a, mask.as_ref(), rule), LayerState::new(&b, mask.as_ref(), rule));
        (mask, a, b, sa, sb)
    }

    /// Fold `tile` into `st` and `w` (the weights unless `defer`), on one thread or split
    /// between threads; returns the bias update.
    fn fold_with(
        st: &mut LayerState,
        w: &mut Matrix,
        tile: Tile<'_>,
        rule: &UpdateRule,
        mask: Option<&Mask>,
        split: bool,
        defer: bool,
    ) -> Vec<f32> {
        let (d, m) = (w.rows(), w.cols());
        let mu = rule.momentum.filter(|_| st.velocity.is_some());
        let mut fold = Fold {
            w: if defer { &mut [] } else { w.as_mut_slice() },
            theta: st.theta.as_mut().map(|t| t.as_mut_slice()),
            velocity: st.velocity.as_mut().map(Velocity::values_mut),
            mp: rule.metaplasticity,
            mu,
            defer_weights: defer,
            w0: 0,
            k0: 0,
        };
        let mut db = vec![0.0; m];
        if split {
            fold_tile_par(&mut fold, &mut db, tile, (d, m), mask);
        } else {
            fold_tile(&mut fold, &mut db, tile, (d, m), mask);
        }
        db
    }

    /// A tile large enough to be folded on several threads (split recursively at rows that
    /// fall inside the mask's runs) gives the one-thread bits in the weights, the velocity,
    /// the traces and the bias, densely and at a mask's connections, for every fold path.
    #[test]
    fn a_tile_folded_on_several_threads_gives_the_one_thread_bits() {
        use crate::init::xavier_normal;
        use crate::sparse::small_world_mask;
        use rand::SeedableRng;
        use rand_chacha::ChaCha8Rng;
        let (d, m) = (300, 230);
        assert!((d + 1) * m >= 2 * PARALLEL_FOLD_VALUES, "the tile must split");
        for masked in [false, true] {
            for mp in [None, Some(MP)] {
                for (momentum, storage) in
                    [(Some(0.9), Storage::F32), (Some(0.9), Storage::Bf16), (None, Storage::F32)]
                {
                    for defer in [false, true] {
                        if defer && momentum.is_none() {
                            continue; // a deferred update needs a velocity to wait in
                        }
                        let rule =
                            UpdateRule { metaplasticity: mp, momentum, momentum_storage: storage, ..OFF };
                        let case = format!(
                            "masked {masked}, mp {}, {momentum:?} {storage:?}, defer {defer}",
                            mp.is_some()
                        );
                        let mut rng = ChaCha8Rng::seed_from_u64(11);
                        let mask = masked.then(|| small_world_mask(d, m, 0.2, &mut rng));
                        let w = xavier_normal(d, m, &mut rng);
                        let layer = Dense::new(w.clone());
                        let mask = mask.as_ref();
                        let (mut sa, mut sb) =
                            (LayerState::new(&layer, mask, &rule), LayerState::new(&layer, mask, &rule));
                        let (mut wa, mut wb) = (w.clone(), w);
                        // Two steps, the second over a non-zero velocity; the tile holds the
                        // bias row last, as a primal solve's does.
                        for step in 0..2 {
                            let g = xavier_normal(d + 1, m, &mut rng);
                            let tile = Tile { values: g.as_slice(), cols: m, row0: 0, col0: 0 };
                            let dba = fold_with(&mut sa, &mut wa, tile, &rule, mask, false, defer);
                            let dbb = fold_with(&mut sb, &mut wb, tile, &rule, mask, true, defer);
                            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                            assert_eq!(
                                bits(wa.as_slice()),
                                bits(wb.as_slice()),
                                "{case}, step {step}: weights"
                            );
                            assert_eq!(bits(&dba), bits(&dbb), "{case}, step {step}: bias");
                            if momentum.is_some() {
                                assert_eq!(
                                    bits(&velocity(&sa)),
                                    bits(&velocity(&sb)),
                                    "{case}, step {step}: velocity"
                                );
                            }
                            let theta = |s: &LayerState| s.theta.as_ref().map(|t| bits(t.as_slice()));
                            assert_eq!(theta(&sa), theta(&sb), "{case}, step {step}: traces");
                        }
                    }
                }
            }
        }
    }

    /// A deferred update leaves the weights alone until it is finished, then gives the bits
    /// of the materialised update, with and without metaplasticity (the fast paths), a mask,
    /// momentum, and on orthogonalising steps.
    #[test]
    fn deferred_update_matches_materialized_update_bit_for_bit() {
        use crate::init::xavier_normal;
        use crate::solve::{Precision, RidgeConfig, RidgeScale, SolvePath, ridge_update, ridge_update_tiles};
        use rand::SeedableRng;
        use rand_chacha::ChaCha8Rng;
        let ridge = RidgeConfig {
            alpha: 0.5,
            lambda: 0.3,
            scale: RidgeScale::Relative,
            path: SolvePath::Auto,
            precision: Precision::F64,
            error_checked: false,
        };
        for masked in [false, true] {
            for mp in [None, Some(MP)] {
                for (momentum, storage) in
                    [(Some(0.9), Storage::F32), (Some(0.9), Storage::Bf16), (None, Storage::F32)]
                {
                    let rule = UpdateRule {
                        metaplasticity: mp,
                        momentum,
                        momentum_storage: storage,
                        orthogonalize: Some(Orthogonalize { every: 3, strength: 0.1 }),
                        spectral_max: Some(2.0),
                    };
                    let case =
                        format!("masked {masked}, metaplasticity {}, {momentum:?} {storage:?}", mp.is_some());
                    let mut rng = ChaCha8Rng::seed_from_u64(7);
                    let (mask, mut a, mut b, mut sa, mut sb) = twin_layers(masked, &rule, &mut rng);
                    let mask = mask.as_ref();
                    for step in 0..7 {
                        let x = xavier_normal(30, 20, &mut rng);
                        let e = xavier_normal(30, 140, &mut rng);
                        sa.apply(&mut a, mask, ridge_update(&x, &e, &ridge).expect("solve"), &rule)
                            .expect("apply");
                        let before = b.weights.as_slice().to_vec();
                        let pending = sb
                            .stream_deferred((20, 140), mask, &rule, |sink| {
                                ridge_update_tiles(&x, &e, &ridge, sink).map(|_| ())
                            })
                            .expect("stream");
                        assert_eq!(
                            b.weights.as_slice(),
                            &before[..],
                            "{case}, step {step}: weights moved early"
                        );
                        sb.finish_deferred(&mut b, mask, pending, &rule).expect("finish");
                        assert_eq!(a.weights.as_slice(), b.weights.as_slice(), "{case}, step {step}");
                        assert_eq!(a.bias.as_slice(), b.bias.as_slice(), "{case}, step {step}");
                        assert_eq!(sa.steps, sb.steps);
                    }
                }
            }
        }
    }
}
