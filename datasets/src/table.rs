//! Feature tables: a labelled dataset stored as an Arrow table, one row per example.
//!
//! Layout: a feature column holding a fixed-size list of `float32` (or `uint8`, used for
//! decoded images) per row, or else N `float32` columns; and an integer label column. Column
//! names are configurable ([`Columns`]). Schema metadata (keys `plflow.*`) may record the
//! example shape, the class names and a fingerprint of what produced the file.
//!
//! [`TableFile`] maps an Arrow IPC file and decodes its record batches without copying: the
//! feature values are read straight out of the page cache, and the pages of consumed rows
//! can be released again ([`Source::release`]).

use crate::format::{Columns, META_CLASS_NAMES, META_SHAPE};
use crate::mapped::MappedFile;
use crate::{DatasetError, Source};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, UInt8Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_buffer::{Buffer, ScalarBuffer};
use arrow_ipc::reader::{FileDecoder, read_footer_length};
use arrow_schema::{DataType, Schema};
use std::collections::HashMap;
use std::path::Path;
use std::ptr::NonNull;

/// Feature values of one record batch.
#[derive(Debug)]
enum Values {
    /// Fixed-size list of f32: the child values, row `r` at `r * dim`.
    F32(ScalarBuffer<f32>),
    /// Fixed-size list of u8 (pixels), scaled to `[0, 1]` on read.
    U8(ScalarBuffer<u8>),
    /// One f32 column per feature.
    Columns(Vec<ScalarBuffer<f32>>),
}

#[derive(Debug)]
struct Part {
    values: Values,
    labels: Option<ArrayRef>,
}

/// A memory-mapped Arrow IPC feature table.
#[derive(Debug)]
pub struct TableFile {
    map: MappedFile,
    parts: Vec<Part>,
    /// First row of each part, plus the total at the end.
    starts: Vec<usize>,
    shape: Vec<usize>,
    dim: usize,
    classes: usize,
    metadata: HashMap<String, String>,
}

impl TableFile {
    /// Map and check the IPC file at `path`.
    pub fn open(path: &Path, columns: &Columns) -> Result<Self, DatasetError> {
        let map = MappedFile::open(path)?;
        let bad = |p: String| DatasetError::format(path, p);
        let bytes = map.bytes();
        if bytes.len() < 16 || &bytes[..6] != b"ARROW1" || &bytes[bytes.len() - 6..] != b"ARROW1" {
            return Err(bad(format!(
                "not an Arrow IPC file ({} bytes, no ARROW1 magic at both ends): truncated, or written \
                 by a writer that was stopped; write it again",
                bytes.len()
            )));
        }
        // SAFETY: the pointer and length describe the whole live map, and the Arc handed to the
        // buffer keeps the map alive for as long as any array points into it.
        let buffer = unsafe {
            Buffer::from_custom_allocation(
                NonNull::from(bytes).cast::<u8>(),
                bytes.len(),
                map.shared() as std::sync::Arc<dyn arrow_buffer::alloc::Allocation>,
            )
        };
        let trailer = buffer.len() - 10;
        let mut tail = [0u8; 10];
        tail.copy_from_slice(&buffer[trailer..]);
        let footer_len = read_footer_length(tail).map_err(|e| bad(format!("bad IPC footer: {e}")))?;
        if footer_len > trailer {
            return Err(bad(format!("IPC footer of {footer_len} bytes does not fit the file")));
        }
        let footer = arrow_ipc::root_as_footer(&buffer[trailer - footer_len..trailer])
            .map_err(|e| bad(format!("bad IPC footer: {e}")))?;
        let schema = footer
            .schema()
            .map(arrow_ipc::convert::try_fb_to_schema)
            .transpose()
            .map_err(|e| bad(format!("bad IPC schema: {e}")))?
            .ok_or_else(|| bad("IPC footer has no schema".into()))?;
        let schema = std::sync::Arc::new(schema);
        let metadata: HashMap<String, String> =
            schema.metadata().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let layout = Layout::of(&schema, columns).map_err(&bad)?;
        let mut decoder = FileDecoder::new(schema.clone(), footer.version());
        for block in footer.dictionaries().iter().flatten() {
            let data = block_data(&buffer, block, &schema).map_err(&bad)?;
            decoder.read_dictionary(block, &data).map_err(|e| bad(format!("bad dictionary: {e}")))?;
        }
        let mut parts = Vec::new();
        let mut starts = vec![0];
        for (b, block) in footer.recordBatches().iter().flatten().enumerate() {
            let data =
                block_data(&buffer, block, &schema).map_err(|e| bad(format!("record batch {b}: {e}")))?;
            let batch = decoder
                .read_record_batch(block, &data)
                .map_err(|e| bad(format!("record batch {b} is corrupt: {e}")))?
                .ok_or_else(|| bad(format!("record batch {b} is missing")))?;
            let first = *starts.last().unwrap_or(&0);
            parts.push(layout.part(&batch, first).map_err(&bad)?);
            starts.push(first + batch.num_rows());
        }
        let shape = match metadata.get(META_SHAPE) {
            Some(s) => parse_shape(s, layout.dim).map_err(&bad)?,
            None => vec![layout.dim],
        };
        let mut table = Self { map, parts, starts, shape, dim: layout.dim, classes: 0, metadata };
        table.classes = table.max_label().map_err(&bad)?.map_or(0, |m| m as usize + 1);
        if table.classes > MAX_CLASSES {
            return Err(bad(format!(
                "its largest label is {}: plflow trains at most {MAX_CLASSES} classes (labels 0 to {})",
                table.classes - 1,
                MAX_CLASSES - 1
            )));
        }
        if let Some(names) = table.class_names() {
            table.classes = table.classes.max(names.len());
        }
        Ok(table)
    }

