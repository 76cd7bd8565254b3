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
fn spawn(cwd: &Path, args: &[String], env: &[(&str, &Path)], stdout: Stdio, stderr: Stdio) -> Child {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_plflow"));
    cmd.current_dir(cwd).args(args).env_remove("PLFLOW_DATA_DIR").process_group(0);
    cmd.stdout(stdout).stderr(stderr);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("the plflow binary starts")
}

/// SIGKILL to `child`'s whole process group, then reap it and wait until no other member
/// runs (a bench's `plflow run` is reaped by init, and holds its folder's lock until it dies).
fn kill_group(child: &mut Child) {
    // The group may be gone already (the run just ended): then there is nothing to kill.
    let group = child.id();
    let _ = Command::new("kill").args(["-KILL", "--", &format!("-{group}")]).stderr(Stdio::null()).status();
    child.wait().expect("reaped");
    let deadline = Instant::now() + Duration::from_secs(10);
    while live_members(group) > 0 {
        assert!(Instant::now() < deadline, "process group {group} outlived SIGKILL");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Processes of group `group` that are not zombies, from `/proc` (none elsewhere).
fn live_members(group: u32) -> usize {
    let Ok(procs) = std::fs::read_dir("/proc") else { return 0 };
    procs
        .flatten()
        .filter_map(|p| std::fs::read_to_string(p.path().join("stat")).ok())
        .filter(|stat| {
            // pid (comm) state ppid pgrp ...: comm may hold spaces, so split after its ')'.
            let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, f)| f).split_whitespace().collect();
            fields.len() > 2 && fields[0] != "Z" && fields[2] == group.to_string()
        })
        .count()
}

/// The instants, within `span`, at which each trial kills: `PLFLOW_KILL_POINTS` of them, one
/// at a random place in each of as many equal slices of `span` (so that every part of the
/// run is hit), from a fixed seed (`PLFLOW_KILL_SEED`) so that a failure can be replayed.
fn kill_instants(span: Duration) -> Vec<Duration> {
    let var =
        |name: &str, default: u64| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    // SplitMix64: well mixed from the first draw, whatever the seed.
    let mut state = var("PLFLOW_KILL_SEED", 14);
    let mut uniform = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    let n = var("PLFLOW_KILL_POINTS", 3).max(1);
    (0..n).map(|k| span.mul_f64((k as f64 + uniform()) / n as f64)).collect()
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
/// end. Returns the last line the killed process printed (what it was doing), or None when
/// it finished before `at` (`done` exists) and there was nothing to continue.
fn killed_then_rerun(
    cwd: &Path,
    args: &[String],
    env: &[(&str, &Path)],
    at: Duration,
    done: &Path,
) -> Option<String> {
    let log = tempfile::NamedTempFile::new().expect("log file");
    let stdout = Stdio::from(log.reopen().expect("log file"));
    let mut child = spawn(cwd, args, env, stdout, Stdio::null());
    let deadline = Instant::now() + at;
    while Instant::now() < deadline && child.try_wait().expect("wait").is_none() {
        std::thread::sleep(Duration::from_millis(5));
    }
    kill_group(&mut child);
    if done.exists() {
        return None;
    }
    let printed = std::fs::read_to_string(log.path()).expect("log");
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = plflow(cwd, &argv, env);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "the rerun after a kill at {at:?} failed:\n{stdout}\n{stderr}");
    Some(printed.lines().last().unwrap_or("(nothing printed)").to_owned())
}

