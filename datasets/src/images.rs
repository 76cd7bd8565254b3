//! Image folders: `root/<split>/<class>/*.{jpg,jpeg,png}` for the splits `train` and `test`,
//! read from a directory or from the same layout inside a `.tar` / `.tar.gz` archive (without
//! unpacking it). Classes are the sorted class folder names of `train`.
//!
//! Decoding is the slow part, so it happens once: images are decoded in parallel (rayon),
//! checked or resized to the requested size, and written as `uint8` planes (C, H, W) to an
//! Arrow IPC table per split in the cache. Later epochs and later runs map those tables. The
//! cache key covers the source (archive path, size and mtime, or every file's name, size and
//! mtime of a folder) and the options, so changed images or settings are decoded again.

use crate::cache::Cache;
use crate::format::TableFormat;
use crate::format::{Columns, META_FINGERPRINT};
use crate::location::DataPath;
use crate::lock::EntryLock;
use crate::sink::{Element, TableSchema, TableWriter};
use crate::table::TableFile;
use crate::{Dataset, DatasetError, Source};
use rayon::prelude::*;
use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Images decoded per parallel chunk (bounds the memory of encoded and decoded bytes).
const CHUNK: usize = 2048;

/// The largest width or height decoded (then resized): larger ones are almost surely a
/// corrupt or hostile header. The image crate's 512 MiB cap on one decoded image applies
/// too.
pub const MAX_IMAGE_SIDE: u32 = 16384;
/// Bumped when the cached layout changes.
const CACHE_VERSION: u32 = 1;

/// How images become examples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ImageOptions {
    /// Height in pixels of every example.
    pub height: u32,
    /// Width in pixels.
    pub width: u32,
    /// 3 for RGB, 1 for grey.
    pub channels: u8,
    /// Resize images of another size (bilinear); when `false` they are an error.
    pub resize: bool,
}

/// What opening an image dataset did.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeReport {
    /// Images decoded now (0 when the cache was used).
    pub decoded: usize,
    /// Seconds spent decoding and writing (or mapping the cache).
    pub seconds: f64,
    /// The cached train table.
    pub cache_file: PathBuf,
}

/// Where the images are.
#[derive(Debug, Clone)]
enum Container {
    Folder(PathBuf),
    Archive(PathBuf),
}