    /// Values per row.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Schema metadata (`plflow.*` keys and whatever else the writer stored).
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    /// Class names recorded in the file, if any.
    pub fn class_names(&self) -> Option<Vec<String>> {
        self.metadata.get(META_CLASS_NAMES).map(|s| s.lines().map(str::to_owned).collect())
    }

    /// The file.
    pub fn path(&self) -> &Path {
        self.map.path()
    }

    /// Raise the class count (both splits of a dataset must agree on it).
    pub fn set_classes(&mut self, classes: usize) {
        self.classes = self.classes.max(classes);
    }

    /// `true` when every feature buffer points into the file's map (nothing was copied).
    pub fn is_zero_copy(&self) -> bool {
        let within = |bytes: &[u8]| {
            let (base, len) = (self.map.bytes().as_ptr() as usize, self.map.bytes().len());
            let p = bytes.as_ptr() as usize;
            p >= base && p + bytes.len() <= base + len
        };
        self.parts.iter().all(|part| match &part.values {
            Values::F32(v) => within(bytes_of(v)),
            Values::U8(v) => within(v),
            Values::Columns(cols) => cols.iter().all(|c| within(bytes_of(c))),
        })
    }

    fn max_label(&self) -> Result<Option<u32>, String> {
        let mut max = None;
        for (p, part) in self.parts.iter().enumerate() {
            let Some(labels) = &part.labels else { continue };
            for r in 0..labels.len() {
                let v = label_value(labels, r);
                if !(0..=i64::from(u32::MAX)).contains(&v) {
                    return Err(format!("record {} has label {v}, expected 0 or more", self.starts[p] + r));
                }
                max = max.max(Some(v as u32));
            }
        }
        Ok(max)
    }

    fn locate(&self, row: usize) -> (usize, usize) {
        let p = self.starts.partition_point(|&s| s <= row) - 1;
        (p, row - self.starts[p])
    }
}

/// Most classes a table may have: its class count sizes the output layer and the per-class
/// tallies, so a corrupt label must not claim billions.
pub const MAX_CLASSES: usize = 1 << 16;

/// The bytes of an IPC block (message metadata, then body), checked to lie in the file, with
/// every buffer its message declares inside its body (arrow-ipc slices those unchecked) and
/// every node's length small enough that its values, through the schema's fixed-size lists,
/// can be counted (arrow-data's validation overflows on it): arrow panics on files that lie
/// about either.
fn block_data(buffer: &Buffer, block: &arrow_ipc::Block, schema: &Schema) -> Result<Buffer, String> {
    let (meta, body) = (usize::try_from(block.metaDataLength()), usize::try_from(block.bodyLength()));
    let (Ok(meta), Ok(body)) = (meta, body) else {
        return Err(format!("negative block lengths {} + {}", block.metaDataLength(), block.bodyLength()));
    };
    let len = meta.checked_add(body).ok_or_else(|| format!("block lengths {meta} + {body} overflow"))?;
    let data = slice(buffer, block.offset(), len)?;
    // The metadata starts with the continuation marker and a length, or a length alone.
    let message = match data.get(..meta) {
        Some([0xff, 0xff, 0xff, 0xff, _, _, _, _, rest @ ..]) => rest,
        Some([a, b, c, d, rest @ ..]) if [*a, *b, *c, *d] != [0xff; 4] => rest,
        _ => return Err(format!("message metadata of {meta} bytes is too short")),
    };
    let message = arrow_ipc::root_as_message(message).map_err(|e| format!("bad message: {e}"))?;
    let batch = message.header_as_record_batch().or_else(|| message.header_as_dictionary_batch()?.data());
    let per_row = schema.fields().iter().map(|f| values_per_item(f.data_type())).max().unwrap_or(1);
    for (i, node) in batch.and_then(|b| b.nodes()).iter().flatten().enumerate() {
        let values = usize::try_from(node.length()).ok().and_then(|n| n.checked_mul(per_row));
        if values.is_none_or(|v| v > i64::MAX as usize) || node.null_count() < 0 {
            return Err(format!(
                "field node {i} claims {} items ({} null)",
                node.length(),
                node.null_count()
            ));
        }
    }
    for (i, b) in batch.and_then(|b| b.buffers()).iter().flatten().enumerate() {
        let end = u64::try_from(b.offset())
            .ok()
            .zip(u64::try_from(b.length()).ok())
            .and_then(|(o, l)| o.checked_add(l));
        if end.is_none_or(|end| end > body as u64) {
            return Err(format!(
                "buffer {i} ({} bytes at {}) lies outside the {body}-byte body",
                b.length(),
                b.offset()
            ));
        }
    }
    Ok(data)
}

