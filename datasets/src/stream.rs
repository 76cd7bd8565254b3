//! Batch streaming shared by every source: the example order of an epoch (shuffled from the
//! run's seed, or file order for evaluation and statistics), cut into batches of a fixed size
//! with a smaller last batch. Once the caller asks for the next batch, the pages of the one
//! before are released ([`Source::release`]), so a mapped dataset's resident memory stays
//! near one batch however large the file is.

use crate::Source;
use crate::order::epoch_order;

/// The batches of one pass over a split.
#[derive(Debug)]
pub struct BatchStream<'a> {
    source: &'a dyn Source,
    order: Vec<usize>,
    batch: usize,
    /// Start of the batch handed out last, and its end.
    current: (usize, usize),
}

impl<'a> BatchStream<'a> {
    /// Epoch `epoch` of a run seeded with `seed`: every example once, shuffled.
    pub fn shuffled(source: &'a dyn Source, batch: usize, seed: u64, epoch: u64) -> Self {
        Self::with_order(source, epoch_order(source.len(), seed, epoch), batch)
    }

    /// Every example once, in file order.
    pub fn in_order(source: &'a dyn Source, batch: usize) -> Self {
        Self::with_order(source, (0..source.len()).collect(), batch)
    }

    fn with_order(source: &'a dyn Source, order: Vec<usize>, batch: usize) -> Self {
        assert!(batch > 0, "batch size must be at least 1");
        Self { source, order, batch, current: (0, 0) }
    }

    /// Number of batches in the pass.
    pub fn batches(&self) -> usize {
        self.order.len().div_ceil(self.batch)
    }

    /// Indices of the next batch (`None` after the last), after releasing the previous one.
    pub fn next_batch(&mut self) -> Option<&[usize]> {
        self.release_current();
        let start = self.current.1;
        if start >= self.order.len() {
            return None;
        }
        let end = (start + self.batch).min(self.order.len());
        self.current = (start, end);
        Some(&self.order[start..end])
    }

    fn release_current(&mut self) {
        let (a, b) = self.current;
        if b > a {
            self.source.release(&self.order[a..b]);
        }
    }
}

impl Drop for BatchStream<'_> {
    fn drop(&mut self) {
        self.release_current();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::tests::Toy;

    #[test]
    fn batches_cover_every_example_once_with_a_partial_last_batch() {
        let toy = Toy::new(vec![0; 10], 1);
        let mut s = BatchStream::shuffled(&toy, 4, 1, 0);
        assert_eq!(s.batches(), 3);
        let mut seen = Vec::new();
        let mut sizes = Vec::new();
        while let Some(b) = s.next_batch() {
            sizes.push(b.len());
            seen.extend_from_slice(b);
        }
        assert_eq!(sizes, vec![4, 4, 2]);
        seen.sort_unstable();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        let mut ordered = BatchStream::in_order(&toy, 4);
        assert_eq!(ordered.next_batch(), Some(&[0, 1, 2, 3][..]));
    }
}
