//! Depthwise `k x k` convolution (SPEC section 4, paper App. F) over NHWC feature maps.
//!
//! A batch of feature maps is a [`Matrix`] with one row per position (`B * H * W` rows, sample
//! after sample, row-major within a sample) and one column per channel. In this layout a
//! pointwise (1x1) convolution is exactly a dense layer over the rows, and flattening a
//! sample is a free reshape. Each channel has its own `k x k` kernel and bias; padding is
//! `k / 2` (zeros) and the stride 1 or 2.
//!
//! The Prospective Learning update of a depthwise layer is one small regularised
//! least-squares solve per channel, on that channel's `k*k` patch values plus a bias column
//! ([`depthwise_ridge_update`]); the `(k*k + 1)^2` Gram matrices are accumulated straight
//! from the input, without materialising the patch matrix.

use crate::activation::Activation;
use crate::dense::Dense;
use crate::error::Dim;
use crate::layer::{Combine, ErrorMode, Op, PerSample};
use crate::ledger::Buffer;
use crate::solve::{Precision, RidgeConfig, RidgeScale, RidgeUpdate, solve_spd_in_place};
use crate::update::UpdateRule;
use crate::{Matrix, OpsError};
use rayon::prelude::*;
use std::any::Any;

mod shifted;

/// Spatial geometry of a depthwise layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Kernel size (odd).
    pub k: usize,
    /// Stride.
    pub stride: usize,
}

impl Geometry {
    /// Padding on each border: `k / 2`.
    pub fn pad(&self) -> usize {
        self.k / 2
    }

    /// Output height.
    pub fn out_h(&self) -> usize {
        (self.h + 2 * self.pad() - self.k) / self.stride + 1
    }

    /// Output width.
    pub fn out_w(&self) -> usize {
        (self.w + 2 * self.pad() - self.k) / self.stride + 1
    }

    /// For output position `(oy, ox)` and tap `t`, the input position, if inside the map.
    #[inline]
    fn source(&self, oy: usize, ox: usize, t: usize) -> Option<usize> {
        let (dy, dx) = (t / self.k, t % self.k);
        let y = (oy * self.stride + dy).checked_sub(self.pad())?;
        let x = (ox * self.stride + dx).checked_sub(self.pad())?;
        (y < self.h && x < self.w).then_some(y * self.w + x)
    }

    fn check(&self, op: &'static str, x: &Matrix, channels: usize) -> Result<usize, OpsError> {
        let per = self.h * self.w;
        OpsError::check(op, "input", &[Dim::MultipleOf(per), Dim::Exact(channels)], &[x.rows(), x.cols()])?;
        Ok(x.rows() / per)
    }
}

/// A depthwise convolution: one `k x k` kernel and one bias per channel.
#[derive(Debug, Clone)]
pub struct Depthwise {
    /// The kernels as a `(k*k) x C` weight matrix (row `t = dy * k + dx` holds tap `t` of
    /// every channel) and the `1 x C` bias: the same parameter block as a dense layer's, so
    /// the PL update rule and the optimisers treat both alike.
    pub params: Dense,
    /// The layer's geometry.
    pub geometry: Geometry,
}

impl Depthwise {
    /// A layer from its kernel (`k*k x C`); the bias starts at zero.
    pub fn new(kernel: Matrix, geometry: Geometry) -> Self {
        Self { params: Dense::new(kernel), geometry }
    }

    /// Channels in and out.
    pub fn channels(&self) -> usize {
        self.params.weights.cols()
    }

    /// Trainable values.
    pub fn parameter_count(&self) -> usize {
        self.params.parameter_count()
    }

    /// Convolve a batch of maps (`B*H*W x C`) into `B*Ho*Wo x C`.
    pub fn forward(&self, x: &Matrix) -> Result<Matrix, OpsError> {
        self.forward_activated(x, Activation::Linear)
    }

    /// [`Depthwise::forward`] with `act` applied to each sample's output map as soon as it
    /// is formed, while it is in cache: a pass of its own over a 28x28x32 batch read and
    /// wrote 12.8 MB from memory.
    pub fn forward_activated(&self, x: &Matrix, act: Activation) -> Result<Matrix, OpsError> {
        let g = self.geometry;
        let c = self.channels();
        let batch = g.check("depthwise forward", x, c)?;
        let (per_in, per_out) = (g.h * g.w, g.out_h() * g.out_w());
        let mut out = Matrix::zeros(batch * per_out, c);
        let (kernel, bias) = (self.params.weights.as_slice(), self.params.bias.as_slice());
        out.as_mut_slice().par_chunks_mut(per_out * c).zip(x.as_slice().par_chunks(per_in * c)).for_each(
            |(dst, src)| {
                forward_sample(&g, kernel, bias, src, dst);
                act.apply(dst);
            },
        );
        Ok(out)
    }

    /// The error reaching the input (`B*H*W x C`) from the output error `e` (`B*Ho*Wo x C`):
    /// the transposed convolution with each channel's kernel, before the input activation's
    /// derivative is applied.
    pub fn input_error(&self, e: &Matrix) -> Result<Matrix, OpsError> {
        let g = self.geometry;
        let batch = self.check_error(e)?;
        let (per_in, per_out, c) = (g.h * g.w, g.out_h() * g.out_w(), self.channels());
        let mut out = Matrix::zeros(batch * per_in, c);
        out.as_mut_slice()
            .par_chunks_mut(per_in * c)
            .zip(e.as_slice().par_chunks(per_out * c))
            .for_each(|(dst, src)| self.input_error_sample(src, dst));
        Ok(out)
    }

    /// Samples in the output error `e`, checked against the layer's output shape.
    pub(crate) fn check_error(&self, e: &Matrix) -> Result<usize, OpsError> {
        let g = self.geometry;
        let out_geometry = Geometry { h: g.out_h(), w: g.out_w(), k: 1, stride: 1 };
        out_geometry.check("depthwise error propagation", e, self.channels())
    }

