//! Sums of per-sample contributions that come out the same bits on any number of threads.
//!
//! rayon's `fold` then `reduce` adds partial sums in a tree shaped by how the work was split
//! and stolen, so the rounding of a parallel sum changes with the thread count and even
//! between runs. Here the samples are cut into groups of a fixed size, each group is summed
//! in sample order (groups in parallel), and the groups' sums are added in group order.

use rayon::prelude::*;

/// Samples per group: enough work per task, few partial sums (a batch of 128 makes 8).
pub const GROUP: usize = 16;

/// The sum over `samples` of the `len` values each `add(sample, acc)` adds into `acc`,
/// independent of the thread count.
pub fn ordered_sum<F>(samples: usize, len: usize, add: F) -> Vec<f64>
where
    F: Fn(usize, &mut [f64]) + Sync,
{
    let partials: Vec<Vec<f64>> = (0..samples.div_ceil(GROUP))
        .into_par_iter()
        .map(|g| {
            let mut acc = vec![0.0f64; len];
            for s in g * GROUP..((g + 1) * GROUP).min(samples) {
                add(s, &mut acc);
            }
            acc
        })
        .collect();
    let mut total = vec![0.0f64; len];
    for p in &partials {
        total.iter_mut().zip(p).for_each(|(t, v)| *t += v);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values whose sum depends on the order of addition in f64.
    fn value(s: usize, j: usize) -> f64 {
        ((s * 7919 + j * 104_729) % 1000) as f64 * 1e-3 + if s.is_multiple_of(3) { 1e16 } else { -1e16 / 2.0 }
    }

    #[test]
    fn the_sum_is_the_same_bits_on_one_two_and_three_threads() {
        let sum = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool");
            pool.install(|| {
                ordered_sum(1000, 5, |s, acc| acc.iter_mut().enumerate().for_each(|(j, a)| *a += value(s, j)))
            })
        };
        let one = sum(1);
        for threads in [2, 3] {
            let other = sum(threads);
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&one), bits(&other), "{threads} threads");
        }
        // The grouping is the documented one: groups summed in order, then added in order.
        let mut want = vec![0.0f64; 5];
        for g in 0..1000usize.div_ceil(GROUP) {
            let mut acc = [0.0f64; 5];
            for s in g * GROUP..((g + 1) * GROUP).min(1000) {
                acc.iter_mut().enumerate().for_each(|(j, a)| *a += value(s, j));
            }
            want.iter_mut().zip(acc).for_each(|(w, a)| *w += a);
        }
        assert_eq!(one, want);
    }
}
