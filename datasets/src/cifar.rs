//! CIFAR-10 and CIFAR-100 in their canonical binary formats, memory-mapped.
//!
//! CIFAR-10: `data_batch_1.bin` .. `data_batch_5.bin` (train) and `test_batch.bin`, records of
//! 1 label byte + 3072 pixel bytes (R, G, B planes of 32x32, row-major); class names in
//! `batches.meta.txt`. CIFAR-100: `train.bin` and `test.bin`, records of a coarse and a fine
//! label byte + 3072; names in `fine_label_names.txt` / `coarse_label_names.txt`. The files may
//! sit in the folder itself or in the `cifar-10-batches-bin/` / `cifar-100-binary/` folder the
//! official archives unpack to. Examples have shape `[3, 32, 32]`, values in `[0, 1]`.

use crate::location::DataPath;
use crate::mapped::MappedFile;
use crate::{Dataset, DatasetError, Source};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Values per image.
pub const PIXELS: usize = 3 * 32 * 32;

/// Which CIFAR and which labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// CIFAR-10, 10 classes.
    Ten,
    /// CIFAR-100 with its 100 fine labels (`fine: true`) or 20 coarse superclasses.
    Hundred {
        /// The 100 fine labels, not the 20 superclasses.
        fine: bool,
    },
}

impl Variant {
    /// Number of classes.
    pub fn classes(self) -> usize {
        match self {
            Variant::Ten => 10,
            Variant::Hundred { fine: true } => 100,
            Variant::Hundred { fine: false } => 20,
        }
    }

    /// Label bytes of a record and the bound of each (CIFAR-100: coarse, then fine).
    fn label_limits(self) -> &'static [usize] {
        match self {
            Variant::Ten => &[10],
            Variant::Hundred { .. } => &[20, 100],
        }
    }

    fn label_bytes(self) -> usize {
        match self {
            Variant::Ten => 1,
            Variant::Hundred { .. } => 2,
        }
    }

    /// Which label byte of a record is used.
    fn label_at(self) -> usize {
        match self {
            Variant::Ten | Variant::Hundred { fine: false } => 0,
            Variant::Hundred { fine: true } => 1,
        }
    }

    fn subfolder(self) -> &'static str {
        match self {
            Variant::Ten => "cifar-10-batches-bin",
            Variant::Hundred { .. } => "cifar-100-binary",
        }
    }

    fn files(self) -> (Vec<&'static str>, &'static str) {
        match self {
            Variant::Ten => (
                vec![
                    "data_batch_1.bin",
                    "data_batch_2.bin",
                    "data_batch_3.bin",
                    "data_batch_4.bin",
                    "data_batch_5.bin",
                ],
                "test_batch.bin",
            ),
            Variant::Hundred { .. } => (vec!["train.bin"], "test.bin"),
        }
    }

    fn names_file(self) -> &'static str {
        match self {
            Variant::Ten => "batches.meta.txt",
            Variant::Hundred { fine: true } => "fine_label_names.txt",
            Variant::Hundred { fine: false } => "coarse_label_names.txt",
        }
    }

    /// The command that downloads this dataset.
    pub fn fetch_name(self) -> &'static str {
        match self {
            Variant::Ten => "cifar10",
            Variant::Hundred { .. } => "cifar100",
        }
    }
}

/// `true` when `dir` (or its official subfolder) holds the binary files of `variant`.
pub fn is_binary_folder(dir: &Path, variant: Variant) -> bool {
    let (_, test) = variant.files();
    dir.join(test).is_file() || dir.join(variant.subfolder()).join(test).is_file()
}

/// One split: a list of mapped record files.
#[derive(Debug)]
pub struct CifarSplit {
    files: Vec<MappedFile>,
    /// First record of each file, plus the total.
    starts: Vec<usize>,
    variant: Variant,
    shape: [usize; 3],
}

