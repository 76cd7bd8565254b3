//! The stride-1 depthwise sums by offset instead of by tap pair.
//!
//! At stride 1 with `k / 2` padding, the Gram entry of taps `t1` and `t2` sums
//! `x(q) x(q + t2 - t1)` over the positions `q` that tap `t1` reads: the whole map less at
//! most `k / 2` rows and `k / 2` columns at its edges. Every pair with the same offset
//! `t2 - t1` sums the same products over almost the same window, so the products are formed
//! once per offset over the whole map (13 offsets for `k = 3` instead of 45 tap pairs, 41
//! instead of 325 for `k = 5`), the edge rows' and columns' shares are kept apart, and each
//! pair's entry is assembled from them by inclusion-exclusion ([`assemble`]). The ones
//! column (each tap's sum) is assembled the same way from the map's sum. The right-hand side
//! has no such sharing; its tap rows are read where they lie, a row of positions at a time.
//!
//! Rows and columns are read as contiguous runs of positions (`c` values apart), so nothing
//! is copied or padded and the loops stay branch-free inside a run. For a 3x3 kernel the
//! rows whose partners are all in the map are summed by position instead ([`gram_row`],
//! [`rhs_row`]): each position's values are loaded once for all its offsets or taps.

use super::{Geometry, LANES, SEGMENT, SegmentSum, Sums};
use std::ops::Range;

/// Whether a geometry's sums can be formed by offset: stride 1 (so the output has the
/// input's size) on a map at least `k` wide and high (so the edge rows and columns a tap
/// leaves out are distinct).
pub(super) fn applies(g: &Geometry) -> bool {
    g.stride == 1 && g.k % 2 == 1 && g.h >= g.k && g.w >= g.k
}

/// Where each sum lives in the per-channel accumulator: rows of `c` values (one per
/// channel), in this order.
#[derive(Clone, Debug)]
pub(super) struct Layout {
    /// The offsets `(dy, dx)` of the half plane `dy > 0 || (dy == 0 && dx >= 0)`, `|dy|,
    /// |dx| < k`: each pair of taps has exactly one of `t2 - t1` and `t1 - t2` among them.
    offsets: Vec<(usize, isize)>,
    /// `k / 2`: edge rows and columns on each side.
    p: usize,
    taps: usize,
    which: Sums,
}

impl Layout {
    pub(super) fn new(g: &Geometry, which: Sums) -> Self {
        let (k, p) = (g.k as isize, g.pad());
        let offsets = (0..k)
            .flat_map(|dy| (1 - k..k).map(move |dx| (dy, dx)))
            .filter(|&(dy, dx)| dy > 0 || dx >= 0)
            .map(|(dy, dx)| (dy as usize, dx))
            .collect();
        Self { offsets, p, taps: g.k * g.k, which }
    }

    fn d(&self) -> usize {
        self.offsets.len()
    }

    fn edges(&self) -> usize {
        2 * self.p
    }

    /// Rows of the Gram's sums (none with [`Sums::Rhs`]): per offset the whole map's sum,
    /// each edge row's and each edge column's share, and each edge corner's product; the
    /// map's sum, each edge row's and column's, each corner's value.
    fn gram_rows(&self) -> usize {
        let (d, e) = (self.d(), self.edges());
        match self.which {
            Sums::GramAndRhs => d * (1 + 2 * e + e * e) + 1 + 2 * e + e * e,
            Sums::Rhs => 0,
        }
    }

    /// Rows in all: the Gram's sums, then one right-hand-side row per tap and the error's sum.
    pub(super) fn rows(&self) -> usize {
        self.gram_rows() + self.taps + 1
    }

    fn full(&self, d: usize) -> usize {
        d
    }
    fn row_share(&self, edge: usize, d: usize) -> usize {
        self.d() * (1 + edge) + d
    }
    fn col_share(&self, edge: usize, d: usize) -> usize {
        self.d() * (1 + self.edges() + edge) + d
    }
    fn corner(&self, er: usize, ec: usize, d: usize) -> usize {
        self.d() * (1 + 2 * self.edges() + er * self.edges() + ec) + d
    }
    fn total(&self) -> usize {
        self.d() * (1 + 2 * self.edges() + self.edges() * self.edges())
    }
    fn row_total(&self, edge: usize) -> usize {
        self.total() + 1 + edge
    }
    fn col_total(&self, edge: usize) -> usize {
        self.total() + 1 + self.edges() + edge
    }
    fn corner_value(&self, er: usize, ec: usize) -> usize {
        self.total() + 1 + 2 * self.edges() + er * self.edges() + ec
    }
    fn rhs(&self, t: usize) -> usize {
        self.gram_rows() + t
    }

