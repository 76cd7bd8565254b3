//! Inputs the fuzzers (`fuzz/`, `tools/fuzz.sh`) found crashing a reader, kept as regression
//! tests: each is read as `plflow inspect` reads it, and must not panic or exhaust memory.
//! `<target>-<hash>` files are corrupt and must be refused with an error that names the file;
//! `<target>-ok-<hash>` files are odd but valid (unaligned buffers, say) and must be read.
//! The target says which name the input is given (as in `fuzz/fuzz_targets/`).

use plflow_datasets::cache::Cache;
use std::path::Path;

/// The file name a fuzz target gives its input.
fn name_for(target: &str) -> &'static str {
    match target {
        "arrow_ipc" => "features.arrow",
        "parquet" => "features.parquet",
        "cifar" => "data_batch_1.bin",
        "idx" => "t10k-images-idx3-ubyte",
        other => panic!("no regression mapping for fuzz target {other}"),
    }
}

#[test]
fn inputs_that_crashed_a_reader_are_refused_with_errors() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fuzz");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("regression folder") {
        let path = entry.expect("entry").path();
        let file = path.file_name().and_then(|n| n.to_str()).expect("utf-8 name").to_owned();
        let (target, _) = file.rsplit_once('-').expect("<target>-<hash>");
        let (target, readable) = match target.strip_suffix("-ok") {
            Some(t) => (t, true),
            None => (target, false),
        };
        let scratch = tempfile::tempdir().expect("tempdir");
        let input = scratch.path().join(name_for(target));
        std::fs::copy(&path, &input).expect("copy");
        let cache = Cache::new(scratch.path().join("cache"));
        let read = plflow_datasets::inspect::inspect(&input, &cache);
        if readable {
            let text = read.unwrap_or_else(|e| panic!("{file} is readable: {e}"));
            println!("{file}: {text}");
            seen += 1;
            continue;
        }
        let err = read.expect_err(&file);
        let message = format!("{err}: {:?}", std::error::Error::source(&err));
        assert!(message.contains(name_for(target)), "{file}: the error names the file: {message}");
        println!("{file}: {message}");
        seen += 1;
    }
    assert!(seen >= 5, "the regression inputs are there");
}