pub(crate) fn is_archive(p: &Path) -> bool {
    let name = p.file_name().map(|n| n.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    name.ends_with(".tar") || name.ends_with(".tar.gz") || name.ends_with(".tgz")
}

pub(crate) fn is_image(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    [".jpg", ".jpeg", ".png"].iter().any(|e| lower.ends_with(e))
}

fn locate(dir: &DataPath) -> Result<Container, DatasetError> {
    let p = &dir.resolved;
    if p.is_file() && is_archive(p) {
        return Ok(Container::Archive(p.clone()));
    }
    if p.join("train").is_dir() {
        return Ok(Container::Folder(p.clone()));
    }
    if p.is_dir() {
        let mut archives: Vec<PathBuf> = std::fs::read_dir(p)
            .map_err(DatasetError::io(p, "cannot list"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|q| q.is_file() && is_archive(q))
            .collect();
        archives.sort();
        if archives.len() == 1 {
            return Ok(Container::Archive(archives.remove(0)));
        }
        if archives.len() > 1 {
            return Err(DatasetError::format(
                p,
                format!("holds {} archives; name the one to use in the pipeline's `path`", archives.len()),
            ));
        }
    }
    Err(DatasetError::Missing {
        what: "image folder".into(),
        tried: vec![p.join("train"), p.join("*.tar.gz")],
        hint: dir
            .how_to_provide("a folder with train/<class>/*.jpg and test/<class>/*.jpg, or a .tar(.gz) of it"),
    })
}

/// Split and class of an archive or folder member path like `train/cat/0001.jpg` (leading
/// folders are allowed). `None` for members outside the layout.
fn member(path: &str) -> Option<(&'static str, String)> {
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty() && *s != ".").collect();
    if parts.len() < 3 {
        return None;
    }
    let (split, class, file) = (parts[parts.len() - 3], parts[parts.len() - 2], parts[parts.len() - 1]);
    if file.starts_with('.') || !is_image(file) {
        return None;
    }
    let split = match split {
        "train" => "train",
        "test" => "test",
        _ => return None,
    };
    Some((split, class.to_owned()))
}

/// Open (decoding on first use) the image dataset at `dir`.
pub fn open(
    dir: &DataPath,
    opts: &ImageOptions,
    cache: &Cache,
) -> Result<(Dataset, DecodeReport), DatasetError> {
    let started = Instant::now();
    let container = locate(dir)?;
    let key = fingerprint(&container, opts)?;
    let stem = cache.dir().join(format!("images-{key:016x}"));
    let (train_path, test_path) = (stem.with_extension("train.arrow"), stem.with_extension("test.arrow"));
    let mut decoded = 0;
    let done = || train_path.is_file() && test_path.is_file();
    if !done() {
        let lock = EntryLock::acquire(&stem)?;
        if !done() {
            lock.remove_stale(&train_path)?;
            lock.remove_stale(&test_path)?;
            decoded = decode_all(&container, opts, key, &train_path, &test_path)?;
        }
    }
    let columns = Columns::default();
    let mut train = TableFile::open(&train_path, &columns)?;
    let mut test = TableFile::open(&test_path, &columns)?;
    let names = train.class_names().unwrap_or_else(|| Dataset::numbered_classes(train.classes()));
    train.set_classes(names.len());
    test.set_classes(names.len());
    let report = DecodeReport { decoded, seconds: started.elapsed().as_secs_f64(), cache_file: train_path };
    Ok((Dataset { train: Arc::new(train), test: Arc::new(test), class_names: names }, report))
}

fn fingerprint(container: &Container, opts: &ImageOptions) -> Result<u64, DatasetError> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    CACHE_VERSION.hash(&mut h);
    opts.hash(&mut h);
    let stamp = |p: &Path, h: &mut std::collections::hash_map::DefaultHasher| -> Result<(), DatasetError> {
        let m = std::fs::metadata(p).map_err(DatasetError::io(p, "cannot read"))?;
        (m.len(), m.modified().ok()).hash(h);
        Ok(())
    };
    match container {
        Container::Archive(p) => {
            std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()).hash(&mut h);
            stamp(p, &mut h)?;
        }
        Container::Folder(root) => {
            std::fs::canonicalize(root).unwrap_or_else(|_| root.clone()).hash(&mut h);
            for (path, ..) in list_folder(root)? {
                path.hash(&mut h);
                stamp(&path, &mut h)?;
            }
        }
    }
    Ok(h.finish())
}

/// Image files of a folder as (path, split, class), sorted.
fn list_folder(root: &Path) -> Result<Vec<(PathBuf, &'static str, String)>, DatasetError> {
    let mut out = Vec::new();
    for split in ["train", "test"] {
        let sdir = root.join(split);
        if !sdir.is_dir() {
            continue;
        }
        let mut classes: Vec<PathBuf> = std::fs::read_dir(&sdir)
            .map_err(DatasetError::io(&sdir, "cannot list"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        classes.sort();
        for cdir in classes {
            let class = cdir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let mut files: Vec<PathBuf> = std::fs::read_dir(&cdir)
                .map_err(DatasetError::io(&cdir, "cannot list"))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name().is_some_and(|n| {
                        !n.to_string_lossy().starts_with('.') && is_image(&n.to_string_lossy())
                    })
                })
                .collect();
            files.sort();
            out.extend(files.into_iter().map(|f| (f, split, class.clone())));
        }
    }
    Ok(out)
}

/// An image waiting to be decoded.
struct Pending {
    name: String,
    split: &'static str,
    label: u32,
    bytes: Vec<u8>,
}

