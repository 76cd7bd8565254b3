//! Transforms applied to examples as they are read: per-feature standardisation (statistics
//! from one streaming pass over the training split, applied to both splits) and flattening.

use crate::stream::BatchStream;
use crate::{Dataset, Source};
use std::sync::Arc;

/// Per-feature mean and standard deviation of a training split.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    /// Mean of each feature.
    pub mean: Vec<f32>,
    /// Population standard deviation of each feature.
    pub std: Vec<f32>,
}

impl Stats {
    /// Mean and standard deviation of every feature of `split`, in one pass of `batch` rows at
    /// a time (f64 sums of shifted values, so large offsets do not cancel).
    pub fn measure(split: &dyn Source, batch: usize) -> Self {
        let dim = split.example_len();
        let n = split.len();
        let mut shift: Option<Vec<f64>> = None;
        let (mut sum, mut sq) = (vec![0.0f64; dim], vec![0.0f64; dim]);
        let mut x = vec![0.0f32; batch * dim];
        let mut y = vec![0u32; batch];
        let mut stream = BatchStream::in_order(split, batch);
        while let Some(idx) = stream.next_batch() {
            let rows = idx.len();
            split.read_into(idx, &mut x[..rows * dim], &mut y[..rows]);
            let k = shift.get_or_insert_with(|| x[..dim].iter().map(|&v| f64::from(v)).collect());
            for row in x[..rows * dim].chunks_exact(dim) {
                for (j, &v) in row.iter().enumerate() {
                    let d = f64::from(v) - k[j];
                    sum[j] += d;
                    sq[j] += d * d;
                }
            }
        }
        let k = shift.unwrap_or_else(|| vec![0.0; dim]);
        let nf = n.max(1) as f64;
        let mean = (0..dim).map(|j| (k[j] + sum[j] / nf) as f32).collect();
        let std = (0..dim).map(|j| ((sq[j] / nf - (sum[j] / nf).powi(2)).max(0.0)).sqrt() as f32).collect();
        Self { mean, std }
    }
}

/// `(x - mean) / std` per feature; features with (almost) no spread are only centred.
#[derive(Debug)]
pub struct Standardized {
    inner: Arc<dyn Source>,
    mean: Vec<f32>,
    scale: Vec<f32>,
}

impl Standardized {
    /// Standardise `inner` with `stats`.
    pub fn new(inner: Arc<dyn Source>, stats: &Stats) -> Self {
        let scale = stats.std.iter().map(|&s| if s > 1e-6 { 1.0 / s } else { 1.0 }).collect();
        Self { inner, mean: stats.mean.clone(), scale }
    }
}

impl Stats {
    /// Standardise rows of features in place, exactly as a [`Standardized`] source reads them.
    pub fn apply(&self, features: &mut [f32]) {
        let scale: Vec<f32> = self.std.iter().map(|&s| if s > 1e-6 { 1.0 / s } else { 1.0 }).collect();
        for row in features.chunks_exact_mut(self.mean.len().max(1)) {
            for ((v, m), s) in row.iter_mut().zip(&self.mean).zip(&scale) {
                *v = (*v - m) * s;
            }
        }
    }
}

impl Source for Standardized {
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn example_shape(&self) -> &[usize] {
        self.inner.example_shape()
    }
    fn classes(&self) -> usize {
        self.inner.classes()
    }
    fn label(&self, index: usize) -> u32 {
        self.inner.label(index)
    }
    fn read_into(&self, indices: &[usize], features: &mut [f32], labels: &mut [u32]) {
        self.inner.read_into(indices, features, labels);
        for row in features.chunks_exact_mut(self.mean.len()) {
            for ((v, m), s) in row.iter_mut().zip(&self.mean).zip(&self.scale) {
                *v = (*v - m) * s;
            }
        }
    }
    fn release(&self, indices: &[usize]) {
        self.inner.release(indices);
    }
}

