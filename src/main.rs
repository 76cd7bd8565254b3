//! `plflow`: the command line over `plflow_engine`. It parses arguments, calls the engine
//! and prints results; errors are printed with their whole chain of causes.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use plflow_engine::Plan;
use plflow_engine::bench::{self, BenchRow, RunFigures};
use plflow_engine::folder_lock::FolderLock;
use plflow_engine::plan::Limits;
use plflow_engine::plot;
use plflow_engine::report;
use plflow_engine::run::{RunOptions, run};
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[cfg(feature = "distributed")]
mod distributed;

/// Train neural networks with Prospective Learning from YAML pipelines.
#[derive(Debug, Parser)]
#[command(name = "plflow", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a pipeline and print its graph: nodes in order, shapes, parameters, memory estimate.
    Check(PipelineArgs),
    /// Print a pipeline's graph as Graphviz DOT.
    Graph(PipelineArgs),
    /// Check and run a pipeline, writing reports to a run folder; or continue an interrupted
    /// run from its last finished epoch (`--resume RUN_DIR`).
    Run {
        /// The pipeline file (YAML); not with --resume, which runs the run folder's copy.
        #[arg(required_unless_present = "resume")]
        pipeline: Option<PathBuf>,
        /// Override a field: `stage.field=value` (or `field=value` at the top level); repeatable.
        #[arg(long = "set", value_name = "STAGE.FIELD=VALUE", conflicts_with = "resume")]
        sets: Vec<String>,
        /// Run folder (default: runs/<name>-<timestamp>). Must be new or empty.
        #[arg(long, value_name = "DIR", conflicts_with = "resume")]
        out: Option<PathBuf>,
        /// Continue the run in RUN_DIR from its checkpoints (state.safetensors): finished
        /// epochs are kept, and the result is the same as an uninterrupted run's.
        #[arg(long, value_name = "RUN_DIR", conflicts_with = "pipeline")]
        resume: Option<PathBuf>,
        /// Never draw the progress bar.
        #[arg(long)]
        no_progress: bool,
        /// Refuse a training stage estimated to need more memory than this (`8G`, `512M`,
        /// `1.5GiB`, bytes); default: the memory available on this machine.
        #[arg(long, value_name = "SIZE", value_parser = parse_size, conflicts_with = "resume")]
        max_memory: Option<f64>,
        #[cfg(feature = "distributed")]
        #[command(flatten)]
        distributed: distributed::DistributedArgs,
    },
    /// Measure a trained model: accuracy, accuracy per class and the confusion matrix,
    /// printed and written as CSV (RUN_DIR/eval-<split>.csv).
    Eval {
        /// A run folder (its model.safetensors) or a model file.
        run: PathBuf,
        /// The split to measure.
        #[arg(long, value_parser = ["test", "train"], default_value = "test")]
        split: String,
        /// Use the run's best.safetensors (best test accuracy) instead of its last model.
        #[arg(long)]
        best: bool,
        /// Override a field of the model's pipeline, e.g. `data.path=other` for another
        /// dataset of the same shape; repeatable.
        #[arg(long = "set", value_name = "STAGE.FIELD=VALUE")]
        sets: Vec<String>,
    },
    /// Classify new inputs with a trained model: image files, folders or tar(.gz) archives of
    /// them, IDX image files, or Arrow/Parquet feature tables. One CSV row per input: its id,
    /// the predicted class and its probability, then the next classes of the top K.
    Predict {
        /// A run folder (its model.safetensors) or a model file.
        run: PathBuf,
        /// The inputs, read in order.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Write the table to FILE, as Parquet for `.parquet`, else CSV (a temporary file,
        /// renamed when complete) instead of CSV on standard output.
        #[arg(long, value_name = "FILE.csv|FILE.parquet")]
        out: Option<PathBuf>,
        /// Classes listed per input, most probable first.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
        top: u16,
        /// Use the run's best.safetensors instead of its last model.
        #[arg(long)]
        best: bool,
        /// Inputs per batch.
        #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65536))]
        batch: u32,
    },
    /// Write a trained model as a standard ONNX file (opset 13), from the training stage's
    /// input (the dataset's examples, or the extracted features) to the network's outputs,
    /// then check it in tract against plflow's own forward pass.
    Export {
        /// A run folder (its model.safetensors) or a model file.
        run: PathBuf,
        /// The ONNX file to write.
        #[arg(long, value_name = "FILE.onnx")]
        onnx: PathBuf,
        /// Use the run's best.safetensors instead of its last model.
        #[arg(long)]
        best: bool,
        /// Put the extraction's backbone and image preparation in front, so that the file
        /// maps images (`[N, C, H, W]` in [0, 1]) to outputs.
        #[arg(long)]
        with_backbone: bool,
        /// Seeded inputs to compare tract's outputs with plflow's on (default 1000, or 16
        /// with the backbone); 0 skips the check.
        #[arg(long, value_name = "N")]
        verify: Option<usize>,
    },
    /// Download a dataset (mnist, cifar10, cifar100) or a backbone model (resnet18: the ONNX
    /// Model Zoo's ImageNet ResNet-18, the paper's) from its canonical URL, check the SHA-256
    /// of every file, and put it in place atomically: a dataset into DIR/<name>, a model as
    /// DIR/<file name>.
    Fetch {
        /// Dataset or model name.
        #[arg(value_parser = ["mnist", "cifar10", "cifar100", "resnet18"])]
        dataset: String,
        /// Data folder for a dataset (default: $PLFLOW_DATA_DIR, else ./data); model folder
        /// for a model (default: $PLFLOW_MODEL_DIR, else ./models).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Fetch the files from this base URL instead (a local mirror); checksums still apply.
        #[arg(long, value_name = "URL")]
        mirror: Option<String>,
    },
    /// Print the JSON Schema of pipeline files. Saved beside the pipelines, it lets an editor
    /// with a YAML language server complete and check them: start a pipeline with
    /// `# yaml-language-server: $schema=plflow.schema.json`.
    Schema,
    /// Describe a dataset file, folder or archive (format, rows, shapes, labels, statistics),
    /// or an ONNX model (inputs, outputs and the tensors before them, any of which an
    /// extraction's `output` may name).
    Inspect {
        /// IDX file (gzip'd or not), MNIST or CIFAR folder, image folder or archive, CIFAR .bin,
        /// Arrow IPC or Parquet table, or `.onnx` model.
        path: PathBuf,
    },
    /// Run a pipeline over a grid of settings, each point in its own process; a rerun with
    /// the same --out skips finished points and reruns interrupted ones. Writes sweep.md,
    /// sweep.csv and, for one or two axes, sweep.svg.
    Sweep {
        /// The pipeline file.
        pipeline: PathBuf,
        /// A field and its values, `stage.field=v1,v2,...`; repeat for a grid (every
        /// combination runs, the last axis varying fastest).
        #[arg(long = "grid", value_name = "STAGE.FIELD=V1,V2", required = true)]
        grids: Vec<String>,
        /// Train every point for this many epochs (sets `<stage>.epochs` of every training stage).
        #[arg(long)]
        epochs: Option<usize>,
        /// Override a field in every point: `stage.field=value`; repeatable.
        #[arg(long = "set", value_name = "STAGE.FIELD=VALUE")]
        sets: Vec<String>,
        /// The sweep's folder (default: runs/sweep-<pipeline file name>); give the same one to resume.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Refuse points whose training stages are estimated to need more memory than this.
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        max_memory: Option<f64>,
    },
    /// Draw the training curves of runs, overlaid, as one SVG: accuracy, loss or residual,
    /// seconds per epoch and memory by epoch.
    Plot {
        /// Run folders (each holds the metrics.jsonl a run writes).
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// The SVG file to write.
        #[arg(short, long, value_name = "FILE.svg", default_value = "curves.svg")]
        out: PathBuf,
    },
    /// Run several pipelines, each in its own process, and compare them in one table
    /// (test accuracy, seconds per epoch, peak RSS, ledger peak), written as CSV and Markdown,
    /// with a chart of their mean curves (bench.svg).
    Bench {
        /// Pipeline files; each is one row.
        #[arg(required = true)]
        pipelines: Vec<PathBuf>,
        /// Train every pipeline for this many epochs (sets `<stage>.epochs` of every training stage).
        #[arg(long)]
        epochs: Option<usize>,
        /// Runs per pipeline; run k uses the pipeline's seed + k.
        #[arg(long, default_value_t = 1)]
        repeat: usize,
        /// Folder for the runs and the tables (default: runs/bench-<timestamp>).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Override a field in every pipeline: `stage.field=value`; repeatable.
        #[arg(long = "set", value_name = "STAGE.FIELD=VALUE")]
        sets: Vec<String>,
        /// Refuse pipelines whose training stages are estimated to need more memory than
        /// this (default: the memory available on this machine).
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        max_memory: Option<f64>,
    },
}

