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
//! is copied or padded and the loops stay branch-free inside a run.

use super::{GROUP, Geometry, SEGMENT, SegmentSum, Sums, add_dot, rows};
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

/// `sum_q a[q * c + l] * b[q * c + l]` over `n` positions, per lane, in the sums' arithmetic:
/// groups of [`GROUP`] products summed as a balanced tree (the last group padded with zeros).
#[inline(always)]
fn dot<T: SegmentSum, const L: usize>(a: &[f32], b: &[f32], n: usize, c: usize) -> [T; L] {
    let mut s = [T::default(); L];
    let mut q0 = 0;
    while q0 + GROUP <= n {
        let (ra, rb) = (rows::<L>(|q| &a[(q0 + q) * c..], 0), rows::<L>(|q| &b[(q0 + q) * c..], 0));
        add_dot::<T, L>(&mut s, |q, l| T::from(ra[q][l]), |q, l| T::from(rb[q][l]));
        q0 += GROUP;
    }
    if q0 < n {
        let mut last = [[T::default(); L]; GROUP];
        for (q, p) in last[..n - q0].iter_mut().enumerate() {
            let (ra, rb) = (lanes::<L>(a, (q0 + q) * c), lanes::<L>(b, (q0 + q) * c));
            *p = std::array::from_fn(|l| T::from(ra[l]) * T::from(rb[l]));
        }
        add_dot::<T, L>(&mut s, |q, l| last[q][l], |_, _| T::from(1.0));
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
    if lay.which == Sums::GramAndRhs {
        for u in 0..h {
            let edge = lay.edge(u, h);
            for (d, &(dy, dx)) in lay.offsets.iter().enumerate() {
                if u + dy >= h {
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
    for t in 0..lay.taps {
        let (ty, tx) = (t / g.k, t % g.k);
        // Output column ox reads input column ox + tx - p, inside the map for these ox.
        let (o0, o1) = (p.saturating_sub(tx), (w + p - tx).min(w));
        for oy in 0..h {
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