/// How many kills came after each kind of last printed line (its first word), for the
/// test's output: where in the run the kills landed.
fn tally(lines: &[String]) -> String {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for line in lines {
        let word = line.split_whitespace().next().unwrap_or("").to_owned();
        match counts.iter_mut().find(|(w, _)| *w == word) {
            Some((_, n)) => *n += 1,
            None => counts.push((word, 1)),
        }
    }
    counts.iter().map(|(w, n)| format!("{n} after `{w}`")).collect::<Vec<_>>().join(", ")
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

/// Run the pipeline command `args(out)` in `cwd` to the end once, then again for every kill
/// instant: cache emptied, killed, started again with the same command. Each must end with
/// the first run's model, metrics, summary and cache files. Returns the kills that came
/// before the end, tallied by the last line they printed.
fn kill_trials(
    cwd: &Path,
    args: impl Fn(&Path) -> Vec<String>,
    env: &[(&str, &Path)],
    cache: &Path,
) -> String {
    let run0 = cwd.join("run0");
    let span = timed(cwd, &args(&run0), env);
    let reference = files_of(cache);
    let mut killed = Vec::new();
    for (k, at) in kill_instants(span).into_iter().enumerate() {
        // Cache file names hash their source's path: every trial uses the same cache folder.
        std::fs::remove_dir_all(cache).expect("remove the cache");
        let run = cwd.join(format!("run{}", k + 1));
        killed.extend(killed_then_rerun(cwd, &args(&run), env, at, &run.join("summary.json")));
        let what = format!("killed at {at:?} of {span:?}");
        assert_same_run(&run0, &run, &what);
        let got = files_of(cache);
        let names = |f: &[(PathBuf, Vec<u8>)]| f.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>();
        assert_eq!(names(&reference), names(&got), "{what}: cache files differ");
        assert!(reference == got, "{what}: cache file contents differ");
    }
    format!("{} kills before the end ({}), all continued to the same files", killed.len(), tally(&killed))
}

/// [`kill_trials`] of `plflow run p.yaml --set <sets>` with `yaml` written to `dir/p.yaml`,
/// data under `dir` and the cache in `dir/cache`.
fn pipeline_kill_trials(dir: &Path, yaml: &str, sets: &[&str]) -> String {
    std::fs::write(dir.join("p.yaml"), yaml).expect("write");
    let cache = dir.join("cache");
    let env: Vec<(&str, &Path)> = vec![("PLFLOW_DATA_DIR", dir), ("PLFLOW_CACHE_DIR", &cache)];
    let args = |out: &Path| {
        let mut args = strings(&["run", "p.yaml", "--no-progress", "--out", out.to_str().expect("utf-8")]);
        args.extend(sets.iter().flat_map(|s| ["--set".to_owned(), s.to_string()]));
        args
    };
    kill_trials(dir, args, &env, &cache)
}

/// Decoding an image folder, extracting features with an ONNX model (into Parquet, then an
/// IPC cache copy), standardising and training with a checkpoint per epoch: killed anywhere,
/// the same command again gives the same cache files, model, metrics and summary.
#[test]
fn an_image_run_killed_anywhere_ends_with_the_same_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    common::colour_images(&dir.path().join("imgs"), 1500, 200, 6);
    let yaml = common::tiny_extract_pipeline("imgs", 8);
    println!("{}", pipeline_kill_trials(dir.path(), &yaml, &["net.hidden=[512]"]));
}

/// Decoding a folder of 32x32 PNGs into the cache (most of this run's time; the model then
/// trains on 300 of them): killed anywhere, the same command again gives the same files.
#[test]
fn an_image_decoding_killed_anywhere_ends_with_the_same_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    common::colour_images(&dir.path().join("imgs"), 2000, 200, 32);
    let yaml = "name: pixels\nstages:\n  data:\n    kind: image_folder\n    path: imgs\n    size: [32, 32]\n    limit: 300\n  flat:\n    kind: flatten\n    input: data\n  net:\n    kind: mlp\n    input: flat\n    hidden: [16]\n  train:\n    kind: pl\n    input: net\n    epochs: 1\n    batch_size: 100\n  eval:\n    kind: evaluate\n    input: train\n";
    println!("{}", pipeline_kill_trials(dir.path(), yaml, &[]));
}