#[derive(Debug, clap::Args)]
struct PipelineArgs {
    /// The pipeline file (YAML).
    pipeline: PathBuf,
    /// Override a field: `stage.field=value` (or `field=value` at the top level); repeatable.
    #[arg(long = "set", value_name = "STAGE.FIELD=VALUE")]
    sets: Vec<String>,
    /// Refuse a training stage estimated to need more memory than this (`8G`, `512M`,
    /// `1.5GiB`, bytes); default: the memory available on this machine.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_memory: Option<f64>,
}

impl PipelineArgs {
    fn plan(&self) -> anyhow::Result<Plan> {
        Plan::load_within(&self.pipeline, &self.sets, &limits(self.max_memory))
            .context("the pipeline is invalid; nothing was run")
    }
}

/// The limits of `--max-memory`, or the machine's.
fn limits(max_memory: Option<f64>) -> Limits {
    max_memory.map_or_else(Limits::machine, Limits::max_memory)
}

/// A size in bytes: a number with an optional unit, `K`/`M`/`G`/`T` (powers of 1000, or of
/// 1024 with `i`: `GiB`) and an optional `B`.
fn parse_size(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let digits = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let value: f64 =
        number.parse().map_err(|_| format!("`{text}` is not a size such as 8G, 512M or 1.5GiB"))?;
    let unit = unit.trim().to_ascii_uppercase();
    let unit = unit.strip_suffix('B').unwrap_or(&unit);
    let (prefix, binary) = match unit.strip_suffix('I') {
        Some(p) => (p, true),
        None => (unit, false),
    };
    let power = match prefix {
        "" => 0,
        "K" => 1,
        "M" => 2,
        "G" => 3,
        "T" => 4,
        _ => {
            return Err(format!(
                "`{text}`: unknown unit; use K, M, G or T (KiB, MiB, GiB, TiB for powers of 1024)"
            ));
        }
    };
    let base: f64 = if binary { 1024.0 } else { 1000.0 };
    let bytes = value * base.powi(power);
    if bytes > 0.0 && bytes.is_finite() {
        Ok(bytes)
    } else {
        Err(format!("`{text}`: the size must be positive"))
    }
}

