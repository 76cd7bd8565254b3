//! Cross-process locks on the files plflow derives from data (cache entries, feature files).
//!
//! Two runs started together on the same uncached dataset would otherwise both decode it,
//! and one could remove working files (extraction parts) the other still reads. A writer
//! takes [`EntryLock::acquire`] on the entry, looks again whether a finished copy appeared
//! while it waited, and only then writes. The lock is the operating system's advisory lock
//! on `<entry>.lock` (`flock`), released when its holder exits, however it exits: a killed
//! writer never blocks the next run. The lock files stay (a few empty files in the cache):
//! removing one while another process waits on it would let a third lock a new file.

use crate::DatasetError;
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

/// An exclusive lock on one entry, held until dropped.
#[derive(Debug)]
pub struct EntryLock {
    _file: File,
    entry: PathBuf,
}

impl EntryLock {
    /// Lock `entry` (which need not exist), waiting while another process holds it. The
    /// wait is announced on stderr, naming the entry, so a blocked run does not look hung.
    pub fn acquire(entry: &Path) -> Result<Self, DatasetError> {
        let path = lock_path(entry);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(DatasetError::io(dir, "cannot create the folder"))?;
        }
        let file = lock_file(&path).map_err(DatasetError::io(&path, "cannot create the lock file"))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                eprintln!("waiting for another plflow process that is writing {}", entry.display());
                file.lock().map_err(DatasetError::io(&path, "cannot lock"))?;
            }
            Err(TryLockError::Error(e)) => return Err(DatasetError::io(&path, "cannot lock")(e)),
        }
        Ok(Self { _file: file, entry: entry.to_path_buf() })
    }

    /// Remove what killed writers left behind of `file`, one of the files this lock covers:
    /// its `<file>.partial-<pid>` copies are only ever written under this lock, so while it
    /// is held none of them belongs to a live writer. Returns how many were removed.
    pub fn remove_stale(&self, file: &Path) -> Result<usize, DatasetError> {
        let (Some(dir), Some(name)) = (file.parent(), file.file_name()) else { return Ok(0) };
        let name = name.to_string_lossy();
        remove_where(dir, |f| partial_of(f).is_some_and(|of| of == name))
    }

    /// The entry this lock covers.
    pub fn entry(&self) -> &Path {
        &self.entry
    }
}

/// Remove every `*.partial-<pid>` file or folder in `dir` (which may not exist). Only for
/// folders whose writers all hold one [`EntryLock`], which the caller holds.
pub fn remove_partials(dir: &Path) -> Result<usize, DatasetError> {
    remove_where(dir, |file| partial_of(file).is_some())
}

/// The name a partial file `file` (`<name>.partial-<pid>`) is being written for.
fn partial_of(file: &str) -> Option<&str> {
    let (name, pid) = file.rsplit_once(".partial-")?;
    (!pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())).then_some(name)
}

fn remove_where(dir: &Path, stale: impl Fn(&str) -> bool) -> Result<usize, DatasetError> {
    let Ok(listing) = std::fs::read_dir(dir) else { return Ok(0) };
    let mut removed = 0;
    for item in listing.flatten() {
        if stale(&item.file_name().to_string_lossy()) {
            let path = item.path();
            let result =
                if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
            result.map_err(DatasetError::io(&path, "cannot remove a stale partial file"))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Open (creating it if missing, never truncating it) the lock file `path`, to lock.
pub fn lock_file(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).truncate(false).write(true).open(path)
}

/// The lock file of `entry`.
pub fn lock_path(entry: &Path) -> PathBuf {
    let mut name = entry.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".lock");
    entry.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn a_second_holder_waits_until_the_first_drops_the_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let entry = dir.path().join("cache").join("entry.arrow");
        let first = EntryLock::acquire(&entry).expect("first");
        let (tx, rx) = mpsc::channel();
        let other = entry.clone();
        let waiter = std::thread::spawn(move || {
            let _second = EntryLock::acquire(&other).expect("second");
            tx.send(()).expect("send");
        });
        // flock locks belong to open file descriptions, so a second open in the same
        // process waits just as another process would.
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err(), "the second holder must wait");
        drop(first);
        rx.recv_timeout(Duration::from_secs(10)).expect("the second holder gets the lock");
        waiter.join().expect("thread");
        assert!(lock_path(&entry).is_file());
    }

    #[test]
    fn stale_partials_of_the_entry_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let entry = dir.path().join("x.arrow");
        let names =
            ["x.arrow.partial-1", "x.arrow.partial-99", "y.arrow.partial-1", "x.arrow2.partial-3", "x.arrow"];
        for name in names {
            std::fs::write(dir.path().join(name), b"bytes").expect("write");
        }
        std::fs::create_dir(dir.path().join("x.arrow.partial-7")).expect("dir");
        let lock = EntryLock::acquire(&entry).expect("lock");
        assert_eq!(lock.remove_stale(&entry).expect("clean"), 3);
        assert_eq!(lock.entry(), entry);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["x.arrow", "x.arrow.lock", "x.arrow2.partial-3", "y.arrow.partial-1"]);
    }
}