/// A Parquet feature table converted to its IPC cache copy, then trained on: killed
/// anywhere (most often inside the conversion), the same command again gives the same files.
#[test]
fn a_parquet_run_killed_anywhere_ends_with_the_same_files() {
    use plflow_engine::datasets::format::{Columns, TableFormat};
    use plflow_engine::datasets::sink::{Element, TableSchema, TableWriter};
    let dir = tempfile::tempdir().expect("tempdir");
    let dim = 64;
    let schema = TableSchema {
        shape: vec![dim],
        element: Element::F32,
        class_names: vec!["low".into(), "high".into()],
        metadata: Default::default(),
        columns: Columns::default(),
    };
    for (file, n) in [("train.parquet", 120_000), ("test.parquet", 5_000)] {
        let path = dir.path().join(file);
        let mut w = TableWriter::create(&path, TableFormat::Parquet, &schema).expect("create");
        for chunk in 0..n / 1000 {
            let y: Vec<u32> = (0..1000).map(|i| ((i * 7 + chunk) % 2) as u32).collect();
            let x: Vec<f32> = (0..1000 * dim)
                .map(|k| (k % 13) as f32 * 0.1 + y[k / dim] as f32 * ((k % dim) as f32 * 0.01))
                .collect();
            w.write_f32(&x, &y).expect("write");
        }
        w.finish().expect("finish");
    }
    let yaml = "name: table\nstages:\n  data:\n    kind: table\n    train: train.parquet\n    test: test.parquet\n    limit: 5000\n  net:\n    kind: mlp\n    input: data\n    hidden: [16]\n  train:\n    kind: pl\n    input: net\n    epochs: 1\n    batch_size: 1024\n    alpha: 0.5\n  eval:\n    kind: evaluate\n    input: train\n";
    println!("{}", pipeline_kill_trials(dir.path(), yaml, &[]));
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
    let mut killed = Vec::new();
    for (k, at) in kill_instants(span).into_iter().enumerate() {
        let bench = dir.path().join(format!("bench{}", k + 1));
        killed.extend(killed_then_rerun(&root(), &args(&bench), &env, at, &bench.join("bench.md")));
        for run in runs {
            assert_same_run(
                &bench0.join(run),
                &bench.join(run),
                &format!("{run} of a bench killed at {at:?}"),
            );
        }
        assert!(bench.join("bench.md").is_file(), "no bench.md after a kill at {at:?}");
        let left = partials_under(&bench);
        assert!(left.is_empty(), "partial files left after a kill at {at:?}: {left:?}");
    }
    println!("{} kills before the end ({}), all continued to the same models", killed.len(), tally(&killed));
}

/// Two runs started together on one uncached image folder: one decodes and extracts while
/// the other waits for its lock, then maps what the first wrote; both train the same model.
#[test]
fn two_runs_started_together_decode_and_extract_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    common::colour_images(&dir.path().join("imgs"), 200, 40, 6);
    std::fs::write(dir.path().join("p.yaml"), common::tiny_extract_pipeline("imgs", 2)).expect("write");
    let cache = dir.path().join("cache");
    let env: Vec<(&str, &Path)> = vec![("PLFLOW_DATA_DIR", dir.path()), ("PLFLOW_CACHE_DIR", &cache)];
    let children: Vec<Child> = ["a", "b"]
        .iter()
        .map(|out| {
            let args = strings(&["run", "p.yaml", "--no-progress", "--out", out]);
            spawn(dir.path(), &args, &env, Stdio::piped(), Stdio::piped())
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

/// Run `plflow args` in `cwd` inside a mount namespace of its own where a tmpfs mounted with
/// `options` (`size=64k`, `ro`...) covers `mount`. Returns its output and every path left on
/// the tmpfs afterwards, or None when this machine cannot make such a namespace.
fn with_small_mount(
    cwd: &Path,
    mount: &Path,
    options: &str,
    args: &[&str],
    env: &[(&str, &Path)],
) -> Option<(std::process::Output, Vec<String>)> {
    std::fs::create_dir_all(mount).expect("mount point");
    let probe = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "mount", "-t", "tmpfs", "tmpfs"])
        .arg(mount)
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: this machine cannot mount a tmpfs in a private namespace (unshare)");
        return None;
    }
    let script = r#"mount -t tmpfs -o "$1" tmpfs "$2" || exit 97; m="$2"; shift 2; "$@"; rc=$?; echo "=== left on the mount"; find "$m"; exit $rc"#;
    let mut cmd = Command::new("unshare");
    cmd.current_dir(cwd).args(["--user", "--map-root-user", "--mount", "sh", "-c", script, "sh", options]);
    cmd.arg(mount).arg(env!("CARGO_BIN_EXE_plflow")).args(args).env_remove("PLFLOW_DATA_DIR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("unshare runs");
    assert_ne!(out.status.code(), Some(97), "cannot mount a tmpfs with {options}: {}", text(&out).1);
    let stdout = text(&out).0;
    let left = stdout.split_once("=== left on the mount\n").expect("the script's listing").1;
    let left = left.lines().filter(|l| Path::new(l) != mount).map(str::to_owned).collect();
    Some((out, left))
}