/// Keep freed memory in the process, in one pool. A training step allocates and frees the
/// same large activation buffers every step; glibc's defaults return them to the kernel each
/// time, and faulting them back in (with TLB shootdowns across cores) took a quarter of a
/// CNN step. Peak memory is unchanged: the buffers are reused, not added. One arena for all
/// threads: with an arena per thread, a block freed by one worker could only be reused by
/// that worker, and the other allocated anew (PL on CIFAR-100 features peaked at 55.2 MB of
/// RSS in one run, 44.8 with one arena; Adam 44.4 either way).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    // SAFETY: mallopt only tunes glibc's allocator and is called once, before any other thread
    // exists; invalid values are rejected by glibc (it returns 0) without other effect.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

/// The closing lines of `plflow run`.
fn print_outcome(outcome: &plflow_engine::run::RunOutcome) {
    let s = &outcome.summary;
    for t in &s.trainers {
        let label = if s.trainers.len() > 1 { format!("done `{}`", t.stage) } else { "done".into() };
        println!(
            "{label}: test accuracy {}, {} epochs, median {:.2} s/epoch, ledger peak {:.1} MB",
            t.test_accuracy.map_or("n/a".into(), |a| format!("{:.2}%", a * 100.0)),
            t.epochs,
            t.epoch_seconds_median,
            t.ledger_peak_mb,
        );
    }
    println!(
        "peak RSS {}, {:.1} s; reports in {}",
        s.peak_rss_mb.map_or("n/a".into(), |m| format!("{m:.1} MB")),
        s.wall_seconds,
        outcome.dir.display()
    );
}

