//! The lock a process holds on a run, bench or sweep folder while it writes there.
//!
//! A folder holding `pipeline.yaml` and no summary is taken for an interrupted run, which
//! the same command continues. Without a lock a run still going (a second terminal, or a
//! `plflow run` left behind when only its bench was killed) looks the same, and two
//! processes would write one folder. The lock is the operating system's advisory lock on
//! `<folder>/.plflow.lock`, released when its holder exits, however it exits, so a killed
//! run never blocks the next one. A second writer is refused at once, naming the folder.

use crate::error::EngineError;
use std::fs::{File, TryLockError};
use std::path::Path;

/// The lock file's name inside a locked folder. It stays when the holder exits (it is not
/// part of what the run wrote: checks for an empty folder ignore it).
pub const FOLDER_LOCK: &str = ".plflow.lock";

/// An exclusive lock on one folder, held until dropped.
#[derive(Debug)]
pub struct FolderLock {
    _file: File,
}

impl FolderLock {
    /// Lock `dir` (created if missing), or fail, naming it, when another process holds it.
    pub fn take(dir: &Path) -> Result<Self, EngineError> {
        std::fs::create_dir_all(dir).map_err(EngineError::io(dir, "cannot create the folder"))?;
        let path = dir.join(FOLDER_LOCK);
        let file = plflow_datasets::lock::lock_file(&path)
            .map_err(EngineError::io(&path, "cannot create the lock file"))?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file }),
            Err(TryLockError::WouldBlock) => Err(EngineError::io(
                dir,
                "another plflow process is writing this folder",
            )(std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                "wait for it to finish (or stop it), or choose another --out",
            ))),
            Err(TryLockError::Error(e)) => Err(EngineError::io(&path, "cannot lock")(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_is_refused_until_the_first_drops_the_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = dir.path().join("run");
        let first = FolderLock::take(&run).expect("first");
        // flock locks belong to open file descriptions: a second open in this process
        // conflicts just as another process's would.
        let err = FolderLock::take(&run).expect_err("held");
        assert!(err.to_string().contains("another plflow process is writing this folder"), "{err}");
        assert!(err.to_string().contains("run"), "{err}");
        drop(first);
        FolderLock::take(&run).expect("free again");
        assert!(run.join(FOLDER_LOCK).is_file());
    }
}
