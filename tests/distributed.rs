//! Distributed runs through the real binary: `plflow run --workers N` on loopback gives the
//! same model and metrics for 1, 2 and 3 processes; a killed process stops the others with an
//! error naming it; a host that does not answer is an error after the connect timeout.

mod common;

use common::{metrics_of, plflow, root, summary_of, text};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MLP: &str = "name: syn\nseed: 7\nstages:\n  data:\n    kind: mnist\n    path: syn\n  net:\n    kind: mlp\n    input: data\n    hidden: [32, 16]\n  train:\n    kind: KIND\n    input: net\n    epochs: 2\n    batch_size: 100\n  eval:\n    kind: evaluate\n    input: train\n    split: test\n";

/// Run `pipeline` in `dir` on `workers` processes into `dir/out`; its output.
fn run_on(dir: &Path, pipeline: &str, workers: usize, out: &str, env: &[(&str, &Path)]) -> (String, String) {
    let w = workers.to_string();
    let args = ["run", pipeline, "--no-progress", "--workers", &w, "--out", out];
    let result = plflow(dir, &args, env);
    let (stdout, stderr) = text(&result);
    assert!(result.status.success(), "{workers} workers:\n{stdout}\n{stderr}");
    (stdout, stderr)
}

/// The run in `dir/out` has the model bytes and the metrics (minus timings) of `dir/want`.
fn assert_same_run(dir: &Path, want: &str, got: &str) {
    let bytes = |run: &str| std::fs::read(dir.join(run).join("model.safetensors")).expect("model file");
    assert!(bytes(want) == bytes(got), "{got}: the model differs from {want}'s");
    assert_eq!(metrics_of(&dir.join(want)), metrics_of(&dir.join(got)), "{got}: metrics");
    assert_eq!(summary_of(&dir.join(want))["test_accuracy"], summary_of(&dir.join(got))["test_accuracy"]);
}

fn same_model_on_one_two_and_three_processes(kind: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    common::synthetic_mnist(&dir.path().join("syn"), 1000, 200);
    std::fs::write(dir.path().join("p.yaml"), MLP.replace("KIND", kind)).expect("write");
    let env: Vec<(&str, &Path)> = vec![("PLFLOW_DATA_DIR", dir.path())];
    let (_, stderr) = run_on(dir.path(), "p.yaml", 1, "w1", &env);
    // 2 epochs x 10 steps x (the output figures + 3 layers), and one count per evaluation.
    assert!(stderr.contains("process 0: 82 exchanges"), "{stderr}");
    for workers in [2, 3] {
        let out = format!("w{workers}");
        let (_, stderr) = run_on(dir.path(), "p.yaml", workers, &out, &env);
        assert_same_run(dir.path(), "w1", &out);
        for p in 0..workers {
            assert!(stderr.contains(&format!("process {p}: connected to {workers} processes")), "{stderr}");
        }
    }
    let accuracy = summary_of(&dir.path().join("w1"))["test_accuracy"].as_f64().expect("accuracy");
    assert!(accuracy > 0.9, "{kind} learns the synthetic task: {accuracy}");
}

#[test]
fn pl_gives_the_same_model_on_one_two_and_three_processes() {
    same_model_on_one_two_and_three_processes("pl");
}

#[test]
fn sgd_gives_the_same_model_on_one_two_and_three_processes() {
    same_model_on_one_two_and_three_processes("sgd");
}

/// A feature pipeline (image folder -> ONNX backbone -> standardize -> PL MLP): the
/// processes share one extraction (the cache's lock) and agree on the model.
#[test]
fn a_feature_pipeline_gives_the_same_model_on_one_and_three_processes() {
    let dir = tempfile::tempdir().expect("tempdir");
    common::colour_images(&dir.path().join("imgs"), 40, 10, 6);
    std::fs::write(dir.path().join("p.yaml"), common::tiny_extract_pipeline("imgs", 3)).expect("write");
    let cache = dir.path().join("cache");
    let env: Vec<(&str, &Path)> = vec![("PLFLOW_DATA_DIR", dir.path()), ("PLFLOW_CACHE_DIR", &cache)];
    run_on(dir.path(), "p.yaml", 1, "w1", &env);
    run_on(dir.path(), "p.yaml", 3, "w3", &env);
    assert_same_run(dir.path(), "w1", "w3");
}

