//! Issue 14's robustness tests, driving the real binary: a run or a bench killed at random
//! instants and started again with the same command ends with the files of an uninterrupted
//! one; two runs started together on one uncached image folder decode and extract it once.
//!
//! `PLFLOW_KILL_POINTS` sets how many kill instants each scenario tries (3 by default, drawn
//! from `PLFLOW_KILL_SEED`); the README's long check uses 20.

#![cfg(unix)]

mod common;

use common::{metrics_of, partials_under, plflow, root, summary_of, synthetic_mnist, text};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Start `plflow args` in `cwd` in a process group of its own, so that a kill also reaches
/// the `plflow run` processes a bench starts.
fn spawn(cwd: &Path, args: &[String], env: &[(&str, &Path)], output: Stdio) -> Child {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_plflow"));
    cmd.current_dir(cwd).args(args).env_remove("PLFLOW_DATA_DIR").process_group(0);
    cmd.stdout(output).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("the plflow binary starts")
}

/// SIGKILL to `child`'s whole process group, then reap it.
fn kill_group(child: &mut Child) {
    // The group may be gone already (the run just ended): then there is nothing to kill.
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .stderr(Stdio::null())
        .status();
    child.wait().expect("reaped");
}

/// The instants, within `span`, at which each trial kills: `PLFLOW_KILL_POINTS` of them,
/// uniform, from a fixed seed (`PLFLOW_KILL_SEED`) so that a failure can be replayed.
fn kill_instants(span: Duration) -> Vec<Duration> {
    let var =
        |name: &str, default: u64| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let mut state = var("PLFLOW_KILL_SEED", 14).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..var("PLFLOW_KILL_POINTS", 3))
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            span.mul_f64((state >> 11) as f64 / (1u64 << 53) as f64)
        })
        .collect()
}

/// Run `args` to the end and return how long it took.
fn timed(cwd: &Path, args: &[String], env: &[(&str, &Path)]) -> Duration {
    let started = Instant::now();
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = plflow(cwd, &argv, env);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{args:?}\n{stdout}\n{stderr}");
    println!("{stdout}");
    started.elapsed()
}

/// Start `args`, kill its process group after `at`, then run the same command again to the
/// end. Returns false when the first process finished before `at` (`done` exists), in which
/// case there was nothing to continue.
fn killed_then_rerun(cwd: &Path, args: &[String], env: &[(&str, &Path)], at: Duration, done: &Path) -> bool {
    let mut child = spawn(cwd, args, env, Stdio::null());
    let deadline = Instant::now() + at;
    while Instant::now() < deadline && child.try_wait().expect("wait").is_none() {
        std::thread::sleep(Duration::from_millis(5));
    }
    kill_group(&mut child);
    if done.exists() {
        return false;
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = plflow(cwd, &argv, env);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "the rerun after a kill at {at:?} failed:\n{stdout}\n{stderr}");
    true
}

/// Every file under `dir` (paths relative to it) with its bytes, lock files aside (they
/// are empty and stay by design), keys that depend on modification times masked.
fn files_of(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    fn walk(base: &Path, dir: &Path, found: &mut Vec<(PathBuf, Vec<u8>)>) {
        for item in std::fs::read_dir(dir).expect("list").flatten() {
            let path = item.path();
            if path.is_dir() {
                walk(base, &path, found);
            } else if path.extension().is_none_or(|e| e != "lock") {
                let mut rel = path.strip_prefix(base).expect("under base").to_string_lossy().into_owned();
                // A table's IPC copy is keyed by the table's modification time too.
                if let Some(stem) = rel.strip_suffix("-parquet.arrow") {
                    rel = format!(
                        "{}-<mtime key>-parquet.arrow",
                        stem.rsplit_once('-').map_or(stem, |(s, _)| s)
                    );
                }
                found.push((PathBuf::from(rel), std::fs::read(&path).expect("read")));
            }
        }
    }
    let mut found = Vec::new();
    walk(dir, dir, &mut found);
    found.sort();
    found
}

