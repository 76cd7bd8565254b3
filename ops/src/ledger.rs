//! The memory ledger: bytes held by plflow's own tensors, current and peak.
//!
//! Every [`Buffer`] adds its size on creation and subtracts it on drop, so the peak is the
//! true high-water mark of tensor memory, independent of the allocator and of the mapped
//! data files that the process RSS also counts. The ledger is process-wide (atomics) because
//! a run is one process; tests that assert exact figures must run in their own process.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn add(bytes: usize) {
    let now = CURRENT.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

fn sub(bytes: usize) {
    CURRENT.fetch_sub(bytes, Ordering::Relaxed);
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
}

/// A heap buffer whose bytes are counted in the ledger for as long as it lives.
#[derive(Debug)]
pub struct Buffer<T> {
    data: Vec<T>,
}

impl<T: Copy + Default> Buffer<T> {
    /// A buffer of `len` default values (zeros for numbers).
    pub fn zeros(len: usize) -> Self {
        Self::from_vec(vec![T::default(); len])
    }
}

impl<T> Buffer<T> {
    /// Take ownership of `data` and start counting its bytes.
    pub fn from_vec(data: Vec<T>) -> Self {
        add(data.capacity() * size_of::<T>());
        Self { data }
    }
}

impl<T: Clone> Clone for Buffer<T> {
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
        sub(self.data.capacity() * size_of::<T>());
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