    /// The edge rows (or columns) a tap at index `t` along that axis leaves out: the last
    /// `p - t` when `t < p`, the first `t - p` when `t > p`, as indices among the `2p` edges
    /// (the first `p` edges are the map's first rows, the last `p` its last).
    fn left_out(&self, t: usize) -> Range<usize> {
        let p = self.p;
        if t < p { p + t..2 * p } else { 0..t - p }
    }

    /// The edge index of row (or column) `u` of a map `n` long, if it is an edge.
    fn edge(&self, u: usize, n: usize) -> Option<usize> {
        let p = self.p;
        if u < p {
            Some(u)
        } else if u + p >= n {
            Some(u + 2 * p - n)
        } else {
            None
        }
    }

    /// The row (or column) of edge `e` in a map `n` long.
    fn edge_at(&self, e: usize, n: usize) -> usize {
        if e < self.p { e } else { n - 2 * self.p + e }
    }
}

/// `sum_q a[q * c + l] * b[q * c + l]` over `n` positions, per lane, in the sums' arithmetic
/// (one fused multiply-add per product, in position order): the runs the row kernels below
/// leave, rows at the map's bottom and kernels other than 3x3.
#[inline(always)]
fn dot<T: SegmentSum, const L: usize>(a: &[f32], b: &[f32], n: usize, c: usize) -> [T; L] {
    let mut s = [T::default(); L];
    for q in 0..n {
        for ((s, &x), &y) in s.iter_mut().zip(lanes::<L>(a, q * c)).zip(lanes::<L>(b, q * c)) {
            *s = T::from(x).mul_add(T::from(y), *s);
        }
    }
    s
}

/// The `L` values of `v` from `at`.
#[inline(always)]
fn lanes<const L: usize>(v: &[f32], at: usize) -> &[f32; L] {
    v[at..at + L].try_into().expect("a block of L channels")
}

/// `sum_q a[q * c + l]` over `n` positions, per lane, in position order.
#[inline(always)]
fn total<T: SegmentSum, const L: usize>(a: &[f32], n: usize, c: usize) -> [T; L] {
    let mut s = [T::default(); L];
    for q in 0..n {
        for (s, &v) in s.iter_mut().zip(lanes::<L>(a, q * c)) {
            *s = *s + T::from(v);
        }
    }
    s
}

/// Add a block's lanes into accumulator row `row` at channels `c0..c0 + L`.
#[inline(always)]
fn add_row<T: SegmentSum, const L: usize>(acc: &mut [f64], c: usize, row: usize, c0: usize, s: &[T; L]) {
    for (a, &v) in acc[row * c + c0..][..L].iter_mut().zip(s) {
        *a += v.into();
    }
}