fn main() -> ExitCode {
    keep_freed_memory();
    plflow_engine::main_thread_in_pool();
    // A diagnostic: which source lines hold each training stage's ledger peak (stderr).
    if std::env::var_os("PLFLOW_LEDGER_SITES").is_some_and(|v| !v.is_empty() && v != "0") {
        plflow_engine::report::trace_peak_sites();
    }
    match execute(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that stopped early (`plflow predict ... | head`) is not a failure.
        Err(err)
            if err.chain().any(|c| {
                c.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(err) => {
            // One write: the processes of a distributed run share stderr.
            let mut message = format!("error: {err}\n");
            for cause in err.chain().skip(1) {
                message.push_str(&format!("  caused by: {cause}\n"));
            }
            let _ = std::io::Write::write_all(&mut std::io::stderr(), message.as_bytes());
            ExitCode::FAILURE
        }
    }
}

fn execute(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Check(args) => print!("{}", args.plan()?.describe()),
        Command::Graph(args) => {
            let plan = args.plan()?;
            print!("{}", plan.graph.dot(&plan.spec.name));
        }
        Command::Run {
            pipeline,
            sets,
            out,
            resume,
            no_progress,
            max_memory,
            #[cfg(feature = "distributed")]
            distributed,
        } => {
            let (plan, out) = match (&pipeline, resume) {
                (Some(file), _) => {
                    let args = PipelineArgs { pipeline: file.clone(), sets: sets.clone(), max_memory };
                    (args.plan()?, out)
                }
                (None, Some(dir)) => {
                    let plan = plflow_engine::run::resume_plan(&dir)
                        .with_context(|| format!("cannot resume {}", dir.display()))?;
                    (plan, Some(dir))
                }
                (None, None) => anyhow::bail!("give a pipeline file, or --resume RUN_DIR"),
            };
            print!("{}", plan.describe());
            let opts = RunOptions {
                resume: pipeline.is_none(),
                out,
                progress: !no_progress && std::io::stdout().is_terminal(),
                cache: plflow_engine::run::default_cache(),
                exchange: None,
            };
            #[cfg(feature = "distributed")]
            if distributed.enabled() {
                let file = pipeline.as_deref().context("a distributed run needs the pipeline file")?;
                return distributed::run(&distributed, &plan, file, &sets, opts);
            }
            let outcome =
                run(&plan, &opts).with_context(|| format!("run of {} failed", plan.file.display()))?;
            print_outcome(&outcome);
        }
        Command::Eval { run, split, best, sets } => eval(&run, &split, best, &sets)?,
        Command::Export { run, onnx, best, with_backbone, verify } => {
            let (model, _) = model_file(&run, best)?;
            let verify = verify.unwrap_or(if with_backbone { 16 } else { 1000 });
            let shape = plflow_engine::export::export(&model, &onnx, with_backbone)
                .with_context(|| format!("cannot export {}", model.display()))?;
            let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
            println!(
                "wrote {}: input `{}` [N, {}] -> output `{}`",
                onnx.display(),
                plflow_engine::export::INPUT,
                dims.join(", "),
                plflow_engine::export::OUTPUT
            );
            if verify > 0 {
                let diff = plflow_engine::export::verify(&model, &onnx, verify, with_backbone)
                    .with_context(|| format!("cannot check {}", onnx.display()))?;
                println!("checked in tract on {verify} inputs: largest difference from plflow {diff:.2e}");
                anyhow::ensure!(diff <= 1e-4, "tract and plflow differ by {diff:e} (more than 1e-4)");
            }
        }
        Command::Predict { run, inputs, out, top, best, batch } => {
            predict(&run, &inputs, out.as_deref(), usize::from(top), best, batch as usize)?
        }
        Command::Fetch { dataset, dir, mirror } => {
            use plflow_engine::datasets::fetch::{self, Kind};
            use plflow_engine::datasets::location::{DATA_DIR_ENV, MODEL_DIR_ENV};
            let entry = fetch::catalog()
                .into_iter()
                .find(|e| e.name == dataset)
                .with_context(|| format!("nothing named {dataset} to fetch"))?;
            let (env, default) = match entry.kind {
                Kind::Dataset => (DATA_DIR_ENV, "data"),
                Kind::Model => (MODEL_DIR_ENV, "models"),
            };
            let dir = dir
                .or_else(|| std::env::var_os(env).filter(|v| !v.is_empty()).map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from(default));
            let target = fetch::fetch(&entry, &dir, mirror.as_deref(), &mut |line| println!("{line}"))
                .with_context(|| format!("cannot fetch {dataset}"))?;
            println!("{dataset} is ready in {}", target.display());
            if std::env::var_os(env).is_none() {
                println!("pipelines find it with {env}={}", dir.display());
            }
        }
        Command::Schema => {
            println!("{:#}", plflow_engine::spec::json_schema());
        }
        Command::Inspect { path } if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx")) => {
            if !std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
                anyhow::bail!("cannot inspect {}: not a readable regular file", path.display());
            }
            let text = plflow_engine::extract::backbone::describe(&path)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("cannot inspect {}", path.display()))?;
            print!("{text}");
        }
        Command::Inspect { path } => {
            let cache = plflow_engine::run::default_cache();
            let text = plflow_engine::datasets::inspect::inspect(&path, &cache)
                .with_context(|| format!("cannot inspect {}", path.display()))?;
            print!("{text}");
        }
        Command::Sweep { pipeline, grids, epochs, sets, out, max_memory } => {
            sweep(&pipeline, &grids, epochs, &sets, out, max_memory)?
        }
        Command::Plot { runs, out } => {
            let mut curves = Vec::new();
            for run in &runs {
                let label =
                    run.file_name().map_or_else(|| run.display().to_string(), |n| n.to_string_lossy().into());
                curves.extend(
                    plot::read_run(run, &label).with_context(|| format!("cannot plot {}", run.display()))?,
                );
            }
            plot::write_svg(&out, &curves, "plflow runs")?;
            println!("{} curve(s) of {} run(s) drawn in {}", curves.len(), runs.len(), out.display());
        }
        Command::Bench { pipelines, epochs, repeat, out, sets, max_memory } => {
            bench(&pipelines, epochs, repeat, out, &sets, max_memory)?
        }
    }
    Ok(())
}

