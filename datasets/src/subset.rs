//! `limit`: a reproducible, class-balanced slice of a dataset, so a pipeline can be tried on a
//! few thousand examples in seconds.

use crate::{Dataset, Source};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;

/// Some rows of another source.
#[derive(Debug)]
pub struct Subset {
    inner: Arc<dyn Source>,
    rows: Vec<usize>,
}

impl Subset {
    /// The rows `rows` of `inner`, in that order.
    pub fn new(inner: Arc<dyn Source>, rows: Vec<usize>) -> Self {
        Self { inner, rows }
    }

    fn map(&self, indices: &[usize]) -> Vec<usize> {
        indices.iter().map(|&i| self.rows[i]).collect()
    }
}

impl Source for Subset {
    fn len(&self) -> usize {
        self.rows.len()
    }
    fn example_shape(&self) -> &[usize] {
        self.inner.example_shape()
    }
    fn classes(&self) -> usize {
        self.inner.classes()
    }
    fn label(&self, index: usize) -> u32 {
        self.inner.label(self.rows[index])
    }
    fn read_into(&self, indices: &[usize], features: &mut [f32], labels: &mut [u32]) {
        self.inner.read_into(&self.map(indices), features, labels);
    }
    fn release(&self, indices: &[usize]) {
        self.inner.release(&self.map(indices));
    }
}

/// At most `count` rows of `split`, spread evenly over the classes: each class's rows are
/// shuffled with `seed` and classes take turns until `count` rows are chosen (a class that
/// runs out drops out). The chosen rows are returned in file order.
pub fn balanced_rows(split: &dyn Source, count: usize, seed: u64) -> Vec<usize> {
    if count >= split.len() {
        return (0..split.len()).collect();
    }
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); split.classes().max(1)];
    for i in 0..split.len() {
        let c = (split.label(i) as usize).min(by_class.len() - 1);
        by_class[c].push(i);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for rows in &mut by_class {
        rows.shuffle(&mut rng);
    }
    let mut chosen = Vec::with_capacity(count);
    let mut round = 0;
    while chosen.len() < count {
        let before = chosen.len();
        for rows in &by_class {
            if chosen.len() == count {
                break;
            }
            if let Some(&r) = rows.get(round) {
                chosen.push(r);
            }
        }
        if chosen.len() == before {
            break;
        }
        round += 1;
    }
    chosen.sort_unstable();
    chosen
}

/// `dataset` cut to at most `train` training examples and the same share of the test split
/// (rounded up), both class-balanced and reproducible from `seed`.
pub fn limit(dataset: Dataset, train: usize, seed: u64) -> Dataset {
    let share = train as f64 / dataset.train.len().max(1) as f64;
    let test = ((dataset.test.len() as f64 * share).ceil() as usize).max(1);
    let pick = |split: Arc<dyn Source>, n: usize, seed: u64| -> Arc<dyn Source> {
        if n >= split.len() {
            return split;
        }
        let rows = balanced_rows(split.as_ref(), n, seed);
        Arc::new(Subset::new(split, rows))
    };
    Dataset {
        train: pick(dataset.train, train, seed),
        test: pick(dataset.test, test, seed ^ 0x7e57),
        class_names: dataset.class_names,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::tests::Toy;

    #[test]
    fn limit_is_balanced_proportional_and_reproducible() {
        // 3 classes with 50, 30 and 20 rows; test split a fifth of that.
        let labels: Vec<u32> = (0..100)
            .map(|i| {
                if i < 50 {
                    0
                } else if i < 80 {
                    1
                } else {
                    2
                }
            })
            .collect();
        let test_labels: Vec<u32> = labels.iter().step_by(5).copied().collect();
        let d = Dataset {
            train: Arc::new(Toy::new(labels, 3)),
            test: Arc::new(Toy::new(test_labels, 3)),
            class_names: Dataset::numbered_classes(3),
        };
        let cut = limit(d.clone(), 30, 7);
        assert_eq!((cut.train.len(), cut.test.len()), (30, 6));
        assert_eq!(Dataset::class_counts(cut.train.as_ref()), vec![10, 10, 10]);
        let rows = |s: &dyn Source| (0..s.len()).map(|i| s.label(i)).collect::<Vec<_>>();
        assert_eq!(rows(cut.train.as_ref()), rows(limit(d.clone(), 30, 7).train.as_ref()), "reproducible");
        let many = limit(d.clone(), 90, 7);
        assert_eq!(Dataset::class_counts(many.train.as_ref()), vec![40, 30, 20], "small classes run out");
        assert_eq!(limit(d, 1000, 7).train.len(), 100);
    }
}