    /// [`Depthwise::input_error`] of one sample: `err` is its `Ho*Wo x C` output error and
    /// `dst` its `H*W x C` input error, overwritten.
    pub(crate) fn input_error_sample(&self, err: &[f32], dst: &mut [f32]) {
        error_sample(&self.geometry, self.params.weights.as_slice(), err, dst);
    }

    /// Gradients of `sum(e * forward(x))` with respect to the kernel and the bias, for the
    /// backprop baselines: `(k*k x C, 1 x C)`.
    pub fn gradients(&self, x: &Matrix, e: &Matrix) -> Result<(Matrix, Matrix), OpsError> {
        let g = self.geometry;
        let c = self.channels();
        let batch = g.check("depthwise gradients", x, c)?;
        let (per_out, taps) = (g.out_h() * g.out_w(), g.k * g.k);
        OpsError::check(
            "depthwise gradients",
            "error",
            &[Dim::Exact(batch * per_out), Dim::Exact(c)],
            &[e.rows(), e.cols()],
        )?;
        let (xs, es) = (x.as_slice(), e.as_slice());
        // The right-hand side of the PL solve is exactly this gradient: the same sums,
        // without the Gram.
        let sums = batch_sums(&g, c, (xs, es, batch), Sums::Rhs, true);
        let gk = Matrix::from_vec(taps, c, sums[..taps * c].iter().map(|&v| v as f32).collect());
        let gb = Matrix::from_vec(1, c, sums[taps * c..].iter().map(|&v| v as f32).collect());
        Ok((gk, gb))
    }
}

impl Op for Depthwise {
    fn kind(&self) -> &'static str {
        "depthwise"
    }

    fn clone_op(&self) -> Box<dyn Op> {
        Box::new(self.clone())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn input(&self, _: usize) -> PerSample {
        PerSample { rows: self.geometry.h * self.geometry.w, cols: self.channels() }
    }

    fn output(&self, _: usize) -> PerSample {
        PerSample { rows: self.geometry.out_h() * self.geometry.out_w(), cols: self.channels() }
    }

    fn params(&self) -> Option<&Dense> {
        Some(&self.params)
    }

    fn params_mut(&mut self) -> Option<&mut Dense> {
        Some(&mut self.params)
    }

    fn forward(&self, input: &Matrix) -> Result<Matrix, OpsError> {
        Depthwise::forward(self, input)
    }

    fn forward_activated(&self, input: &Matrix, act: Activation) -> Result<Matrix, OpsError> {
        Depthwise::forward_activated(self, input, act)
    }

    fn input_error(&self, err: &Matrix, _: ErrorMode) -> Result<Matrix, OpsError> {
        Depthwise::input_error(self, err)
    }

    /// One sample at a time, each into its own map-sized scratch.
    fn error_in_place(
        &self,
        err: &Matrix,
        below: &mut Matrix,
        _: usize,
        _: ErrorMode,
        combine: &Combine<'_>,
    ) -> Result<(), OpsError> {
        let samples = self.check_error(err)?.max(1);
        let (per_in, per_out) = (below.rows() / samples, err.rows() / samples);
        let c = below.cols();
        let chunks =
            below.as_mut_slice().par_chunks_mut(per_in * c).zip(err.as_slice().par_chunks(per_out * c));
        chunks.enumerate().for_each(|(i, (a, e))| {
            let mut scratch = Buffer::<f32>::zeros(a.len());
            self.input_error_sample(e, &mut scratch);
            combine(i * per_in * c, &mut scratch, a);
        });
        Ok(())
    }

    fn error_scratch_bytes(&self, _: usize, threads: usize) -> usize {
        threads * self.geometry.h * self.geometry.w * self.channels() * size_of::<f32>()
    }

    /// The spectral clamp and orthogonalisation act on weight matrices, so they are left
    /// out for a `k*k x C` stack of independent kernels; momentum and metaplasticity apply.
    fn rule(&self, rule: &UpdateRule) -> UpdateRule {
        UpdateRule { spectral_max: None, orthogonalize: None, ..*rule }
    }

    fn pl_update(
        &self,
        input: &Matrix,
        err: &Matrix,
        ridge: &RidgeConfig,
    ) -> Result<Option<RidgeUpdate>, OpsError> {
        let (dw, db) = depthwise_ridge_update(self, input, err, ridge)?;
        Ok(Some(RidgeUpdate { dw, db, lambda_used: 0.0, dual: false }))
    }

    fn gradients(&self, input: &Matrix, delta: &Matrix) -> Result<Option<(Matrix, Matrix)>, OpsError> {
        Depthwise::gradients(self, input, delta).map(Some)
    }
}

/// Output positions whose patches are folded into the sums together: each tap's values of
/// the group stay in registers while every product with it is formed, and each accumulator
/// is loaded and stored once per group rather than once per position.
const GROUP: usize = 8;
const _: () = assert!(GROUP == 8, "dot adds exactly eight products");

/// Channels per narrow block of the sums (one 512-bit vector of `f32`).
const LANES: usize = 16;

/// Channels per wide block of the sums: two vectors per position halve the loops' overhead
/// per product (the 28x28 stride-1 PL solve of 32 channels: 6.8 -> 4.7 ms).
const WIDE: usize = 2 * LANES;

/// Output positions (along one output row) whose products are summed in the row arithmetic
/// before being added to the `f64` sums: 32 terms in `f32` keep a sum's relative rounding
/// near `32 * 6e-8`, far below what a `10 x 10` system of condition 1000 can amplify into
/// the update (tested against the `f64` sums below).
const SEGMENT: usize = 32;