/// The run folder's trained model files and report records that must match another run's.
fn assert_same_run(want: &Path, got: &Path, what: &str) {
    for file in ["model.safetensors", "best.safetensors"] {
        let (a, b) = (std::fs::read(want.join(file)).expect(file), std::fs::read(got.join(file)));
        assert!(b.is_ok_and(|b| a == b), "{what}: {file} differs from the uninterrupted run's");
    }
    assert_eq!(metrics_of(want), metrics_of(got), "{what}: metrics differ");
    assert_eq!(summary_of(want), summary_of(got), "{what}: summaries differ");
    let left = partials_under(got);
    assert!(left.is_empty(), "{what}: partial files left: {left:?}");
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// Decoding an image folder, extracting features with an ONNX model (into Parquet, then an
/// IPC cache copy), standardising and training with a checkpoint per epoch: killed anywhere,
/// the same command again gives the same cache files, model, metrics and summary.
#[test]
fn an_image_run_killed_anywhere_ends_with_the_same_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    common::colour_images(&dir.path().join("imgs"), 1500, 200);
    std::fs::write(dir.path().join("p.yaml"), common::tiny_extract_pipeline("imgs", 8)).expect("write");
    // Cache file names hash their source's path: every trial uses the same cache folder.
    let cache = dir.path().join("cache");
    let env: Vec<(&str, &Path)> = vec![("PLFLOW_DATA_DIR", dir.path()), ("PLFLOW_CACHE_DIR", &cache)];
    let args = |out: &Path| {
        let out = out.to_str().expect("utf-8");
        strings(&["run", "p.yaml", "--no-progress", "--set", "net.hidden=[512]", "--out", out])
    };
    let run0 = dir.path().join("run0");
    let span = timed(dir.path(), &args(&run0), &env);
    let reference = files_of(&cache);
    let mut continued = 0;
    for (k, at) in kill_instants(span).into_iter().enumerate() {
        std::fs::remove_dir_all(&cache).expect("remove the cache");
        let run = dir.path().join(format!("run{}", k + 1));
        continued += killed_then_rerun(dir.path(), &args(&run), &env, at, &run.join("summary.json")) as usize;
        let what = format!("killed at {at:?} of {span:?}");
        assert_same_run(&run0, &run, &what);
        let got = files_of(&cache);
        let names = |f: &[(PathBuf, Vec<u8>)]| f.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>();
        assert_eq!(names(&reference), names(&got), "{what}: cache files differ");
        assert!(reference == got, "{what}: cache file contents differ");
    }
    println!("{continued} kills before the end, all continued to the same files");
}

/// A bench of two pipelines (each run a child process) killed anywhere, then started again
/// with the same command: runs finished before are kept, the interrupted one is run again,
/// and every run's model is the uninterrupted bench's.
#[test]
fn a_bench_killed_anywhere_continues_to_the_same_models() {
    let dir = tempfile::tempdir().expect("tempdir");
    synthetic_mnist(&dir.path().join("mnist"), 400, 100);
    let cache = dir.path().join("cache");
    let env: Vec<(&str, &Path)> = vec![("PLFLOW_DATA_DIR", dir.path()), ("PLFLOW_CACHE_DIR", &cache)];
    let args = |out: &Path| {
        strings(&[
            "bench",
            "pipelines/mnist.yaml",
            "pipelines/mnist-sgd.yaml",
            "--epochs",
            "2",
            "--set",
            "data.limit=300",
            "--out",
            out.to_str().expect("utf-8"),
        ])
    };
    let bench0 = dir.path().join("bench0");
    let span = timed(&root(), &args(&bench0), &env);
    let runs = ["mnist-r1", "mnist-sgd-r1"];
    for run in runs {
        assert!(bench0.join(run).join("summary.json").is_file(), "{run} missing from {}", bench0.display());
    }
    for (k, at) in kill_instants(span).into_iter().enumerate() {
        let bench = dir.path().join(format!("bench{}", k + 1));
        killed_then_rerun(&root(), &args(&bench), &env, at, &bench.join("bench.md"));
        for run in runs {
            assert_same_run(
                &bench0.join(run),
                &bench.join(run),
                &format!("{run} of a bench killed at {at:?}"),
            );
        }
        assert!(bench.join("bench.md").is_file() && partials_under(&bench).is_empty());
    }
}

/// Two runs started together on one uncached image folder: one decodes and extracts while
/// the other waits for its lock, then maps what the first wrote; both train the same model.
#[test]
fn two_runs_started_together_decode_and_extract_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    common::colour_images(&dir.path().join("imgs"), 200, 40);
    std::fs::write(dir.path().join("p.yaml"), common::tiny_extract_pipeline("imgs", 2)).expect("write");
    let cache = dir.path().join("cache");
    let env: Vec<(&str, &Path)> = vec![("PLFLOW_DATA_DIR", dir.path()), ("PLFLOW_CACHE_DIR", &cache)];
    let children: Vec<Child> = ["a", "b"]
        .iter()
        .map(|out| {
            spawn(
                dir.path(),
                &strings(&["run", "p.yaml", "--no-progress", "--out", out]),
                &env,
                Stdio::piped(),
            )
        })
        .collect();
    let outputs: Vec<_> = children.into_iter().map(|c| c.wait_with_output().expect("wait")).collect();
    let mut stdouts = Vec::new();
    for out in &outputs {
        let (stdout, stderr) = text(out);
        assert!(out.status.success(), "{stdout}\n{stderr}");
        println!("{stdout}{stderr}");
        stdouts.push(stdout);
    }
    let count = |what: &str| stdouts.iter().filter(|s| s.lines().any(|l| l.starts_with(what))).count();
    assert_eq!(count("decoded "), 1, "the images were decoded by both runs or neither");
    assert_eq!(count("features: extracted"), 1, "the features were extracted by both runs or neither");
    assert_eq!(count("features: reusing"), 1);
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    assert_eq!(
        std::fs::read(a.join("model.safetensors")).expect("a's model"),
        std::fs::read(b.join("model.safetensors")).expect("b's model")
    );
    assert_eq!(metrics_of(&a), metrics_of(&b));
    assert!(partials_under(&cache).is_empty());
}
