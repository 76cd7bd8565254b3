//! Small result tables (one row per prediction) written row by row as CSV, to a file or to
//! standard output, or as Parquet: text and number columns, rows buffered a few thousand at a
//! time, files written to a temporary name and renamed when finished.

use crate::DatasetError;
use arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Rows buffered before a Parquet record batch is written.
const PARQUET_ROWS: usize = 4096;

/// A column's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// UTF-8 text.
    Text,
    /// A 64-bit float.
    Number,
}

/// One value of a row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cell<'a> {
    /// For a [`Kind::Text`] column.
    Text(&'a str),
    /// For a [`Kind::Number`] column.
    Number(f64),
}

enum Sink {
    Csv(Box<dyn Write>),
    Parquet(Box<Parquet>),
}

/// A Parquet file and the rows not yet written, column by column.
struct Parquet {
    writer: ArrowWriter<File>,
    schema: Arc<Schema>,
    text: Vec<Vec<String>>,
    numbers: Vec<Vec<f64>>,
}

/// A table being written; [`RowsWriter::finish`] completes it (a dropped writer removes its
/// temporary file).
pub struct RowsWriter {
    sink: Option<Sink>,
    kinds: Vec<Kind>,
    /// `(temporary, final)` paths of a file.
    file: Option<(PathBuf, PathBuf)>,
}

impl std::fmt::Debug for RowsWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowsWriter").field("kinds", &self.kinds).field("file", &self.file).finish()
    }
}

/// A CSV field, quoted when it holds a comma, a quote or a line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_owned() }
}

