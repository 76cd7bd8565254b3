//! The memory ledger: bytes held by plflow's own tensors, current and peak.
//!
//! Every [`Buffer`] adds its size on creation and subtracts it on drop, so the peak is the
//! true high-water mark of tensor memory, independent of the allocator and of the mapped
//! data files that the process RSS also counts. The ledger is process-wide (atomics) because
//! a run is one process; tests that assert exact figures must run in their own process.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::panic::Location;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static TRACING: AtomicBool = AtomicBool::new(false);
static SITES: Mutex<Option<Sites>> = Mutex::new(None);

type Site = &'static Location<'static>;

/// Bytes by the source line that allocated them, now and at the traced peak.
#[derive(Default)]
struct Sites {
    live: HashMap<Site, usize>,
    current: usize,
    peak: usize,
    at_peak: HashMap<Site, usize>,
}

fn add(bytes: usize, site: Site) {
    let now = CURRENT.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(now, Ordering::Relaxed);
    if TRACING.load(Ordering::Relaxed) {
        with_sites(|s| {
            *s.live.entry(site).or_default() += bytes;
            s.current += bytes;
            if s.current > s.peak {
                s.peak = s.current;
                s.at_peak.clone_from(&s.live);
            }
        });
    }
}

fn sub(bytes: usize, site: Site) {
    CURRENT.fetch_sub(bytes, Ordering::Relaxed);
    if TRACING.load(Ordering::Relaxed) {
        with_sites(|s| {
            // A buffer made before tracing began is not in the map: nothing to take back.
            if let Some(b) = s.live.get_mut(site).filter(|b| **b >= bytes) {
                *b -= bytes;
                s.current -= bytes;
            }
        });
    }
}

fn with_sites<R>(f: impl FnOnce(&mut Sites) -> R) -> R {
    let mut guard = SITES.lock().unwrap_or_else(PoisonError::into_inner);
    f(guard.get_or_insert_with(Sites::default))
}

/// Start (or stop) recording which source lines hold the bytes at the peak: a diagnostic
/// for finding where a step's memory goes (`PLFLOW_LEDGER_SITES=1`), off by default
/// because every allocation then takes a lock. Buffers made before it is switched on are
/// not attributed.
pub fn trace_sites(on: bool) {
    TRACING.store(on, Ordering::Relaxed);
}

/// Whether [`trace_sites`] is on.
pub fn tracing_sites() -> bool {
    TRACING.load(Ordering::Relaxed)
}

/// The bytes held at the traced peak (since tracing began or the last [`reset_peak`]), by
/// allocating source line (`file:line`), largest first; empty when tracing is off.
pub fn peak_sites() -> Vec<(String, usize)> {
    let mut sites: Vec<(String, usize)> = with_sites(|s| {
        s.at_peak
            .iter()
            .filter(|&(_, &b)| b > 0)
            .map(|(l, &b)| (format!("{}:{}", l.file(), l.line()), b))
            .collect()
    });
    sites.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    sites
}

/// Bytes currently held by tracked buffers.
pub fn current_bytes() -> usize {
    CURRENT.load(Ordering::Relaxed)
}

/// Highest value [`current_bytes`] has reached since start (or since [`reset_peak`]).
pub fn peak_bytes() -> usize {
    PEAK.load(Ordering::Relaxed)
}

/// Restart the high-water mark from the current level, e.g. to measure one phase.
pub fn reset_peak() {
    PEAK.store(current_bytes(), Ordering::Relaxed);
    if tracing_sites() {
        with_sites(|s| {
            s.peak = s.current;
            s.at_peak.clone_from(&s.live);
        });
    }
}

/// A heap buffer whose bytes are counted in the ledger for as long as it lives.
#[derive(Debug)]
pub struct Buffer<T> {
    data: Vec<T>,
    /// Where the buffer was made (the caller of the `#[track_caller]` constructors).
    site: Site,
}

impl<T: Copy + Default> Buffer<T> {
    /// A buffer of `len` default values (zeros for numbers).
    #[track_caller]
    pub fn zeros(len: usize) -> Self {
        Self::from_vec(vec![T::default(); len])
    }
}

impl<T> Buffer<T> {
    /// Take ownership of `data` and start counting its bytes.
    #[track_caller]
    pub fn from_vec(data: Vec<T>) -> Self {
        let site = Location::caller();
        add(data.capacity() * size_of::<T>(), site);
        Self { data, site }
    }
}

impl<T: Clone> Clone for Buffer<T> {
    #[track_caller]
    fn clone(&self) -> Self {
        Self::from_vec(self.data.clone())
    }
}

impl<T: PartialEq> PartialEq for Buffer<T> {
    fn eq(&self, other: &Self) -> bool {
        self.data == other.data
    }
}

impl<T: Eq> Eq for Buffer<T> {}

impl<T> Drop for Buffer<T> {
    fn drop(&mut self) {
        sub(self.data.capacity() * size_of::<T>(), self.site);
    }
}

impl<T> Deref for Buffer<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.data
    }
}

impl<T> DerefMut for Buffer<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_counted_while_alive() {
        // Other tests run concurrently in this process, so compare differences loosely:
        // our own buffer must appear in the peak and the peak never decreases.
        let before_peak = peak_bytes();
        let b = Buffer::<f64>::zeros(1 << 20);
        assert!(current_bytes() >= 8 << 20);
        assert!(peak_bytes() >= 8 << 20);
        assert!(peak_bytes() >= before_peak);
        drop(b);
    }
}
