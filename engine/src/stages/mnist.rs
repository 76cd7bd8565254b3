//! `kind: mnist`: MNIST-layout IDX files.

use super::{Builder, Stage};
use crate::error::SpecError;
use crate::graph::DataSource;
use crate::spec::defaults;
use petgraph::graph::NodeIndex;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `kind: mnist`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MnistSpec {
    /// Folder of the four IDX files; relative paths are looked up under `PLFLOW_DATA_DIR`.
    #[serde(default = "defaults::mnist_path")]
    pub path: PathBuf,
    /// Use at most this many training examples (class-balanced, reproducible) and the same
    /// share of the test split; `null` for all.
    #[serde(default)]
    pub limit: Option<usize>,
}

impl Stage for MnistSpec {
    fn input(&self) -> Option<&str> {
        None
    }

    fn build(&self, name: &str, b: &mut Builder<'_>) -> Result<NodeIndex, SpecError> {
        let source = DataSource::Mnist { path: self.path.clone() };
        b.add_dataset(name, source, self.limit, vec![1, 28, 28], plflow_datasets::mnist::CLASSES)
    }
}
