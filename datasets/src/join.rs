//! Datasets joined feature by feature: the same examples, in the same order, read from two or
//! more sources (pixels and a backbone's features, or two backbones' features) and put side
//! by side as one flat vector.

use crate::{Dataset, Source};
use std::sync::Arc;

/// Examples whose features are the parts' features, flattened and concatenated in order.
#[derive(Debug)]
pub struct Joined {
    parts: Vec<Arc<dyn Source>>,
    shape: [usize; 1],
}

impl Joined {
    /// Join `parts` (at least one), which must hold the same examples: same count and same
    /// label at every index. The error says which part and which example differ.
    pub fn new(parts: Vec<Arc<dyn Source>>) -> Result<Self, String> {
        let Some(first) = parts.first() else {
            return Err("nothing to join".into());
        };
        for (k, p) in parts.iter().enumerate().skip(1) {
            if p.len() != first.len() {
                return Err(format!("input 1 has {} examples, input {} has {}", first.len(), k + 1, p.len()));
            }
            if let Some(i) = (0..first.len()).find(|&i| p.label(i) != first.label(i)) {
                return Err(format!(
                    "example {i} has label {} in input 1 but {} in input {}; joined inputs must hold the same \
                     examples in the same order",
                    first.label(i),
                    p.label(i),
                    k + 1
                ));
            }
        }
        let shape = [parts.iter().map(|p| p.example_len()).sum()];
        Ok(Self { parts, shape })
    }
}

impl Source for Joined {
    fn len(&self) -> usize {
        self.parts[0].len()
    }
    fn example_shape(&self) -> &[usize] {
        &self.shape
    }
    fn classes(&self) -> usize {
        self.parts.iter().map(|p| p.classes()).max().unwrap_or(0)
    }
    fn label(&self, index: usize) -> u32 {
        self.parts[0].label(index)
    }
    fn read_into(&self, indices: &[usize], features: &mut [f32], labels: &mut [u32]) {
        let (n, width) = (indices.len(), self.shape[0]);
        assert_eq!(features.len(), n * width, "joined read: feature buffer length");
        let mut at = 0;
        for p in &self.parts {
            let len = p.example_len();
            let mut part = vec![0.0f32; n * len];
            p.read_into(indices, &mut part, labels);
            for (row, src) in features.chunks_exact_mut(width.max(1)).zip(part.chunks_exact(len.max(1))) {
                row[at..at + len].copy_from_slice(src);
            }
            at += len;
        }
    }
    fn release(&self, indices: &[usize]) {
        self.parts.iter().for_each(|p| p.release(indices));
    }
}

/// Both splits of `datasets` joined; the class names are the first dataset's. The error
/// names the split.
pub fn join(datasets: &[&Dataset]) -> Result<Dataset, String> {
    let split = |name: &str, pick: fn(&Dataset) -> Arc<dyn Source>| {
        Joined::new(datasets.iter().map(|d| pick(d)).collect()).map_err(|e| format!("{name} split: {e}"))
    };
    let train = split("train", |d| d.train.clone())?;
    let test = split("test", |d| d.test.clone())?;
    let class_names = datasets.first().map(|d| d.class_names.clone()).unwrap_or_default();
    Ok(Dataset { train: Arc::new(train), test: Arc::new(test), class_names })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::tests::Toy;

    #[test]
    fn rows_are_the_parts_side_by_side_and_mismatches_are_named() {
        let labels: Vec<u32> = (0..9).map(|i| i % 3).collect();
        let a: Arc<dyn Source> = Arc::new(Toy::new(labels.clone(), 3));
        let b: Arc<dyn Source> = Arc::new(Toy::new(labels.clone(), 3));
        let joined = Joined::new(vec![a.clone(), b]).expect("same examples");
        assert_eq!(joined.example_shape(), &[6]);
        let (mut x, mut y) = (vec![0.0; 12], vec![0; 2]);
        joined.read_into(&[4, 7], &mut x, &mut y);
        let (r4, r7) = (Toy::new(labels.clone(), 3).row(4), Toy::new(labels.clone(), 3).row(7));
        assert_eq!(x, [r4, r4, r7, r7].concat());
        assert_eq!(y, [labels[4], labels[7]]);

        let shorter: Arc<dyn Source> = Arc::new(Toy::new(labels[..8].to_vec(), 3));
        let e = Joined::new(vec![a.clone(), shorter]).expect_err("counts differ");
        assert!(e.contains("input 1 has 9 examples, input 2 has 8"), "{e}");
        let mut other = labels.clone();
        other[5] = 0;
        let e = Joined::new(vec![a, Arc::new(Toy::new(other, 3))]).expect_err("labels differ");
        assert!(e.contains("example 5 has label 2 in input 1 but 0 in input 2"), "{e}");
    }
}