/// Decode every image into the two cache tables; returns the number of images.
fn decode_all(
    container: &Container,
    opts: &ImageOptions,
    key: u64,
    train_path: &Path,
    test_path: &Path,
) -> Result<usize, DatasetError> {
    let source_path = match container {
        Container::Folder(p) | Container::Archive(p) => p.clone(),
    };
    // The classes first: folder names of the train split, sorted.
    let members: Vec<(&'static str, String)> = match container {
        Container::Folder(root) => list_folder(root)?.into_iter().map(|(_, s, c)| (s, c)).collect(),
        Container::Archive(p) => {
            let mut v = Vec::new();
            for_each_member(
                p,
                |_| false,
                |name, _| {
                    if let Some(m) = member(name) {
                        v.push(m);
                    }
                    Ok(())
                },
            )?;
            v
        }
    };
    let classes: Vec<String> = members
        .iter()
        .filter(|(s, _)| *s == "train")
        .map(|(_, c)| c.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let counts = |split| members.iter().filter(|(s, _)| *s == split).count();
    if classes.is_empty() || counts("test") == 0 {
        return Err(DatasetError::format(
            &source_path,
            format!(
                "no images in the train/<class>/ and test/<class>/ layout ({} train, {} test found)",
                counts("train"),
                counts("test")
            ),
        ));
    }
    let label_of = |name: &str, class: &str| -> Result<u32, DatasetError> {
        classes.binary_search_by(|c| c.as_str().cmp(class)).map(|i| i as u32).map_err(|_| {
            DatasetError::format(&source_path, format!("{name}: class `{class}` has no folder in train/"))
        })
    };

    let schema = TableSchema {
        shape: vec![opts.channels as usize, opts.height as usize, opts.width as usize],
        element: Element::U8,
        class_names: classes.clone(),
        metadata: [(META_FINGERPRINT.to_owned(), format!("{key:016x}"))].into_iter().collect(),
        columns: Columns::default(),
    };
    let mut train = TableWriter::create(train_path, TableFormat::ArrowIpc, &schema)?;
    let mut test = TableWriter::create(test_path, TableFormat::ArrowIpc, &schema)?;
    let mut pending: Vec<Pending> = Vec::with_capacity(CHUNK);
    let mut total = 0;
    let mut flush = |pending: &mut Vec<Pending>, train: &mut TableWriter, test: &mut TableWriter| {
        let decoded: Vec<Result<Vec<u8>, String>> = pending
            .par_iter()
            .map(|p| decode(&p.bytes, opts).map_err(|e| format!("{}: {e}", p.name)))
            .collect();
        for split in ["train", "test"] {
            let mut pixels = Vec::new();
            let mut labels = Vec::new();
            for (p, d) in pending.iter().zip(&decoded) {
                if p.split == split {
                    pixels.extend_from_slice(
                        d.as_ref().map_err(|e| DatasetError::format(&source_path, e.clone()))?,
                    );
                    labels.push(p.label);
                }
            }
            let w = if split == "train" { &mut *train } else { &mut *test };
            w.write_u8(&pixels, &labels)?;
        }
        total += pending.len();
        pending.clear();
        Ok::<(), DatasetError>(())
    };
    match container {
        Container::Folder(root) => {
            for (path, split, class) in list_folder(root)? {
                let name = path.display().to_string();
                let label = label_of(&name, &class)?;
                let bytes = std::fs::read(&path).map_err(DatasetError::io(&path, "cannot read"))?;
                pending.push(Pending { name, split, label, bytes });
                if pending.len() == CHUNK {
                    flush(&mut pending, &mut train, &mut test)?;
                }
            }
        }
        Container::Archive(p) => {
            for_each_member(
                p,
                |m| member(m).is_some(),
                |name, bytes| {
                    if let Some((split, class)) = member(name) {
                        let label = label_of(&format!("{}:{name}", p.display()), &class)?;
                        let name = format!("{}:{name}", p.display());
                        pending.push(Pending { name, split, label, bytes: bytes.unwrap_or_default() });
                        if pending.len() == CHUNK {
                            flush(&mut pending, &mut train, &mut test)?;
                        }
                    }
                    Ok(())
                },
            )?;
        }
    }
    flush(&mut pending, &mut train, &mut test)?;
    train.finish()?;
    test.finish()?;
    Ok(total)
}

/// Visit every regular file of a tar or tar.gz archive in order, with its bytes when `read`
/// says its name is wanted.
pub(crate) fn for_each_member(
    path: &Path,
    read: impl Fn(&str) -> bool,
    mut f: impl FnMut(&str, Option<Vec<u8>>) -> Result<(), DatasetError>,
) -> Result<(), DatasetError> {
    let file = std::fs::File::open(path).map_err(DatasetError::io(path, "cannot open"))?;
    let name = path.to_string_lossy().to_ascii_lowercase();
    let reader: Box<dyn Read> = if name.ends_with(".gz") || name.ends_with(".tgz") {
        Box::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(file)))
    } else {
        Box::new(std::io::BufReader::new(file))
    };
    let corrupt = |e: std::io::Error| {
        DatasetError::format(path, format!("archive is corrupt or truncated ({e}); download it again"))
    };
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let member = entry.path().map_err(corrupt)?.to_string_lossy().into_owned();
        let bytes = if read(&member) {
            let mut b = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut b).map_err(corrupt)?;
            Some(b)
        } else {
            None
        };
        f(&member, bytes)?;
    }
    Ok(())
}

