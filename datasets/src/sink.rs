//! Writing feature tables ([`crate::table`] layout) as Arrow IPC or Parquet files.
//!
//! Rows arrive in chunks; each chunk becomes one IPC record batch or one Parquet row group, so
//! memory stays at one chunk however large the file grows. The file is written under a
//! temporary name (`<name>.partial-<pid>`) and renamed only by [`TableWriter::finish`], after
//! the footer is written and synced: a killed or failed writer never leaves a file under the
//! final name, and a file under the final name is always complete.

use crate::DatasetError;
use crate::format::{META_CLASS_NAMES, META_SHAPE, TableFormat, partial_path};
use arrow_array::{ArrayRef, FixedSizeListArray, Float32Array, Int32Array, RecordBatch, UInt8Array};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use std::collections::HashMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Element type of the feature column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Element {
    /// 32-bit floats (features).
    F32,
    /// Bytes (decoded pixels; read back scaled to `[0, 1]`).
    U8,
}

/// What a table holds: per-row shape, element type, class names and extra metadata.
#[derive(Debug, Clone)]
pub struct TableSchema {
    /// Shape of one example; its product is the feature column's list size.
    pub shape: Vec<usize>,
    /// Feature element type.
    pub element: Element,
    /// Names of the classes, stored in the metadata when not empty.
    pub class_names: Vec<String>,
    /// Further `key -> value` metadata (e.g. a fingerprint).
    pub metadata: HashMap<String, String>,
    /// Feature and label column names.
    pub columns: crate::format::Columns,
}

impl TableSchema {
    fn arrow(&self) -> Schema {
        let dim = self.shape.iter().product::<usize>() as i32;
        let item = match self.element {
            Element::F32 => DataType::Float32,
            Element::U8 => DataType::UInt8,
        };
        let mut metadata = self.metadata.clone();
        metadata
            .insert(META_SHAPE.into(), self.shape.iter().map(usize::to_string).collect::<Vec<_>>().join(","));
        if !self.class_names.is_empty() {
            metadata.insert(META_CLASS_NAMES.into(), self.class_names.join("\n"));
        }
        Schema::new(vec![
            Field::new(
                &self.columns.features,
                DataType::FixedSizeList(Arc::new(Field::new("item", item, false)), dim),
                false,
            ),
            Field::new(&self.columns.label, DataType::Int32, false),
        ])
        .with_metadata(arrow_schema::Metadata::from(metadata))
    }
}

enum Inner {
    Ipc(arrow_ipc::writer::FileWriter<BufWriter<File>>),
    Parquet(ArrowWriter<File>),
}

/// A feature table being written; see the module docs.
pub struct TableWriter {
    target: PathBuf,
    partial: PathBuf,
    schema: Arc<Schema>,
    dim: usize,
    element: Element,
    rows: usize,
    inner: Option<Inner>,
}

impl std::fmt::Debug for TableWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableWriter").field("target", &self.target).field("rows", &self.rows).finish()
    }
}