/// The arithmetic of the products and of the short sums over [`SEGMENT`] positions: `f32`
/// (the default: eight lanes per vector and no conversion) or `f64` (`precision: f64`).
/// Segments are always added into `f64` sums.
trait SegmentSum:
    Copy + Default + From<f32> + Into<f64> + std::ops::Add<Output = Self> + std::ops::Mul<Output = Self>
{
    /// `dst[i] = src[i]` in this arithmetic.
    fn load(dst: &mut [Self], src: &[f32]);
    /// `self * a + b` rounded once: one instruction where the sums are compiled for vectors
    /// with FMA, the correctly rounded (and much slower) library function on a CPU without
    /// it, for the same bits.
    fn mul_add(self, a: Self, b: Self) -> Self;
}
impl SegmentSum for f32 {
    #[inline(always)]
    fn mul_add(self, a: Self, b: Self) -> Self {
        f32::mul_add(self, a, b)
    }
    /// A plain copy: written as a per-value conversion, the compiler unrolled it into one
    /// scalar load and store per value, a third of the stride-2 solve's time.
    #[inline(always)]
    fn load(dst: &mut [Self], src: &[f32]) {
        dst.copy_from_slice(src);
    }
}
impl SegmentSum for f64 {
    #[inline(always)]
    fn mul_add(self, a: Self, b: Self) -> Self {
        f64::mul_add(self, a, b)
    }
    #[inline(always)]
    fn load(dst: &mut [Self], src: &[f32]) {
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = f64::from(v);
        }
    }
}

/// Which sums [`accumulate_sample`] forms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sums {
    /// The Gram and the right-hand side of [`depthwise_ridge_update`].
    GramAndRhs,
    /// The right-hand side only (the gradient of [`Depthwise::gradients`]).
    Rhs,
}

/// One sample's share of the depthwise sums: its input map (`H*W x C`), its output error
/// (`Ho*Wo x C`), and which sums to form.
#[derive(Clone, Copy)]
struct Sample<'a> {
    g: &'a Geometry,
    c: usize,
    src: &'a [f32],
    err: &'a [f32],
    sums: Sums,
}

widest_vectors! {
    /// One sample's depthwise convolution: `src` its `H*W x C` input, `dst` its `Ho*Wo x C`
    /// output. Each position's channels are one contiguous run per tap, in the widest vector
    /// lanes the CPU has (the same bits as scalar code: no operation is fused).
    fn forward_sample(g: &Geometry, kernel: &[f32], bias: &[f32], src: &[f32], dst: &mut [f32]) => forward_values
}

#[inline(always)]
fn forward_values(g: &Geometry, kernel: &[f32], bias: &[f32], src: &[f32], dst: &mut [f32]) {
    let c = bias.len();
    for oy in 0..g.out_h() {
        for ox in 0..g.out_w() {
            let o = &mut dst[(oy * g.out_w() + ox) * c..][..c];
            o.copy_from_slice(bias);
            for t in 0..g.k * g.k {
                if let Some(p) = g.source(oy, ox, t) {
                    let (xi, kt) = (&src[p * c..][..c], &kernel[t * c..][..c]);
                    for ((o, &xv), &kv) in o.iter_mut().zip(xi).zip(kt) {
                        *o += xv * kv;
                    }
                }
            }
        }
    }
}

widest_vectors! {
    /// One sample's transposed convolution: `err` its `Ho*Wo x C` output error, `dst` its
    /// `H*W x C` input error (overwritten), in the widest vector lanes the CPU has.
    fn error_sample(g: &Geometry, kernel: &[f32], err: &[f32], dst: &mut [f32]) => error_values
}

#[inline(always)]
fn error_values(g: &Geometry, kernel: &[f32], err: &[f32], dst: &mut [f32]) {
    let c = kernel.len() / (g.k * g.k).max(1);
    dst.iter_mut().for_each(|d| *d = 0.0);
    for oy in 0..g.out_h() {
        for ox in 0..g.out_w() {
            let eo = &err[(oy * g.out_w() + ox) * c..][..c];
            for t in 0..g.k * g.k {
                if let Some(p) = g.source(oy, ox, t) {
                    let (d, kt) = (&mut dst[p * c..][..c], &kernel[t * c..][..c]);
                    for ((d, &ev), &kv) in d.iter_mut().zip(eo).zip(kt) {
                        *d += ev * kv;
                    }
                }
            }
        }
    }
}

