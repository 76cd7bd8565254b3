//! Where datasets are found: a pipeline names a path; relative paths are looked up under
//! `PLFLOW_DATA_DIR` when it is set, else under `./data`.

use std::path::{Path, PathBuf};

/// Environment variable naming the folder that holds datasets (e.g. `mnist/` inside it).
pub const DATA_DIR_ENV: &str = "PLFLOW_DATA_DIR";

/// Environment variable naming the folder that holds models (ONNX backbones).
pub const MODEL_DIR_ENV: &str = "PLFLOW_MODEL_DIR";

/// A model path as written in a pipeline, resolved: relative paths under `PLFLOW_MODEL_DIR`
/// when it is set, else as they are (relative to the working folder).
pub fn resolve_model(written: &Path) -> PathBuf {
    match std::env::var_os(MODEL_DIR_ENV).filter(|v| !v.is_empty()) {
        Some(root) if written.is_relative() => PathBuf::from(root).join(written),
        _ => written.to_path_buf(),
    }
}

/// A dataset path as the pipeline wrote it and the folder it means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataPath {
    /// As written in the pipeline.
    pub written: PathBuf,
    /// The folder it resolves to.
    pub resolved: PathBuf,
}

impl DataPath {
    /// Resolve `written` against the environment. Absolute paths are taken as they are.
    pub fn resolve(written: &Path) -> Self {
        let resolved = if written.is_absolute() {
            written.to_path_buf()
        } else {
            match std::env::var_os(DATA_DIR_ENV).filter(|v| !v.is_empty()) {
                Some(root) => PathBuf::from(root).join(written),
                None => Path::new("data").join(written),
            }
        };
        Self { written: written.to_path_buf(), resolved }
    }

    /// A sentence telling the user how to make `files` available here.
    pub fn how_to_provide(&self, files: &str) -> String {
        if self.written.is_absolute() {
            format!("Put {files} in {}, or change the path in the pipeline.", self.resolved.display())
        } else {
            let now = match std::env::var_os(DATA_DIR_ENV) {
                Some(v) if !v.is_empty() => format!("it is {}", Path::new(&v).display()),
                _ => "it is unset, so ./data is used".to_owned(),
            };
            format!(
                "Put {files} in <DIR>/{} and set {DATA_DIR_ENV}=<DIR> ({now}), or give an absolute path in the pipeline.",
                self.written.display()
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_paths_are_kept() {
        let p = DataPath::resolve(Path::new("/x/mnist"));
        assert_eq!(p.resolved, Path::new("/x/mnist"));
        assert!(p.how_to_provide("files").contains("/x/mnist"));
    }
}