/// The model file a run folder or file argument names, and the folder it is in.
fn model_file(run: &Path, best: bool) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (model, dir) = if run.is_dir() {
        (run.join(if best { "best.safetensors" } else { "model.safetensors" }), run.to_path_buf())
    } else {
        (run.to_path_buf(), run.parent().map_or_else(|| PathBuf::from("."), PathBuf::from))
    };
    anyhow::ensure!(
        model.is_file(),
        "{} does not exist: give a run folder written by `plflow run` (it holds model.safetensors) or a model file",
        model.display()
    );
    Ok((model, dir))
}

fn predict(
    run: &Path,
    inputs: &[PathBuf],
    out: Option<&Path>,
    top: usize,
    best: bool,
    batch: usize,
) -> anyhow::Result<()> {
    use plflow_engine::datasets::rows::{Cell, Kind, RowsWriter};
    let (model, _) = model_file(run, best)?;
    let predictor = plflow_engine::predict::Predictor::load(&model)
        .with_context(|| format!("cannot use {}", model.display()))?;
    let names = &predictor.class_names;
    let top = top.min(names.len().max(1));
    let mut columns = vec![
        ("id".to_owned(), Kind::Text),
        ("class".into(), Kind::Text),
        ("probability".into(), Kind::Number),
    ];
    for k in 2..=top {
        columns.push((format!("class_{k}"), Kind::Text));
        columns.push((format!("probability_{k}"), Kind::Number));
    }
    let mut table = match out {
        Some(file) => RowsWriter::create(file, &columns)?,
        None => RowsWriter::stdout(&columns)?,
    };
    let started = std::time::Instant::now();
    let cache = plflow_engine::run::default_cache();
    let n = predictor
        .predict(inputs, top, batch, &cache, &mut |p| {
            let mut row = vec![Cell::Text(&p.id)];
            for (c, prob) in &p.top {
                row.extend([Cell::Text(&names[*c]), Cell::Number(*prob)]);
            }
            table.write(&row).map_err(|e| {
                let to = out.unwrap_or(Path::new("standard output"));
                plflow_engine::EngineError::io(to, "cannot write the predictions")(std::io::Error::other(e))
            })
        })
        .with_context(|| format!("cannot predict with {}", model.display()))?;
    table.finish()?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "predicted {n} inputs in {secs:.2} s ({:.0}/s){}",
        n as f64 / secs.max(1e-9),
        out.map_or(String::new(), |f| format!("; written to {}", f.display()))
    );
    Ok(())
}