/// Decode one image into `channels` planes of `height x width` bytes.
pub fn decode(bytes: &[u8], opts: &ImageOptions) -> Result<Vec<u8>, String> {
    // The header first: a wrong size is refused, and a huge one (a few bytes can declare
    // 35000x2000 pixels) is refused, before any pixel is decoded or allocated.
    let reader = || {
        image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| format!("cannot read the image ({e})"))
    };
    let (width, height) =
        reader()?.into_dimensions().map_err(|e| format!("cannot decode the image ({e})"))?;
    if (width, height) != (opts.width, opts.height) && !opts.resize {
        return Err(format!(
            "image is {width}x{height}, the pipeline asks for {}x{} (set `resize: true` to scale it)",
            opts.width, opts.height
        ));
    }
    if width.max(height) > MAX_IMAGE_SIDE {
        return Err(format!(
            "image declares {width}x{height} pixels, more than the {MAX_IMAGE_SIDE} per side plflow decodes; shrink it first"
        ));
    }
    let mut reader = reader()?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| format!("cannot decode the image ({e})"))?;
    let img = if (img.width(), img.height()) == (opts.width, opts.height) {
        img
    } else {
        img.resize_exact(opts.width, opts.height, image::imageops::FilterType::Triangle)
    };
    let plane = (opts.width * opts.height) as usize;
    Ok(match opts.channels {
        1 => img.to_luma8().into_raw(),
        _ => {
            let rgb = img.to_rgb8();
            let mut out = vec![0u8; 3 * plane];
            for (i, px) in rgb.pixels().enumerate() {
                for c in 0..3 {
                    out[c * plane + i] = px[c];
                }
            }
            out
        }
    })
}

