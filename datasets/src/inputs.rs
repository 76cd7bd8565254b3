//! Unlabelled examples to predict on, from the files a user names: image files, folders of
//! them (walked in name order) and tar / tar.gz archives of them, IDX image files (plain or
//! gzip'd), and Arrow IPC or Parquet feature tables. Every input is streamed in batches, each
//! example with an id, so memory does not grow with the number of inputs.

use crate::cache::Cache;
use crate::format::{Columns, TableFormat};
use crate::idx::IdxFile;
use crate::images::{ImageOptions, decode, for_each_member, is_archive, is_image};
use crate::table::TableFile;
use crate::{DatasetError, Source};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// One batch of examples.
#[derive(Debug)]
pub struct Batch<'a> {
    /// The file (image folder, archive, IDX file or table) the batch comes from.
    pub file: &'a Path,
    /// One id per example: the image's path (`archive:member` inside archives), or
    /// `file:row` (rows from 0) for IDX files and tables.
    pub ids: &'a [String],
    /// `ids.len()` rows of `len` values.
    pub values: &'a [f32],
    /// Values per example.
    pub len: usize,
    /// Pixels in `[0, 1]`, channels first (images and IDX files); else table features.
    pub pixels: bool,
}

/// What a named path holds.
#[derive(Debug)]
enum Input {
    /// Image files: one named file, or a folder's.
    Images {
        root: PathBuf,
        files: Vec<PathBuf>,
    },
    Archive(PathBuf),
    Table(PathBuf),
    Idx(PathBuf),
}

fn classify(path: &Path) -> Result<Input, DatasetError> {
    if path.is_dir() {
        let mut files = Vec::new();
        walk(path, &mut files)?;
        if files.is_empty() {
            return Err(DatasetError::format(path, "no .png, .jpg or .jpeg images in this folder or below"));
        }
        return Ok(Input::Images { root: path.to_path_buf(), files });
    }
    if !path.is_file() {
        return Err(DatasetError::format(path, "no such file or folder"));
    }
    let name = path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    Ok(if is_image(&name) {
        Input::Images { root: path.to_path_buf(), files: vec![path.to_path_buf()] }
    } else if is_archive(path) {
        Input::Archive(path.to_path_buf())
    } else if TableFormat::from_path(path).is_some() {
        Input::Table(path.to_path_buf())
    } else {
        Input::Idx(path.to_path_buf())
    })
}

/// Image files under `dir`, depth first, in name order; hidden entries are skipped.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), DatasetError> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(DatasetError::io(dir, "cannot list"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| !n.to_string_lossy().starts_with('.')))
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out)?;
        } else if p.file_name().is_some_and(|n| is_image(&n.to_string_lossy())) {
            out.push(p);
        }
    }
    Ok(())
}

