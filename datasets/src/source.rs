//! The [`Source`] trait: what the engine needs from any dataset split.

/// One split (train or test) of a labelled dataset, readable by row index.
pub trait Source: Send + Sync + std::fmt::Debug {
    /// Number of examples.
    fn len(&self) -> usize;

    /// `true` when the split has no examples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Shape of one example, e.g. `[1, 28, 28]` (channels, height, width) or `[512]`.
    fn example_shape(&self) -> &[usize];

    /// Values per example (the product of [`Source::example_shape`]).
    fn example_len(&self) -> usize {
        self.example_shape().iter().product()
    }

    /// Number of classes; labels are `0..classes`.
    fn classes(&self) -> usize;

    /// Copy examples `indices` into `features` (`indices.len() * example_len()` values, row
    /// after row) and their labels into `labels`.
    ///
    /// # Panics
    /// If an index is out of range or a buffer has the wrong length (caller bugs).
    fn read_into(&self, indices: &[usize], features: &mut [f32], labels: &mut [u32]);
}