fn eval(run: &Path, split: &str, best: bool, sets: &[String]) -> anyhow::Result<()> {
    use plflow_engine::graph::Split;
    let (model, dir) = model_file(run, best)?;
    let split = if split == "train" { Split::Train } else { Split::Test };
    let opts = RunOptions {
        out: None,
        progress: false,
        cache: plflow_engine::run::default_cache(),
        resume: false,
        exchange: None,
    };
    let report = plflow_engine::eval::evaluate(&model, split, sets, &opts)
        .with_context(|| format!("cannot evaluate {}", model.display()))?;
    print!("{}", report.table());
    let name = if split == Split::Train { "eval-train.csv" } else { "eval-test.csv" };
    let csv = dir.join(name);
    report::write_atomic(&csv, report.csv().as_bytes())?;
    println!("per-class accuracy and confusion matrix written to {}", csv.display());
    Ok(())
}

fn bench(
    pipelines: &[PathBuf],
    epochs: Option<usize>,
    repeat: usize,
    out: Option<PathBuf>,
    sets: &[String],
    max_memory: Option<f64>,
) -> anyhow::Result<()> {
    // Check everything before spending minutes on the first run. `--epochs` sets the
    // epochs of every training stage of each pipeline.
    let load = |p: &PathBuf| -> anyhow::Result<(Plan, Vec<String>)> {
        let invalid = || format!("{} is invalid; nothing was run", p.display());
        let plan = Plan::load(p, sets).with_context(invalid)?;
        if epochs.is_none() {
            return Ok((plan, sets.to_vec()));
        }
        let with_epochs: Vec<String> = sets.iter().cloned().chain(epoch_sets(&plan, epochs)).collect();
        Ok((Plan::load(p, &with_epochs).with_context(invalid)?, with_epochs))
    };
    let plans = pipelines.iter().map(load).collect::<anyhow::Result<Vec<_>>>()?;
    let (dir, _lock) = bench_dir(out.as_deref(), pipelines, repeat, epochs, sets)?;
    let exe = std::env::current_exe().context("cannot find the plflow executable")?;
    // One row per training stage: `name`, or `name/stage` for pipelines with several.
    let mut rows: Vec<BenchRow> = Vec::new();
    // Each method's epochs, run by run, for the chart.
    let mut epochs_of: Vec<(String, Vec<Vec<report::EpochRecord>>)> = Vec::new();
    for (path, (plan, sets)) in pipelines.iter().zip(&plans) {
        let several = plan.trainers().len() > 1;
        for k in 0..repeat.max(1) {
            let run_dir = dir.join(format!("{}-r{}", plan.spec.name, k + 1));
            let header = format!("== {} run {}/{}", plan.spec.name, k + 1, repeat.max(1));
            if run_dir.join(plflow_engine::run::SUMMARY).is_file() {
                println!("{header}: finished before, skipped");
            } else {
                if run_dir.exists() {
                    println!("{header}: interrupted before, run again");
                    remove_run(&run_dir)?;
                }
                println!("{header} -> {}", run_dir.display());
                bench_run(&exe, path, &run_dir, max_memory, sets, plan.spec.seed + k as u64)?;
            }
            for (stage, figures) in RunFigures::read(&run_dir)? {
                let method =
                    if several { format!("{}/{stage}", plan.spec.name) } else { plan.spec.name.clone() };
                match rows.iter_mut().find(|r| r.method == method) {
                    Some(row) => row.runs.push(figures),
                    None => rows.push(BenchRow { method, runs: vec![figures] }),
                }
            }
            for curve in plot::read_run(&run_dir, &plan.spec.name)? {
                match epochs_of.iter_mut().find(|(m, _)| *m == curve.label) {
                    Some((_, runs)) => runs.push(curve.records),
                    None => epochs_of.push((curve.label, vec![curve.records])),
                }
            }
        }
    }
    // bench.md last: a folder with it holds a finished bench.
    report::write_atomic(&dir.join("bench.csv"), bench::csv(&rows).as_bytes())?;
    let curves: Vec<plot::Curve> = epochs_of.iter().map(|(m, runs)| plot::mean_curve(m, runs)).collect();
    let title = format!("plflow bench: mean of {} run(s) per method", repeat.max(1));
    plot::write_svg(&dir.join("bench.svg"), &curves, &title)?;
    let md = bench::markdown(&rows);
    report::write_atomic(&dir.join("bench.md"), md.as_bytes())?;
    println!("\n{md}\ntables written to {}", dir.display());
    Ok(())
}

