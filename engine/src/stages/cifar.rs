//! `kind: cifar10` and `kind: cifar100`: CIFAR binary files, or image folders / archives of
//! 32x32 images.

use super::{Builder, Stage};
use crate::error::SpecError;
use crate::graph::DataSource;
use crate::spec::defaults;
use petgraph::graph::NodeIndex;
use plflow_datasets::cifar::Variant;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `kind: cifar10`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CifarSpec {
    /// Folder with the binary batches (as `plflow fetch cifar10` leaves them), or with
    /// `train/<class>/*.jpg` and `test/...` folders, or with one archive of those.
    #[serde(default = "defaults::cifar10_path")]
    pub path: PathBuf,
    /// As for `mnist`.
    #[serde(default)]
    pub limit: Option<usize>,
}

/// Which CIFAR-100 labels are learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CifarLabels {
    /// The 100 classes.
    #[default]
    Fine,
    /// The 20 superclasses (binary format only).
    Coarse,
}

/// `kind: cifar100`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cifar100Spec {
    /// As for `cifar10`.
    #[serde(default = "defaults::cifar100_path")]
    pub path: PathBuf,
    /// `fine` (100 classes) or `coarse` (20).
    #[serde(default)]
    pub labels: CifarLabels,
    /// As for `mnist`.
    #[serde(default)]
    pub limit: Option<usize>,
}

impl Stage for CifarSpec {
    fn input(&self) -> Option<&str> {
        None
    }

    fn build(&self, name: &str, b: &mut Builder<'_>) -> Result<NodeIndex, SpecError> {
        let source = DataSource::Cifar { path: self.path.clone(), variant: Variant::Ten };
        b.add_dataset(name, source, self.limit, vec![3, 32, 32], 10)
    }
}

impl Stage for Cifar100Spec {
    fn input(&self) -> Option<&str> {
        None
    }

    fn build(&self, name: &str, b: &mut Builder<'_>) -> Result<NodeIndex, SpecError> {
        let variant = Variant::Hundred { fine: self.labels == CifarLabels::Fine };
        let source = DataSource::Cifar { path: self.path.clone(), variant };
        b.add_dataset(name, source, self.limit, vec![3, 32, 32], variant.classes())
    }
}