/// Both splits of `dataset` standardised with the training split's statistics.
pub fn standardize(dataset: &Dataset, stats: &Stats) -> Dataset {
    Dataset {
        train: Arc::new(Standardized::new(dataset.train.clone(), stats)),
        test: Arc::new(Standardized::new(dataset.test.clone(), stats)),
        class_names: dataset.class_names.clone(),
    }
}

/// The same examples seen as flat vectors.
#[derive(Debug)]
pub struct Flattened {
    inner: Arc<dyn Source>,
    shape: [usize; 1],
}

impl Flattened {
    /// Flatten `inner`.
    pub fn new(inner: Arc<dyn Source>) -> Self {
        let shape = [inner.example_len()];
        Self { inner, shape }
    }
}

impl Source for Flattened {
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn example_shape(&self) -> &[usize] {
        &self.shape
    }
    fn classes(&self) -> usize {
        self.inner.classes()
    }
    fn label(&self, index: usize) -> u32 {
        self.inner.label(index)
    }
    fn read_into(&self, indices: &[usize], features: &mut [f32], labels: &mut [u32]) {
        self.inner.read_into(indices, features, labels);
    }
    fn release(&self, indices: &[usize]) {
        self.inner.release(indices);
    }
}

/// Both splits of `dataset` flattened.
pub fn flatten(dataset: &Dataset) -> Dataset {
    Dataset {
        train: Arc::new(Flattened::new(dataset.train.clone())),
        test: Arc::new(Flattened::new(dataset.test.clone())),
        class_names: dataset.class_names.clone(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small in-memory source: example `i` is `[i, 2i + label, 7]` (shape 1x3).
    #[derive(Debug)]
    pub(crate) struct Toy {
        labels: Vec<u32>,
        classes: usize,
        shape: [usize; 2],
    }

    impl Toy {
        pub(crate) fn new(labels: Vec<u32>, classes: usize) -> Self {
            Self { labels, classes, shape: [1, 3] }
        }
        pub(crate) fn row(&self, i: usize) -> [f32; 3] {
            [i as f32, 2.0 * i as f32 + self.labels[i] as f32, 7.0]
        }
    }

    impl Source for Toy {
        fn len(&self) -> usize {
            self.labels.len()
        }
        fn example_shape(&self) -> &[usize] {
            &self.shape
        }
        fn classes(&self) -> usize {
            self.classes
        }
        fn label(&self, index: usize) -> u32 {
            self.labels[index]
        }
        fn read_into(&self, indices: &[usize], features: &mut [f32], labels: &mut [u32]) {
            for ((&i, out), l) in indices.iter().zip(features.chunks_exact_mut(3)).zip(labels.iter_mut()) {
                out.copy_from_slice(&self.row(i));
                *l = self.labels[i];
            }
        }
    }

    #[test]
    fn stats_match_a_two_pass_computation_and_standardise_both_splits() {
        let toy = Arc::new(Toy::new((0..101).map(|i| i % 3).collect(), 3));
        let stats = Stats::measure(toy.as_ref(), 16);
        for j in 0..3 {
            let col: Vec<f64> = (0..101).map(|i| f64::from(toy.row(i)[j])).collect();
            let mean = col.iter().sum::<f64>() / 101.0;
            let std = (col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 101.0).sqrt();
            assert!((f64::from(stats.mean[j]) - mean).abs() < 1e-4, "mean {j}");
            assert!((f64::from(stats.std[j]) - std).abs() < 1e-4, "std {j}");
        }
        let d = Dataset { train: toy.clone(), test: toy, class_names: Dataset::numbered_classes(3) };
        let s = standardize(&d, &stats);
        let (mut x, mut y) = (vec![0.0; 3], vec![0]);
        s.test.read_into(&[10], &mut x, &mut y);
        assert!((x[0] - (10.0 - stats.mean[0]) / stats.std[0]).abs() < 1e-5);
        assert_eq!(x[2], 0.0, "a constant feature is centred, not divided by zero");
        assert_eq!(flatten(&s).train.example_shape(), &[3]);
    }
}