/// [`accumulate_sample`] compiled for the widest vectors the CPU has: the crate is built for
/// baseline x86-64 (four `f32` lanes), and these loops run 16 wide with AVX-512. Every lane
/// does the same operations in the same order whatever the width, and every multiply-add is
/// fused explicitly ([`SegmentSum::mul_add`]), so the sums are the same bits on every CPU.
fn accumulate<T: SegmentSum>(sample: Sample<'_>, acc: &mut [f64]) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX-512F and FMA, the features the function is compiled for.
            return unsafe { accumulate_avx512::<T>(sample, acc) };
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA, the features the function is compiled for.
            return unsafe { accumulate_avx2::<T>(sample, acc) };
        }
    }
    accumulate_sample::<T>(sample, acc);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn accumulate_avx512<T: SegmentSum>(sample: Sample<'_>, acc: &mut [f64]) {
    accumulate_sample::<T>(sample, acc);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn accumulate_avx2<T: SegmentSum>(sample: Sample<'_>, acc: &mut [f64]) {
    accumulate_sample::<T>(sample, acc);
}

/// The sums `which` of a batch (`xs` its input maps, `es` its output errors), in the layout of
/// [`accumulate_sample`]'s `acc`, products in `f32` when `single` (else `f64`). At stride 1
/// they are formed by offset ([`shifted`]) and assembled into that layout.
fn batch_sums(
    g: &Geometry,
    c: usize,
    (xs, es, batch): (&[f32], &[f32], usize),
    which: Sums,
    single: bool,
) -> Vec<f64> {
    let (per_in, per_out) = (g.h * g.w, g.out_h() * g.out_w());
    let (shifted, rows) = sums_layout(g, which);
    let sums = crate::reduce::ordered_sum(batch, rows * c, |s, acc| {
        let (src, err) = (&xs[s * per_in * c..][..per_in * c], &es[s * per_out * c..][..per_out * c]);
        let sample = Sample { g, c, src, err, sums: which };
        if single {
            accumulate::<f32>(sample, acc);
        } else {
            accumulate::<f64>(sample, acc);
        }
    });
    match shifted {
        Some(lay) => shifted::assemble(g, &lay, c, &sums, batch),
        None => sums,
    }
}

/// How [`accumulate_sample`] lays out a sample's sums: by offset ([`shifted::Layout`], to be
/// assembled) or directly; and the rows (of one value per channel) it adds into.
fn sums_layout(g: &Geometry, which: Sums) -> (Option<shifted::Layout>, usize) {
    let dim = g.k * g.k + 1;
    match (shifted::applies(g), which) {
        (true, _) => {
            let lay = shifted::Layout::new(g, which);
            let rows = lay.rows();
            (Some(lay), rows)
        }
        (false, Sums::GramAndRhs) => (None, dim * (dim + 1) / 2 + dim),
        (false, Sums::Rhs) => (None, dim),
    }
}

/// Add one sample's contribution to the per-channel sums of [`depthwise_ridge_update`]:
/// `acc` holds the lower triangle of every channel's `(k*k + 1)^2` Gram, laid out
/// `[entry][channel]` (with [`Sums::GramAndRhs`]), then the `k*k + 1` right-hand-side rows.
/// The patches are read where they lie in the input map (a tap outside the map reads a row
/// of zeros), nothing is copied. At stride 1 `acc` is laid out by offset instead
/// ([`shifted::Layout`], see [`sums_layout`]) and assembled into this layout afterwards. The
/// channel blocks are plain loops here and in [`accumulate_group`]: a shared helper taking
/// a closure cost the stride-1 solve 40% (4.7 -> 6.7 ms in `conv_ops`).
#[inline(always)]
fn accumulate_sample<T: SegmentSum>(sample: Sample<'_>, acc: &mut [f64]) {
    let Sample { g, c, src, err, sums } = sample;
    if shifted::applies(g) {
        let lay = shifted::Layout::new(g, sums);
        let sample = (src, err, c);
        let mut c0 = 0;
        while c0 + WIDE <= c {
            shifted::accumulate_block::<T, WIDE>(g, &lay, sample, acc, c0);
            c0 += WIDE;
        }
        if c0 + LANES <= c {
            shifted::accumulate_block::<T, LANES>(g, &lay, sample, acc, c0);
            c0 += LANES;
        }
        for ch in c0..c {
            shifted::accumulate_block::<T, 1>(g, &lay, sample, acc, ch);
        }
        return;
    }
    let taps = g.k * g.k;
    let zeros = vec![0.0f32; c];
    let mut segment = vec![T::default(); acc.len()];
    let mut patches: Vec<&[f32]> = vec![&zeros; GROUP * taps];
    let mut errors: [&[f32]; GROUP] = [&zeros; GROUP];
    let mut block = vec![[[T::default(); WIDE]; GROUP]; taps];
    // Segments and groups run over the output positions in row-major order, across row
    // ends: a 14-wide row in one segment of two groups (the second two positions short)
    // flushed the segment's sums once per 14 positions instead of once per 32.
    let (ow, positions) = (g.out_w(), g.out_h() * g.out_w());
    for s0 in (0..positions).step_by(SEGMENT) {
        let s1 = (s0 + SEGMENT).min(positions);
        segment.iter_mut().for_each(|v| *v = T::default());
        for first in (s0..s1).step_by(GROUP) {
            let count = GROUP.min(s1 - first);
            for q in 0..GROUP {
                let (oy, ox) = ((first + q) / ow, (first + q) % ow);
                let slots = &mut patches[q * taps..][..taps];
                // Tap (dy, dx) reads input (oy*s + dy - pad, ox*s + dx - pad), if inside
                // the map; no division per tap (this loop runs per position).
                for (dy, row) in slots.chunks_exact_mut(g.k).enumerate() {
                    let y = (oy * g.stride + dy).checked_sub(g.pad()).filter(|&y| y < g.h && q < count);
                    for (dx, slot) in row.iter_mut().enumerate() {
                        let x = (ox * g.stride + dx).checked_sub(g.pad()).filter(|&x| x < g.w);
                        *slot = match (y, x) {
                            (Some(y), Some(x)) => &src[(y * g.w + x) * c..][..c],
                            _ => &zeros,
                        };
                    }
                }
                errors[q] = if q < count { &err[(first + q) * c..][..c] } else { &zeros };
            }
            accumulate_group(taps, c, (&patches, &errors, count), sums, &mut segment, &mut block);
        }
        acc.iter_mut().zip(&segment).for_each(|(a, &v)| *a += v.into());
    }
}

/// Add the products of one group of [`GROUP`] positions (`patches[q * taps + t]`, `errors[q]`;
/// `count` of them real, the rest rows of zeros) into `sums`, laid out like
/// [`accumulate_sample`]'s `acc`: blocks of [`WIDE`] and [`LANES`] channels, then one channel
/// at a time.
#[inline(always)]
fn accumulate_group<T: SegmentSum>(
    taps: usize,
    c: usize,
    group: (&[&[f32]], &[&[f32]; GROUP], usize),
    which: Sums,
    sums: &mut [T],
    block: &mut [Lanes<T>],
) {
    let mut c0 = 0;
    while c0 + WIDE <= c {
        accumulate_block::<T, WIDE>(taps, c, group, which, sums, c0, block);
        c0 += WIDE;
    }
    if c0 + LANES <= c {
        accumulate_block::<T, LANES>(taps, c, group, which, sums, c0, block);
        c0 += LANES;
    }
    for ch in c0..c {
        accumulate_block::<T, 1>(taps, c, group, which, sums, ch, block);
    }
}

/// One tap's values for a block of channels at the group's [`GROUP`] positions, in the sums'
/// arithmetic: `[position][channel]`.
type Lanes<T> = [[T; WIDE]; GROUP];

/// Channels `c0..c0 + L` of the group's rows `row(q)` into `out`, in the sums' arithmetic.
/// Copied once per tap and block, so that the pair loops below read one small contiguous
/// array: reading the rows where they lie cost a pointer load and a bounds check per row
/// and tap pair, and the loops ran at a tenth of their arithmetic's speed.
#[inline(always)]
fn gather<'a, T: SegmentSum, const L: usize>(
    out: &mut Lanes<T>,
    row: impl Fn(usize) -> &'a [f32],
    c0: usize,
) {
    for (q, lanes) in out.iter_mut().enumerate() {
        T::load(&mut lanes[..L], &row(q)[c0..c0 + L]);
    }
}

