//! Timing helper shared by the benchmarks of this crate.

use std::time::Instant;

/// Run the benchmark's main thread as a worker of rayon's pool, as the `plflow` binary does.
pub fn as_the_binary_does() {
    plflow_ops::main_thread_in_pool();
}

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
