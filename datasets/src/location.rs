//! Where datasets are found: a pipeline names a path; relative paths are looked up under
//! `PLFLOW_DATA_DIR` when it is set, else under `./data`.

use std::path::{Path, PathBuf};

/// Environment variable naming the folder that holds datasets (e.g. `mnist/` inside it).
pub const DATA_DIR_ENV: &str = "PLFLOW_DATA_DIR";

/// The folder a dataset path means. Absolute paths are taken as they are.
pub fn resolve(path: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_path_buf();
    }
    match std::env::var_os(DATA_DIR_ENV).filter(|v| !v.is_empty()) {
        Some(root) => PathBuf::from(root).join(path),
        None => Path::new("data").join(path),
    }
}

/// A sentence telling the user how to make a dataset at `path` available.
pub fn how_to_provide(path: &Path, files: &str) -> String {
    if path.is_absolute() {
        format!("Put {files} in that folder, or change the path in the pipeline.")
    } else {
        format!(
            "Put {files} in <DIR>/{} and set {DATA_DIR_ENV}=<DIR> (without it, <DIR> is ./data), \
             or give an absolute path in the pipeline.",
            path.display()
        )
    }
}
