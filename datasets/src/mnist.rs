//! MNIST (and any dataset in its layout, such as Fashion-MNIST): four IDX files, gzip'd or
//! not, in one folder. Pixels become `f32` in `[0, 1]`; examples have shape `[1, H, W]`.

use crate::cache::Cache;
use crate::idx::IdxFile;
use crate::location::DataPath;
use crate::{DatasetError, Source};
use std::path::PathBuf;

/// Number of classes in MNIST-layout datasets.
pub const CLASSES: usize = 10;

const FILES: [(&str, &str); 2] = [
    ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
];

/// One split of MNIST: images and labels, both memory-mapped.
#[derive(Debug)]
pub struct MnistSplit {
    images: IdxFile,
    labels: IdxFile,
    shape: [usize; 3],
}

/// The train and test splits of an MNIST-layout folder.
#[derive(Debug)]
pub struct Mnist {
    /// 60,000 examples in MNIST.
    pub train: MnistSplit,
    /// 10,000 examples in MNIST.
    pub test: MnistSplit,
}

impl Mnist {
    /// Open the four files in `dir`, decompressing gzip'd ones into `cache` on first use.
    pub fn open(dir: &DataPath, cache: &Cache) -> Result<Self, DatasetError> {
        let [train, test] = FILES;
        Ok(Self { train: MnistSplit::open(dir, train, cache)?, test: MnistSplit::open(dir, test, cache)? })
    }
}

/// The existing file for the IDX name `base` in `dir`: plain, `.gz`, or the dotted variant
/// some mirrors use (`train-images.idx3-ubyte`).
fn find(dir: &DataPath, base: &str) -> Result<PathBuf, DatasetError> {
    let dotted = base.replacen("-idx", ".idx", 1);
    let tried: Vec<PathBuf> = [base.to_owned(), format!("{base}.gz"), dotted.clone(), format!("{dotted}.gz")]
        .iter()
        .map(|n| dir.resolved.join(n))
        .collect();
    if let Some(found) = tried.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    Err(DatasetError::Missing {
        what: format!("MNIST file {base}"),
        tried: tried[..2].to_vec(),
        hint: format!(
            "{} Or run `plflow fetch mnist` to download them.",
            dir.how_to_provide(
                "the four MNIST files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, \
                 t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz)",
            )
        ),
    })
}

impl From<Mnist> for crate::Dataset {
    fn from(m: Mnist) -> Self {
        Self {
            train: std::sync::Arc::new(m.train),
            test: std::sync::Arc::new(m.test),
            class_names: crate::Dataset::numbered_classes(CLASSES),
        }
    }
}

impl MnistSplit {
    fn open(dir: &DataPath, (images, labels): (&str, &str), cache: &Cache) -> Result<Self, DatasetError> {
        let images = IdxFile::open(&cache.plain_file(&find(dir, images)?)?, 3)?;
        let labels = IdxFile::open(&cache.plain_file(&find(dir, labels)?)?, 1)?;
        Self::from_files(images, labels)
    }

    /// Pair checked image and label files.
    pub fn from_files(images: IdxFile, labels: IdxFile) -> Result<Self, DatasetError> {
        let (n, h, w) = (images.dims()[0], images.dims()[1], images.dims()[2]);
        if labels.dims()[0] != n {
            return Err(DatasetError::format(
                labels.path(),
                format!("{} labels but {} has {n} images", labels.dims()[0], images.path().display()),
            ));
        }
        if let Some(i) = labels.data().iter().position(|&l| l as usize >= CLASSES) {
            return Err(DatasetError::format(
                labels.path(),
                format!("record {i} has label {}, expected 0..{}", labels.data()[i], CLASSES - 1),
            ));
        }
        Ok(Self { images, labels, shape: [1, h, w] })
    }
}

impl Source for MnistSplit {
    fn len(&self) -> usize {
        self.labels.dims()[0]
    }

    fn example_shape(&self) -> &[usize] {
        &self.shape
    }

    fn classes(&self) -> usize {
        CLASSES
    }

    fn label(&self, index: usize) -> u32 {
        self.labels.data()[index] as u32
    }

    fn release(&self, indices: &[usize]) {
        let len = self.example_len();
        for &i in indices {
            self.images.release(&self.images.data()[i * len..(i + 1) * len]);
        }
    }

    fn read_into(&self, indices: &[usize], features: &mut [f32], labels: &mut [u32]) {
        let len = self.example_len();
        assert_eq!(features.len(), indices.len() * len, "feature buffer size");
        assert_eq!(labels.len(), indices.len(), "label buffer size");
        let (pixels, all_labels) = (self.images.data(), self.labels.data());
        let mut row = vec![0u8; len];
        for ((&i, out), label) in indices.iter().zip(features.chunks_exact_mut(len)).zip(labels.iter_mut()) {
            self.images.copy_out(&pixels[i * len..(i + 1) * len], &mut row);
            for (o, &p) in out.iter_mut().zip(&row) {
                *o = p as f32 / 255.0;
            }
            *label = all_labels[i] as u32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn at(dir: &Path) -> DataPath {
        DataPath::resolve(dir)
    }

    fn write_idx(path: &Path, dims: &[u32], body: &[u8]) {
        let mut v = vec![0, 0, 0x08, dims.len() as u8];
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(body);
        std::fs::write(path, v).expect("write");
    }

    fn fixture(dir: &Path, labels: &[u8]) {
        let n = labels.len() as u32;
        let pixels: Vec<u8> = (0..n * 4).map(|i| (i * 17 % 256) as u8).collect();
        for (images, label_file) in FILES {
            write_idx(&dir.join(images), &[n, 2, 2], &pixels);
            write_idx(&dir.join(label_file), &[n], labels);
        }
    }

    #[test]
    fn reads_known_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        fixture(dir.path(), &[3, 1, 4]);
        let m = Mnist::open(&at(dir.path()), &Cache::new(dir.path().join("cache"))).expect("open");
        assert_eq!(m.train.len(), 3);
        assert_eq!(m.train.example_shape(), &[1, 2, 2]);
        let (mut x, mut y) = (vec![0.0; 8], vec![0; 2]);
        m.train.read_into(&[2, 0], &mut x, &mut y);
        assert_eq!(y, vec![4, 3]);
        let want: Vec<f32> =
            [136u8, 153, 170, 187, 0, 17, 34, 51].iter().map(|&p| p as f32 / 255.0).collect();
        assert_eq!(x, want);
    }

    #[test]
    fn bad_label_names_the_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        fixture(dir.path(), &[3, 12, 4]);
        let err = Mnist::open(&at(dir.path()), &Cache::new(dir.path().join("cache"))).expect_err("label 12");
        assert!(err.to_string().contains("record 1 has label 12"), "{err}");
    }

    #[test]
    fn missing_files_say_where_to_put_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = Mnist::open(&at(&dir.path().join("nope")), &Cache::new(dir.path())).expect_err("missing");
        let msg = err.to_string();
        assert!(msg.contains("train-images-idx3-ubyte") && msg.contains("Put the four MNIST files"), "{msg}");
    }
}