/// The bench's folder, locked: a new one, or `out` again when it holds an interrupted bench
/// of the same pipelines and settings (a rerun of the same command after a crash continues
/// it).
fn bench_dir(
    out: Option<&Path>,
    pipelines: &[PathBuf],
    repeat: usize,
    epochs: Option<usize>,
    sets: &[String],
) -> anyhow::Result<(PathBuf, FolderLock)> {
    use plflow_engine::sweep::{self, PointSettings, PointState};
    let mut grid: Vec<String> = pipelines.iter().map(|p| p.display().to_string()).collect();
    grid.push(format!("repeat={}", repeat.max(1)));
    grid.extend(epochs.map(|e| format!("epochs={e}")));
    let settings = PointSettings { grid, sets: sets.to_vec() };
    let lock = out.map(FolderLock::take).transpose()?;
    if let Some(dir) = out.filter(|d| !d.join("bench.md").exists())
        && sweep::point_state(dir, &settings)? != PointState::New
    {
        println!("{} holds an interrupted bench of these pipelines: continuing it", dir.display());
        plflow_engine::model::remove_partials(dir)?;
        return Ok((dir.to_path_buf(), lock.expect("taken above")));
    }
    let dir = report::create_run_dir(out, "bench")?;
    let lock = match lock {
        Some(lock) => lock,
        None => FolderLock::take(&dir)?,
    };
    sweep::write_settings(&dir, &settings)?;
    Ok((dir, lock))
}

/// Remove the interrupted run `dir` of a bench or sweep, unless a process still writes it
/// (a `plflow run` left behind when only its bench or sweep was killed).
fn remove_run(dir: &Path) -> anyhow::Result<()> {
    let lock = FolderLock::take(dir)?;
    std::fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    drop(lock);
    Ok(())
}

/// One bench run: `plflow run` in its own process, so that its peak RSS is its own.
fn bench_run(
    exe: &Path,
    pipeline: &Path,
    run_dir: &Path,
    max_memory: Option<f64>,
    sets: &[String],
    seed: u64,
) -> anyhow::Result<()> {
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("run").arg(pipeline).arg("--no-progress").arg("--out").arg(run_dir);
    if let Some(bytes) = max_memory {
        cmd.arg("--max-memory").arg(format!("{bytes}"));
    }
    for set in sets {
        cmd.arg("--set").arg(set);
    }
    cmd.arg("--set").arg(format!("seed={seed}"));
    let status = cmd.status().with_context(|| format!("cannot start {}", exe.display()))?;
    anyhow::ensure!(
        status.success(),
        "the run of {} failed ({status}); see above. Rerun the same command to continue the bench",
        pipeline.display()
    );
    Ok(())
}

/// The `--set` values that give every training stage of `plan` `epochs` epochs.
fn epoch_sets(plan: &Plan, epochs: Option<usize>) -> Vec<String> {
    let Some(e) = epochs else { return Vec::new() };
    plan.trainers().iter().map(|&t| format!("{}.epochs={e}", plan.graph.node(t).stage)).collect()
}