/// `out[l] += sum_q a(q, l) * b(q, l)` per lane, the sum as a balanced tree (four
/// independent chains of the eight products instead of one, which the adds' latency would
/// bound).
#[inline(always)]
fn add_dot<T: SegmentSum, const L: usize>(
    out: &mut [T],
    a: impl Fn(usize, usize) -> T,
    b: impl Fn(usize, usize) -> T,
) {
    let out: &mut [T; L] = (&mut out[..L]).try_into().expect("L sums");
    for (l, o) in out.iter_mut().enumerate() {
        let p = |q: usize| a(q, l) * b(q, l);
        *o = *o + (((p(0) + p(1)) + (p(2) + p(3))) + ((p(4) + p(5)) + (p(6) + p(7))));
    }
}

/// Lane `l` of position `q` of a gathered tap.
#[inline(always)]
fn lane<T: SegmentSum>(a: &Lanes<T>) -> impl Fn(usize, usize) -> T + '_ {
    move |q, l| a[q][l]
}

/// The group's rows `row(q)` at channels `c0..c0 + L`, borrowed where they lie.
#[inline(always)]
fn rows<'a, const L: usize>(row: impl Fn(usize) -> &'a [f32], c0: usize) -> [&'a [f32; L]; GROUP] {
    let r = |q: usize| -> &'a [f32; L] { row(q)[c0..c0 + L].try_into().expect("a block of L channels") };
    [r(0), r(1), r(2), r(3), r(4), r(5), r(6), r(7)]
}

/// `out[l] += sum_q a[q][l]` per lane, in position order.
#[inline(always)]
fn add_total<T: SegmentSum, const L: usize>(out: &mut [T], a: &Lanes<T>) {
    let out: &mut [T; L] = (&mut out[..L]).try_into().expect("L sums");
    for (l, o) in out.iter_mut().enumerate() {
        *o = *o + a.iter().fold(T::default(), |s, aq| s + aq[l]);
    }
}

/// [`accumulate_group`] for channels `c0..c0 + L`, through `block` (one [`Lanes`] per tap).
/// Gram entry `(i, j)` (`j <= i`, row `taps` for the ones column) is at
/// `(i * (i + 1) / 2 + j) * c`, right-hand-side row `i` after them.
#[inline(always)]
fn accumulate_block<T: SegmentSum, const L: usize>(
    taps: usize,
    c: usize,
    (patches, errors, count): (&[&[f32]], &[&[f32]; GROUP], usize),
    which: Sums,
    sums: &mut [T],
    c0: usize,
    block: &mut [Lanes<T>],
) {
    let dim = taps + 1;
    let tri = if which == Sums::GramAndRhs { dim * (dim + 1) / 2 } else { 0 };
    let (gram, rhs) = sums.split_at_mut(tri * c);
    let mut e = [[T::default(); WIDE]; GROUP];
    gather::<T, L>(&mut e, |q| errors[q], c0);
    if which == Sums::Rhs {
        // Each tap is read once: no copy.
        for i in 0..taps {
            let a = rows::<L>(|q| patches[q * taps + i], c0);
            add_dot::<T, L>(&mut rhs[i * c + c0..], |q, l| T::from(a[q][l]), lane(&e));
        }
        return add_total::<T, L>(&mut rhs[taps * c + c0..], &e);
    }
    for (t, lanes) in block.iter_mut().enumerate() {
        gather::<T, L>(lanes, |q| patches[q * taps + t], c0);
    }
    for (i, a) in block.iter().enumerate() {
        for (j, b) in block[..=i].iter().enumerate() {
            add_dot::<T, L>(&mut gram[(i * (i + 1) / 2 + j) * c + c0..], lane(a), lane(b));
        }
        // the ones column's row: sums of tap i
        add_total::<T, L>(&mut gram[(taps * (taps + 1) / 2 + i) * c + c0..], a);
        add_dot::<T, L>(&mut rhs[i * c + c0..], lane(a), lane(&e));
    }
    {
        for g in &mut gram[(tri - 1) * c + c0..][..L] {
            *g = *g + T::from(count as f32);
        }
    }
    add_total::<T, L>(&mut rhs[taps * c + c0..], &e);
}