impl TableWriter {
    /// Start writing `path` in `format`.
    pub fn create(path: &Path, format: TableFormat, schema: &TableSchema) -> Result<Self, DatasetError> {
        let partial = partial_path(path);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(DatasetError::io(dir, "cannot create the folder"))?;
        }
        let file = File::create(&partial).map_err(DatasetError::io(path, "cannot create"))?;
        let arrow = Arc::new(schema.arrow());
        let fail = |e: &(dyn std::error::Error + 'static)| {
            let _ = std::fs::remove_file(&partial);
            write_error(path, "cannot write", e)
        };
        let inner = match format {
            TableFormat::ArrowIpc => Inner::Ipc(
                arrow_ipc::writer::FileWriter::try_new(BufWriter::new(file), &arrow).map_err(|e| fail(&e))?,
            ),
            TableFormat::Parquet => {
                let props = WriterProperties::builder()
                    .set_compression(parquet::basic::Compression::UNCOMPRESSED)
                    .set_dictionary_enabled(false)
                    .build();
                Inner::Parquet(ArrowWriter::try_new(file, arrow.clone(), Some(props)).map_err(|e| fail(&e))?)
            }
        };
        Ok(Self {
            target: path.to_path_buf(),
            partial,
            dim: schema.shape.iter().product(),
            element: schema.element,
            schema: arrow,
            rows: 0,
            inner: Some(inner),
        })
    }

    /// Rows written so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Append one chunk of f32 rows (`labels.len()` rows of the schema's size).
    pub fn write_f32(&mut self, features: &[f32], labels: &[u32]) -> Result<(), DatasetError> {
        assert_eq!(self.element, Element::F32, "the table holds f32 features");
        self.write(Arc::new(Float32Array::from(features.to_vec())), features.len(), labels)
    }

    /// Append one chunk of byte rows.
    pub fn write_u8(&mut self, features: &[u8], labels: &[u32]) -> Result<(), DatasetError> {
        assert_eq!(self.element, Element::U8, "the table holds u8 features");
        self.write(Arc::new(UInt8Array::from(features.to_vec())), features.len(), labels)
    }

    fn write(&mut self, values: ArrayRef, n: usize, labels: &[u32]) -> Result<(), DatasetError> {
        assert_eq!(n, labels.len() * self.dim, "features hold {} rows of {} values", labels.len(), self.dim);
        if labels.is_empty() {
            return Ok(());
        }
        let target = &self.target;
        let fail = |e: &(dyn std::error::Error + 'static)| write_error(target, "cannot write", e);
        let DataType::FixedSizeList(item, size) = self.schema.field(0).data_type() else {
            unreachable!("the feature column is a fixed-size list")
        };
        let list = FixedSizeListArray::try_new(item.clone(), *size, values, None).map_err(|e| fail(&e))?;
        let label_values: Vec<i32> = labels.iter().map(|&l| l as i32).collect();
        let batch = RecordBatch::try_new(
            self.schema.clone(),
            vec![Arc::new(list), Arc::new(Int32Array::from(label_values))],
        )
        .map_err(|e| fail(&e))?;
        match self.inner.as_mut() {
            Some(Inner::Ipc(w)) => w.write(&batch).map_err(|e| fail(&e))?,
            Some(Inner::Parquet(w)) => {
                w.write(&batch).map_err(|e| fail(&e))?;
                w.flush().map_err(|e| fail(&e))?;
            }
            None => unreachable!("writing after finish"),
        }
        self.rows += labels.len();
        Ok(())
    }

    /// Write the footer, sync, and move the file to its name. Returns the path.
    pub fn finish(mut self) -> Result<PathBuf, DatasetError> {
        let target = self.target.clone();
        let fail = |e: &(dyn std::error::Error + 'static)| write_error(&target, "cannot finish", e);
        // Until the rename, an error leaves nothing: the partial file is removed on drop.
        let file = match self.inner.as_mut() {
            Some(Inner::Ipc(w)) => {
                w.finish().map_err(|e| fail(&e))?;
                std::io::Write::flush(w.get_mut()).map_err(DatasetError::io(&target, "cannot write"))?;
                w.get_ref().get_ref().try_clone().map_err(DatasetError::io(&target, "cannot write"))?
            }
            Some(Inner::Parquet(w)) => {
                w.finish().map_err(|e| fail(&e))?;
                w.inner().try_clone().map_err(DatasetError::io(&target, "cannot write"))?
            }
            None => unreachable!("finish runs once"),
        };
        file.sync_all().map_err(DatasetError::io(&target, "cannot sync"))?;
        std::fs::rename(&self.partial, &self.target)
            .map_err(DatasetError::io(&self.target, "cannot move into place"))?;
        self.inner = None;
        Ok(self.target.clone())
    }
}

/// `e`, a table writer's error on `path`: an operating-system error under it (a full disk,
/// a read-only folder) is kept as one, so that it is reported as such.
pub(crate) fn write_error(
    path: &Path,
    action: &'static str,
    e: &(dyn std::error::Error + 'static),
) -> DatasetError {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return DatasetError::io(path, action)(std::io::Error::new(io.kind(), io.to_string()));
        }
        cause = c.source();
    }
    DatasetError::format(path, format!("{action}: {e}"))
}

