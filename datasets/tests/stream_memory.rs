//! Streaming a feature table larger than the memory bound keeps the resident set near a few
//! batches: rows are copied out without mapping the file, and pages touched are released.
//! (Own test binary, so no other test shares the process while resident memory is measured.)

use plflow_datasets::Source;
use plflow_datasets::format::Columns;
use plflow_datasets::format::TableFormat;
use plflow_datasets::sink::{Element, TableSchema, TableWriter};
use plflow_datasets::stream::BatchStream;
use plflow_datasets::table::TableFile;

fn rss_kb() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

#[test]
fn a_shuffled_epoch_over_a_large_table_stays_within_a_few_batches() {
    if !std::path::Path::new("/proc/self/status").exists() {
        eprintln!("skipped: no /proc to measure resident memory on this platform");
        return;
    }
    const ROWS: usize = 24_000;
    const DIM: usize = 1_024; // 4 KiB per row: the file is 96 MiB
    const BATCH: usize = 64;
    const BOUND_MB: usize = 16;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("big.arrow");
    let schema = TableSchema {
        shape: vec![DIM],
        element: Element::F32,
        class_names: vec![],
        metadata: Default::default(),
        columns: Columns::default(),
    };
    let mut w = TableWriter::create(&path, TableFormat::ArrowIpc, &schema).expect("create");
    let chunk = 500;
    for c in 0..ROWS / chunk {
        let x: Vec<f32> = (0..chunk * DIM).map(|i| ((c * chunk * DIM + i) % 977) as f32).collect();
        let y: Vec<u32> = (0..chunk).map(|r| ((c * chunk + r) % 10) as u32).collect();
        w.write_f32(&x, &y).expect("write");
    }
    w.finish().expect("finish");
    let file_mb = std::fs::metadata(&path).expect("stat").len() as usize >> 20;
    assert!(file_mb > 4 * BOUND_MB, "the file ({file_mb} MB) must dwarf the bound");

    let table = TableFile::open(&path, &Columns::default()).expect("open");
    let base = rss_kb();
    let mut peak = base;
    let (mut x, mut y) = (vec![0.0f32; BATCH * DIM], vec![0u32; BATCH]);
    let mut checksum = 0.0f64;
    for epoch in 0..2 {
        let mut stream = BatchStream::shuffled(&table, BATCH, 7, epoch);
        while let Some(idx) = stream.next_batch() {
            let n = idx.len();
            table.read_into(idx, &mut x[..n * DIM], &mut y[..n]);
            let first = idx[0];
            assert_eq!(x[0], ((first * DIM) % 977) as f32, "row {first} read back");
            assert_eq!(y[0], (first % 10) as u32);
            checksum += f64::from(x[DIM - 1]);
            peak = peak.max(rss_kb());
        }
    }
    let grown_mb = (peak.saturating_sub(base)) as f64 / 1024.0;
    println!("file {file_mb} MB, resident growth while streaming {grown_mb:.1} MB (checksum {checksum})");
    assert!(grown_mb < BOUND_MB as f64, "resident memory grew {grown_mb:.1} MB for a {file_mb} MB file");
}