/// Values one item of `t` holds through nested fixed-size lists (1 for other types),
/// saturating: the bound a node's length is checked against.
fn values_per_item(t: &DataType) -> usize {
    match t {
        DataType::FixedSizeList(child, n) => usize::try_from(*n)
            .unwrap_or(usize::MAX)
            .max(1)
            .saturating_mul(values_per_item(child.data_type())),
        DataType::List(child) | DataType::LargeList(child) => values_per_item(child.data_type()),
        DataType::Struct(fields) => fields.iter().map(|f| values_per_item(f.data_type())).max().unwrap_or(1),
        _ => 1,
    }
}

fn slice(buffer: &Buffer, offset: i64, len: usize) -> Result<Buffer, String> {
    let start = usize::try_from(offset).map_err(|_| format!("negative block offset {offset}"))?;
    if start.checked_add(len).is_none_or(|end| end > buffer.len()) {
        return Err(format!("block at {start} (+{len} bytes) runs past the end of the file (truncated?)"));
    }
    Ok(buffer.slice_with_length(start, len))
}

pub(crate) fn parse_shape(s: &str, dim: usize) -> Result<Vec<usize>, String> {
    let shape: Vec<usize> = s
        .split(',')
        .map(|d| d.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("metadata {META_SHAPE} = {s:?} is not a list of sizes"))?;
    if shape.iter().try_fold(1usize, |p, &d| p.checked_mul(d)) != Some(dim) {
        return Err(format!("metadata {META_SHAPE} = {s:?} does not hold the {dim} values per row"));
    }
    Ok(shape)
}

/// Which columns hold what.
pub(crate) struct Layout {
    features: Vec<usize>,
    list: Option<DataType>,
    label: Option<usize>,
    pub(crate) dim: usize,
}

impl Layout {
    pub(crate) fn of(schema: &Schema, columns: &Columns) -> Result<Self, String> {
        let names = || schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", ");
        let label = match schema.index_of(&columns.label) {
            Ok(i) => Some(i),
            Err(_) if columns.optional_label => None,
            Err(_) => return Err(format!("no label column `{}` (columns: {})", columns.label, names())),
        };
        if let Some(label) = label.filter(|&l| !schema.field(l).data_type().is_integer()) {
            return Err(format!(
                "label column `{}` has type {}, expected an integer type",
                columns.label,
                schema.field(label).data_type()
            ));
        }
        if let Ok(f) = schema.index_of(&columns.features) {
            return match schema.field(f).data_type() {
                DataType::FixedSizeList(item, n)
                    if matches!(item.data_type(), DataType::Float32 | DataType::UInt8) && *n > 0 =>
                {
                    Ok(Self {
                        features: vec![f],
                        list: Some(item.data_type().clone()),
                        label,
                        dim: *n as usize,
                    })
                }
                other => Err(format!(
                    "feature column `{}` has type {other}, expected fixed_size_list<float32> (or uint8)",
                    columns.features
                )),
            };
        }
        let features: Vec<usize> = (0..schema.fields().len())
            .filter(|&i| Some(i) != label && schema.field(i).data_type() == &DataType::Float32)
            .collect();
        if features.is_empty() {
            return Err(format!(
                "no feature column `{}` and no float32 columns (columns: {})",
                columns.features,
                names()
            ));
        }
        Ok(Self { dim: features.len(), features, list: None, label })
    }

    fn part(&self, batch: &RecordBatch, first: usize) -> Result<Part, String> {
        let labels = self.label.map(|l| batch.column(l).clone());
        if let Some(r) = labels.as_ref().and_then(|l| (0..l.len()).find(|&r| l.is_null(r))) {
            return Err(format!("record {} has no label (null)", first + r));
        }
        let null_row = |a: &dyn Array| (0..a.len()).find(|&r| a.is_null(r));
        let values = match &self.list {
            Some(item) => {
                let list = batch.column(self.features[0]).as_fixed_size_list();
                if let Some(r) = null_row(list) {
                    return Err(format!("record {} has no features (null)", first + r));
                }
                let (start, len) = (list.value_offset_at(0), list.len() * self.dim);
                match item {
                    DataType::Float32 => {
                        let child = list.values().as_primitive::<Float32Type>();
                        if child.null_count() > 0 {
                            return Err(format!("records from {first} hold null feature values"));
                        }
                        Values::F32(child.values().slice(start, len))
                    }
                    _ => Values::U8(list.values().as_primitive::<UInt8Type>().values().slice(start, len)),
                }
            }
            None => Values::Columns(
                self.features
                    .iter()
                    .map(|&c| {
                        let col = batch.column(c).as_primitive::<Float32Type>();
                        match null_row(col) {
                            Some(r) => Err(format!("record {} has a null feature", first + r)),
                            None => Ok(col.values().clone()),
                        }
                    })
                    .collect::<Result<_, _>>()?,
            ),
        };
        Ok(Part { values, labels })
    }
}