/// Add one sample's sums (its input map `src` and output error `err`, both `h*w x c`) into
/// `acc`, laid out as [`Layout`]: blocks of `L` channels from `c0`.
#[inline(always)]
pub(super) fn accumulate_block<T: SegmentSum, const L: usize>(
    g: &Geometry,
    lay: &Layout,
    (src, err, c): (&[f32], &[f32], usize),
    acc: &mut [f64],
    c0: usize,
) {
    let (h, w, p) = (g.h, g.w, lay.p);
    let at = |y: usize, x: usize| (y * w + x) * c + c0;
    // Interior positions (every offset's or tap's partner inside the map) are summed by
    // position, the rest by offset or tap over the runs left.
    let k3 = g.k == 3 && w > 4;
    if lay.which == Sums::GramAndRhs {
        for u in 0..h {
            let edge = lay.edge(u, h);
            let inner = k3 && u + 2 < h;
            if inner {
                for (c1, wide) in by_vectors::<L>(c0) {
                    if wide {
                        gram_row::<T, LANES>(g, lay, (src, c), acc, (u, c1), edge);
                    } else {
                        gram_row::<T, 1>(g, lay, (src, c), acc, (u, c1), edge);
                    }
                }
            }
            for (d, &(dy, dx)) in lay.offsets.iter().enumerate() {
                if inner || u + dy >= h {
                    continue;
                }
                let (v0, v1) = (dx.min(0).unsigned_abs(), w - dx.max(0) as usize);
                for s0 in (v0..v1).step_by(SEGMENT) {
                    let n = SEGMENT.min(v1 - s0);
                    let s =
                        dot::<T, L>(&src[at(u, s0)..], &src[at(u + dy, s0.wrapping_add_signed(dx))..], n, c);
                    add_row(acc, c, lay.full(d), c0, &s);
                    if let Some(e) = edge {
                        add_row(acc, c, lay.row_share(e, d), c0, &s);
                    }
                }
            }
            for s0 in (0..w).step_by(SEGMENT) {
                let s = total::<T, L>(&src[at(u, s0)..], SEGMENT.min(w - s0), c);
                add_row(acc, c, lay.total(), c0, &s);
                if let Some(e) = edge {
                    add_row(acc, c, lay.row_total(e), c0, &s);
                }
            }
        }
        edge_columns::<T, L>(g, lay, (src, c), acc, c0);
    }
    let inner_rows = if k3 { 1..h - 1 } else { 0..0 };
    for oy in inner_rows.clone() {
        for (c1, wide) in by_vectors::<L>(c0) {
            if wide {
                rhs_row::<T, LANES>(g, lay, (src, err, c), acc, (oy, c1));
            } else {
                rhs_row::<T, 1>(g, lay, (src, err, c), acc, (oy, c1));
            }
        }
    }
    for t in 0..lay.taps {
        let (ty, tx) = (t / g.k, t % g.k);
        // Output column ox reads input column ox + tx - p, inside the map for these ox.
        let (o0, o1) = (p.saturating_sub(tx), (w + p - tx).min(w));
        for oy in 0..h {
            if inner_rows.contains(&oy) {
                continue;
            }
            let Some(y) = (oy + ty).checked_sub(p).filter(|&y| y < h) else { continue };
            for s0 in (o0..o1).step_by(SEGMENT) {
                let n = SEGMENT.min(o1 - s0);
                let s = dot::<T, L>(&src[at(y, s0 + tx - p)..], &err[at(oy, s0)..], n, c);
                add_row(acc, c, lay.rhs(t), c0, &s);
            }
        }
    }
    for oy in 0..h {
        for s0 in (0..w).step_by(SEGMENT) {
            let s = total::<T, L>(&err[at(oy, s0)..], SEGMENT.min(w - s0), c);
            add_row(acc, c, lay.rhs(lay.taps), c0, &s);
        }
    }
}

/// Channels `c0..c0 + L` as the first channels of calls of [`LANES`] channels (`true`), or
/// one channel at a time (`false`) when `L` is not a multiple of it: for the kernels that
/// hold a tap's or a position's values in registers (over a wider block they keep more sums
/// than there are registers, and the compiler gives up on vectors).
#[inline(always)]
fn by_vectors<const L: usize>(c0: usize) -> impl Iterator<Item = (usize, bool)> {
    let wide = L.is_multiple_of(LANES);
    (c0..c0 + L).step_by(if wide { LANES } else { 1 }).map(move |c1| (c1, wide))
}

/// `s[j] += a[q] * b[q + j - back]` per lane for positions `q` in `run` of two rows of
/// `w` positions `c` values apart (`a`, `b` from the block's first channel), `N` partners per
/// position, and at the positions `edges`, whose partners outside the row are left out:
/// `a`'s values are loaded once for all `N` products and the `N` sums stay in registers
/// (summed by partner, every product loaded both its factors and the loads bounded the
/// loop).
#[inline(always)]
fn row_products<T: SegmentSum, const M: usize, const N: usize>(
    (a, b, c, w): (&[f32], &[f32], usize, usize),
    run: Range<usize>,
    edges: [Range<usize>; 2],
    back: usize,
) -> [[T; M]; N] {
    let mut s = [[T::default(); M]; N];
    for q in edges.into_iter().flatten() {
        let x = lanes::<M>(a, q * c).map(T::from);
        for (j, s) in s.iter_mut().enumerate() {
            if let Some(p) = (q + j).checked_sub(back).filter(|&p| p < w) {
                for ((s, &x), &y) in s.iter_mut().zip(&x).zip(lanes::<M>(b, p * c)) {
                    *s = T::from(y).mul_add(x, *s);
                }
            }
        }
    }
    for q in run {
        let x = lanes::<M>(a, q * c).map(T::from);
        let near = &b[(q - back) * c..];
        for (j, s) in s.iter_mut().enumerate() {
            let y = lanes::<M>(near, j * c);
            for ((s, &x), &y) in s.iter_mut().zip(&x).zip(y) {
                *s = T::from(y).mul_add(x, *s);
            }
        }
    }
    s
}

