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

/// Every shipped pipeline, alone and with a few `--set` overrides after a NUL byte.
fn pipelines(out: &Path) {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines");
    let mut files: Vec<_> = std::fs::read_dir(&shipped).expect("pipelines folder").flatten().map(|e| e.path()).collect();
    files.sort();
    for file in files.iter().filter(|f| f.extension().is_some_and(|e| e == "yaml")) {
        let name = file.file_stem().expect("name").to_string_lossy().into_owned();
        let yaml = std::fs::read(file).expect("pipeline");
        write(out, "pipeline", &name, &yaml);
        let sets = b"train.epochs=2\nnet.hidden=[16, 8]\nseed=7";
        write(out, "pipeline", &format!("{name}-set"), &[yaml.as_slice(), &[0], sets].concat());
    }
}

/// The model and checkpoint files of tiny runs (PL and Adam) on a feature table.
fn models(out: &Path, scratch: &Path) {
    use plflow_engine::plan::{Limits, Plan};
    use plflow_engine::run::{RunOptions, run};
    let schema = TableSchema {
        shape: vec![6],
        element: Element::F32,
        class_names: vec!["a".into(), "b".into(), "c".into()],
        metadata: Default::default(),
        columns: Columns::default(),
    };
    for split in ["train", "test"] {
        let path = scratch.join(format!("{split}.arrow"));
        let mut w = TableWriter::create(&path, TableFormat::ArrowIpc, &schema).expect("writer");
        let x: Vec<f32> = (0..12 * 6).map(|i| ((i * 7) % 11) as f32 * 0.3).collect();
        let y: Vec<u32> = (0..12).map(|i| i % 3).collect();
        w.write_f32(&x, &y).expect("rows");
        w.finish().expect("finish");
    }
    for rule in ["pl", "adam"] {
        let yaml = format!(
            "name: seed\nseed: 1\nstages:\n  data: {{kind: table, train: {}, test: {}, \
             features: features, label: label}}\n  scaled: {{kind: standardize, input: data}}\n  \
             net: {{kind: mlp, input: scaled, hidden: [5]}}\n  train: {{kind: {rule}, input: net, \
             epochs: 2, batch_size: 4}}\n  eval: {{kind: evaluate, input: train, split: test}}\n",
            scratch.join("train.arrow").display(),
            scratch.join("test.arrow").display(),
        );
        let file = scratch.join(format!("{rule}.yaml"));
        std::fs::write(&file, yaml).expect("pipeline");
        let plan = Plan::load_within(&file, &[], &Limits::max_memory(1e9)).expect("seed pipeline");
        let run_dir = scratch.join(format!("run-{rule}"));
        let cache = plflow_datasets::cache::Cache::new(scratch.join("cache"));
        let opts = RunOptions { out: Some(run_dir.clone()), progress: false, cache, resume: false, exchange: None };
        run(&plan, &opts).expect("seed run");
        let mut found: Vec<_> = walk(&run_dir).into_iter().filter(|p| p.extension().is_some_and(|e| e == "safetensors")).collect();
        found.sort();
        for p in found {
            let name = p.strip_prefix(&run_dir).expect("inside").to_string_lossy().replace('/', "-");
            write(out, "model", &format!("{rule}-{name}"), &std::fs::read(&p).expect("model"));
        }
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut all = Vec::new();
    for e in std::fs::read_dir(dir).expect("run folder").flatten() {
        let p = e.path();
        if p.is_dir() { all.extend(walk(&p)) } else { all.push(p) }
    }
    all
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
    pipelines(out);
    models(out, &scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    println!("seed corpora written under {}", out.display());
}