/// Label `r` of an integer column, widened.
pub(crate) fn label_value(labels: &ArrayRef, r: usize) -> i64 {
    use arrow_array::types::*;
    match labels.data_type() {
        DataType::Int8 => labels.as_primitive::<Int8Type>().value(r).into(),
        DataType::Int16 => labels.as_primitive::<Int16Type>().value(r).into(),
        DataType::Int32 => labels.as_primitive::<Int32Type>().value(r).into(),
        DataType::Int64 => labels.as_primitive::<Int64Type>().value(r),
        DataType::UInt8 => labels.as_primitive::<UInt8Type>().value(r).into(),
        DataType::UInt16 => labels.as_primitive::<UInt16Type>().value(r).into(),
        DataType::UInt32 => labels.as_primitive::<UInt32Type>().value(r).into(),
        DataType::UInt64 => labels.as_primitive::<UInt64Type>().value(r).min(i64::MAX as u64) as i64,
        _ => unreachable!("label columns are checked to be integers"),
    }
}

impl Source for TableFile {
    fn len(&self) -> usize {
        *self.starts.last().unwrap_or(&0)
    }

    fn example_shape(&self) -> &[usize] {
        &self.shape
    }

    fn classes(&self) -> usize {
        self.classes
    }

    fn label(&self, index: usize) -> u32 {
        let (p, r) = self.locate(index);
        self.parts[p].labels.as_ref().map_or(0, |l| label_value(l, r) as u32)
    }

    fn read_into(&self, indices: &[usize], features: &mut [f32], labels: &mut [u32]) {
        let dim = self.dim;
        assert_eq!(features.len(), indices.len() * dim, "feature buffer size");
        assert_eq!(labels.len(), indices.len(), "label buffer size");
        let mut scratch = Vec::new();
        for ((&i, out), label) in indices.iter().zip(features.chunks_exact_mut(dim)).zip(labels.iter_mut()) {
            let (p, r) = self.locate(i);
            let part = &self.parts[p];
            match &part.values {
                Values::F32(v) => {
                    let src = bytes_of(&v[r * dim..(r + 1) * dim]);
                    // SAFETY: any bytes are a valid f32 bit pattern; the slice is `out` itself.
                    let dst =
                        unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<u8>(), dim * 4) };
                    self.map.copy_out(src, dst);
                }
                Values::U8(v) => {
                    scratch.resize(dim, 0);
                    self.map.copy_out(&v[r * dim..(r + 1) * dim], &mut scratch);
                    for (o, &x) in out.iter_mut().zip(scratch.iter()) {
                        *o = f32::from(x) / 255.0;
                    }
                }
                Values::Columns(cols) => {
                    for (o, c) in out.iter_mut().zip(cols) {
                        *o = c[r];
                    }
                }
            }
            *label = part.labels.as_ref().map_or(0, |l| label_value(l, r) as u32);
        }
    }

    fn release(&self, indices: &[usize]) {
        let dim = self.dim;
        for &i in indices {
            let (p, r) = self.locate(i);
            match &self.parts[p].values {
                Values::F32(v) => self.map.release(bytes_of(&v[r * dim..(r + 1) * dim])),
                Values::U8(v) => self.map.release(&v[r * dim..(r + 1) * dim]),
                Values::Columns(_) => {} // a row is spread over every column's pages
            }
        }
    }
}

fn bytes_of(v: &[f32]) -> &[u8] {
    // SAFETY: any f32 slice is a valid byte slice of four times its length.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}