/// The [`SEGMENT`]-long pieces of a row's interior `margin..w - margin`, each with the edge
/// positions added to it: the first `margin` positions with the first piece, the last with
/// the last.
fn pieces(w: usize, margin: usize) -> impl Iterator<Item = (Range<usize>, [Range<usize>; 2])> {
    let inner = margin..w - margin;
    inner.clone().step_by(SEGMENT).map(move |s0| {
        let run = s0..(s0 + SEGMENT).min(inner.end);
        let left = if run.start == inner.start { 0..margin } else { 0..0 };
        let right = if run.end == inner.end { inner.end..w } else { 0..0 };
        (run, [left, right])
    })
}

/// Row `u`'s products with all 13 offsets (the caller checked `u + 2 < h`, so every offset's
/// row is in the map), channels `c1..c1 + M`, added into the full sums and, on an edge row,
/// its share: per row of partners, the 3 (same row) or 5 (rows below) offsets at once.
#[inline(always)]
fn gram_row<T: SegmentSum, const M: usize>(
    g: &Geometry,
    lay: &Layout,
    (src, c): (&[f32], usize),
    acc: &mut [f64],
    (u, c1): (usize, usize),
    edge: Option<usize>,
) {
    let w = g.w;
    let row = |y: usize| &src[y * w * c + c1..];
    let mut add = |d0: usize, sums: &[[T; M]]| {
        for (d, s) in sums.iter().enumerate() {
            add_row(acc, c, lay.full(d0 + d), c1, s);
            if let Some(e) = edge {
                add_row(acc, c, lay.row_share(e, d0 + d), c1, s);
            }
        }
    };
    for (run, edges) in pieces(w, 2) {
        // A 3x3 kernel's 13 offsets in Layout::offsets' order: (0, 0..=2), then (1, -2..=2)
        // and (2, -2..=2).
        add(0, &row_products::<T, M, 3>((row(u), row(u), c, w), run.clone(), edges.clone(), 0));
        add(3, &row_products::<T, M, 5>((row(u), row(u + 1), c, w), run.clone(), edges.clone(), 2));
        add(8, &row_products::<T, M, 5>((row(u), row(u + 2), c, w), run, edges, 2));
    }
}

/// Output row `oy`'s right-hand-side products for all 9 taps (the caller checked
/// `0 < oy < h - 1`, so every tap's row is in the map), channels `c1..c1 + M`: per input
/// row, its 3 taps at once.
#[inline(always)]
fn rhs_row<T: SegmentSum, const M: usize>(
    g: &Geometry,
    lay: &Layout,
    (src, err, c): (&[f32], &[f32], usize),
    acc: &mut [f64],
    (oy, c1): (usize, usize),
) {
    let w = g.w;
    let start = |y: usize| y * w * c + c1;
    for (run, edges) in pieces(w, 1) {
        for ty in 0..3 {
            // Tap (ty, tx) of output position q reads input (oy + ty - 1, q + tx - 1).
            let rows = (&err[start(oy)..], &src[start(oy + ty - 1)..], c, w);
            let sums = row_products::<T, M, 3>(rows, run.clone(), edges.clone(), 1);
            for (tx, s) in sums.iter().enumerate() {
                add_row(acc, c, lay.rhs(ty * 3 + tx), c1, s);
            }
        }
    }
}