impl Drop for TableWriter {
    fn drop(&mut self) {
        if self.inner.is_some() {
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Source;
    use crate::cache::Cache;
    use crate::format::{Columns, META_FINGERPRINT};
    use crate::table::TableFile;

    fn schema(shape: Vec<usize>, element: Element) -> TableSchema {
        TableSchema {
            shape,
            element,
            class_names: vec!["zero".into(), "one".into(), "two".into()],
            metadata: [(META_FINGERPRINT.to_owned(), "abc".to_owned())].into_iter().collect(),
            columns: Columns::default(),
        }
    }

    fn rows(n: usize, dim: usize) -> (Vec<f32>, Vec<u32>) {
        let x = (0..n * dim).map(|i| (i as f32).sin() * 1e3 + 0.125).collect();
        let y = (0..n).map(|i| (i % 3) as u32).collect();
        (x, y)
    }

    /// Write `n` rows in chunks of 7 and read them back through `read` in a shuffled order.
    fn round_trip(format: TableFormat, read: impl Fn(&Path) -> TableFile) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(match format {
            TableFormat::ArrowIpc => "t.arrow",
            TableFormat::Parquet => "t.parquet",
        });
        let (x, y) = rows(30, 6);
        let mut w = TableWriter::create(&path, format, &schema(vec![2, 3], Element::F32)).expect("create");
        for (xc, yc) in x.chunks(7 * 6).zip(y.chunks(7)) {
            w.write_f32(xc, yc).expect("write");
        }
        assert!(!path.exists(), "nothing under the final name before finish");
        assert_eq!(w.finish().expect("finish"), path);
        let t = read(&path);
        assert_eq!((t.len(), t.example_shape(), t.classes()), (30, &[2usize, 3][..], 3));
        assert_eq!(t.class_names().expect("names"), vec!["zero", "one", "two"]);
        assert_eq!(t.metadata().get(META_FINGERPRINT).map(String::as_str), Some("abc"));
        assert!(t.is_zero_copy(), "feature values are read from the map, not copied");
        let order = [29, 0, 13, 7, 6, 14];
        let (mut got, mut labels) = (vec![0.0; 36], vec![0; 6]);
        t.read_into(&order, &mut got, &mut labels);
        for (k, &i) in order.iter().enumerate() {
            assert_eq!(&got[k * 6..(k + 1) * 6], &x[i * 6..(i + 1) * 6], "row {i} exact");
            assert_eq!(labels[k], y[i]);
        }
        t.release(&order);
        t.read_into(&order[..1], &mut got[..6], &mut labels[..1]);
        assert_eq!(&got[..6], &x[29 * 6..30 * 6], "released pages read back the same");
    }

    #[test]
    fn ipc_round_trip_is_exact() {
        round_trip(TableFormat::ArrowIpc, |p| TableFile::open(p, &Columns::default()).expect("open"));
    }

    #[test]
    fn parquet_round_trip_is_exact() {
        let cache = tempfile::tempdir().expect("cache");
        let cache = Cache::new(cache.path());
        round_trip(TableFormat::Parquet, |p| {
            crate::parquet_source::open(p, &Columns::default(), &cache).expect("open")
        });
    }

    #[test]
    fn bytes_read_back_scaled() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("px.arrow");
        let mut w = TableWriter::create(&path, TableFormat::ArrowIpc, &schema(vec![1, 2, 2], Element::U8))
            .expect("create");
        w.write_u8(&[0, 51, 255, 3, 9, 8, 7, 6], &[2, 1]).expect("write");
        w.finish().expect("finish");
        let t = TableFile::open(&path, &Columns::default()).expect("open");
        assert!(t.is_zero_copy());
        let (mut x, mut y) = (vec![0.0; 4], vec![0]);
        t.read_into(&[0], &mut x, &mut y);
        assert_eq!((x, y), (vec![0.0, 0.2, 1.0, 3.0 / 255.0], vec![2]));
    }

