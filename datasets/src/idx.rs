//! The IDX format (MNIST): a 4-byte magic (`0, 0, type, ndims`), `ndims` big-endian `u32`
//! sizes, then the values. Only unsigned bytes (type `0x08`) occur in MNIST and are accepted.
//! The file is memory-mapped; the header and the exact file size are checked on open, so a
//! truncated download is caught before training starts.

use crate::DatasetError;
use crate::mapped::MappedFile;
use std::path::Path;

/// A checked, memory-mapped IDX file of unsigned bytes.
#[derive(Debug)]
pub struct IdxFile {
    map: MappedFile,
    dims: Vec<usize>,
    header: usize,
}

impl IdxFile {
    /// Map `path` and check that it holds an `ndims`-dimensional array of bytes.
    pub fn open(path: &Path, ndims: usize) -> Result<Self, DatasetError> {
        let map = MappedFile::open(path)?;
        let (dims, header) = parse_header(map.bytes(), ndims).map_err(|p| DatasetError::format(path, p))?;
        Ok(Self { map, dims, header })
    }

    /// Sizes of the dimensions, outermost first (e.g. `[60000, 28, 28]`).
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    /// The values after the header.
    pub fn data(&self) -> &[u8] {
        &self.map.bytes()[self.header..]
    }

    /// Copy `bytes` (a sub-slice of [`IdxFile::data`]) into `out` without mapping its pages.
    pub fn copy_out(&self, bytes: &[u8], out: &mut [u8]) {
        self.map.copy_out(bytes, out);
    }

    /// Drop the resident pages of `bytes`, a sub-slice of [`IdxFile::data`].
    pub fn release(&self, bytes: &[u8]) {
        self.map.release(bytes);
    }

    /// The file this was mapped from.
    pub fn path(&self) -> &Path {
        self.map.path()
    }
}

/// Check the header of an IDX byte array and return its dimensions and header length.
pub fn parse_header(bytes: &[u8], ndims: usize) -> Result<(Vec<usize>, usize), String> {
    if bytes.len() < 4 {
        return Err(format!("file has {} bytes, too short for an IDX header (truncated?)", bytes.len()));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(format!(
            "not an IDX file: magic starts {:02x} {:02x}, expected 00 00 (is it still gzip-compressed?)",
            bytes[0], bytes[1]
        ));
    }
    if bytes[2] != 0x08 {
        return Err(format!(
            "IDX value type 0x{:02x} is not supported (expected 0x08, unsigned bytes)",
            bytes[2]
        ));
    }
    if bytes[3] as usize != ndims {
        return Err(format!("IDX file has {} dimensions, expected {ndims}", bytes[3]));
    }
    let header = 4 + 4 * ndims;
    if bytes.len() < header {
        return Err(format!("file has {} bytes, the header alone needs {header} (truncated)", bytes.len()));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let body: usize = dims.iter().product();
    let want = header + body;
    if bytes.len() < want {
        return Err(format!(
            "file has {} bytes but its header {dims:?} needs {want}: truncated, download it again",
            bytes.len()
        ));
    }
    if bytes.len() > want {
        return Err(format!(
            "file has {} bytes but its header {dims:?} accounts for {want}: trailing data",
            bytes.len()
        ));
    }
    Ok((dims, header))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(dims: &[u32], body: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, 0x08, dims.len() as u8];
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn parses_hand_made_bytes() {
        let bytes = idx(&[2, 2, 3], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        let (dims, header) = parse_header(&bytes, 3).expect("valid");
        assert_eq!(dims, vec![2, 2, 3]);
        assert_eq!(header, 16);
        assert_eq!(bytes[header..][11], 12);
    }

    #[test]
    fn rejects_truncated_and_wrong_files() {
        let full = idx(&[3], &[1, 2, 3]);
        let err = parse_header(&full[..6], 1).expect_err("truncated header");
        assert!(err.contains("truncated"), "{err}");
        let err = parse_header(&full[..full.len() - 1], 1).expect_err("truncated body");
        assert!(err.contains("truncated"), "{err}");
        let err = parse_header(&[0x1f, 0x8b, 8, 0], 1).expect_err("gzip");
        assert!(err.contains("gzip"), "{err}");
        let err = parse_header(&full, 3).expect_err("wrong rank");
        assert!(err.contains("1 dimensions, expected 3"), "{err}");
        let mut long = full.clone();
        long.push(0);
        assert!(parse_header(&long, 1).expect_err("trailing").contains("trailing"));
    }

    #[test]
    fn open_names_the_file_in_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("labels.idx");
        std::fs::write(&path, idx(&[4], &[1, 2])).expect("write");
        let err = IdxFile::open(&path, 1).expect_err("truncated");
        assert!(err.to_string().contains("labels.idx"), "{err}");
    }
}