/// The real MNIST, when `PLFLOW_DATA_DIR` has it: PL on 1 and 2 processes.
#[test]
fn real_mnist_pl_gives_the_same_model_on_one_and_two_processes() {
    let Some(data) = std::env::var_os("PLFLOW_DATA_DIR").map(std::path::PathBuf::from) else {
        eprintln!("skipping: PLFLOW_DATA_DIR is not set");
        return;
    };
    if !data.join("mnist").is_dir() {
        eprintln!("skipping: {} has no mnist/", data.display());
        return;
    }
    let data = std::fs::canonicalize(&data).unwrap_or(data);
    let dir = tempfile::tempdir().expect("tempdir");
    let pipeline = root().join("pipelines/mnist.yaml");
    let env: Vec<(&str, &Path)> = vec![("PLFLOW_DATA_DIR", &data)];
    for (workers, out) in [(1, "w1"), (2, "w2")] {
        let w = workers.to_string();
        let p = pipeline.to_str().expect("utf-8");
        let args = [
            "run",
            p,
            "--no-progress",
            "--workers",
            &w,
            "--out",
            out,
            "--set",
            "train.epochs=1",
            "--set",
            "data.limit=3000",
        ];
        let result = plflow(dir.path(), &args, &env);
        assert!(result.status.success(), "{:?}", text(&result));
    }
    assert_same_run(dir.path(), "w1", "w2");
}

/// Kill process 2 of 3 in the middle of training: processes 0 and 1 stop with an error
/// naming it, well within the exchange timeout.
#[test]
fn a_killed_process_stops_the_others_with_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    common::synthetic_mnist(&dir.path().join("syn"), 6000, 200);
    std::fs::write(dir.path().join("p.yaml"), MLP.replace("KIND", "pl").replace("epochs: 2", "epochs: 200"))
        .expect("write");
    let mut parent = Command::new(env!("CARGO_BIN_EXE_plflow"))
        .current_dir(dir.path())
        .env("PLFLOW_DATA_DIR", dir.path())
        .args([
            "run",
            "p.yaml",
            "--no-progress",
            "--workers",
            "3",
            "--out",
            "run",
            "--exchange-timeout",
            "600",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("plflow starts");
    let stderr = parent.stderr.take().expect("piped");
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !seen.iter().any(|l: &String| l.contains("process 2: connected")) {
        let line = lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("process 2 connects");
        seen.push(line);
    }
    std::thread::sleep(Duration::from_millis(1500));
    let victim = child_with_arg(parent.id(), "2").expect("process 2 is a child of the parent");
    let killed = Instant::now();
    let status = Command::new("kill").args(["-KILL", &victim.to_string()]).status().expect("kill");
    assert!(status.success());
    let wait = Duration::from_secs(30);
    let status = loop {
        if let Some(status) = parent.try_wait().expect("wait") {
            break status;
        }
        assert!(killed.elapsed() < wait, "process 0 still running {wait:?} after process 2 was killed");
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = killed.elapsed();
    assert!(!status.success(), "process 0 must fail");
    std::thread::sleep(Duration::from_millis(500));
    seen.extend(lines.try_iter());
    let all = seen.join("\n");
    for p in [0, 1] {
        let error = format!("process {p}: run of p.yaml failed");
        assert!(all.contains(&error), "no `{error}` in:\n{all}");
    }
    assert!(all.contains("lost process 2"), "{all}");
    eprintln!("processes 0 and 1 stopped {:.2} s after process 2 was killed", took.as_secs_f64());
}

/// The pid of the child of `parent` started with `--process I`.
fn child_with_arg(parent: u32, index: &str) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let is_it = args.windows(2).any(|w| w[0] == b"--process" && w[1] == index.as_bytes());
        if ppid == Some(parent) && is_it {
            return Some(pid);
        }
    }
    None
}