    #[test]
    fn truncated_files_are_rejected_with_their_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = Cache::new(dir.path().join("cache"));
        for format in [TableFormat::ArrowIpc, TableFormat::Parquet] {
            let path = dir.path().join(if format == TableFormat::Parquet { "c.parquet" } else { "c.arrow" });
            let (x, y) = rows(50, 4);
            let mut w = TableWriter::create(&path, format, &schema(vec![4], Element::F32)).expect("create");
            w.write_f32(&x, &y).expect("write");
            w.finish().expect("finish");
            let mut bytes = std::fs::read(&path).expect("read");
            bytes.truncate(bytes.len() * 2 / 3);
            std::fs::write(&path, &bytes).expect("write");
            let err = match format {
                TableFormat::ArrowIpc => TableFile::open(&path, &Columns::default()).expect_err("truncated"),
                TableFormat::Parquet => {
                    crate::parquet_source::open(&path, &Columns::default(), &cache).expect_err("truncated")
                }
            };
            let msg = err.to_string();
            assert!(msg.contains(&*path.to_string_lossy()) && msg.contains("truncated"), "{msg}");
        }
    }

    #[test]
    fn an_abandoned_writer_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gone.parquet");
        let (x, y) = rows(5, 4);
        let mut w =
            TableWriter::create(&path, TableFormat::Parquet, &schema(vec![4], Element::F32)).expect("create");
        w.write_f32(&x, &y).expect("write");
        drop(w);
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 0);
    }

    #[test]
    fn float_columns_and_other_label_names_are_read() {
        use arrow_array::{Float32Array, Int64Array, RecordBatch};
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cols.arrow");
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Float32, false),
            Field::new("class", DataType::Int64, false),
            Field::new("b", DataType::Float32, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Float32Array::from(vec![1.0, 2.0])),
                Arc::new(Int64Array::from(vec![4, 0])),
                Arc::new(Float32Array::from(vec![-1.0, -2.0])),
            ],
        )
        .expect("batch");
        let mut w =
            arrow_ipc::writer::FileWriter::try_new(File::create(&path).expect("create"), &schema).expect("w");
        w.write(&batch).expect("write");
        w.finish().expect("finish");
        let columns = Columns { features: "features".into(), label: "class".into(), ..Columns::default() };
        let t = TableFile::open(&path, &columns).expect("open");
        assert_eq!((t.example_shape(), t.classes()), (&[2usize][..], 5));
        let (mut x, mut y) = (vec![0.0; 2], vec![0]);
        t.read_into(&[1], &mut x, &mut y);
        assert_eq!((x, y), (vec![2.0, -2.0], vec![0]));
        let err = TableFile::open(&path, &Columns::default()).expect_err("no `label`");
        assert!(err.to_string().contains("no label column `label` (columns: a, class, b)"), "{err}");
    }

    #[test]
    fn a_full_disk_under_a_writer_error_is_reported_as_one() {
        use std::io::{Error, ErrorKind};
        let full = || Error::from(ErrorKind::StorageFull);
        let arrow = arrow_schema::ArrowError::IoError("writing a batch".into(), full());
        let parquet = parquet::errors::ParquetError::External(Box::new(full()));
        for err in [write_error(Path::new("t.arrow"), "cannot write", &arrow), {
            write_error(Path::new("t.arrow"), "cannot write", &parquet)
        }] {
            let DatasetError::Io { ref source, .. } = err else { panic!("not an I/O error: {err}") };
            assert_eq!(source.kind(), ErrorKind::StorageFull);
            assert!(err.to_string().contains("t.arrow: cannot write (the disk is full"), "{err}");
        }
        let other = arrow_schema::ArrowError::SchemaError("bad".into());
        let err = write_error(Path::new("t.arrow"), "cannot write", &other);
        assert!(matches!(err, DatasetError::Format { .. }), "{err}");
    }
}