/// Open the binary CIFAR in `dir`.
pub fn open(dir: &DataPath, variant: Variant) -> Result<Dataset, DatasetError> {
    let root = if dir.resolved.join(variant.subfolder()).is_dir() {
        dir.resolved.join(variant.subfolder())
    } else {
        dir.resolved.clone()
    };
    let (train, test) = variant.files();
    let find = |name: &str| -> Result<PathBuf, DatasetError> {
        let p = root.join(name);
        if p.is_file() {
            return Ok(p);
        }
        Err(DatasetError::Missing {
            what: format!("CIFAR file {name}"),
            tried: vec![p],
            hint: format!(
                "{} Or run `plflow fetch {}` to download it.",
                dir.how_to_provide("the extracted binary CIFAR files"),
                variant.fetch_name()
            ),
        })
    };
    let train = CifarSplit::open(&train.iter().map(|n| find(n)).collect::<Result<Vec<_>, _>>()?, variant)?;
    let test = CifarSplit::open(&[find(test)?], variant)?;
    let names = read_names(&root.join(variant.names_file()), variant.classes())?;
    Ok(Dataset { train: Arc::new(train), test: Arc::new(test), class_names: names })
}

/// Class names from a names file (one per line, blank lines ignored), or numbers without one.
fn read_names(path: &Path, classes: usize) -> Result<Vec<String>, DatasetError> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(Dataset::numbered_classes(classes)) };
    let names: Vec<String> =
        text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect();
    if names.len() != classes {
        return Err(DatasetError::format(path, format!("{} class names, expected {classes}", names.len())));
    }
    Ok(names)
}

impl CifarSplit {
    /// Map and check the record files `paths` (in order).
    pub fn open(paths: &[PathBuf], variant: Variant) -> Result<Self, DatasetError> {
        let record = variant.label_bytes() + PIXELS;
        let mut files = Vec::new();
        let mut starts = vec![0];
        for path in paths {
            let map = MappedFile::open(path)?;
            let len = map.bytes().len();
            if len == 0 || len % record != 0 {
                return Err(DatasetError::format(
                    path,
                    format!(
                        "{len} bytes is not a whole number of {record}-byte records: record {} is incomplete \
                         (truncated file?), download it again",
                        len / record
                    ),
                ));
            }
            for (r, rec) in map.bytes().chunks_exact(record).enumerate() {
                for (&l, &limit) in rec.iter().zip(variant.label_limits()) {
                    if l as usize >= limit {
                        return Err(DatasetError::format(
                            path,
                            format!(
                                "record {r} has label {l}, expected 0..{} (is this the right CIFAR?)",
                                limit - 1
                            ),
                        ));
                    }
                }
            }
            starts.push(starts[starts.len() - 1] + len / record);
            files.push(map);
        }
        Ok(Self { files, starts, variant, shape: [3, 32, 32] })
    }

    fn record(&self, index: usize) -> &[u8] {
        let f = self.starts.partition_point(|&s| s <= index) - 1;
        let size = self.variant.label_bytes() + PIXELS;
        let r = index - self.starts[f];
        &self.files[f].bytes()[r * size..(r + 1) * size]
    }
}

impl Source for CifarSplit {
    fn len(&self) -> usize {
        self.starts[self.starts.len() - 1]
    }

    fn example_shape(&self) -> &[usize] {
        &self.shape
    }

    fn classes(&self) -> usize {
        self.variant.classes()
    }

    fn label(&self, index: usize) -> u32 {
        self.record(index)[self.variant.label_at()] as u32
    }

    fn read_into(&self, indices: &[usize], features: &mut [f32], labels: &mut [u32]) {
        assert_eq!(features.len(), indices.len() * PIXELS, "feature buffer size");
        assert_eq!(labels.len(), indices.len(), "label buffer size");
        let mut rec = vec![0u8; self.variant.label_bytes() + PIXELS];
        let skip = self.variant.label_bytes();
        for ((&i, out), label) in indices.iter().zip(features.chunks_exact_mut(PIXELS)).zip(labels.iter_mut())
        {
            let f = self.starts.partition_point(|&s| s <= i) - 1;
            self.files[f].copy_out(self.record(i), &mut rec);
            for (o, &p) in out.iter_mut().zip(&rec[skip..]) {
                *o = f32::from(p) / 255.0;
            }
            *label = rec[self.variant.label_at()] as u32;
        }
    }

