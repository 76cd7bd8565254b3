//! Errors of dataset sources; each names the file or record and what to do about it.

use std::path::PathBuf;
use thiserror::Error;

/// Everything that can go wrong while finding, decoding or reading a dataset.
#[derive(Debug, Error)]
pub enum DatasetError {
    /// A file or folder the dataset needs does not exist.
    #[error("{what} not found: looked for {}. {hint}", list(.tried))]
    Missing {
        /// What was looked for.
        what: String,
        /// Every place looked in.
        tried: Vec<PathBuf>,
        /// What to do about it.
        hint: String,
    },
    /// The operating system refused an operation on a file.
    #[error("{}: {action}{}", .path.display(), io_hint(.source))]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What was being done with it.
        action: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A download failed (network, HTTP status or an interrupted body).
    #[error("cannot download {url}: {message}")]
    Download {
        /// The address.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// A file exists but its bytes are not what its format requires.
    #[error("{}: {problem}", .path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with its bytes, and where.
        problem: String,
    },
}

/// What to do about the operating system errors a user can fix, to follow the action.
pub fn io_hint(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => {
            " (the disk is full: free space there or choose a folder on another disk)"
        }
        ErrorKind::ReadOnlyFilesystem => " (the file system is read-only: choose a writable folder)",
        _ => "",
    }
}

fn list(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

impl DatasetError {
    /// An I/O error on `path` while doing `action`.
    pub fn io(path: impl Into<PathBuf>, action: &'static str) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, action, source }
    }

    /// A format error on `path`.
    pub fn format(path: impl Into<PathBuf>, problem: impl Into<String>) -> Self {
        Self::Format { path: path.into(), problem: problem.into() }
    }
}
