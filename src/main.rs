//! `plflow`: the command line over `plflow_engine`. It parses arguments, calls the engine
//! and prints results; errors are printed with their whole chain of causes.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use plflow_engine::Plan;
use plflow_engine::run::{RunOptions, run};
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

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
    /// Check and run a pipeline, writing reports to a run folder.
    Run {
        #[command(flatten)]
        pipeline: PipelineArgs,
        /// Run folder (default: runs/<name>-<timestamp>). Must be new or empty.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Never draw the progress bar.
        #[arg(long)]
        no_progress: bool,
    },
}

#[derive(Debug, clap::Args)]
struct PipelineArgs {
    /// The pipeline file (YAML).
    pipeline: PathBuf,
    /// Override a field: `stage.field=value` (or `field=value` at the top level); repeatable.
    #[arg(long = "set", value_name = "STAGE.FIELD=VALUE")]
    sets: Vec<String>,
}

impl PipelineArgs {
    fn plan(&self) -> anyhow::Result<Plan> {
        Plan::load(&self.pipeline, &self.sets).context("the pipeline is invalid; nothing was run")
    }
}

fn main() -> ExitCode {
    match execute(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
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
        Command::Run { pipeline, out, no_progress } => {
            let plan = pipeline.plan()?;
            print!("{}", plan.describe());
            let opts = RunOptions {
                out,
                progress: !no_progress && std::io::stdout().is_terminal(),
                cache: plflow_engine::run::default_cache(),
            };
            let outcome = run(&plan, &opts)
                .with_context(|| format!("run of {} failed", pipeline.pipeline.display()))?;
            let s = &outcome.summary;
            println!(
                "done: test accuracy {}, {} epochs, median {:.2} s/epoch, peak RSS {}, ledger peak {:.1} MB; reports in {}",
                s.test_accuracy.map_or("n/a".into(), |a| format!("{:.2}%", a * 100.0)),
                s.epochs,
                s.epoch_seconds_median,
                s.peak_rss_mb.map_or("n/a".into(), |m| format!("{m:.1} MB")),
                s.ledger_peak_mb,
                outcome.dir.display()
            );
        }
    }
    Ok(())
}
