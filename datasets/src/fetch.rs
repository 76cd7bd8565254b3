//! `plflow fetch`: download a dataset's canonical archives or a model file, check their
//! SHA-256, and unpack them atomically into the data (or model) folder.
//!
//! Everything is staged in a hidden `.<name>.partial-<pid>` folder beside the target and
//! renamed into place only after every file has been downloaded, checked and unpacked, so an
//! interrupted or corrupted download leaves nothing that looks like a dataset or a model.

use crate::DatasetError;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// What to do with a downloaded file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unpack {
    /// Keep it as downloaded (gzip'd IDX files are read as they are).
    Keep,
    /// Extract the `.tar.gz` into the dataset folder, then delete it.
    TarGz,
}

/// One file of a dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// Public URL.
    pub url: String,
    /// Expected SHA-256, lower-case hex.
    pub sha256: String,
    /// What happens after the check.
    pub unpack: Unpack,
}

impl Artifact {
    fn file_name(&self) -> &str {
        self.url.rsplit('/').next().unwrap_or("download")
    }
}

/// What an entry is, which decides where it lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A dataset: its files land in the folder `<data dir>/<name>`.
    Dataset,
    /// A model: its one file lands as `<model dir>/<file name>`, the name pipelines give.
    Model,
}

/// A dataset or model that can be fetched: where it lands and its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Name on the command line (and a dataset's folder under the data directory).
    pub name: String,
    /// Dataset or model.
    pub kind: Kind,
    /// The files (a model has exactly one).
    pub artifacts: Vec<Artifact>,
}

impl Entry {
    /// Where the entry lands under `dir`.
    pub fn target(&self, dir: &Path) -> PathBuf {
        match (self.kind, self.artifacts.first()) {
            (Kind::Model, Some(a)) => dir.join(a.file_name()),
            _ => dir.join(&self.name),
        }
    }
}

/// The catalog entry whose model file is named `file` (for an error to name the command that
/// downloads a missing model).
pub fn model_named(file: &str) -> Option<Entry> {
    catalog()
        .into_iter()
        .find(|e| e.kind == Kind::Model && e.artifacts.first().is_some_and(|a| a.file_name() == file))
}

