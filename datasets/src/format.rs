//! The vocabulary of feature tables shared by their readers ([`crate::table`],
//! [`crate::parquet_source`]) and writers ([`crate::sink`]): file formats, column names,
//! schema metadata keys, and the temporary name a file is written under.

use std::path::{Path, PathBuf};

/// Metadata key: the example shape, e.g. `3,32,32`.
pub const META_SHAPE: &str = "plflow.shape";
/// Metadata key: class names, one per line, in label order.
pub const META_CLASS_NAMES: &str = "plflow.class_names";
/// Metadata key: what produced the file (inputs and settings), to tell a stale cache.
pub const META_FINGERPRINT: &str = "plflow.fingerprint";

/// Names of the feature and label columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Columns {
    /// A fixed-size-list column; when absent, every `float32` column but the label is a feature.
    pub features: String,
    /// An integer column.
    pub label: String,
    /// Accept a table without the label column (its rows read as label 0): inputs to
    /// predict on, not training data.
    pub optional_label: bool,
}

impl Default for Columns {
    fn default() -> Self {
        Self { features: "features".into(), label: "label".into(), optional_label: false }
    }
}

/// File formats of feature tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableFormat {
    /// Arrow IPC file (`.arrow`, `.ipc`, `.feather`): memory-mappable, read without copying.
    ArrowIpc,
    /// Parquet (`.parquet`, `.pq`): compact, readable by most data tools.
    Parquet,
}

impl TableFormat {
    /// The format a file name's extension implies.
    pub fn from_path(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "arrow" | "ipc" | "feather" | "arrows" => Some(Self::ArrowIpc),
            "parquet" | "pq" => Some(Self::Parquet),
            _ => None,
        }
    }
}

/// Where a file is written before it is complete.
pub fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".partial-{}", std::process::id()));
    path.with_file_name(name)
}
