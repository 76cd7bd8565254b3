//! The [`Source`] trait (what the engine needs from any dataset split) and [`Dataset`], a
//! train/test pair with its class names.

use std::sync::Arc;

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

    /// The label of example `index`.
    ///
    /// # Panics
    /// If `index` is out of range.
    fn label(&self, index: usize) -> u32;

    /// Copy examples `indices` into `features` (`indices.len() * example_len()` values, row
    /// after row) and their labels into `labels`.
    ///
    /// # Panics
    /// If an index is out of range or a buffer has the wrong length (caller bugs).
    fn read_into(&self, indices: &[usize], features: &mut [f32], labels: &mut [u32]);

    /// Hint that examples `indices` will not be read again soon: memory-mapped sources drop
    /// their resident pages (the contents stay on disk). Does nothing for other sources.
    fn release(&self, indices: &[usize]) {
        let _ = indices;
    }
}

/// The two splits of a dataset and the names of its classes (`class_names[label]`).
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Examples to train on.
    pub train: Arc<dyn Source>,
    /// Held-out examples.
    pub test: Arc<dyn Source>,
    /// One name per class; `"0"`, `"1"`, ... when the data carries no names.
    pub class_names: Vec<String>,
}

impl Dataset {
    /// Examples per class of a split.
    pub fn class_counts(split: &dyn Source) -> Vec<usize> {
        let mut counts = vec![0; split.classes()];
        for i in 0..split.len() {
            if let Some(c) = counts.get_mut(split.label(i) as usize) {
                *c += 1;
            }
        }
        counts
    }

    /// Class names `"0".."classes-1"`, for data without names.
    pub fn numbered_classes(classes: usize) -> Vec<String> {
        (0..classes).map(|c| c.to_string()).collect()
    }
}