/// The datasets and models `plflow fetch` knows, with their canonical URLs and checksums (for
/// the datasets, the same values torchvision and TensorFlow Datasets check; for ResNet-18, the
/// ONNX Model Zoo's file, the paper's backbone).
pub fn catalog() -> Vec<Entry> {
    let mnist = |file: &str, sha: &str| Artifact {
        url: format!("https://ossci-datasets.s3.amazonaws.com/mnist/{file}"),
        sha256: sha.into(),
        unpack: Unpack::Keep,
    };
    vec![
        Entry {
            name: "mnist".into(),
            kind: Kind::Dataset,
            artifacts: vec![
                mnist(
                    "train-images-idx3-ubyte.gz",
                    "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                ),
                mnist(
                    "train-labels-idx1-ubyte.gz",
                    "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                ),
                mnist(
                    "t10k-images-idx3-ubyte.gz",
                    "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                ),
                mnist(
                    "t10k-labels-idx1-ubyte.gz",
                    "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
                ),
            ],
        },
        Entry {
            name: "cifar10".into(),
            kind: Kind::Dataset,
            artifacts: vec![Artifact {
                url: "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz".into(),
                sha256: "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd".into(),
                unpack: Unpack::TarGz,
            }],
        },
        Entry {
            name: "cifar100".into(),
            kind: Kind::Dataset,
            artifacts: vec![Artifact {
                url: "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz".into(),
                sha256: "58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec".into(),
                unpack: Unpack::TarGz,
            }],
        },
        // ImageNet ResNet-18 v2 (46,806,737 bytes); its 512-wide pooled features are the
        // tensor `resnetv22_flatten0_reshape0`.
        Entry {
            name: "resnet18".into(),
            kind: Kind::Model,
            artifacts: vec![Artifact {
                url: "https://github.com/onnx/models/raw/main/validated/vision/classification/resnet/model/resnet18-v2-7.onnx".into(),
                sha256: "3b4d048057854022232aa20bf68262e31718ab7119a17f920b8a2dc1433f824b".into(),
                unpack: Unpack::Keep,
            }],
        },
    ]
}

/// Download `entry` into [`Entry::target`] under `dir`. With `mirror`, files are fetched from
/// `<mirror>/<file name>` instead of their canonical URLs. `say` receives progress lines.
pub fn fetch(
    entry: &Entry,
    dir: &Path,
    mirror: Option<&str>,
    say: &mut dyn FnMut(String),
) -> Result<PathBuf, DatasetError> {
    let target = entry.target(dir);
    if target.exists() {
        return Err(DatasetError::format(
            &target,
            format!("already exists; delete it first to download {} again", entry.name),
        ));
    }
    std::fs::create_dir_all(dir).map_err(DatasetError::io(dir, "cannot create the folder"))?;
    let staging = dir.join(format!(".{}.partial-{}", entry.name, std::process::id()));
    let result = (|| {
        std::fs::create_dir_all(&staging).map_err(DatasetError::io(&staging, "cannot create"))?;
        for a in &entry.artifacts {
            let url = match mirror {
                Some(m) => format!("{}/{}", m.trim_end_matches('/'), a.file_name()),
                None => a.url.clone(),
            };
            let file = staging.join(a.file_name());
            say(format!("downloading {url}"));
            let (bytes, digest) = download(&url, &file)?;
            if digest != a.sha256 {
                return Err(DatasetError::format(
                    &file,
                    format!(
                        "checksum mismatch for {url}: SHA-256 {digest}, expected {} ({bytes} bytes). The \
                         download is corrupt or the file changed upstream; nothing was kept",
                        a.sha256
                    ),
                ));
            }
            say(format!("  {bytes} bytes, SHA-256 verified"));
            if a.unpack == Unpack::TarGz {
                let f = std::fs::File::open(&file).map_err(DatasetError::io(&file, "cannot open"))?;
                let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(f)));
                archive.unpack(&staging).map_err(|e| {
                    DatasetError::format(&file, format!("cannot unpack ({e}); the archive is corrupt"))
                })?;
                std::fs::remove_file(&file).map_err(DatasetError::io(&file, "cannot remove"))?;
                say(format!("  unpacked {}", a.file_name()));
            }
        }
        let done = match entry.kind {
            Kind::Dataset => staging.clone(),
            Kind::Model => staging.join(entry.artifacts.first().map_or("download", Artifact::file_name)),
        };
        std::fs::rename(&done, &target).map_err(DatasetError::io(&target, "cannot move into place"))?;
        if entry.kind == Kind::Model {
            std::fs::remove_dir(&staging).map_err(DatasetError::io(&staging, "cannot remove"))?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result.map(|()| target)
}

/// Stream `url` into `file`, hashing on the way; returns the size and hex SHA-256.
fn download(url: &str, file: &Path) -> Result<(u64, String), DatasetError> {
    let response = ureq::get(url)
        .call()
        .map_err(|e| DatasetError::Download { url: url.into(), message: e.to_string() })?;
    let mut body = response.into_body().into_reader();
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(file).map_err(DatasetError::io(file, "cannot create"))?,
    );
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = body
            .read(&mut buf)
            .map_err(|e| DatasetError::Download { url: url.into(), message: format!("interrupted: {e}") })?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(DatasetError::io(file, "cannot write"))?;
        total += n as u64;
    }
    out.flush().map_err(DatasetError::io(file, "cannot write"))?;
    let digest = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok((total, digest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::BufRead;
    use std::net::TcpListener;

    /// Serve `files` (path -> bytes) over HTTP/1.1 on 127.0.0.1 until the process ends.
    pub(crate) fn serve(files: HashMap<String, Vec<u8>>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = std::io::BufReader::new(stream);
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/').to_owned();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).map_or(true, |n| n == 0) || h == "\r\n" {
                        break;
                    }
                }
                let mut stream = reader.into_inner();
                let _ = match files.get(&path) {
                    Some(body) => stream
                        .write_all(
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                                body.len()
                            )
                            .as_bytes(),
                        )
                        .and_then(|()| stream.write_all(body)),
                    None => stream.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    ),
                };
            }
        });
        format!("http://{addr}")
    }

    fn sha(bytes: &[u8]) -> String {
        Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
    }

    fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
        for (name, bytes) in files {
            let mut h = tar::Header::new_ustar();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *bytes).expect("append");
        }
        b.into_inner().expect("tar").finish().expect("gz")
    }

    #[test]
    fn downloads_are_checked_unpacked_and_moved_into_place() {
        let archive = tar_gz(&[("inner/a.bin", b"alpha"), ("inner/b.txt", b"beta")]);
        let plain = b"plain bytes".to_vec();
        let base = serve(HashMap::from([
            ("d.tar.gz".to_owned(), archive.clone()),
            ("p.gz".to_owned(), plain.clone()),
        ]));
        let entry = Entry {
            name: "toy".into(),
            kind: Kind::Dataset,
            artifacts: vec![
                Artifact { url: format!("{base}/d.tar.gz"), sha256: sha(&archive), unpack: Unpack::TarGz },
                Artifact { url: format!("{base}/p.gz"), sha256: sha(&plain), unpack: Unpack::Keep },
            ],
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let out = fetch(&entry, dir.path(), None, &mut |_| {}).expect("fetch");
        assert_eq!(std::fs::read(out.join("inner/a.bin")).expect("a"), b"alpha");
        assert_eq!(std::fs::read(out.join("p.gz")).expect("p"), plain);
        assert!(!out.join("d.tar.gz").exists(), "archives are removed once unpacked");
        assert!(
            fetch(&entry, dir.path(), None, &mut |_| {}).is_err(),
            "an existing folder is not overwritten"
        );
    }

    #[test]
    fn a_corrupted_download_is_rejected_and_leaves_nothing() {
        let good = tar_gz(&[("x", b"x")]);
        let mut bad = good.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0xff;
        let base = serve(HashMap::from([("d.tar.gz".to_owned(), bad)]));
        let entry = Entry {
            name: "toy".into(),
            kind: Kind::Dataset,
            artifacts: vec![Artifact {
                url: "https://example.invalid/d.tar.gz".into(),
                sha256: sha(&good),
                unpack: Unpack::TarGz,
            }],
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let err = fetch(&entry, dir.path(), Some(&base), &mut |_| {}).expect_err("corrupt");
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 0, "nothing left behind");
        let missing = Entry {
            name: "gone".into(),
            kind: Kind::Dataset,
            artifacts: vec![Artifact {
                url: format!("{base}/nope.gz"),
                sha256: sha(b""),
                unpack: Unpack::Keep,
            }],
        };
        let err = fetch(&missing, dir.path(), None, &mut |_| {}).expect_err("404");
        assert!(err.to_string().contains("nope.gz"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 0);
    }

    #[test]
    fn a_model_lands_as_one_file_in_the_model_folder() {
        let bytes = b"onnx bytes".to_vec();
        let base = serve(HashMap::from([("m-v2.onnx".to_owned(), bytes.clone())]));
        let entry = |sha: String| Entry {
            name: "m".into(),
            kind: Kind::Model,
            artifacts: vec![Artifact { url: format!("{base}/m-v2.onnx"), sha256: sha, unpack: Unpack::Keep }],
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let models = dir.path().join("models");
        let err = fetch(&entry(sha(b"other")), &models, None, &mut |_| {}).expect_err("mismatch");
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
        assert_eq!(std::fs::read_dir(&models).expect("ls").count(), 0, "nothing left behind");
        let out = fetch(&entry(sha(&bytes)), &models, None, &mut |_| {}).expect("fetch");
        assert_eq!(out, models.join("m-v2.onnx"));
        assert_eq!(std::fs::read(&out).expect("read"), bytes);
        assert_eq!(std::fs::read_dir(&models).expect("ls").count(), 1, "only the model, no staging folder");
        let err = fetch(&entry(sha(&bytes)), &models, None, &mut |_| {}).expect_err("exists");
        assert!(err.to_string().contains("already exists"), "{err}");
    }

    #[test]
    fn the_catalog_names_resnet18_by_its_file() {
        let e = model_named("resnet18-v2-7.onnx").expect("in the catalog");
        assert_eq!(e.name, "resnet18");
        assert_eq!(e.target(Path::new("m")), Path::new("m/resnet18-v2-7.onnx"));
        assert!(model_named("efficientnet-lite0-features-96.onnx").is_none());
    }
}