/// The Prospective Learning update of a depthwise layer with input `x` and output error `e`:
/// for each channel `c`, with `P_c` its patch values plus a ones column,
/// `dTheta_c = -alpha (P_c^T P_c + lambda_c I)^-1 P_c^T e_c`, solved by Cholesky in `f64`.
/// The products are formed and summed over short segments of positions in `f32` (in `f64`
/// with `precision: f64`), the segments added in `f64`.
/// Relative `lambda` scales with each channel's mean Gram diagonal. Returns `(dK, db)`.
pub fn depthwise_ridge_update(
    layer: &Depthwise,
    x: &Matrix,
    e: &Matrix,
    cfg: &RidgeConfig,
) -> Result<(Matrix, Matrix), OpsError> {
    const OP: &str = "depthwise PL solve";
    let g = layer.geometry;
    let c = layer.channels();
    let batch = g.check(OP, x, c)?;
    let (per_out, taps) = (g.out_h() * g.out_w(), g.k * g.k);
    OpsError::check(OP, "error", &[Dim::Exact(batch * per_out), Dim::Exact(c)], &[e.rows(), e.cols()])?;
    let dim = taps + 1;
    // Accumulators laid out [i][j][channel] (lower triangle, j <= i) then [i][channel] for the
    // right-hand side, so the inner loops run contiguously over channels and vectorise.
    let tri = dim * (dim + 1) / 2;
    let single = cfg.precision == Precision::Auto;
    let sums = batch_sums(&g, c, (x.as_slice(), e.as_slice(), batch), Sums::GramAndRhs, single);
    // A value that is not finite in the input or the error reaches a diagonal sum (a square)
    // or the error's column sums: checking the sums checks the data without another pass.
    if !sums.iter().all(|v| v.is_finite()) {
        return Err(OpsError::NonFinite {
            op: OP,
            what: "the layer input or error",
            rows: x.rows(),
            cols: c,
        });
    }

    let mut dk = Matrix::zeros(taps, c);
    let mut db = Matrix::zeros(1, c);
    for ch in 0..c {
        let mut gram = vec![0.0f64; dim * dim];
        let mut k = 0;
        for i in 0..dim {
            for j in 0..=i {
                gram[i * dim + j] = sums[k * c + ch];
                k += 1;
            }
        }
        let mut rhs: Vec<f64> = (0..dim).map(|i| sums[(tri + i) * c + ch]).collect();
        let trace: f64 = (0..dim).map(|i| gram[i * dim + i]).sum();
        let lambda = match cfg.scale {
            RidgeScale::Absolute => cfg.lambda,
            RidgeScale::Relative => cfg.lambda * trace / dim as f64,
        };
        for i in 0..dim {
            gram[i * dim + i] += lambda;
            for j in 0..i {
                gram[j * dim + i] = gram[i * dim + j];
            }
        }
        solve_spd_in_place(&mut gram, dim, &mut rhs, OP)?;
        for (t, &r) in rhs[..taps].iter().enumerate() {
            dk.as_mut_slice()[t * c + ch] = (-cfg.alpha * r) as f32;
        }
        db.as_mut_slice()[ch] = (-cfg.alpha * rhs[taps]) as f32;
    }
    if !dk.as_slice().iter().chain(db.as_slice()).all(|v| v.is_finite()) {
        return Err(OpsError::NonFinite { op: OP, what: "the solved update", rows: x.rows(), cols: c });
    }
    Ok((dk, db))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::xavier_normal;
    use crate::solve::{Precision, SolvePath};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// Plain nested loops over NCHW indices with explicit zero padding.
    fn naive(x: &Matrix, layer: &Depthwise, batch: usize) -> Vec<f32> {
        let g = layer.geometry;
        let c = layer.channels();
        let (oh, ow, p) = (g.out_h() as isize, g.out_w() as isize, g.pad() as isize);
        let mut out = Vec::new();
        for b in 0..batch {
            for oy in 0..oh {
                for ox in 0..ow {
                    for ch in 0..c {
                        let mut s = layer.params.bias.as_slice()[ch];
                        for dy in 0..g.k as isize {
                            for dx in 0..g.k as isize {
                                let (y, xx) =
                                    (oy * g.stride as isize + dy - p, ox * g.stride as isize + dx - p);
                                if y >= 0 && xx >= 0 && (y as usize) < g.h && (xx as usize) < g.w {
                                    let row = b * g.h * g.w + y as usize * g.w + xx as usize;
                                    s += x.row(row)[ch]
                                        * layer.params.weights.row((dy * g.k as isize + dx) as usize)[ch];
                                }
                            }
                        }
                        out.push(s);
                    }
                }
            }
        }
        out
    }

    fn layer(geometry: Geometry, c: usize, rng: &mut ChaCha8Rng) -> Depthwise {
        let mut l = Depthwise::new(xavier_normal(geometry.k * geometry.k, c, rng), geometry);
        l.params.bias = xavier_normal(1, c, rng);
        l
    }

    const CASES: [(usize, usize, usize, usize); 6] =
        [(5, 5, 3, 1), (5, 5, 3, 2), (6, 6, 3, 2), (7, 4, 3, 1), (4, 7, 3, 2), (6, 5, 5, 1)];

    #[test]
    fn forward_matches_naive_convolution() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for (h, w, k, stride) in CASES {
            let (batch, c) = (2, 3);
            let l = layer(Geometry { h, w, k, stride }, c, &mut rng);
            let x = xavier_normal(batch * h * w, c, &mut rng);
            let got = l.forward(&x).expect("shapes");
            assert_eq!(got.rows(), batch * l.geometry.out_h() * l.geometry.out_w());
            for (a, b) in got.as_slice().iter().zip(naive(&x, &l, batch)) {
                assert!((a - b).abs() < 1e-5, "{h}x{w} k{k} s{stride}: {a} vs {b}");
            }
        }
    }

    /// Activated sample by sample as it is formed, the output is the whole convolution's,
    /// activated after: the same bits.
    #[test]
    fn activated_samples_give_the_whole_convolutions_bits() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let act = Activation::Elu { clip: 10.0 };
        for (h, w, k, stride) in CASES {
            let l = layer(Geometry { h, w, k, stride }, 5, &mut rng);
            let x = xavier_normal(3 * h * w, 5, &mut rng);
            let got = l.forward_activated(&x, act).expect("shapes");
            let mut want = l.forward(&x).expect("shapes");
            act.apply(want.as_mut_slice());
            let bits = |m: &Matrix| m.as_slice().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{h}x{w} k{k} s{stride}");
        }
    }

    #[test]
    fn transposed_convolution_is_the_adjoint() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        for (h, w, k, stride) in CASES {
            let (batch, c) = (2, 4);
            let mut l = layer(Geometry { h, w, k, stride }, c, &mut rng);
            l.params.bias = Matrix::zeros(1, c); // the identity holds for the linear part
            let x = xavier_normal(batch * h * w, c, &mut rng);
            let y = xavier_normal(batch * l.geometry.out_h() * l.geometry.out_w(), c, &mut rng);
            let dot = |a: &Matrix, b: &Matrix| {
                a.as_slice().iter().zip(b.as_slice()).map(|(p, q)| *p as f64 * *q as f64).sum::<f64>()
            };
            let lhs = dot(&l.forward(&x).expect("fwd"), &y);
            let rhs = dot(&x, &l.input_error(&y).expect("adjoint"));
            assert!((lhs - rhs).abs() < 1e-4 * lhs.abs().max(1.0), "{h}x{w} s{stride}: {lhs} vs {rhs}");
        }
    }

    #[test]
    fn gradients_match_finite_differences_of_the_linear_map() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let l = layer(Geometry { h: 5, w: 4, k: 3, stride: 2 }, 2, &mut rng);
        let x = xavier_normal(2 * 20, 2, &mut rng);
        let e = xavier_normal(2 * l.geometry.out_h() * l.geometry.out_w(), 2, &mut rng);
        let (gk, gb) = l.gradients(&x, &e).expect("shapes");
        let objective = |l: &Depthwise| {
            l.forward(&x)
                .expect("fwd")
                .as_slice()
                .iter()
                .zip(e.as_slice())
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum::<f64>()
        };
        for t in 0..9 {
            for ch in 0..2 {
                let mut p = l.clone();
                p.params.weights.as_mut_slice()[t * 2 + ch] += 1.0;
                let fd = objective(&p) - objective(&l); // exact: the map is linear in the kernel
                assert!((fd - gk.row(t)[ch] as f64).abs() < 1e-4, "tap {t} ch {ch}");
            }
        }
        let total: f64 = e.as_slice().iter().step_by(2).map(|&v| v as f64).sum();
        assert!((gb.as_slice()[0] as f64 - total).abs() < 1e-4);
    }

    /// The largest residual of the per-channel normal equations of `(dk, db)` over the
    /// explicitly built patch matrix, relative to the right-hand side (or 1).
    fn normal_equation_residual(l: &Depthwise, x: &Matrix, e: &Matrix, cfg: &RidgeConfig) -> f64 {
        let (dk, db) = depthwise_ridge_update(l, x, e, cfg).expect("solve");
        let (g, c) = (l.geometry, l.channels());
        let (per_in, per_out) = (g.h * g.w, g.out_h() * g.out_w());
        let mut worst = 0.0f64;
        for ch in 0..c {
            // rows of P: one per output position, taps then a one
            let mut rows = Vec::new();
            for b in 0..x.rows() / per_in {
                for oy in 0..g.out_h() {
                    for ox in 0..g.out_w() {
                        let mut r: Vec<f64> = (0..9)
                            .map(|t| g.source(oy, ox, t).map_or(0.0, |p| x.row(b * per_in + p)[ch] as f64))
                            .collect();
                        r.push(1.0);
                        rows.push((r, e.row(b * per_out + oy * g.out_w() + ox)[ch] as f64));
                    }
                }
            }
            let theta: Vec<f64> =
                (0..9).map(|t| dk.row(t)[ch] as f64).chain([db.as_slice()[ch] as f64]).collect();
            let trace: f64 = rows.iter().map(|(r, _)| r.iter().map(|v| v * v).sum::<f64>()).sum();
            let lambda = cfg.lambda * trace / 10.0;
            for i in 0..10 {
                let mut lhs = lambda * theta[i];
                for j in 0..10 {
                    lhs += rows.iter().map(|(r, _)| r[i] * r[j]).sum::<f64>() * theta[j];
                }
                let rhs = cfg.alpha * rows.iter().map(|(r, ev)| r[i] * ev).sum::<f64>();
                worst = worst.max((lhs + rhs).abs() / rhs.abs().max(1.0));
            }
        }
        worst
    }

    fn ridge(lambda: f64, precision: Precision) -> RidgeConfig {
        RidgeConfig {
            alpha: 0.3,
            lambda,
            scale: RidgeScale::Relative,
            path: SolvePath::Auto,
            precision,
            error_checked: false,
        }
    }

    /// The per-channel solve satisfies its normal equations, checked with an explicitly built
    /// patch matrix, with `f64` sums and with the default `f32` segments.
    #[test]
    fn per_channel_solve_satisfies_normal_equations() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let l = layer(Geometry { h: 6, w: 5, k: 3, stride: 1 }, 3, &mut rng);
        let x = xavier_normal(2 * 30, 3, &mut rng);
        let e = xavier_normal(2 * 30, 3, &mut rng);
        for precision in [Precision::F64, Precision::Auto] {
            let r = normal_equation_residual(&l, &x, &e, &ridge(0.05, precision));
            assert!(r < 1e-4, "{precision:?}: residual {r}");
        }
    }

    /// On inputs whose taps are nearly collinear (a constant map plus 1% noise) at the CNN's
    /// ridge of 0.01 (condition bound 1001), summing products in `f32` over segments of 32
    /// positions (rows of 40: a full and a partial segment) leaves the update within 1e-4 of
    /// the all-`f64` one, relative to its largest value, and both satisfy the normal equations.
    #[test]
    fn f32_segments_match_f64_sums_on_an_ill_conditioned_layer() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for stride in [1, 2] {
            let l = layer(Geometry { h: 7, w: 40, k: 3, stride }, 4, &mut rng);
            let noise = xavier_normal(3 * 280, 4, &mut rng);
            let x = Matrix::from_vec(3 * 280, 4, noise.as_slice().iter().map(|v| 1.0 + 0.01 * v).collect());
            let (oh, ow) = (l.geometry.out_h(), l.geometry.out_w());
            let e = xavier_normal(3 * oh * ow, 4, &mut rng);
            let (k64, b64) = depthwise_ridge_update(&l, &x, &e, &ridge(0.01, Precision::F64)).expect("f64");
            let (k32, b32) = depthwise_ridge_update(&l, &x, &e, &ridge(0.01, Precision::Auto)).expect("f32");
            let all =
                |k: &Matrix, b: &Matrix| k.as_slice().iter().chain(b.as_slice()).copied().collect::<Vec<_>>();
            let (a, b) = (all(&k64, &b64), all(&k32, &b32));
            let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let diff = a.iter().zip(&b).fold(0.0f32, |m, (p, q)| m.max((p - q).abs()));
            assert!(diff <= 1e-4 * scale, "stride {stride}: {diff} against {scale}");
            for precision in [Precision::F64, Precision::Auto] {
                let r = normal_equation_residual(&l, &x, &e, &ridge(0.01, precision));
                assert!(r < 1e-4, "stride {stride}, {precision:?}: residual {r}");
            }
        }
    }

    /// The per-channel sums, formed in vector blocks of channels and one channel at a time (53
    /// channels: blocks of 32 and 16 at stride 1, of 16 at stride 2, then single channels), by
    /// tap pair or (stride 1) by offset on maps from the smallest to wider than a segment (3x3
    /// rows by position: a one-position interior, one exactly a segment, a segment and one), match
    /// plain `f64` loops over every patch, and the CPU's widest vectors give the baseline
    /// loop's bits, for both arithmetics and both kinds of sums.
    #[test]
    fn sums_match_plain_loops_and_the_baseline_bits() {
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let c = 53;
        for (h, w, k, stride) in [
            (9, 11, 3, 1),
            (8, 70, 3, 2),
            (6, 5, 5, 1),
            (4, 75, 3, 1),
            (3, 3, 3, 1),
            (7, 8, 5, 2),
            (5, 5, 3, 1),
            (4, 36, 3, 1),
            (5, 37, 3, 1),
        ] {
            let g = Geometry { h, w, k, stride };
            let (oh, ow, taps) = (g.out_h(), g.out_w(), k * k);
            let x = xavier_normal(h * w, c, &mut rng);
            let e = xavier_normal(oh * ow, c, &mut rng);
            let dim = taps + 1;
            let tri = dim * (dim + 1) / 2;
            let mut want = vec![0.0f64; (tri + dim) * c];
            for (oy, ox, ch) in
                (0..oh).flat_map(|y| (0..ow).flat_map(move |x| (0..c).map(move |ch| (y, x, ch))))
            {
                let mut p = vec![0.0f64; dim];
                for (t, v) in p[..taps].iter_mut().enumerate() {
                    let (y, xx) = (
                        (oy * stride + t / k) as isize - g.pad() as isize,
                        (ox * stride + t % k) as isize - g.pad() as isize,
                    );
                    if (0..h as isize).contains(&y) && (0..w as isize).contains(&xx) {
                        *v = x.as_slice()[(y as usize * w + xx as usize) * c + ch] as f64;
                    }
                }
                p[taps] = 1.0;
                let err = e.as_slice()[(oy * ow + ox) * c + ch] as f64;
                for i in 0..dim {
                    for j in 0..=i {
                        want[(i * (i + 1) / 2 + j) * c + ch] += p[i] * p[j];
                    }
                    want[(tri + i) * c + ch] += p[i] * err;
                }
            }
            for sums in [Sums::GramAndRhs, Sums::Rhs] {
                let expect = if sums == Sums::Rhs { &want[tri * c..] } else { &want[..] };
                let sample = Sample { g: &g, c, src: x.as_slice(), err: e.as_slice(), sums };
                let run = |f: fn(Sample<'_>, &mut [f64])| {
                    let (lay, rows) = sums_layout(&g, sums);
                    let mut acc = vec![0.0f64; rows * c];
                    f(sample, &mut acc);
                    match lay {
                        Some(lay) => shifted::assemble(&g, &lay, c, &acc, 1),
                        None => acc,
                    }
                };
                for (name, fast, base) in [
                    ("f32", run(accumulate::<f32>), run(accumulate_sample::<f32>)),
                    ("f64", run(accumulate::<f64>), run(accumulate_sample::<f64>)),
                ] {
                    let case = format!("{h}x{w} k{k} s{stride} {name}");
                    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&fast), bits(&base), "{case}: vector and baseline bits");
                    for (i, (&got, &w)) in fast.iter().zip(expect).enumerate() {
                        assert!((got - w).abs() <= 1e-5 * (1.0 + w.abs()), "{case}, sum {i}: {got} vs {w}");
                    }
                }
            }
        }
    }

    /// A value that is not finite in the input or in the error is reported, not solved.
    #[test]
    fn non_finite_input_or_error_is_an_error() {
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        let l = layer(Geometry { h: 5, w: 5, k: 3, stride: 2 }, 2, &mut rng);
        let (x, e) = (xavier_normal(25, 2, &mut rng), xavier_normal(9, 2, &mut rng));
        for (which, bad) in [(0, f32::NAN), (1, f32::INFINITY), (0, f32::NEG_INFINITY)] {
            let (mut x, mut e) = (x.clone(), e.clone());
            let target = if which == 0 { &mut x } else { &mut e };
            target.as_mut_slice()[7] = bad;
            let got = depthwise_ridge_update(&l, &x, &e, &ridge(0.01, Precision::Auto));
            assert!(matches!(got, Err(OpsError::NonFinite { .. })), "{which} {bad}: {got:?}");
        }
    }
}