/// Read every input in `paths`, in order, and hand `f` batches of up to `batch` examples.
/// Images are decoded (in parallel) to `image`'s size and channels, resized when they differ;
/// without `image` (a model that takes feature vectors), images are refused. Returns the
/// number of examples.
pub fn for_each_batch(
    paths: &[PathBuf],
    image: Option<ImageOptions>,
    batch: usize,
    cache: &Cache,
    f: &mut dyn FnMut(Batch<'_>) -> Result<(), DatasetError>,
) -> Result<usize, DatasetError> {
    let batch = batch.max(1);
    let mut total = 0;
    for path in paths {
        let input = classify(path)?;
        let pixels_only = |what: &str| match image {
            Some(opts) => Ok(opts),
            None => Err(DatasetError::format(
                path,
                format!("{what}, but this model takes feature vectors: give Arrow IPC or Parquet tables"),
            )),
        };
        total += match input {
            Input::Images { root, files } => {
                let opts = pixels_only("images")?;
                let mut pending = Vec::with_capacity(batch);
                let mut n = 0;
                for file in files {
                    let bytes = std::fs::read(&file).map_err(DatasetError::io(&file, "cannot read"))?;
                    pending.push((file.display().to_string(), bytes));
                    if pending.len() == batch {
                        n += decoded(&root, &mut pending, &opts, f)?;
                    }
                }
                n + decoded(&root, &mut pending, &opts, f)?
            }
            Input::Archive(p) => {
                let opts = pixels_only("an image archive")?;
                let mut pending = Vec::with_capacity(batch);
                let mut n = 0;
                for_each_member(&p, is_image, |name, bytes| {
                    if let Some(bytes) = bytes {
                        pending.push((format!("{}:{name}", p.display()), bytes));
                        if pending.len() == batch {
                            n += decoded(&p, &mut pending, &opts, f)?;
                        }
                    }
                    Ok(())
                })?;
                n + decoded(&p, &mut pending, &opts, f)?
            }
            Input::Idx(p) => idx_batches(&p, &pixels_only("IDX images")?, batch, cache, f)?,
            Input::Table(p) => table_batches(&p, batch, cache, f)?,
        };
    }
    Ok(total)
}

/// Decode `pending` images, hand them to `f` as one batch and clear them.
fn decoded(
    file: &Path,
    pending: &mut Vec<(String, Vec<u8>)>,
    opts: &ImageOptions,
    f: &mut dyn FnMut(Batch<'_>) -> Result<(), DatasetError>,
) -> Result<usize, DatasetError> {
    if pending.is_empty() {
        return Ok(0);
    }
    let opts = ImageOptions { resize: true, ..*opts };
    let pixels: Vec<Result<Vec<u8>, DatasetError>> = pending
        .par_iter()
        .map(|(id, bytes)| decode(bytes, &opts).map_err(|e| DatasetError::format(id.as_str(), e)))
        .collect();
    let len = opts.channels as usize * opts.height as usize * opts.width as usize;
    let mut values = Vec::with_capacity(pending.len() * len);
    for p in pixels {
        values.extend(p?.into_iter().map(|v| f32::from(v) / 255.0));
    }
    let ids: Vec<String> = pending.drain(..).map(|(id, _)| id).collect();
    f(Batch { file, ids: &ids, values: &values, len, pixels: true })?;
    Ok(ids.len())
}

fn idx_batches(
    path: &Path,
    opts: &ImageOptions,
    batch: usize,
    cache: &Cache,
    f: &mut dyn FnMut(Batch<'_>) -> Result<(), DatasetError>,
) -> Result<usize, DatasetError> {
    let idx = IdxFile::open(&cache.plain_file(path)?, 3)?;
    let (h, w) = (opts.height as usize, opts.width as usize);
    let [n, rows, cols] = [idx.dims()[0], idx.dims()[1], idx.dims()[2]];
    if opts.channels != 1 || (rows, cols) != (h, w) {
        return Err(DatasetError::format(
            path,
            format!(
                "IDX images of {rows}x{cols} grey pixels; the model takes {}x{h}x{w} (channels x height x width)",
                opts.channels
            ),
        ));
    }
    let len = h * w;
    let data = idx.data();
    let mut bytes = vec![0u8; batch * len];
    let mut values = vec![0f32; batch * len];
    for start in (0..n).step_by(batch) {
        let k = batch.min(n - start);
        let chunk = &data[start * len..(start + k) * len];
        idx.copy_out(chunk, &mut bytes[..k * len]);
        idx.release(chunk);
        for (v, &b) in values.iter_mut().zip(&bytes[..k * len]) {
            *v = f32::from(b) / 255.0;
        }
        let ids: Vec<String> = (start..start + k).map(|r| format!("{}:{r}", path.display())).collect();
        f(Batch { file: path, ids: &ids, values: &values[..k * len], len, pixels: true })?;
    }
    Ok(n)
}

fn table_batches(
    path: &Path,
    batch: usize,
    cache: &Cache,
    f: &mut dyn FnMut(Batch<'_>) -> Result<(), DatasetError>,
) -> Result<usize, DatasetError> {
    let columns = Columns { optional_label: true, ..Columns::default() };
    let table = match TableFormat::from_path(path) {
        Some(TableFormat::Parquet) => crate::parquet_source::open(path, &columns, cache)?,
        _ => TableFile::open(path, &columns)?,
    };
    let (n, len) = (table.len(), table.example_len());
    let mut values = vec![0f32; batch * len];
    let mut labels = vec![0u32; batch];
    let indices: Vec<usize> = (0..n).collect();
    for rows in indices.chunks(batch) {
        let k = rows.len();
        table.read_into(rows, &mut values[..k * len], &mut labels[..k]);
        table.release(rows);
        let ids: Vec<String> = rows.iter().map(|r| format!("{}:{r}", path.display())).collect();
        f(Batch { file: path, ids: &ids, values: &values[..k * len], len, pixels: false })?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Float32Array, RecordBatch};
    use arrow_schema::{DataType, Field, Schema};
    use std::sync::Arc;

    /// A table of two float32 feature columns and no label, as a user would have it.
    #[test]
    fn tables_without_labels_are_read_for_prediction_in_batches() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.arrow");
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Float32, false),
            Field::new("b", DataType::Float32, false),
        ]));
        let a = Float32Array::from((0..5).map(|i| i as f32).collect::<Vec<_>>());
        let b = Float32Array::from((0..5).map(|i| -(i as f32)).collect::<Vec<_>>());
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(a), Arc::new(b)]).expect("batch");
        let file = std::fs::File::create(&path).expect("create");
        let mut w = arrow_ipc::writer::FileWriter::try_new(file, &schema).expect("writer");
        w.write(&batch).expect("write");
        w.finish().expect("finish");
        let cache = Cache::new(dir.path().join("cache"));
        let mut seen = Vec::new();
        let n = for_each_batch(std::slice::from_ref(&path), None, 2, &cache, &mut |b| {
            assert_eq!((b.len, b.pixels), (2, false));
            seen.extend(b.ids.iter().cloned().zip(b.values.chunks(2).map(<[f32]>::to_vec)));
            Ok(())
        })
        .expect("read");
        assert_eq!(n, 5);
        assert_eq!(seen[3], (format!("{}:3", path.display()), vec![3.0, -3.0]));
        // The same table as training data still needs its labels.
        let err = TableFile::open(&path, &Columns::default()).expect_err("no label column").to_string();
        assert!(err.contains("no label column `label`"), "{err}");
        // Images need a model that takes pixels.
        std::fs::write(dir.path().join("i.png"), b"x").expect("write");
        let err = for_each_batch(&[dir.path().join("i.png")], None, 2, &cache, &mut |_| Ok(()))
            .expect_err("refused");
        assert!(err.to_string().contains("takes feature vectors"), "{err}");
    }
}