/// Process 1 of a host file whose process 0 never starts: a clear error after the timeout.
#[test]
fn a_host_that_does_not_answer_is_an_error_after_the_connect_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    common::synthetic_mnist(&dir.path().join("syn"), 100, 20);
    std::fs::write(dir.path().join("p.yaml"), MLP.replace("KIND", "pl")).expect("write");
    let ports: Vec<u16> = (0..2)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port()
        })
        .collect();
    std::fs::write(dir.path().join("hosts"), format!("127.0.0.1:{}\n127.0.0.1:{}\n", ports[0], ports[1]))
        .expect("write");
    let env: Vec<(&str, &Path)> = vec![("PLFLOW_DATA_DIR", dir.path())];
    let started = Instant::now();
    let args =
        ["run", "p.yaml", "--no-progress", "--hosts", "hosts", "--process", "1", "--connect-timeout", "2"];
    let out = plflow(dir.path(), &args, &env);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
    let want = format!("process 0 (127.0.0.1:{}): did not answer within 2 s", ports[0]);
    assert!(stderr.contains(&want), "no `{want}` in:\n{stderr}");
}

/// Run `ip args...`; whether it succeeded (its stderr when not).
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
}

/// Three network namespaces joined by a bridge in a fourth: three "hosts" at
/// 10.77.0.1-3 that reach each other only over their veth links. Removed on drop.
struct Hosts {
    names: Vec<String>,
}

impl Hosts {
    fn create(n: usize) -> Result<Self, String> {
        let tag = std::process::id();
        let mut hosts = Hosts { names: Vec::new() };
        let hub = format!("plhub{tag}");
        ip(&["netns", "add", &hub])?;
        hosts.names.push(hub.clone());
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        for i in 0..n {
            let ns = format!("plh{tag}-{i}");
            ip(&["netns", "add", &ns])?;
            hosts.names.push(ns.clone());
            let (a, b) = (format!("a{i}"), format!("b{i}"));
            ip(&["link", "add", &a, "netns", &ns, "type", "veth", "peer", "name", &b, "netns", &hub])?;
            ip(&["-n", &hub, "link", "set", &b, "master", "br0", "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("10.77.0.{}/24", i + 1), "dev", &a])?;
            ip(&["-n", &ns, "link", "set", &a, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(hosts)
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in &self.names {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// A run on three "hosts" (network namespaces, each process in its own) gives the model of
/// one process. Needs root for `ip netns`; skips with the reason where that is refused.
#[test]
fn three_hosts_in_network_namespaces_give_the_model_of_one_process() {
    let hosts = match Hosts::create(3) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("skipping: cannot create network namespaces ({})", e.trim());
            return;
        }
    };
    let dir = tempfile::tempdir().expect("tempdir");
    common::synthetic_mnist(&dir.path().join("syn"), 1000, 200);
    std::fs::write(dir.path().join("p.yaml"), MLP.replace("KIND", "pl")).expect("write");
    std::fs::write(dir.path().join("hosts"), "10.77.0.1:2101\n10.77.0.2:2101\n10.77.0.3:2101\n")
        .expect("write");
    let env: Vec<(&str, &Path)> = vec![("PLFLOW_DATA_DIR", dir.path())];
    run_on(dir.path(), "p.yaml", 1, "one", &env);
    let children: Vec<_> = (0..3)
        .map(|i| {
            Command::new("ip")
                .args(["netns", "exec", &hosts.names[i + 1], env!("CARGO_BIN_EXE_plflow")])
                .args(["run", "p.yaml", "--no-progress", "--hosts", "hosts", "--process", &i.to_string()])
                .args(["--out", "three", "--connect-timeout", "30"])
                .current_dir(dir.path())
                .env("PLFLOW_DATA_DIR", dir.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("ip netns exec starts")
        })
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().expect("process finishes");
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "process {i}:\n{stdout}\n{stderr}");
        assert!(stderr.contains(&format!("process {i}: connected to 3 processes")), "{stderr}");
    }
    assert_same_run(dir.path(), "one", "three");
}
