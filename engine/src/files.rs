//! Reading files a user names. Only regular files are read, up to the size their metadata
//! gives and within a cap, so that a device (`/dev/zero`), a FIFO or a huge file is refused
//! by name instead of read forever or into all of memory.

use crate::error::EngineError;
use std::io::Read as _;
use std::path::Path;

/// Pipelines are a few kilobytes; this leaves room for any hand-written one.
pub const MAX_PIPELINE_BYTES: u64 = 16 << 20;

/// The bytes of the regular file `path` (at most `max`), or an error naming it that says
/// what was being read (`action`, e.g. "cannot read the pipeline").
pub fn read_regular(path: &Path, max: u64, action: &'static str) -> Result<Vec<u8>, EngineError> {
    let fail = |message: String| EngineError::io(path, action)(std::io::Error::other(message));
    let file = std::fs::File::open(path).map_err(EngineError::io(path, action))?;
    let meta = file.metadata().map_err(EngineError::io(path, action))?;
    if !meta.is_file() {
        return Err(fail("not a regular file (a device, a pipe or a folder)".to_owned()));
    }
    if meta.len() > max {
        return Err(fail(format!("{} bytes, more than the {max} such a file can have", meta.len())));
    }
    let mut bytes = Vec::new();
    bytes
        .try_reserve_exact(usize::try_from(meta.len()).unwrap_or(usize::MAX))
        .map_err(|_| fail(format!("{} bytes do not fit in memory", meta.len())))?;
    file.take(meta.len()).read_to_end(&mut bytes).map_err(EngineError::io(path, action))?;
    Ok(bytes)
}

/// [`read_regular`] for a text file.
pub fn read_text(path: &Path, max: u64, action: &'static str) -> Result<String, EngineError> {
    let bytes = read_regular(path, max, action)?;
    String::from_utf8(bytes).map_err(|e| EngineError::io(path, action)(std::io::Error::other(e.utf8_error())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error and its cause, as the command line prints them.
    fn chain(e: EngineError) -> String {
        let cause = std::error::Error::source(&e).map(ToString::to_string).unwrap_or_default();
        format!("{e}: {cause}")
    }

    #[test]
    fn regular_files_are_read_and_devices_folders_and_oversized_files_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("p.yaml");
        std::fs::write(&file, "name: p\n").expect("write");
        assert_eq!(read_text(&file, 100, "cannot read").expect("a file"), "name: p\n");
        let err = chain(read_text(&file, 4, "cannot read").expect_err("too big"));
        assert!(err.contains("p.yaml") && err.contains("8 bytes"), "{err}");
        let err = chain(read_regular(dir.path(), 100, "cannot read").expect_err("a folder"));
        assert!(err.contains("not a regular file"), "{err}");
        #[cfg(unix)]
        {
            let err = chain(read_regular(Path::new("/dev/zero"), 100, "cannot read").expect_err("a device"));
            assert!(err.contains("/dev/zero") && err.contains("not a regular file"), "{err}");
        }
    }
}
