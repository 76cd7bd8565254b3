//! Parquet feature tables as sources. Parquet pages are compressed and encoded, so rows cannot
//! be mapped in place: on first use the file is decoded row group by row group, in record
//! batches of 1024 rows (memory: one compressed column chunk and one batch), into an Arrow IPC
//! copy in the cache, which is then mapped like any [`TableFile`]. The copy is keyed by the
//! file's path, size and modification time, so an edited file is decoded again.

use crate::DatasetError;
use crate::cache::Cache;
use crate::format::{Columns, partial_path};
use crate::lock::EntryLock;
use crate::table::TableFile;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::reader::{ChunkReader, Length};
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

/// Open the Parquet file at `path` through its IPC copy in `cache`.
pub fn open(path: &Path, columns: &Columns, cache: &Cache) -> Result<TableFile, DatasetError> {
    let copy = cache.keyed_path(path, "parquet", "arrow")?;
    if !copy.is_file() {
        let lock = EntryLock::acquire(&copy)?;
        if !copy.is_file() {
            lock.remove_stale(&copy)?;
            convert(path, &copy)?;
        }
    }
    TableFile::open(&copy, columns).map_err(|e| match e {
        DatasetError::Format { problem, .. } => DatasetError::format(path, problem),
        other => other,
    })
}

/// A Parquet file as the parquet crate reads it, except that a read past its end fails the
/// second time. The crate's Thrift decoder skips a list by reading its claimed number of
/// elements and takes a read of nothing at the end of the file for an element: a 1 kB file
/// claiming a million elements took 20 s of empty reads (found by the parquet fuzz target).
#[derive(Debug)]
pub struct ParquetFile(File);

impl Length for ParquetFile {
    fn len(&self) -> u64 {
        Length::len(&self.0)
    }
}

impl ChunkReader for ParquetFile {
    type T = EndGuard<std::io::BufReader<File>>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        Ok(EndGuard { inner: ChunkReader::get_read(&self.0, start)?, at_end: false })
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<bytes::Bytes> {
        ChunkReader::get_bytes(&self.0, start, length)
    }
}

/// A reader that fails instead of returning nothing a second time at its end.
#[derive(Debug)]
pub struct EndGuard<R> {
    inner: R,
    at_end: bool,
}

impl<R: std::io::Read> std::io::Read for EndGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            if self.at_end {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "read past the end of the file",
                ));
            }
            self.at_end = true;
        }
        Ok(n)
    }
}

/// A reader of the Parquet file at `path` (footer parsed, its column chunks checked to lie
/// in the file), with errors that name the file.
pub fn reader(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<ParquetFile>, DatasetError> {
    let file = ParquetFile(File::open(path).map_err(DatasetError::io(path, "cannot open"))?);
    let len = file.0.metadata().map_err(DatasetError::io(path, "cannot read"))?.len();
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| {
        DatasetError::format(path, format!("not a readable Parquet file ({e}): truncated or corrupt?"))
    })?;
    check_chunks(builder.metadata(), len)
        .map_err(|p| DatasetError::format(path, format!("{p}: corrupt footer?")))?;
    Ok(builder)
}

/// Every column chunk the footer lists starts and ends inside the file's `len` bytes (the
/// parquet crate asserts it, panicking on a file that lies), and every count is not negative.
fn check_chunks(metadata: &parquet::file::metadata::ParquetMetaData, len: u64) -> Result<(), String> {
    for (g, group) in metadata.row_groups().iter().enumerate() {
        if group.num_rows() < 0 {
            return Err(format!("row group {g} claims {} rows", group.num_rows()));
        }
        for (c, chunk) in group.columns().iter().enumerate() {
            let start = chunk.dictionary_page_offset().unwrap_or_else(|| chunk.data_page_offset());
            let (start, size) = (u64::try_from(start), u64::try_from(chunk.compressed_size()));
            let end = start.ok().zip(size.ok()).and_then(|(s, n)| s.checked_add(n));
            if end.is_none_or(|end| end > len) || chunk.num_values() < 0 {
                return Err(format!(
                    "row group {g}, column {c}: {} bytes at {} ({} values) lie outside the {len}-byte file",
                    chunk.compressed_size(),
                    chunk.dictionary_page_offset().unwrap_or_else(|| chunk.data_page_offset()),
                    chunk.num_values()
                ));
            }
        }
    }
    Ok(())
}

/// Run `read`, which decodes pages of the Parquet file `path`, turning a panic of the parquet
/// crate into an error naming the file: it panics on some inconsistent files (a data page
/// that says it is dictionary-encoded in a chunk without a dictionary page), which the
/// footer checks cannot see.
pub fn guarded<T>(path: &Path, read: impl FnOnce() -> Result<T, DatasetError>) -> Result<T, DatasetError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)).unwrap_or_else(|panic| {
        let why = (panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(DatasetError::format(path, format!("corrupt Parquet pages: the decoder failed ({why})")))
    })
}

/// Decode `path` into the IPC file `target`, one row group at a time.
pub fn convert(path: &Path, target: &Path) -> Result<(), DatasetError> {
    let bad = |p: String| DatasetError::format(path, p);
    let open = || reader(path);
    let first = open()?;
    let schema = first.schema().clone();
    let groups = first.metadata().num_row_groups();
    drop(first);
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir).map_err(DatasetError::io(dir, "cannot create the cache directory"))?;
    }
    let partial: PathBuf = partial_path(target);
    let result = (|| {
        let file = File::create(&partial).map_err(DatasetError::io(target, "cannot create"))?;
        let mut writer = arrow_ipc::writer::FileWriter::try_new(BufWriter::new(file), &schema)
            .map_err(|e| crate::sink::write_error(target, "cannot write", &e))?;
        let write_failed =
            |e: &(dyn std::error::Error + 'static)| crate::sink::write_error(target, "cannot write", e);
        for g in 0..groups {
            let reader = open()?
                .with_row_groups(vec![g])
                .with_batch_size(1024)
                .build()
                .map_err(|e| bad(format!("row group {g}: {e}")))?;
            guarded(path, || {
                for batch in reader {
                    let batch = batch.map_err(|e| bad(format!("row group {g} is corrupt: {e}")))?;
                    writer.write(&batch).map_err(|e| write_failed(&e))?;
                }
                Ok(())
            })?;
        }
        writer.finish().map_err(|e| write_failed(&e))?;
        let file = writer
            .into_inner()
            .map_err(|e| write_failed(&e))?
            .into_inner()
            .map_err(|e| DatasetError::io(target, "cannot write")(e.into_error()))?;
        file.sync_all().map_err(DatasetError::io(target, "cannot sync"))?;
        std::fs::rename(&partial, target).map_err(DatasetError::io(target, "cannot move into place"))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}
