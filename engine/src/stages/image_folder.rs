//! `kind: image_folder`: images in `<split>/<class>/` folders, in a directory or an archive.

use super::{Builder, Stage};
use crate::error::SpecError;
use crate::graph::DataSource;
use crate::spec::defaults;
use petgraph::graph::NodeIndex;
use plflow_datasets::images::ImageOptions;
use plflow_datasets::location::DataPath;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `kind: image_folder`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageFolderSpec {
    /// A folder with `train/<class>/` and `test/<class>/`, a `.tar`/`.tar.gz` of that layout,
    /// or a folder holding one such archive.
    pub path: PathBuf,
    /// `[height, width]` of every example.
    pub size: [u32; 2],
    /// 3 (RGB) or 1 (grey).
    #[serde(default = "defaults::channels")]
    pub channels: u8,
    /// Scale images of another size (bilinear) instead of rejecting them.
    #[serde(default)]
    pub resize: bool,
    /// As for `mnist`.
    #[serde(default)]
    pub limit: Option<usize>,
}

impl Stage for ImageFolderSpec {
    fn input(&self) -> Option<&str> {
        None
    }

    fn build(&self, name: &str, b: &mut Builder<'_>) -> Result<NodeIndex, SpecError> {
        let [height, width] = self.size;
        if height == 0 || width == 0 {
            return Err(b.err(name, Some("size"), "field `size`: [height, width] must be positive".into()));
        }
        if !matches!(self.channels, 1 | 3) {
            return Err(b.err(
                name,
                Some("channels"),
                format!("field `channels`: must be 1 or 3, got {}", self.channels),
            ));
        }
        let options = ImageOptions { height, width, channels: self.channels, resize: self.resize };
        let shape = vec![self.channels as usize, height as usize, width as usize];
        // Classes are the train folders: counted without decoding.
        let classes = plflow_datasets::images::survey(&DataPath::resolve(&self.path))
            .map(|counts| counts.iter().filter(|(split, ..)| *split == "train").count())
            .map_err(|e| b.err(name, Some("path"), format!("field `path`: {e}")))?;
        let source = DataSource::Images { path: self.path.clone(), options };
        b.add_dataset(name, source, self.limit, shape, classes)
    }
}
