//! `plflow run --workers N` and `plflow run --hosts FILE --process I`: one run on several
//! processes, each training on its shards of every batch and exchanging the shards' sums
//! (plflow-cluster). `--workers N` starts processes 1..N-1 itself on loopback and is
//! process 0; on several machines every process is started by hand with the same command
//! and its own `--process`. Process 0 writes the run folder; the others write theirs to a
//! temporary folder that is removed when they finish.

use anyhow::Context as _;
use plflow_cluster::{ClusterConfig, TimelyReducer};
use plflow_engine::Plan;
use plflow_engine::run::{Exchange, RunOptions};
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::Duration;

/// The distributed options of `plflow run`.
#[derive(Debug, Clone, clap::Args)]
pub struct DistributedArgs {
    /// Train on N processes of this machine (over loopback), each taking a share of every
    /// batch; the model is the same bits for any N (for a given --shards).
    #[arg(long, value_name = "N", conflicts_with_all = ["hosts", "resume"])]
    pub workers: Option<usize>,
    /// The host file of a run on several machines: one `host:port` per line, line i being
    /// process i; start every process with the same command and its own --process.
    #[arg(long, value_name = "FILE", requires = "process", conflicts_with = "resume")]
    pub hosts: Option<PathBuf>,
    /// This process's line in --hosts, from 0 (process 0 writes the run folder).
    #[arg(long, value_name = "I", requires = "hosts")]
    pub process: Option<usize>,
    /// Shards of every batch in a distributed run (at least one per process): the results
    /// depend on it, not on the number of processes.
    #[arg(long, value_name = "S", default_value_t = plflow_engine::DEFAULT_SHARDS)]
    pub shards: usize,
    /// Seconds to wait for every process of a distributed run to connect.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub connect_timeout: u64,
    /// Seconds to wait for the other processes' sums in one exchange (a process that dies is
    /// noticed at once; this bounds one that hangs).
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub exchange_timeout: u64,
}

impl DistributedArgs {
    /// Whether the run is distributed.
    pub fn enabled(&self) -> bool {
        self.workers.is_some() || self.hosts.is_some()
    }
}

/// A distributed run of this process: its exchange, the processes it started, and where it
/// writes when it is not process 0.
#[derive(Debug)]
pub struct Session {
    /// This process's index.
    pub process: usize,
    /// The exchange.
    pub reducer: Rc<RefCell<TimelyReducer>>,
    /// Processes started by `--workers`, with their index.
    pub children: Vec<(usize, Child)>,
    /// The host file `--workers` wrote, removed at the end.
    host_dir: Option<PathBuf>,
    /// The temporary run folder of a process other than 0.
    pub scratch: Option<PathBuf>,
}

/// Run `plan` (from `pipeline` with `sets`) as one process of a distributed run.
pub fn run(
    args: &DistributedArgs,
    plan: &Plan,
    pipeline: &Path,
    sets: &[String],
    mut opts: RunOptions,
) -> anyhow::Result<()> {
    let mut session = start(args, pipeline, sets)?;
    if session.process != 0 {
        opts.out = session.scratch.clone();
    }
    let exchange: Exchange = session.reducer.clone();
    opts.exchange = Some(exchange);
    let result = plflow_engine::run::run(plan, &opts);
    drop(opts);
    match result {
        Ok(outcome) => {
            if session.process == 0 {
                crate::print_outcome(&outcome);
            }
            session.finish()
        }
        Err(e) => {
            session.reducer.borrow_mut().abandon();
            session.cleanup();
            let process = session.process;
            // Dropping the session leaves the connections open until this process exits.
            drop(session);
            Err(anyhow::Error::new(e)
                .context(format!("process {process}: run of {} failed", plan.file.display())))
        }
    }
}