fn sweep(
    pipeline: &Path,
    grids: &[String],
    epochs: Option<usize>,
    sets: &[String],
    out: Option<PathBuf>,
    max_memory: Option<f64>,
) -> anyhow::Result<()> {
    use plflow_engine::sweep::{self, Axis, PointFigures, PointSettings, PointState};
    let axes = grids
        .iter()
        .map(|g| Axis::parse(g).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for (i, a) in axes.iter().enumerate() {
        anyhow::ensure!(!axes[..i].iter().any(|b| b.key == a.key), "--grid {}: given twice", a.key);
    }
    let invalid = || format!("{} is invalid; nothing was run", pipeline.display());
    let plan = Plan::load(pipeline, sets).with_context(invalid)?;
    let common: Vec<String> = sets.iter().cloned().chain(epoch_sets(&plan, epochs)).collect();
    let points = sweep::points(&axes);
    // Every point is checked before the first one runs.
    for p in &points {
        let all: Vec<String> = common.iter().chain(p).cloned().collect();
        Plan::load(pipeline, &all)
            .with_context(|| format!("the point {} is invalid; nothing was run", p.join(" ")))?;
    }
    let stem = pipeline.file_stem().map_or("pipeline".into(), |s| s.to_string_lossy().into_owned());
    let out = out.unwrap_or_else(|| Path::new("runs").join(format!("sweep-{stem}")));
    let _lock = FolderLock::take(&out)?;
    plflow_engine::model::remove_partials(&out)?;
    let exe = std::env::current_exe().context("cannot find the plflow executable")?;
    let mut figures = Vec::new();
    for (k, p) in points.iter().enumerate() {
        let dir = sweep::point_dir(&out, k);
        let settings = PointSettings { grid: p.clone(), sets: common.clone() };
        let header = format!("== point {}/{}: {}", k + 1, points.len(), p.join(" "));
        match sweep::point_state(&dir, &settings)? {
            PointState::Done => println!("{header}: finished before, skipped"),
            state => {
                let run_dir = dir.join("run");
                if state == PointState::Interrupted && run_dir.exists() {
                    println!("{header}: interrupted before, run again");
                    remove_run(&run_dir)?;
                } else {
                    println!("{header} -> {}", run_dir.display());
                }
                sweep::write_settings(&dir, &settings)?;
                let mut cmd = std::process::Command::new(&exe);
                cmd.arg("run").arg(pipeline).arg("--no-progress").arg("--out").arg(&run_dir);
                if let Some(bytes) = max_memory {
                    cmd.arg("--max-memory").arg(format!("{bytes}"));
                }
                for set in common.iter().chain(p) {
                    cmd.arg("--set").arg(set);
                }
                let status = cmd.status().with_context(|| format!("cannot start {}", exe.display()))?;
                anyhow::ensure!(
                    status.success(),
                    "point {} ({}) failed ({status}); see above. Rerun the same command to resume",
                    k + 1,
                    p.join(" ")
                );
            }
        }
        let values =
            p.iter().map(|kv| kv.split_once('=').map_or(kv.as_str(), |(_, v)| v).to_owned()).collect();
        figures.push(PointFigures::read(&dir, values)?);
    }
    let md = sweep::markdown(&axes, &figures);
    report::write_atomic(&out.join("sweep.md"), md.as_bytes())?;
    report::write_atomic(&out.join("sweep.csv"), sweep::csv(&axes, &figures).as_bytes())?;
    let title = format!("plflow sweep of {}", pipeline.display());
    if let Some(svg) = plot::sweep_svg(&axes, &figures, &title)? {
        report::write_atomic(&out.join("sweep.svg"), svg.as_bytes())?;
    }
    println!("\n{md}\ntables written to {}", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_take_decimal_and_binary_units() {
        assert_eq!(parse_size("512"), Ok(512.0));
        assert_eq!(parse_size("8G"), Ok(8e9));
        assert_eq!(parse_size("1.5GiB"), Ok(1.5 * 1024f64.powi(3)));
        assert_eq!(parse_size("512mb"), Ok(512e6));
        assert_eq!(parse_size(" 2 KiB "), Ok(2048.0));
        assert!(parse_size("8X").is_err_and(|e| e.contains("unknown unit")));
        assert!(parse_size("G").is_err() && parse_size("0").is_err() && parse_size("-1G").is_err());
    }
}
