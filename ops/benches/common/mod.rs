//! Timing helper shared by the benchmarks of this crate.

use std::time::Instant;

/// Median milliseconds of `repeat` calls of `f`, after one warm-up call.
pub fn median_ms(mut f: impl FnMut(), repeat: usize) -> f64 {
    f(); // warm up
    let mut t: Vec<f64> = (0..repeat.max(1))
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}