    fn release(&self, indices: &[usize]) {
        for &i in indices {
            let f = self.starts.partition_point(|&s| s <= i) - 1;
            self.files[f].release(self.record(i));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(labels: &[u8], seed: u8) -> Vec<u8> {
        let mut r = labels.to_vec();
        r.extend((0..PIXELS).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)));
        r
    }

    #[test]
    fn cifar10_reads_known_bytes_across_batch_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sub = dir.path().join("cifar-10-batches-bin");
        std::fs::create_dir(&sub).expect("mkdir");
        for k in 1..=5u8 {
            std::fs::write(
                sub.join(format!("data_batch_{k}.bin")),
                [record(&[k], k), record(&[9], 100 + k)].concat(),
            )
            .expect("write");
        }
        std::fs::write(sub.join("test_batch.bin"), record(&[3], 0)).expect("write");
        std::fs::write(sub.join("batches.meta.txt"), "a\nb\nc\nd\ne\nf\ng\nh\ni\nj\n\n").expect("write");
        let d = open(&DataPath::resolve(dir.path()), Variant::Ten).expect("open");
        assert_eq!((d.train.len(), d.test.len(), d.train.classes()), (10, 1, 10));
        assert_eq!(d.class_names[9], "j");
        let (mut x, mut y) = (vec![0.0; 2 * PIXELS], vec![0; 2]);
        d.train.read_into(&[5, 4], &mut x, &mut y);
        assert_eq!(y, vec![9, 3]); // record 5 = second of batch 3; record 4 = first of batch 3
        let want = record(&[9], 103);
        assert!(x[..PIXELS].iter().zip(&want[1..]).all(|(&a, &b)| a == f32::from(b) / 255.0));
        assert_eq!(x[PIXELS + 1], f32::from(7u8.wrapping_add(3)) / 255.0);
    }

    #[test]
    fn cifar100_fine_and_coarse_labels() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("train.bin"), [record(&[4, 77], 1), record(&[19, 99], 2)].concat())
            .expect("write");
        std::fs::write(dir.path().join("test.bin"), record(&[0, 5], 3)).expect("write");
        let at = DataPath::resolve(dir.path());
        let fine = open(&at, Variant::Hundred { fine: true }).expect("fine");
        let coarse = open(&at, Variant::Hundred { fine: false }).expect("coarse");
        assert_eq!((fine.train.label(0), fine.train.label(1), fine.train.classes()), (77, 99, 100));
        assert_eq!((coarse.train.label(0), coarse.train.label(1), coarse.train.classes()), (4, 19, 20));
        assert_eq!(coarse.class_names[3], "3", "numbered without a names file");
    }

    #[test]
    fn truncated_and_bad_records_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("test.bin");
        let mut bytes = [record(&[0, 1], 0), record(&[0, 2], 0)].concat();
        bytes.truncate(bytes.len() - 10);
        std::fs::write(&p, &bytes).expect("write");
        let err = CifarSplit::open(std::slice::from_ref(&p), Variant::Hundred { fine: true })
            .expect_err("truncated");
        assert!(
            err.to_string().contains("test.bin") && err.to_string().contains("record 1 is incomplete"),
            "{err}"
        );
        std::fs::write(&p, [record(&[0, 1], 0), record(&[25, 2], 0)].concat()).expect("write");
        let err = CifarSplit::open(&[p], Variant::Hundred { fine: true }).expect_err("label");
        assert!(err.to_string().contains("record 1 has label 25"), "{err}");
    }

    #[test]
    fn missing_files_point_to_fetch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = open(&DataPath::resolve(dir.path()), Variant::Ten).expect_err("missing");
        assert!(err.to_string().contains("plflow fetch cifar10"), "{err}");
    }
}