/// Start this process's part of a distributed run of `pipeline` with `sets`.
pub fn start(args: &DistributedArgs, pipeline: &Path, sets: &[String]) -> anyhow::Result<Session> {
    let job = fingerprint(pipeline, sets, args.shards)?;
    let (process, addresses, host_dir, children) = match (&args.hosts, args.process, args.workers) {
        (Some(hosts), Some(process), _) => (process, plflow_cluster::hosts::read(hosts)?, None, Vec::new()),
        (None, _, Some(workers)) => {
            anyhow::ensure!(workers >= 1, "--workers must be at least 1");
            anyhow::ensure!(
                workers <= args.shards,
                "--workers {workers} with --shards {}: each process needs at least one shard of every batch; \
                 raise --shards (the model depends on it) or start fewer workers",
                args.shards
            );
            let dir = std::env::temp_dir().join(format!("plflow-hosts-{}", std::process::id()));
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            let addresses = loopback_addresses(workers)?;
            let file = dir.join("hosts");
            std::fs::write(&file, addresses.join("\n") + "\n")
                .with_context(|| format!("cannot write {}", file.display()))?;
            let children =
                (1..workers).map(|i| spawn(args, pipeline, sets, &file, i)).collect::<anyhow::Result<_>>()?;
            (0, addresses, Some(dir), children)
        }
        _ => anyhow::bail!("a distributed run needs --workers N, or --hosts FILE with --process I"),
    };
    let config = ClusterConfig {
        process,
        addresses,
        shards: args.shards,
        connect_timeout: Duration::from_secs(args.connect_timeout),
        exchange_timeout: Duration::from_secs(args.exchange_timeout),
        job,
    };
    let processes = config.addresses.len();
    let reducer =
        Rc::new(RefCell::new(plflow_cluster::start(&config).context("cannot start the distributed run")?));
    say(format!("process {process}: connected to {processes} processes, {} shards per batch", args.shards));
    let scratch = (process != 0)
        .then(|| std::env::temp_dir().join(format!("plflow-process-{process}-{}", std::process::id())));
    Ok(Session { process, reducer, children, host_dir, scratch })
}

impl Session {
    /// After a successful run: report the exchange, wait for the started processes and
    /// remove the temporary files.
    pub fn finish(mut self) -> anyhow::Result<()> {
        let s = self.reducer.borrow().stats();
        let mb = |b: u64| b as f64 / 1e6;
        say(format!(
            "process {}: {} exchanges, {:.1} MB sent, {:.1} MB received, {:.2} s exchanging ({:.2} ms each)",
            self.process,
            s.rounds,
            mb(s.bytes_sent),
            mb(s.bytes_received),
            s.seconds,
            1e3 * s.seconds / s.rounds.max(1) as f64
        ));
        self.cleanup();
        // timely says goodbye to every process before the started ones can finish.
        let Session { reducer, mut children, .. } = self;
        drop(reducer);
        for (i, child) in &mut children {
            let status = child.wait().with_context(|| format!("cannot wait for process {i}"))?;
            anyhow::ensure!(status.success(), "process {i} failed ({status}); see its messages above");
        }
        Ok(())
    }

    /// Remove the temporary files (also after a failure).
    pub fn cleanup(&mut self) {
        for dir in [self.host_dir.take(), self.scratch.take()].into_iter().flatten() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Write `line` to stderr in one piece: the processes of a `--workers` run share it, and
/// `eprintln!` may write a line in several calls that interleave with theirs.
fn say(line: String) {
    use std::io::Write as _;
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

/// `n` free loopback addresses (ports the OS hands out, released just before use).
fn loopback_addresses(n: usize) -> anyhow::Result<Vec<String>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free loopback port"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| Ok(format!("127.0.0.1:{}", l.local_addr().context("no local address")?.port())))
        .collect()
}

/// Start process `i` of a `--workers` run: the same command with the host file.
fn spawn(
    args: &DistributedArgs,
    pipeline: &Path,
    sets: &[String],
    hosts: &Path,
    i: usize,
) -> anyhow::Result<(usize, Child)> {
    let exe = std::env::current_exe().context("cannot find the plflow executable to start workers")?;
    let mut cmd = Command::new(exe);
    cmd.arg("run").arg(pipeline).arg("--no-progress");
    for s in sets {
        cmd.arg("--set").arg(s);
    }
    cmd.arg("--hosts").arg(hosts).arg("--process").arg(i.to_string());
    cmd.arg("--shards").arg(args.shards.to_string());
    cmd.arg("--connect-timeout").arg(args.connect_timeout.to_string());
    cmd.arg("--exchange-timeout").arg(args.exchange_timeout.to_string());
    // Their epoch lines repeat process 0's; errors and the exchange report go to stderr.
    cmd.stdin(Stdio::null()).stdout(Stdio::null());
    let child = cmd.spawn().with_context(|| format!("cannot start process {i}"))?;
    Ok((i, child))
}

/// A fingerprint of the job every process must agree on: the pipeline's bytes, the
/// overrides and the shard count (FNV-1a).
fn fingerprint(pipeline: &Path, sets: &[String], shards: usize) -> anyhow::Result<u64> {
    let bytes = std::fs::read(pipeline).with_context(|| format!("cannot read {}", pipeline.display()))?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |b: &[u8]| {
        for &x in b {
            h = (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    feed(&bytes);
    for s in sets {
        feed(&[0]);
        feed(s.as_bytes());
    }
    feed(&(shards as u64).to_le_bytes());
    Ok(h)
}
