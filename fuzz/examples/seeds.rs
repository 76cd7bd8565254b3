//! Seed corpora for the fuzz targets: small valid files of every format, written by plflow's
//! own writers where it has them (feature tables) and by the reference encoders otherwise.
//!
//!     cargo run --example seeds -- fuzz/corpus

use plflow_datasets::format::{Columns, TableFormat};
use plflow_datasets::sink::{Element, TableSchema, TableWriter};
use std::io::Write;
use std::path::Path;

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let d = dir.join(target);
    std::fs::create_dir_all(&d).expect("corpus folder");
    std::fs::write(d.join(name), bytes).expect("seed");
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).expect("gzip");
    e.finish().expect("gzip")
}

/// An IDX file of `rows` 4x4 unsigned-byte images, or of labels when `dims` is empty.
fn idx(rows: u32, dims: &[u32]) -> Vec<u8> {
    let mut v = vec![0, 0, 0x08, 1 + dims.len() as u8];
    for d in std::iter::once(rows).chain(dims.iter().copied()) {
        v.extend(d.to_be_bytes());
    }
    let n = rows * dims.iter().product::<u32>();
    v.extend((0..n).map(|i| (i * 37 % 256) as u8));
    v
}

fn table(format: TableFormat, dir: &Path) -> Vec<u8> {
    let path = dir.join(if format == TableFormat::Parquet { "t.parquet" } else { "t.arrow" });
    let schema = TableSchema {
        shape: vec![2, 3],
        element: Element::F32,
        class_names: vec!["a".into(), "b".into()],
        metadata: Default::default(),
        columns: Columns::default(),
    };
    let mut w = TableWriter::create(&path, format, &schema).expect("writer");
    let x: Vec<f32> = (0..4 * 6).map(|i| i as f32 * 0.25).collect();
    w.write_f32(&x, &[0, 1, 1, 0]).expect("rows");
    let written = w.finish().expect("finish");
    std::fs::read(written).expect("read table")
}

fn png(seed: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(5, 4, |x, y| image::Rgb([seed + x as u8, 10 * y as u8, 200]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).expect("png");
    out.into_inner()
}

fn jpeg(seed: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(8, 8, |x, y| image::Rgb([seed + 3 * x as u8, 20 * y as u8, 90]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg).expect("jpeg");
    out.into_inner()
}

fn archive() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let members = [
        ("train/cat/a.png", png(10)),
        ("train/dog/b.jpg", jpeg(40)),
        ("test/cat/c.png", png(60)),
        ("test/dog/d.jpg", jpeg(90)),
    ];
    for (name, bytes) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, bytes.as_slice()).expect("member");
    }
    b.into_inner().expect("tar")
}

fn main() {
    let out = std::env::args().nth(1).unwrap_or_else(|| "corpus".into());
    let out = Path::new(&out);
    let scratch = std::env::temp_dir().join(format!("plflow-seeds-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).expect("scratch");
    for (name, body) in [("images", idx(3, &[4, 4])), ("labels", idx(3, &[]))] {
        write(out, "idx", &format!("{name}-raw"), &[[0u8].as_slice(), &body].concat());
        write(out, "idx", &format!("{name}-gz"), &[[1u8].as_slice(), &gzip(&body)].concat());
    }
    let record = |label: u8, fine: Option<u8>| {
        let mut r = vec![label];
        r.extend(fine);
        r.extend((0..3072).map(|i| (i * 7 % 256) as u8));
        r
    };
    write(out, "cifar", "cifar10", &[record(3, None), record(7, None)].concat());
    write(out, "cifar", "cifar100", &[record(1, Some(42)), record(0, Some(5))].concat());
    write(out, "arrow_ipc", "table", &table(TableFormat::ArrowIpc, &scratch));
    write(out, "parquet", "table", &table(TableFormat::Parquet, &scratch));
    let tar = archive();
    write(out, "image_archive", "tar", &[[0u8].as_slice(), &tar].concat());
    write(out, "image_archive", "tar-gz", &[[1u8].as_slice(), &gzip(&tar)].concat());
    write(out, "image_decode", "png", &png(1));
    write(out, "image_decode", "jpeg", &jpeg(2));
    let _ = std::fs::remove_dir_all(&scratch);
    println!("seed corpora written under {}", out.display());
}