/// The edge columns' shares of every offset's sum, the corners' products, and the edge
/// columns' and corners' values: a few positions per row, each product added straight into
/// the `f64` sums.
#[inline(always)]
fn edge_columns<T: SegmentSum, const L: usize>(
    g: &Geometry,
    lay: &Layout,
    (src, c): (&[f32], usize),
    acc: &mut [f64],
    c0: usize,
) {
    let (h, w) = (g.h, g.w);
    let at = |y: usize, x: usize| lanes::<L>(src, (y * w + x) * c + c0);
    for ec in 0..lay.edges() {
        let v = lay.edge_at(ec, w);
        for u in 0..h {
            let er = lay.edge(u, h);
            let a = at(u, v);
            let value = a.map(T::from);
            add_row(acc, c, lay.col_total(ec), c0, &value);
            if let Some(er) = er {
                add_row(acc, c, lay.corner_value(er, ec), c0, &value);
            }
            for (d, &(dy, dx)) in lay.offsets.iter().enumerate() {
                let x = v.wrapping_add_signed(dx);
                if u + dy >= h || x >= w {
                    continue;
                }
                let b = at(u + dy, x);
                let prod: [T; L] = std::array::from_fn(|l| T::from(a[l]) * T::from(b[l]));
                add_row(acc, c, lay.col_share(ec, d), c0, &prod);
                if let Some(er) = er {
                    add_row(acc, c, lay.corner(er, ec, d), c0, &prod);
                }
            }
        }
    }
}

/// The sums of [`super::accumulate_sample`]'s layout (the Gram's lower triangle, then the
/// right-hand side, `c` values per entry) from `batch` samples' sums in [`Layout`].
pub(super) fn assemble(g: &Geometry, lay: &Layout, c: usize, sums: &[f64], batch: usize) -> Vec<f64> {
    let (k, taps) = (g.k, lay.taps);
    let dim = taps + 1;
    let tri = if lay.which == Sums::GramAndRhs { dim * (dim + 1) / 2 } else { 0 };
    let mut out = vec![0.0f64; (tri + dim) * c];
    let row = |r: usize| &sums[r * c..][..c];
    let mut set = |entry: usize, value: &dyn Fn(usize) -> f64| {
        for (ch, o) in out[entry * c..][..c].iter_mut().enumerate() {
            *o = value(ch);
        }
    };
    if lay.which == Sums::GramAndRhs {
        for i in 0..taps {
            for j in 0..=i {
                let (ti, tj) = ((i / k, i % k), (j / k, j % k));
                let (dy, dx) = (tj.0 as isize - ti.0 as isize, tj.1 as isize - ti.1 as isize);
                // The pair sums x(q) x(q + delta) over the window of the tap it starts from.
                let (from, delta) =
                    if dy > 0 || (dy == 0 && dx >= 0) { (ti, (dy, dx)) } else { (tj, (-dy, -dx)) };
                let d =
                    lay.offsets.iter().position(|&(oy, ox)| (oy as isize, ox) == delta).expect("an offset");
                let (rows_out, cols_out) = (lay.left_out(from.0), lay.left_out(from.1));
                set(i * (i + 1) / 2 + j, &|ch| {
                    let mut v = row(lay.full(d))[ch];
                    for er in rows_out.clone() {
                        v -= row(lay.row_share(er, d))[ch];
                        for ec in cols_out.clone() {
                            v += row(lay.corner(er, ec, d))[ch];
                        }
                    }
                    for ec in cols_out.clone() {
                        v -= row(lay.col_share(ec, d))[ch];
                    }
                    v
                });
            }
        }
        for t in 0..taps {
            let (rows_out, cols_out) = (lay.left_out(t / k), lay.left_out(t % k));
            set(taps * (taps + 1) / 2 + t, &|ch| {
                let mut v = row(lay.total())[ch];
                for er in rows_out.clone() {
                    v -= row(lay.row_total(er))[ch];
                    for ec in cols_out.clone() {
                        v += row(lay.corner_value(er, ec))[ch];
                    }
                }
                for ec in cols_out.clone() {
                    v -= row(lay.col_total(ec))[ch];
                }
                v
            });
        }
        let positions = (batch * g.h * g.w) as f64;
        set(tri - 1, &|_| positions);
    }
    for t in 0..dim {
        set(tri + t, &|ch| row(lay.rhs(t))[ch]);
    }
    out
}
