//! The cache directory: decompressed and decoded copies of datasets.
//!
//! User data folders may be read-only (they are in CI) and are never written to. The cache
//! lives in `PLFLOW_CACHE_DIR`, else `$XDG_CACHE_HOME/plflow`, else `~/.cache/plflow`. Entries
//! are keyed by the source file's path, size and modification time, and are written to a
//! temporary file and renamed, so an interrupted run never leaves a half-written entry. One
//! process writes an entry at a time ([`EntryLock`]); the others wait and use its copy.

use crate::DatasetError;
use crate::format::partial_path;
use crate::lock::EntryLock;
use flate2::read::MultiGzDecoder;
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Environment variable that overrides the cache location.
pub const CACHE_DIR_ENV: &str = "PLFLOW_CACHE_DIR";

/// A cache directory.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// A cache in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The cache named by the environment (see the module docs).
    pub fn from_env() -> Self {
        let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        let dir = env(CACHE_DIR_ENV)
            .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("plflow")))
            .or_else(|| env("HOME").map(|d| d.join(".cache").join("plflow")))
            .unwrap_or_else(|| std::env::temp_dir().join("plflow-cache"));
        Self::new(dir)
    }

    /// The cache's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A path holding the plain bytes of `path`: `path` itself unless it is gzip-compressed,
    /// in which case it is decompressed once into the cache.
    pub fn plain_file(&self, path: &Path) -> Result<PathBuf, DatasetError> {
        let mut file = std::fs::File::open(path).map_err(DatasetError::io(path, "cannot open"))?;
        let mut magic = [0u8; 2];
        let got = read_up_to(&mut file, &mut magic).map_err(DatasetError::io(path, "cannot read"))?;
        if got < 2 || magic != [0x1f, 0x8b] {
            return Ok(path.to_path_buf());
        }
        let meta = file.metadata().map_err(DatasetError::io(path, "cannot stat"))?;
        let isize = gzip_isize(path, meta.len())?;
        let target = self.dir.join(self.entry_name(path, &meta));
        let done = || std::fs::metadata(&target).is_ok_and(|m| m.len() as u32 == isize);
        if done() {
            return Ok(target);
        }
        let lock = EntryLock::acquire(&target)?;
        if !done() {
            lock.remove_stale(&target)?;
            self.decompress(path, &target)?;
        }
        Ok(target)
    }

    /// A cache path for data derived from `source` (tagged `tag`, e.g. `parquet`), keyed by the
    /// source's path, size and modification time. The entry may not exist yet.
    pub fn keyed_path(&self, source: &Path, tag: &str, ext: &str) -> Result<PathBuf, DatasetError> {
        let meta = std::fs::metadata(source).map_err(DatasetError::io(source, "cannot read"))?;
        Ok(self.dir.join(format!("{}-{tag}.{ext}", self.entry_name(source, &meta))))
    }

    fn entry_name(&self, path: &Path, meta: &std::fs::Metadata) -> String {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()).hash(&mut h);
        meta.len().hash(&mut h);
        meta.modified().ok().hash(&mut h);
        let stem = path.file_name().map_or_else(|| "data".into(), |n| n.to_string_lossy().into_owned());
        let stem = stem.strip_suffix(".gz").unwrap_or(&stem).to_owned();
        format!("{stem}-{:016x}", h.finish())
    }

    fn decompress(&self, src: &Path, target: &Path) -> Result<(), DatasetError> {
        std::fs::create_dir_all(&self.dir)
            .map_err(DatasetError::io(&self.dir, "cannot create the cache directory"))?;
        let tmp = partial_path(target);
        let result = (|| {
            let input = std::fs::File::open(src).map_err(DatasetError::io(src, "cannot open"))?;
            let mut out = std::fs::File::create(&tmp).map_err(DatasetError::io(&tmp, "cannot create"))?;
            let mut decoder = MultiGzDecoder::new(std::io::BufReader::new(input));
            // Read and write errors apart: a full disk is not a corrupt download.
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = decoder.read(&mut buf).map_err(|e| {
                    DatasetError::format(
                        src,
                        format!("gzip data is corrupt or truncated ({e}); download the file again"),
                    )
                })?;
                if n == 0 {
                    break;
                }
                out.write_all(&buf[..n]).map_err(DatasetError::io(target, "cannot write"))?;
            }
            out.flush().map_err(DatasetError::io(target, "cannot write"))?;
            out.sync_all().map_err(DatasetError::io(&tmp, "cannot sync"))?;
            std::fs::rename(&tmp, target).map_err(DatasetError::io(target, "cannot move into place"))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

/// The uncompressed size modulo 2^32 that a gzip member records in its last four bytes.
fn gzip_isize(path: &Path, len: u64) -> Result<u32, DatasetError> {
    use std::io::{Seek, SeekFrom};
    if len < 18 {
        return Err(DatasetError::format(path, format!("gzip file has only {len} bytes (truncated)")));
    }
    let mut f = std::fs::File::open(path).map_err(DatasetError::io(path, "cannot open"))?;
    f.seek(SeekFrom::End(-4)).map_err(DatasetError::io(path, "cannot seek"))?;
    let mut b = [0u8; 4];
    f.read_exact(&mut b).map_err(DatasetError::io(path, "cannot read"))?;
    Ok(u32::from_le_bytes(b))
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..])? {
            0 => break,
            k => got += k,
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(bytes).expect("in memory");
        e.finish().expect("in memory")
    }

    #[test]
    fn plain_files_are_used_in_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x.idx");
        std::fs::write(&p, b"\0\0\x08\x01\0\0\0\0").expect("write");
        let cache = Cache::new(dir.path().join("cache"));
        assert_eq!(cache.plain_file(&p).expect("plain"), p);
        assert!(!cache.dir().exists(), "nothing written for a plain file");
    }

    #[test]
    fn gzip_files_are_decompressed_once_into_the_cache() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x.idx.gz");
        let body: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, gz(&body)).expect("write");
        let cache = Cache::new(dir.path().join("cache"));
        let out = cache.plain_file(&p).expect("decompressed");
        assert!(out.starts_with(cache.dir()));
        assert_eq!(std::fs::read(&out).expect("read"), body);
        let modified = std::fs::metadata(&out).and_then(|m| m.modified()).expect("mtime");
        assert_eq!(cache.plain_file(&p).expect("cached"), out);
        assert_eq!(std::fs::metadata(&out).and_then(|m| m.modified()).expect("mtime"), modified, "reused");
    }

    #[test]
    fn corrupt_gzip_is_rejected_and_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x.idx.gz");
        let mut bytes = gz(&vec![7u8; 50_000]);
        let mid = bytes.len() / 2;
        bytes.truncate(mid);
        bytes.extend_from_slice(&[0, 0, 0, 0, 0x50, 0xc3, 0, 0]);
        std::fs::write(&p, bytes).expect("write");
        let cache = Cache::new(dir.path().join("cache"));
        let err = cache.plain_file(&p).expect_err("corrupt");
        assert!(err.to_string().contains("x.idx.gz") && err.to_string().contains("corrupt"), "{err}");
        let left: Vec<_> = std::fs::read_dir(cache.dir())
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|name| !name.ends_with(".lock"))
            .collect();
        assert!(left.is_empty(), "partial files left behind: {left:?}");
    }
}
