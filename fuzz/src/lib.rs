//! What the fuzz targets share: each input is written to a fresh file with the name the
//! reader expects, read through `plflow inspect`'s path (which opens the format and reads
//! rows for its statistics), and removed with whatever the reader cached. A reader may
//! refuse an input with an error; it must not panic, abort, hang or allocate beyond the
//! limit the runner sets.

use plflow_datasets::cache::Cache;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A scratch folder of this process, and a fresh cache inside it.
fn scratch() -> (PathBuf, Cache) {
    // libFuzzer's panic hook aborts at the panic, before plflow can catch one it expects
    // (`parquet_source::guarded`). A printing hook instead: a panic plflow does not catch
    // still unwinds to libfuzzer-sys, which reports it as a crash.
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| std::panic::set_hook(Box::new(|info| eprintln!("panic: {info}"))));
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("plflow-fuzz-{}", std::process::id())).join(n.to_string());
    std::fs::create_dir_all(&dir).expect("scratch folder");
    let cache = Cache::new(dir.join("cache"));
    (dir, cache)
}

/// Write `data` as `name` in a fresh folder and inspect it (as `plflow inspect` would).
pub fn inspect_file(name: &str, data: &[u8]) {
    let (dir, cache) = scratch();
    let path = dir.join(name);
    std::fs::write(&path, data).expect("write input");
    let _ = plflow_datasets::inspect::inspect(&path, &cache);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Write `data` as `name` in a fresh folder and open it as an image dataset (decoding every
/// member into the cache, as a pipeline's first run does), then read every row.
pub fn open_images(name: &str, data: &[u8]) {
    use plflow_datasets::images::{ImageOptions, open};
    use plflow_datasets::location::DataPath;
    let (dir, cache) = scratch();
    let path = dir.join(name);
    std::fs::write(&path, data).expect("write input");
    let at = DataPath { written: path.clone(), resolved: path };
    let opts = ImageOptions { height: 8, width: 8, channels: 3, resize: true };
    if let Ok((dataset, _)) = open(&at, &opts, &cache) {
        for split in [&dataset.train, &dataset.test] {
            let n = split.len();
            let mut x = vec![0f32; split.example_len()];
            let mut y = [0u32; 1];
            for i in 0..n {
                split.read_into(&[i], &mut x, &mut y);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A pipeline and its `--set` overrides: the bytes before the first NUL are the YAML file,
/// each line after it one `--set` string. The pipeline is parsed and checked against a
/// memory limit (as `plflow check --max-memory 1G` would), then described and drawn.
pub fn check_pipeline(data: &[u8]) {
    use plflow_engine::plan::{Limits, Plan};
    let (yaml, sets) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let sets: Vec<String> = String::from_utf8_lossy(sets).lines().map(str::to_owned).collect();
    let (dir, _) = scratch();
    let path = dir.join("pipeline.yaml");
    std::fs::write(&path, yaml).expect("write input");
    if let Ok(plan) = Plan::load_within(&path, &sets, &Limits::max_memory(1e9)) {
        let _ = plan.describe();
        let _ = plan.graph.dot(&plan.spec.name);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A model or checkpoint file (`model.safetensors`, `state.safetensors`): loaded as
/// `plflow predict` loads it, read as a checkpoint of stage `train`, and exported to ONNX
/// as `plflow export` would (without a backbone).
pub fn load_model(data: &[u8]) {
    let (dir, _) = scratch();
    let path = dir.join("model.safetensors");
    std::fs::write(&path, data).expect("write input");
    let _ = plflow_engine::predict::Predictor::load(&path);
    let _ = plflow_engine::checkpoint::Checkpoint::read(&path, "train");
    let _ = plflow_engine::export::export(&path, &dir.join("model.onnx"), false);
    let _ = std::fs::remove_dir_all(&dir);
}
