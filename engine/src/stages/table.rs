//! `kind: table`: a feature table (Arrow IPC or Parquet) per split.

use super::{Builder, Stage};
use crate::error::SpecError;
use crate::graph::DataSource;
use crate::spec::defaults;
use petgraph::graph::NodeIndex;
use plflow_datasets::format::Columns;
use plflow_datasets::location::DataPath;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `kind: table`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    /// Training table (`.arrow`/`.ipc`/`.feather` or `.parquet`).
    pub train: PathBuf,
    /// Test table, same layout.
    pub test: PathBuf,
    /// Feature column (a fixed-size list); when the table has none by that name, every
    /// float32 column but the label is a feature.
    #[serde(default = "defaults::features_column")]
    pub features: String,
    /// Integer label column.
    #[serde(default = "defaults::label_column")]
    pub label: String,
    /// As for `mnist`.
    #[serde(default)]
    pub limit: Option<usize>,
}

impl Stage for TableSpec {
    fn input(&self) -> Option<&str> {
        None
    }

    fn build(&self, name: &str, b: &mut Builder<'_>) -> Result<NodeIndex, SpecError> {
        let columns =
            Columns { features: self.features.clone(), label: self.label.clone(), ..Columns::default() };
        let mut shape = None;
        let mut classes = 0;
        for (field, path) in [("train", &self.train), ("test", &self.test)] {
            let resolved = DataPath::resolve(path).resolved;
            let (sh, c) = plflow_datasets::inspect::peek(&resolved, &columns)
                .map_err(|e| b.err(name, Some(field), format!("field `{field}`: {e}")))?;
            if shape.as_ref().is_some_and(|s| s != &sh) {
                return Err(b.err(
                    name,
                    Some("test"),
                    format!(
                        "shape mismatch: test rows have shape {sh:?}, train rows {:?}",
                        shape.unwrap_or_default()
                    ),
                ));
            }
            shape = Some(sh);
            classes = classes.max(c);
        }
        let source = DataSource::Table { train: self.train.clone(), test: self.test.clone(), columns };
        b.add_dataset(name, source, self.limit, shape.unwrap_or_default(), classes)
    }
}