impl RowsWriter {
    /// A table at `path`: Parquet for `.parquet`, else CSV. `columns` are names and kinds.
    pub fn create(path: &Path, columns: &[(String, Kind)]) -> Result<Self, DatasetError> {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".partial-{}", std::process::id()));
        let tmp = path.with_file_name(name);
        let file = File::create(&tmp).map_err(DatasetError::io(&tmp, "cannot create"))?;
        let parquet = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("parquet"));
        let mut this =
            Self { sink: None, kinds: columns.iter().map(|c| c.1).collect(), file: Some((tmp, path.into())) };
        this.sink = Some(if parquet {
            let fields: Vec<Field> = columns
                .iter()
                .map(|(n, k)| {
                    Field::new(n, if *k == Kind::Text { DataType::Utf8 } else { DataType::Float64 }, false)
                })
                .collect();
            let schema = Arc::new(Schema::new(fields));
            let writer = ArrowWriter::try_new(file, schema.clone(), None)
                .map_err(|e| DatasetError::format(path, format!("cannot start the Parquet file ({e})")))?;
            let (text, numbers) = (vec![Vec::new(); columns.len()], vec![Vec::new(); columns.len()]);
            Sink::Parquet(Box::new(Parquet { writer, schema, text, numbers }))
        } else {
            Self::csv_header(Box::new(BufWriter::new(file)), columns, path)?
        });
        Ok(this)
    }

    /// A CSV table on standard output.
    pub fn stdout(columns: &[(String, Kind)]) -> Result<Self, DatasetError> {
        let out: Box<dyn Write> = Box::new(BufWriter::new(std::io::stdout()));
        let sink = Self::csv_header(out, columns, Path::new("stdout"))?;
        Ok(Self { sink: Some(sink), kinds: columns.iter().map(|c| c.1).collect(), file: None })
    }

    fn csv_header(
        mut out: Box<dyn Write>,
        columns: &[(String, Kind)],
        path: &Path,
    ) -> Result<Sink, DatasetError> {
        let header: Vec<String> = columns.iter().map(|(n, _)| csv_field(n)).collect();
        writeln!(out, "{}", header.join(",")).map_err(DatasetError::io(path, "cannot write"))?;
        Ok(Sink::Csv(out))
    }

    fn path(&self) -> PathBuf {
        self.file.as_ref().map_or_else(|| PathBuf::from("stdout"), |f| f.1.clone())
    }

    /// Append one row; its cells must match the columns' kinds.
    pub fn write(&mut self, row: &[Cell<'_>]) -> Result<(), DatasetError> {
        let path = self.path();
        let fits = row.len() == self.kinds.len()
            && row.iter().zip(&self.kinds).all(|(c, k)| {
                matches!((c, k), (Cell::Text(_), Kind::Text) | (Cell::Number(_), Kind::Number))
            });
        if !fits {
            return Err(DatasetError::format(
                &path,
                format!("a row of {} cells does not fit the columns", row.len()),
            ));
        }
        match self.sink.as_mut() {
            Some(Sink::Csv(out)) => {
                let cells: Vec<String> = row
                    .iter()
                    .map(|c| match c {
                        Cell::Text(s) => csv_field(s),
                        Cell::Number(v) => format!("{v:.6}"),
                    })
                    .collect();
                writeln!(out, "{}", cells.join(",")).map_err(DatasetError::io(&path, "cannot write"))
            }
            Some(Sink::Parquet(p)) => {
                let Parquet { text, numbers, .. } = p.as_mut();
                for (i, c) in row.iter().enumerate() {
                    match c {
                        Cell::Text(s) => text[i].push((*s).to_owned()),
                        Cell::Number(v) => numbers[i].push(*v),
                    }
                }
                let buffered = text.iter().map(Vec::len).chain(numbers.iter().map(Vec::len)).max();
                if buffered.unwrap_or(0) >= PARQUET_ROWS {
                    self.flush_batch()?;
                }
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Write the buffered Parquet rows as one record batch.
    fn flush_batch(&mut self) -> Result<(), DatasetError> {
        let path = self.path();
        let Some(Sink::Parquet(p)) = self.sink.as_mut() else { return Ok(()) };
        let Parquet { writer, schema, text, numbers } = p.as_mut();
        let columns: Vec<ArrayRef> = self
            .kinds
            .iter()
            .enumerate()
            .map(|(i, k)| -> ArrayRef {
                match k {
                    Kind::Text => Arc::new(StringArray::from(std::mem::take(&mut text[i]))),
                    Kind::Number => Arc::new(Float64Array::from(std::mem::take(&mut numbers[i]))),
                }
            })
            .collect();
        if columns.first().is_none_or(|c| c.is_empty()) {
            return Ok(());
        }
        let batch = RecordBatch::try_new(schema.clone(), columns)
            .map_err(|e| DatasetError::format(&path, format!("cannot build a record batch ({e})")))?;
        writer.write(&batch).map_err(|e| DatasetError::format(&path, format!("cannot write ({e})")))
    }

    /// Complete the table: flush it, and for a file sync it and rename it into place.
    pub fn finish(mut self) -> Result<(), DatasetError> {
        self.flush_batch()?;
        let path = self.path();
        match self.sink.take() {
            Some(Sink::Csv(mut out)) => out.flush().map_err(DatasetError::io(&path, "cannot write"))?,
            Some(Sink::Parquet(p)) => {
                p.writer.close().map_err(|e| DatasetError::format(&path, format!("cannot finish ({e})")))?;
            }
            None => {}
        }
        if let Some((tmp, path)) = self.file.take() {
            File::open(&tmp).and_then(|f| f.sync_all()).map_err(DatasetError::io(&tmp, "cannot sync"))?;
            std::fs::rename(&tmp, &path)
                .map_err(DatasetError::io(&path, "cannot rename the finished file"))?;
        }
        Ok(())
    }
}

impl Drop for RowsWriter {
    fn drop(&mut self) {
        if let Some((tmp, _)) = self.file.take() {
            drop(self.sink.take());
            let _ = std::fs::remove_file(tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns() -> Vec<(String, Kind)> {
        vec![("id".into(), Kind::Text), ("probability".into(), Kind::Number)]
    }

    #[test]
    fn csv_and_parquet_hold_the_rows_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["p.csv", "p.parquet"] {
            let path = dir.path().join(name);
            let mut w = RowsWriter::create(&path, &columns()).expect("create");
            for i in 0..5000 {
                let id = format!("img,{i}");
                w.write(&[Cell::Text(&id), Cell::Number(i as f64 / 8.0)]).expect("row");
            }
            assert!(w.write(&[Cell::Number(1.0)]).is_err(), "a row of the wrong shape");
            assert!(!path.exists(), "nothing at the final name before finish");
            w.finish().expect("finish");
        }
        let csv = std::fs::read_to_string(dir.path().join("p.csv")).expect("csv");
        assert_eq!(csv.lines().nth(2), Some("\"img,1\",0.125000"));
        assert_eq!(csv.lines().count(), 5001);
        let reader = crate::parquet_source::reader(&dir.path().join("p.parquet"))
            .expect("parquet")
            .build()
            .expect("reader");
        let mut rows = 0;
        for batch in reader {
            let batch = batch.expect("batch");
            let ids = batch.column(0).as_any().downcast_ref::<StringArray>().expect("text");
            let p = batch.column(1).as_any().downcast_ref::<Float64Array>().expect("numbers");
            for r in 0..batch.num_rows() {
                assert_eq!((ids.value(r), p.value(r)), (format!("img,{}", rows).as_str(), rows as f64 / 8.0));
                rows += 1;
            }
        }
        assert_eq!(rows, 5000);
    }

    #[test]
    fn an_unfinished_table_leaves_no_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = RowsWriter::create(&dir.path().join("p.parquet"), &columns()).expect("create");
        drop(w);
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 0);
    }
}