/// Item 6 of issue 14: a full disk or a read-only folder, for the cache or the run folder,
/// stops the run with an error naming the path and the cause, and leaves no partial file.
#[test]
fn full_and_read_only_folders_give_clear_errors_and_leave_no_partial_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    common::colour_images(&dir.path().join("imgs"), 1500, 200, 6);
    std::fs::write(dir.path().join("p.yaml"), common::tiny_extract_pipeline("imgs", 1)).expect("write");
    synthetic_mnist(&dir.path().join("mnist"), 300, 100);
    let mount = dir.path().join("small");
    let mnist = root().join("pipelines/mnist.yaml");
    let mnist = mnist.to_str().expect("utf-8");
    let images = ["run", "p.yaml", "--no-progress"];
    let model = ["run", mnist, "--no-progress", "--set", "data.limit=300", "--set", "train.epochs=1"];
    /// One case: the command, whether the tmpfs holds the cache (else the run folder),
    /// its mount options, the path the error must name (under the mount) and the cause.
    struct Case<'a> {
        what: &'a str,
        args: &'a [&'a str],
        cache_on_mount: bool,
        options: &'a str,
        names: &'a str,
        cause: &'a str,
    }
    let cases = [
        Case {
            what: "decoding into a full cache",
            args: &images,
            cache_on_mount: true,
            options: "size=128k",
            names: "cache/images-",
            cause: "the disk is full",
        },
        Case {
            what: "a model into a full run folder",
            args: &model,
            cache_on_mount: false,
            options: "size=256k",
            names: "run/model.safetensors",
            cause: "the disk is full",
        },
        Case {
            what: "a read-only run folder",
            args: &model,
            cache_on_mount: false,
            options: "ro",
            names: "run",
            cause: "read-only",
        },
        Case {
            what: "a read-only cache",
            args: &images,
            cache_on_mount: true,
            options: "ro",
            names: "cache",
            cause: "read-only",
        },
    ];
    for (k, case) in cases.iter().enumerate() {
        let Case { what, cause, .. } = case;
        let cache = if case.cache_on_mount { mount.join("cache") } else { dir.path().join("cache") };
        let run = if case.cache_on_mount { dir.path().join(format!("run{k}")) } else { mount.join("run") };
        let env: Vec<(&str, &Path)> = vec![("PLFLOW_DATA_DIR", dir.path()), ("PLFLOW_CACHE_DIR", &cache)];
        let mut argv = case.args.to_vec();
        argv.extend(["--out", run.to_str().expect("utf-8")]);
        let Some((output, left)) = with_small_mount(dir.path(), &mount, case.options, &argv, &env) else {
            return;
        };
        let named = mount.join(case.names).display().to_string();
        let (stdout, stderr) = text(&output);
        assert!(!output.status.success(), "{what}: the run succeeded\n{stdout}");
        assert!(
            stderr.contains(&named) && stderr.contains(cause),
            "{what}: no {named} and {cause} in\n{stderr}"
        );
        let partial: Vec<_> = left.iter().filter(|f| f.contains(".partial-")).collect();
        assert!(partial.is_empty(), "{what}: partial files left: {partial:?}");
        println!(
            "{what}: {}",
            stderr.lines().filter(|l| l.contains("caused by")).collect::<Vec<_>>().join(" / ")
        );
    }
}

/// A run still going is not an interrupted one: the same command started again while the
/// first runs is refused, naming the folder, and the first finishes undisturbed.
#[test]
fn a_second_run_into_a_folder_being_written_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    common::colour_images(&dir.path().join("imgs"), 1500, 200, 6);
    std::fs::write(dir.path().join("p.yaml"), common::tiny_extract_pipeline("imgs", 8)).expect("write");
    let cache = dir.path().join("cache");
    let env: Vec<(&str, &Path)> = vec![("PLFLOW_DATA_DIR", dir.path()), ("PLFLOW_CACHE_DIR", &cache)];
    let args = strings(&["run", "p.yaml", "--no-progress", "--out", "r"]);
    let first = spawn(dir.path(), &args, &env, Stdio::null(), Stdio::piped());
    let started = dir.path().join("r").join("pipeline.yaml");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !started.exists() {
        assert!(Instant::now() < deadline, "the first run never wrote its pipeline");
        std::thread::sleep(Duration::from_millis(5));
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let second = plflow(dir.path(), &argv, &env);
    let first = first.wait_with_output().expect("wait");
    let (_, stderr) = text(&second);
    assert!(!second.status.success(), "the second run was let in");
    assert!(stderr.contains("another plflow process is writing this folder"), "{stderr}");
    assert!(first.status.success(), "the first run failed: {}", text(&first).1);
    assert!(dir.path().join("r").join("summary.json").is_file());
}