/// Counts per split of an image source without decoding (for `plflow inspect`).
pub fn survey(dir: &DataPath) -> Result<Vec<(&'static str, String, usize)>, DatasetError> {
    let members: Vec<(&'static str, String)> = match locate(dir)? {
        Container::Folder(root) => list_folder(&root)?.into_iter().map(|(_, s, c)| (s, c)).collect(),
        Container::Archive(p) => {
            let mut v = Vec::new();
            for_each_member(
                &p,
                |_| false,
                |name, _| {
                    v.extend(member(name));
                    Ok(())
                },
            )?;
            v
        }
    };
    let mut counts: std::collections::BTreeMap<(&'static str, String), usize> = Default::default();
    for m in members {
        *counts.entry(m).or_default() += 1;
    }
    Ok(counts.into_iter().map(|((s, c), n)| (s, c, n)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTS: ImageOptions = ImageOptions { height: 2, width: 3, channels: 3, resize: false };

    /// A 3x2 RGB PNG whose pixel (x, y) is `(seed + x, 10 * y, 200)`.
    fn png(seed: u8, w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([seed + x as u8, 10 * y as u8, 200]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).expect("encode");
        out.into_inner()
    }

    fn planes(seed: u8) -> Vec<f32> {
        let mut v = Vec::new();
        for c in 0..3 {
            for y in 0..2u8 {
                for x in 0..3u8 {
                    v.push(f32::from([seed + x, 10 * y, 200][c]) / 255.0);
                }
            }
        }
        v
    }

    /// (member path, bytes) of a small dataset: classes `cat`, `dog`; 3 train and 2 test images.
    fn members() -> Vec<(String, Vec<u8>)> {
        vec![
            ("train/dog/b.png".into(), png(40, 3, 2)),
            ("train/cat/a.png".into(), png(10, 3, 2)),
            ("train/cat/c.png".into(), png(20, 3, 2)),
            ("test/dog/d.png".into(), png(50, 3, 2)),
            ("test/cat/e.png".into(), png(60, 3, 2)),
            ("README.txt".into(), b"not an image".to_vec()),
        ]
    }

    fn folder(root: &Path, files: &[(String, Vec<u8>)]) {
        for (name, bytes) in files {
            let p = root.join(name);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, bytes).expect("write");
        }
    }

    fn tar_gz(path: &Path, files: &[(String, Vec<u8>)]) {
        let gz = flate2::write::GzEncoder::new(
            std::fs::File::create(path).expect("create"),
            flate2::Compression::fast(),
        );
        let mut b = tar::Builder::new(gz);
        for (name, bytes) in files {
            let mut h = tar::Header::new_ustar();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, &bytes[..]).expect("append");
        }
        b.into_inner().expect("tar").finish().expect("gz");
    }

    fn check(d: &Dataset) {
        assert_eq!(d.class_names, vec!["cat", "dog"]);
        assert_eq!((d.train.len(), d.test.len(), d.train.example_shape()), (3, 2, &[3usize, 2, 3][..]));
        let mut got: Vec<(u32, Vec<f32>)> = (0..3)
            .map(|i| {
                let (mut x, mut y) = (vec![0.0; 18], vec![0]);
                d.train.read_into(&[i], &mut x, &mut y);
                (y[0], x)
            })
            .collect();
        got.sort_by(|a, b| a.1[0].total_cmp(&b.1[0]));
        assert_eq!(got, vec![(0, planes(10)), (0, planes(20)), (1, planes(40))]);
    }

    #[test]
    fn folders_and_archives_decode_to_the_same_exact_pixels_and_are_cached() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = Cache::new(dir.path().join("cache"));
        folder(&dir.path().join("f"), &members());
        let (d, first) = open(&DataPath::resolve(&dir.path().join("f")), &OPTS, &cache).expect("folder");
        check(&d);
        assert_eq!(first.decoded, 5);
        let (_, again) = open(&DataPath::resolve(&dir.path().join("f")), &OPTS, &cache).expect("cached");
        assert_eq!(again.decoded, 0, "second open maps the cache");

        std::fs::create_dir(dir.path().join("a")).expect("mkdir");
        tar_gz(&dir.path().join("a/imgs.tar.gz"), &members());
        let (d, first) = open(&DataPath::resolve(&dir.path().join("a")), &OPTS, &cache).expect("archive");
        check(&d);
        assert_eq!(first.decoded, 5);
    }

    /// A 948-byte JPEG (found by the image_decode fuzzer) whose header declares 2056x35152
    /// pixels: it took 13 s and 217 MB to decode before being resized. Refused from its
    /// header now, whether or not the pipeline resizes.
    #[test]
    fn huge_declared_sizes_are_refused_before_decoding() {
        let bytes = include_bytes!("../tests/data/huge-header.jpg");
        let err = decode(bytes, &ImageOptions { resize: true, ..OPTS }).expect_err("huge");
        assert!(err.contains("2056x35152") && err.contains("16384 per side"), "{err}");
        let err = decode(bytes, &OPTS).expect_err("wrong size");
        assert!(err.contains("image is 2056x35152, the pipeline asks for 3x2"), "{err}");
    }

    #[test]
    fn wrong_sizes_and_broken_images_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = Cache::new(dir.path().join("cache"));
        let mut files = members();
        files.push(("train/cat/big.png".into(), png(1, 4, 4)));
        folder(&dir.path().join("f"), &files);
        let err = open(&DataPath::resolve(&dir.path().join("f")), &OPTS, &cache).expect_err("size");
        assert!(err.to_string().contains("big.png: image is 4x4"), "{err}");
        let resized = ImageOptions { resize: true, ..OPTS };
        let (d, _) = open(&DataPath::resolve(&dir.path().join("f")), &resized, &cache).expect("resize");
        assert_eq!(d.train.len(), 4);

        let mut files = members();
        files.push(("test/dog/broken.jpg".into(), b"\xff\xd8\xff garbage".to_vec()));
        tar_gz(&dir.path().join("b.tar.gz"), &files);
        let err = open(&DataPath::resolve(&dir.path().join("b.tar.gz")), &OPTS, &cache).expect_err("broken");
        assert!(err.to_string().contains("b.tar.gz:test/dog/broken.jpg: cannot decode"), "{err}");
        let left: Vec<_> = std::fs::read_dir(cache.dir())
            .expect("ls")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("partial"))
            .collect();
        assert!(left.is_empty(), "no partial cache files: {left:?}");
    }

    #[test]
    fn truncated_archives_are_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("t.tar.gz");
        tar_gz(&p, &members());
        let bytes = std::fs::read(&p).expect("read");
        std::fs::write(&p, &bytes[..bytes.len() / 2]).expect("write");
        let err =
            open(&DataPath::resolve(&p), &OPTS, &Cache::new(dir.path().join("c"))).expect_err("truncated");
        assert!(err.to_string().contains("t.tar.gz: archive is corrupt or truncated"), "{err}");
    }
}
