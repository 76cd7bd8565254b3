//! Read-only memory maps whose consumed pages can be handed back to the kernel, so that
//! streaming a file larger than memory does not grow the process's resident set.
//!
//! Random rows are copied out with positioned reads ([`MappedFile::copy_out`]) rather than by
//! touching the map: on current kernels a fault on a file mapping maps a whole page-cache folio
//! (up to hundreds of KiB) around the row, so a shuffled batch of 512 rows of 3 KiB mapped
//! ~128 MB at once (measured on CIFAR-10). A positioned read maps nothing; the file's pages
//! stay in the page cache for the next epoch either way.

use crate::DatasetError;
use memmap2::{Mmap, UncheckedAdvice};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A file mapped read-only. Cheap to clone (the map is shared).
#[derive(Debug, Clone)]
pub struct MappedFile {
    path: PathBuf,
    file: Arc<File>,
    map: Arc<Mmap>,
}

impl MappedFile {
    /// Map `path` read-only.
    pub fn open(path: &Path) -> Result<Self, DatasetError> {
        let file = File::open(path).map_err(DatasetError::io(path, "cannot open"))?;
        // SAFETY: the map is read-only and plflow never writes to files it maps. Another
        // process truncating the file while it is mapped would fault, as with any mmap reader.
        let map = unsafe { Mmap::map(&file) }.map_err(DatasetError::io(path, "cannot memory-map"))?;
        Ok(Self { path: path.to_path_buf(), file: Arc::new(file), map: Arc::new(map) })
    }

    /// The mapped bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// The shared map, for zero-copy buffers that must keep it alive.
    pub fn shared(&self) -> Arc<Mmap> {
        Arc::clone(&self.map)
    }

    /// The file this was mapped from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Copy `bytes` into `out`: when `bytes` lies in this map, with a positioned read of the
    /// file, without faulting the map's pages in; otherwise (arrow copies a buffer the file
    /// stores unaligned), or if the read fails, with a plain copy.
    ///
    /// # Panics
    /// If `out` has another length than `bytes` (a caller bug).
    pub fn copy_out(&self, bytes: &[u8], out: &mut [u8]) {
        use std::os::unix::fs::FileExt;
        assert_eq!(bytes.len(), out.len(), "copy_out lengths");
        let base = self.map.as_ptr() as usize;
        let offset =
            (bytes.as_ptr() as usize).checked_sub(base).filter(|o| o + bytes.len() <= self.map.len());
        if offset.is_none_or(|o| self.file.read_exact_at(out, o as u64).is_err()) {
            out.copy_from_slice(bytes);
        }
    }

    /// Drop the resident pages that hold `bytes` (a sub-slice of this map, or of a buffer
    /// pointing into it). The pages stay in the page cache and fault back in on the next
    /// read, so this is only a hint about memory, never about contents. Slices outside the
    /// map are ignored.
    pub fn release(&self, bytes: &[u8]) {
        let base = self.map.as_ptr() as usize;
        let start = bytes.as_ptr() as usize;
        if bytes.is_empty() || start < base || start + bytes.len() > base + self.map.len() {
            return;
        }
        let page = page_size();
        let from = (start - base) / page * page;
        let to = ((start - base + bytes.len()).div_ceil(page) * page).min(self.map.len());
        // SAFETY: the map is a read-only shared file mapping. MADV_DONTNEED discards only the
        // process's page-table entries; later reads fault the unchanged file contents back in
        // (from the page cache), so no reference into the map observes different bytes.
        let _ = unsafe { self.map.unchecked_advise_range(UncheckedAdvice::DontNeed, from, to - from) };
    }
}

/// The kernel's page size (4 KiB on the machines plflow targets; asked once).
pub fn page_size() -> usize {
    static PAGE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        std::fs::read_to_string("/proc/self/smaps")
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("KernelPageSize:")
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
                })
            })
            .map_or(4096, |kb| kb * 1024)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_keeps_the_contents() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        let body: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(&p, &body).expect("write");
        let m = MappedFile::open(&p).expect("map");
        assert_eq!(m.bytes(), &body[..]);
        m.release(&m.bytes()[5000..20_000]);
        m.release(&body[..10]); // not in the map: ignored
        let mut out = vec![0u8; 300];
        m.copy_out(&m.bytes()[4000..4300], &mut out);
        assert_eq!(out, &body[4000..4300]);
        // Bytes outside the map (a copy arrow made of an unaligned buffer) are copied as they are.
        m.copy_out(&body[10..310], &mut out);
        assert_eq!(out, &body[10..310]);
        assert_eq!(m.bytes(), &body[..], "released pages read back the same bytes");
    }
}
