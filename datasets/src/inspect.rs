//! `plflow inspect PATH`: what a dataset file, folder or archive holds (format, rows, shapes,
//! label counts and value statistics), for every format plflow reads.

use crate::cache::Cache;
use crate::cifar::{self, CifarSplit, Variant};
use crate::format::{Columns, META_CLASS_NAMES, META_SHAPE, TableFormat};
use crate::idx::IdxFile;
use crate::location::DataPath;
use crate::mnist::Mnist;
use crate::stream::BatchStream;
use crate::table::{Layout, TableFile, label_value, parse_shape};
use crate::{Dataset, DatasetError, Source};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

/// Rows read for value statistics (spread evenly over the split).
const SAMPLE: usize = 10_000;

/// A printable description of the dataset at `path`.
pub fn inspect(path: &Path, cache: &Cache) -> Result<String, DatasetError> {
    if !path.exists() {
        return Err(DatasetError::Missing {
            what: "dataset".into(),
            tried: vec![path.to_path_buf()],
            hint: "Give a file, folder or archive that exists.".into(),
        });
    }
    let at = DataPath::resolve(&std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()));
    let name = path.file_name().map(|n| n.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    let mut out = String::new();
    if path.is_dir() {
        if at.resolved.join("train-images-idx3-ubyte.gz").is_file()
            || at.resolved.join("train-images-idx3-ubyte").is_file()
        {
            let d: Dataset = Mnist::open(&at, cache)?.into();
            return Ok(describe("MNIST (IDX files)", &d));
        }
        for v in [Variant::Ten, Variant::Hundred { fine: true }] {
            if cifar::is_binary_folder(&at.resolved, v) {
                return Ok(describe(&format!("{} binary", v.fetch_name()), &cifar::open(&at, v)?));
            }
        }
        return images(&at, &mut out).map(|()| out);
    }
    if name.ends_with(".tar") || name.ends_with(".tar.gz") || name.ends_with(".tgz") {
        return images(&at, &mut out).map(|()| out);
    }
    if let Some(format) = TableFormat::from_path(path) {
        let table = match format {
            TableFormat::ArrowIpc => TableFile::open(path, &Columns::default())?,
            TableFormat::Parquet => crate::parquet_source::open(path, &Columns::default(), cache)?,
        };
        let label = match format {
            TableFormat::ArrowIpc => "Arrow IPC feature table",
            TableFormat::Parquet => "Parquet feature table",
        };
        let _ = writeln!(out, "{label}: {}", path.display());
        split_lines(&mut out, "rows", &table, table.class_names().as_deref());
        let mut keys: Vec<&String> = table.metadata().keys().collect();
        keys.sort();
        if !keys.is_empty() {
            let _ = writeln!(
                out,
                "  metadata keys: {}",
                keys.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")
            );
        }
        return Ok(out);
    }
    if name.ends_with(".bin") {
        let len = std::fs::metadata(path).map_err(DatasetError::io(path, "cannot read"))?.len() as usize;
        let variant = if len.is_multiple_of(cifar::PIXELS + 1) {
            Variant::Ten
        } else {
            Variant::Hundred { fine: true }
        };
        let split = CifarSplit::open(&[path.to_path_buf()], variant)?;
        let _ = writeln!(out, "{} binary records: {}", variant.fetch_name(), path.display());
        split_lines(&mut out, "rows", &split, None);
        return Ok(out);
    }
    // An IDX file, gzip'd or not: the rank is in the header.
    let plain = cache.plain_file(path)?;
    let header = std::fs::read(&plain).map_err(DatasetError::io(&plain, "cannot read"))?;
    let rank = header.get(3).copied().unwrap_or(0) as usize;
    let idx = IdxFile::open(&plain, rank.max(1))?;
    let dims = idx.dims();
    let body = idx.data();
    let (min, max) = body.iter().fold((u8::MAX, 0u8), |(a, b), &v| (a.min(v), b.max(v)));
    let mean = body.iter().map(|&v| f64::from(v)).sum::<f64>() / body.len().max(1) as f64;
    let _ = writeln!(out, "IDX unsigned bytes: {}", path.display());
    let _ = writeln!(
        out,
        "  {} rows of {}",
        dims[0],
        if dims.len() > 1 {
            dims[1..].iter().map(usize::to_string).collect::<Vec<_>>().join("x")
        } else {
            "1 value".into()
        }
    );
    let _ = writeln!(out, "  values: min {min}, max {max}, mean {mean:.3}");
    if dims.len() == 1 {
        let mut counts = std::collections::BTreeMap::new();
        for &v in body {
            *counts.entry(v).or_insert(0usize) += 1;
        }
        let _ = writeln!(
            out,
            "  value counts: {}",
            counts.iter().map(|(k, n)| format!("{k}: {n}")).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(out)
}

fn describe(format: &str, d: &Dataset) -> String {
    let mut out = format!("{format}\n");
    split_lines(&mut out, "train", d.train.as_ref(), Some(&d.class_names));
    split_lines(&mut out, "test", d.test.as_ref(), Some(&d.class_names));
    out
}

fn split_lines(out: &mut String, name: &str, split: &dyn Source, names: Option<&[String]>) {
    let shape = split.example_shape().iter().map(usize::to_string).collect::<Vec<_>>().join("x");
    let _ = writeln!(out, "  {name}: {} rows of {shape}, {} classes", split.len(), split.classes());
    let counts = Dataset::class_counts(split);
    let label = |c: usize| names.and_then(|n| n.get(c)).map_or(c.to_string(), |n| format!("{c} {n}"));
    let _ = writeln!(
        out,
        "    labels: {}",
        counts.iter().enumerate().map(|(c, n)| format!("{}: {n}", label(c))).collect::<Vec<_>>().join(", ")
    );
    let (min, max, mean, std) = value_stats(split);
    let _ = writeln!(
        out,
        "    values (sample of up to {SAMPLE} rows): min {min:.4}, max {max:.4}, mean {mean:.4}, std {std:.4}"
    );
}

fn value_stats(split: &dyn Source) -> (f32, f32, f64, f64) {
    let step = split.len().div_ceil(SAMPLE).max(1);
    let dim = split.example_len();
    let (mut min, mut max, mut sum, mut sq, mut n) =
        (f32::INFINITY, f32::NEG_INFINITY, 0.0f64, 0.0f64, 0usize);
    // At most 256 rows at a time, and never more than the split has.
    let rows = split.len().clamp(1, 256);
    let mut x = vec![0.0f32; rows * dim];
    let mut y = vec![0u32; rows];
    let mut stream = BatchStream::in_order(split, rows);
    while let Some(idx) = stream.next_batch() {
        let rows: Vec<usize> = idx.iter().copied().filter(|i| i % step == 0).collect();
        split.read_into(&rows, &mut x[..rows.len() * dim], &mut y[..rows.len()]);
        for &v in &x[..rows.len() * dim] {
            min = min.min(v);
            max = max.max(v);
            sum += f64::from(v);
            sq += f64::from(v) * f64::from(v);
        }
        n += rows.len() * dim;
    }
    let mean = sum / n.max(1) as f64;
    (min, max, mean, (sq / n.max(1) as f64 - mean * mean).max(0.0).sqrt())
}

fn images(at: &DataPath, out: &mut String) -> Result<(), DatasetError> {
    let counts = crate::images::survey(at)?;
    let _ = writeln!(
        out,
        "image folder ({}): {}",
        if at.resolved.is_dir() { "directory" } else { "archive" },
        at.resolved.display()
    );
    for split in ["train", "test"] {
        let of: Vec<&(&str, String, usize)> = counts.iter().filter(|(s, ..)| *s == split).collect();
        let total: usize = of.iter().map(|(.., n)| n).sum();
        let _ = writeln!(out, "  {split}: {total} images in {} classes", of.len());
        let _ = writeln!(
            out,
            "    {}",
            of.iter().map(|(_, c, n)| format!("{c}: {n}")).collect::<Vec<_>>().join(", ")
        );
    }
    let _ = writeln!(out, "  (images are decoded when a pipeline first reads them; sizes are checked then)");
    Ok(())
}

/// Example shape and class count of the table at `path` (Arrow IPC or Parquet), reading only
/// its schema and label column, so a pipeline can be checked before any data is decoded.
pub fn peek(path: &Path, columns: &Columns) -> Result<(Vec<usize>, usize), DatasetError> {
    if !path.is_file() {
        return Err(DatasetError::Missing {
            what: "feature table".into(),
            tried: vec![path.to_path_buf()],
            hint: "Check the path (relative paths are looked up under PLFLOW_DATA_DIR).".into(),
        });
    }
    match TableFormat::from_path(path) {
        Some(TableFormat::ArrowIpc) => {
            let t = TableFile::open(path, columns)?;
            Ok((t.example_shape().to_vec(), t.classes()))
        }
        Some(TableFormat::Parquet) => {
            use parquet::arrow::ProjectionMask;
            let bad = |p: String| DatasetError::format(path, p);
            let builder = crate::parquet_source::reader(path)?;
            let schema = builder.schema().clone();
            let layout = Layout::of(&schema, columns).map_err(&bad)?;
            let shape = match schema.metadata().get(META_SHAPE) {
                Some(s) => parse_shape(s, layout.dim).map_err(&bad)?,
                None => vec![layout.dim],
            };
            let names = schema.metadata().get(META_CLASS_NAMES).map_or(0, |s| s.lines().count());
            let leaf = builder
                .parquet_schema()
                .columns()
                .iter()
                .position(|c| c.path().parts().first().is_some_and(|p| p == &columns.label))
                .ok_or_else(|| bad(format!("no label column `{}`", columns.label)))?;
            let mask = ProjectionMask::leaves(builder.parquet_schema(), [leaf]);
            let reader = builder.with_projection(mask).build().map_err(|e| bad(e.to_string()))?;
            let max = crate::parquet_source::guarded(path, || {
                let (mut max, mut row) = (-1i64, 0);
                for batch in reader {
                    let batch = batch.map_err(|e| bad(format!("corrupt label column: {e}")))?;
                    let labels = batch.column(0);
                    for r in 0..labels.len() {
                        let v = label_value(labels, r);
                        if v < 0 {
                            return Err(bad(format!("record {} has label {v}, expected 0 or more", row + r)));
                        }
                        max = max.max(v);
                    }
                    row += labels.len();
                }
                Ok(max)
            })?;
            Ok((shape, ((max + 1) as usize).max(names)))
        }
        None => Err(DatasetError::format(
            path,
            "unknown table format: name the file .arrow, .ipc or .feather (Arrow IPC) or .parquet",
        )),
    }
}

/// The schema metadata of a feature table (Arrow IPC or Parquet), read from its footer only.
pub fn read_metadata(path: &Path) -> Result<HashMap<String, String>, DatasetError> {
    match TableFormat::from_path(path) {
        Some(TableFormat::Parquet) => {
            let builder = crate::parquet_source::reader(path)?;
            Ok(builder.schema().metadata().iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        }
        _ => {
            let columns = Columns::default();
            Ok(TableFile::open(path, &columns)?.metadata().clone())
        }
    }
}
