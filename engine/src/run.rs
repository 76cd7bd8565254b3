//! The scheduler: executes a checked [`Plan`] node by node in topological order. Datasets are
//! opened, layers initialised from the run's seed (in graph order, so the same seed gives the
//! same weights), training stages stream shuffled batches through the PL step and run their
//! evaluate stages after every epoch, and the run folder receives the reports.

use crate::checkpoint::{Checkpoint, STATE_FORMAT, StateMeta};
use crate::error::EngineError;
use crate::folder_lock::FolderLock;
use crate::graph::DataSource;
use crate::graph::{Op, Split};
use crate::model::{LoadedModel, ModelFiles};
use crate::plan::Plan;
use crate::report::{self, EpochRecord, MetricsFile, Summary, TrainerSummary};
use crate::solver::Solver;
use crate::stages::InitContext;
use indexmap::IndexMap;
use indicatif::{ProgressBar, ProgressStyle};
use petgraph::graph::NodeIndex;
use plflow_datasets::cache::Cache;
use plflow_datasets::location::DataPath;
use plflow_datasets::mnist::Mnist;
use plflow_datasets::stream::BatchStream;
use plflow_datasets::transform::{Stats, flatten, standardize};
use plflow_datasets::{Dataset, DatasetError, Source};
use plflow_ops::Matrix;
use plflow_ops::ledger;
use plflow_ops::network::{Layer, Network, StepStats, argmax};
use plflow_ops::shard::{Reducer, shard_sum};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How to run a plan.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Run folder; `None` for `runs/<name>-<timestamp>`.
    pub out: Option<PathBuf>,
    /// Draw a progress bar (on stderr). Epoch lines are printed either way.
    pub progress: bool,
    /// Where decompressed data is cached.
    pub cache: Cache,
    /// Continue the run in `out` from its checkpoints instead of starting a new one.
    pub resume: bool,
    /// A distributed run's exchange ([`plflow_ops::shard`]): every training step and
    /// evaluation takes this process's share of each batch and sums over all processes;
    /// `None` trains on whole batches in this process.
    pub exchange: Option<Exchange>,
}

/// The exchange of a distributed run, shared by the run's stages.
pub type Exchange = std::rc::Rc<std::cell::RefCell<dyn Reducer>>;

/// What a finished run produced.
#[derive(Debug)]
pub struct RunOutcome {
    /// The run folder.
    pub dir: PathBuf,
    /// The figures written to `summary.json`.
    pub summary: Summary,
}

/// Per-trainer results gathered while running.
struct Trained {
    records: Vec<EpochRecord>,
    /// Trainable values of the network (which is dropped when its stage ends: its model
    /// files are written, and later stages' ledger peaks must not include it).
    parameters: usize,
    state_bytes: usize,
    /// Ledger peak while the stage trained.
    ledger_peak: usize,
}

/// Execute `plan`.
pub fn run(plan: &Plan, opts: &RunOptions) -> Result<RunOutcome, EngineError> {
    let started = Instant::now();
    let trainers = plan.trainers();
    if trainers.is_empty() {
        return Err(crate::SpecError::new(
            &plan.file,
            "nothing to run: the pipeline has no training stage (kind: pl)",
        )
        .into());
    }
    // One process per run folder: a run still going is not an interrupted one.
    let out_lock = opts.out.as_deref().map(FolderLock::take).transpose()?;
    // Running the same command again continues a run that was interrupted (killed, out of
    // power) in the same folder, from its checkpoints.
    let continues = match &opts.out {
        Some(dir) if !opts.resume => interrupted_run(plan, dir)?,
        _ => false,
    };
    if continues {
        println!(
            "{} holds an interrupted run of this pipeline: continuing it",
            opts.out.as_deref().unwrap_or(Path::new("")).display()
        );
    }
    let resume = opts.resume || continues;
    let (dir, pipeline_text) = match (&opts.out, resume) {
        (Some(dir), true) => {
            // The text as first written: it is inside every model file, which must not change.
            let file = dir.join(RESOLVED_PIPELINE);
            let text = std::fs::read_to_string(&file)
                .map_err(EngineError::io(&file, "cannot read the run's pipeline to resume it"))?;
            crate::model::remove_partials(dir)?;
            (dir.clone(), text)
        }
        _ => {
            let dir = report::create_run_dir(opts.out.as_deref(), &plan.spec.name)?;
            let text = resolved_pipeline(plan, &dir)?;
            report::write_atomic(&dir.join(RESOLVED_PIPELINE), text.as_bytes())?;
            (dir, text)
        }
    };
    let _lock = match out_lock {
        Some(lock) => lock,
        None => FolderLock::take(&dir)?,
    };
    // Resumed stages write their finished epochs' records again, from their checkpoints.
    let mut metrics = MetricsFile::create(&dir)?;

    let mut rng = ChaCha8Rng::seed_from_u64(plan.spec.seed);
    let mut datasets: HashMap<NodeIndex, Dataset> = HashMap::new();
    let mut layers: HashMap<NodeIndex, Layer> = HashMap::new();
    let mut trained: HashMap<NodeIndex, Trained> = HashMap::new();
    let mut run_peak = 0usize;
    let mut measured: HashMap<String, Stats> = HashMap::new();
    let mut hashes: HashMap<String, String> = HashMap::new();

    for (i, node) in plan.graph.topological() {
        match &node.op {
            op @ (Op::Data { .. } | Op::Extract(_) | Op::Standardize | Op::Flatten | Op::Join { .. }) => {
                if let Some(stats) = data_stage(plan, i, &mut datasets, opts, None)? {
                    let json =
                        serde_json::to_vec(&serde_json::json!({ "mean": stats.mean, "std": stats.std }))
                            .map_err(|e| EngineError::io(&dir, "cannot encode statistics")(e.into()))?;
                    let file = dir.join(format!("{}-stats.json", node.name));
                    report::write_atomic(&file, &json)?;
                    println!("{}: statistics saved to {}", node.name, file.display());
                    measured.insert(node.name.clone(), stats);
                }
                if let Op::Extract(x) = op {
                    let hash = crate::model::sha256_file(&x.model)
                        .map_err(EngineError::io(&x.model, "cannot read the backbone"))?;
                    hashes.insert(node.name.clone(), hash);
                }
            }
            Op::Layer(kind) => {
                // A layer fed directly by a dataset may draw on its training split.
                let input = plan.graph.input_of(i).and_then(|s| datasets.get(&s)).map(|d| d.train.as_ref());
                let mut ctx = InitContext { rng: &mut rng, input };
                let layer = kind.init(&mut ctx).map_err(|e| EngineError::Train {
                    stage: node.stage.clone(),
                    layer: node.name.clone(),
                    epoch: 0,
                    step: 0,
                    source: e,
                })?;
                layers.insert(i, layer);
            }
            Op::Train { solver, epochs, batch_size, source, layers: chain, init_from } => {
                let mut network = Network {
                    layers: chain
                        .iter()
                        .map(|l| layers.remove(l).expect("layers are initialised before their trainer"))
                        .collect(),
                };
                for (layer, &l) in network.layers.iter_mut().zip(chain) {
                    layer.residual = plan.graph.residual_index(l, chain);
                }
                let data = &datasets[source];
                let evaluators: Vec<Evaluator> = plan
                    .graph
                    .consumers(i)
                    .into_iter()
                    .filter_map(|c| match plan.graph.node(c).op {
                        Op::Evaluate { split, data: other } => Some(Evaluator {
                            name: plan.graph.node(c).name.clone(),
                            split,
                            data: other.map(|d| &datasets[&d]),
                        }),
                        _ => None,
                    })
                    .collect();
                let layer_names: Vec<String> =
                    chain.iter().map(|&l| plan.graph.node(l).name.clone()).collect();
                let job = TrainJob {
                    stage: &node.name,
                    layer_names: &layer_names,
                    solver,
                    epochs: *epochs,
                    batch_size: *batch_size,
                    seed: plan.spec.seed,
                    data,
                    evaluators: &evaluators,
                    progress: opts.progress,
                    exchange: opts.exchange.as_deref(),
                };
                // The stage's own peak is measured from here; the run's keeps what came before.
                run_peak = run_peak.max(ledger::peak_bytes());
                ledger::reset_peak();
                let mut files =
                    ModelFiles::new(plan, i, &dir, &pipeline_text, &measured, &hashes, &data.class_names);
                let checkpoint = if resume { files.read_state()? } else { None };
                let network = match (&checkpoint, init_from) {
                    (Some(c), _) => {
                        drop(network); // replaced, not kept beside its successor
                        c.model.network(plan, chain)?
                    }
                    (None, Some(file)) => {
                        drop(network);
                        let model = LoadedModel::read(file)?;
                        println!(
                            "{}: starting from {} (epoch {})",
                            node.name,
                            file.display(),
                            model.meta.epoch
                        );
                        model.network(plan, chain)?
                    }
                    (None, None) => network,
                };
                let t = job.train(network, checkpoint, &mut metrics, &mut files)?;
                run_peak = run_peak.max(ledger::peak_bytes());
                report::print_peak_sites(&node.name);
                trained.insert(i, t);
            }
            Op::Evaluate { .. } => {} // measured by its trainer after every epoch
        }
    }

    let summaries: Vec<TrainerSummary> =
        trainers.iter().map(|&i| trainer_summary(plan, i, &trained[&i])).collect();
    let last = summaries.last().cloned().expect("the pipeline has a training stage");
    let summary = Summary {
        name: plan.spec.name.clone(),
        pipeline: plan.file.clone(),
        run_dir: dir.clone(),
        seed: plan.spec.seed,
        last,
        trainers: summaries,
        peak_rss_mb: report::peak_rss_mb(),
        run_ledger_peak_mb: report::mb(run_peak.max(ledger::peak_bytes())),
        wall_seconds: started.elapsed().as_secs_f64(),
    };
    let json = serde_json::to_vec_pretty(&summary)
        .map_err(|e| EngineError::io(&dir, "cannot encode the summary")(e.into()))?;
    report::write_atomic(&dir.join(SUMMARY), &json)?;
    Ok(RunOutcome { dir, summary })
}

/// The figures of training stage `i` for `summary.json`.
fn trainer_summary(plan: &Plan, i: NodeIndex, t: &Trained) -> TrainerSummary {
    let node = plan.graph.node(i);
    let Op::Train { solver, epochs, batch_size, .. } = &node.op else {
        unreachable!("trainers are training nodes")
    };
    let last = t.records.last();
    let epoch_seconds: Vec<f64> = t.records.iter().map(|r| r.epoch_seconds).collect();
    let rates: Vec<f64> = t.records.iter().map(|r| r.samples_per_second).collect();
    let sum = |f: fn(&EpochRecord) -> f64| t.records.iter().map(f).sum::<f64>();
    let (fw, pr, so) = (sum(|r| r.forward_seconds), sum(|r| r.propagate_seconds), sum(|r| r.solve_seconds));
    let total = (fw + pr + so).max(1e-12);
    TrainerSummary {
        stage: node.name.clone(),
        test_accuracy: last.and_then(|r| r.test_accuracy),
        test_accuracy_by_epoch: t.records.iter().filter_map(|r| r.test_accuracy).collect(),
        evaluations: last.map(|r| r.evaluations.clone()).unwrap_or_default(),
        epochs: t.records.len(),
        epoch_seconds_median: report::median(&epoch_seconds),
        samples_per_second_median: report::median(&rates),
        train_residual: last.and_then(|r| r.train_residual),
        train_loss: last.and_then(|r| r.train_loss),
        train_accuracy: last.map_or(f64::NAN, |r| r.train_accuracy),
        ledger_peak_mb: report::mb(t.ledger_peak),
        ledger_estimate_mb: report::mb(plan.estimate(i).total()),
        parameters: t.parameters,
        optimizer_state_mb: report::mb(t.state_bytes),
        time_shares: serde_json::json!({ "forward": fw / total, "propagate": pr / total, "solve": so / total }),
        solver: solver_settings(solver, *epochs, *batch_size),
    }
}

/// The run folder's copy of the pipeline as run.
pub const RESOLVED_PIPELINE: &str = "pipeline.yaml";
const RESOLVED_HEADER: (&str, &str) =
    ("# ", " as run by plflow: overrides applied, every default filled in\n");

/// Whether `dir` holds an unfinished run of exactly `plan` (the same resolved pipeline, no
/// summary yet), which the same command continues instead of refusing the folder.
fn interrupted_run(plan: &Plan, dir: &Path) -> Result<bool, EngineError> {
    let Ok(text) = std::fs::read_to_string(dir.join(RESOLVED_PIPELINE)) else { return Ok(false) };
    Ok(!dir.join(SUMMARY).exists() && text == resolved_pipeline(plan, dir)?)
}

/// The run's figures, written last: a folder with it holds a finished run.
pub const SUMMARY: &str = "summary.json";

/// The pipeline as run: a header naming the file, then the spec with overrides applied and
/// every default filled in.
fn resolved_pipeline(plan: &Plan, dir: &std::path::Path) -> Result<String, EngineError> {
    let resolved = serde_norway::to_string(&plan.spec)
        .map_err(|e| EngineError::io(dir, "cannot encode the pipeline")(std::io::Error::other(e)))?;
    let (before, after) = RESOLVED_HEADER;
    Ok(format!("{before}{}{after}{resolved}", plan.file.display()))
}

/// The plan of the run in `dir`, from its resolved pipeline, for `--resume`: named after the
/// pipeline file the run was started with.
pub fn resume_plan(dir: &std::path::Path) -> Result<Plan, EngineError> {
    let file = dir.join(RESOLVED_PIPELINE);
    let text = std::fs::read_to_string(&file).map_err(EngineError::io(
        &file,
        "cannot read the run's pipeline; is this a run folder written by `plflow run`?",
    ))?;
    let spec = crate::parse::parse_pipeline(&text, &file)?;
    let mut plan = Plan::check(spec, &text, &file)?;
    let (before, after) = RESOLVED_HEADER;
    let header = text.split_inclusive('\n').next().unwrap_or_default();
    if let Some(original) = header.strip_prefix(before).and_then(|h| h.strip_suffix(after)) {
        plan.file = PathBuf::from(original);
    }
    Ok(plan)
}

/// Execute data node `i` (a source, an extraction, `standardize` or `flatten`), adding its
/// dataset to `datasets` (its input's dataset must be there). A `standardize` stage uses the
/// `saved` statistics when given (a saved model's), else measures them on the training
/// split and returns them.
pub(crate) fn data_stage(
    plan: &Plan,
    i: NodeIndex,
    datasets: &mut HashMap<NodeIndex, Dataset>,
    opts: &RunOptions,
    saved: Option<Stats>,
) -> Result<Option<Stats>, EngineError> {
    let node = plan.graph.node(i);
    let input = |datasets: &HashMap<NodeIndex, Dataset>| {
        plan.graph
            .input_of(i)
            .and_then(|j| datasets.get(&j))
            .cloned()
            .expect("a data stage's input runs before it")
    };
    let mut measured = None;
    let data = match &node.op {
        Op::Data { source, limit } => {
            let data = open_dataset(source, &opts.cache)
                .map_err(|source| EngineError::Dataset { stage: node.stage.clone(), source })?;
            let data = match limit {
                Some(n) => plflow_datasets::subset::limit(data, *n, plan.spec.seed),
                None => data,
            };
            let (want, _) = node.output.tensor().unwrap_or((&[], 0));
            for split in [&data.train, &data.test] {
                if split.example_shape() != want {
                    return Err(EngineError::DataMismatch {
                        stage: node.stage.clone(),
                        message: format!(
                            "examples have shape {:?}, the pipeline was checked for {want:?}",
                            split.example_shape()
                        ),
                    });
                }
            }
            println!(
                "{}: {} train and {} test examples of shape {}, {} classes",
                node.name,
                data.train.len(),
                data.test.len(),
                node.output.describe(),
                data.class_names.len().max(data.train.classes())
            );
            data
        }
        Op::Extract(x) => {
            let data = extract(x, &input(datasets), plan, &node.name, opts)
                .map_err(|source| EngineError::Extract { stage: node.stage.clone(), source })?;
            let got = data.train.example_len();
            if got != x.dim {
                return Err(EngineError::DataMismatch {
                    stage: node.stage.clone(),
                    message: format!(
                        "the model's `{}` output has {got} values per image; set `dim: {got}`",
                        x.output
                    ),
                });
            }
            data
        }
        Op::Standardize => {
            let input = input(datasets);
            let stats = match saved {
                Some(stats) => stats,
                None => {
                    let t0 = Instant::now();
                    let stats = Stats::measure(input.train.as_ref(), 512);
                    println!(
                        "{}: mean and std of {} features over {} examples in {:.1} s",
                        node.name,
                        stats.mean.len(),
                        input.train.len(),
                        t0.elapsed().as_secs_f64()
                    );
                    measured = Some(stats.clone());
                    stats
                }
            };
            standardize(&input, &stats)
        }
        Op::Flatten => flatten(&input(datasets)),
        Op::Join { inputs } => {
            let parts: Vec<&Dataset> = inputs.iter().map(|j| &datasets[j]).collect();
            let data = plflow_datasets::join::join(&parts)
                .map_err(|message| EngineError::DataMismatch { stage: node.stage.clone(), message })?;
            println!(
                "{}: {} features per example from {}",
                node.name,
                data.train.example_len(),
                inputs.iter().map(|&j| plan.graph.node(j).name.as_str()).collect::<Vec<_>>().join(" + ")
            );
            data
        }
        _ => unreachable!("data_stage runs data nodes only"),
    };
    datasets.insert(i, data);
    Ok(measured)
}

fn solver_settings(solver: &Solver, epochs: usize, batch_size: usize) -> serde_json::Value {
    let mut v = serde_json::Value::Object(solver.settings());
    v["kind"] = solver.kind().into();
    v["epochs"] = epochs.into();
    v["batch_size"] = batch_size.into();
    v
}

/// Redraw the run folder's `curves.svg` from its `metrics.jsonl` so far (every training
/// stage's epochs), so that a run stopped at any epoch leaves its picture.
fn draw_curves(metrics: &MetricsFile) -> Result<(), EngineError> {
    let dir = metrics.dir();
    let label = dir.file_name().map_or_else(|| "run".to_owned(), |n| n.to_string_lossy().into_owned());
    let curves = crate::plot::read_run(dir, &label)?;
    crate::plot::write_svg(&dir.join("curves.svg"), &curves, &format!("{label}: training curves"))
}

struct TrainJob<'a> {
    stage: &'a str,
    layer_names: &'a [String],
    solver: &'a Solver,
    epochs: usize,
    batch_size: usize,
    seed: u64,
    data: &'a Dataset,
    evaluators: &'a [Evaluator<'a>],
    progress: bool,
    exchange: Option<&'a std::cell::RefCell<dyn Reducer>>,
}

/// An evaluate stage of a trainer: the split it measures, of `data` when it names another
/// dataset than the trainer's.
struct Evaluator<'a> {
    name: String,
    split: Split,
    data: Option<&'a Dataset>,
}

impl TrainJob<'_> {
    /// Train `network` for the stage's epochs, or, from a `checkpoint` (whose network it
    /// is), for the epochs it had not finished.
    fn train(
        &self,
        mut network: Network,
        checkpoint: Option<Checkpoint>,
        metrics: &mut MetricsFile,
        files: &mut ModelFiles,
    ) -> Result<Trained, EngineError> {
        let train = &self.data.train;
        let mut trainer = self.solver.trainer(&network);
        let mut records = Vec::with_capacity(self.epochs);
        let mut ledger_peak = 0;
        if let Some(c) = checkpoint {
            c.restore(&mut *trainer, self.solver.kind(), self.layer_names)?;
            if c.state.epoch > self.epochs {
                let message = format!("holds {} epochs; the stage trains {}", c.state.epoch, self.epochs);
                return Err(crate::model::bad_model(&c.model.path, None, message));
            }
            for r in &c.state.records {
                metrics.append(r)?;
            }
            files.replay(c.state.records.iter().map(|r| r.test_accuracy));
            println!("{}: resuming after epoch {} of {}", self.stage, c.state.epoch, self.epochs);
            records = c.state.records;
            ledger_peak = c.state.ledger_peak;
        }
        let steps_per_epoch = train.len().div_ceil(self.batch_size);
        let bar = if self.progress {
            let bar = ProgressBar::new((steps_per_epoch * self.epochs) as u64);
            let style = ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} steps, epoch {msg}, {per_sec}, eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(self.stage.to_owned());
            bar
        } else {
            ProgressBar::hidden()
        };
        let say = |line: String| {
            if self.progress { bar.println(line) } else { println!("{line}") }
        };

        bar.set_position((records.len() * steps_per_epoch) as u64);
        let mut scratch = Matrix::zeros(0, 0);
        for epoch in records.len()..self.epochs {
            bar.set_message(format!("{}/{}", epoch + 1, self.epochs));
            trainer.set_epoch(epoch);
            let mut stream = BatchStream::shuffled(train.as_ref(), self.batch_size, self.seed, epoch as u64);
            let t0 = Instant::now();
            let mut totals = StepStats::default();
            let len = train.example_len();
            let mut x = Matrix::zeros(self.batch_size, len);
            let mut labels = vec![0u32; self.batch_size];
            let mut step = 0;
            while let Some(batch) = stream.next_batch() {
                // A distributed run reads and trains on this process's shards of the batch.
                let mut reducer = self.exchange.map(|e| e.borrow_mut());
                let idx = match &reducer {
                    Some(r) => &batch[r.layout().my_samples(batch.len())],
                    None => batch,
                };
                if idx.len() * len != x.as_slice().len() {
                    x = Matrix::zeros(idx.len(), len);
                }
                x.reshape(idx.len(), len);
                train.read_into(idx, x.as_mut_slice(), &mut labels[..idx.len()]);
                let x_in = network_input(&network, train.example_shape(), &mut x, &mut scratch, idx.len());
                let labels = &labels[..idx.len()];
                let s = match reducer.as_deref_mut() {
                    Some(r) => trainer.step_sharded(&mut network, x_in, labels, batch.len(), r),
                    None => trainer.step(&mut network, x_in, labels),
                };
                let s = s.map_err(|e| EngineError::Train {
                    stage: self.stage.to_owned(),
                    layer: self.layer_names.get(e.layer).cloned().unwrap_or_default(),
                    epoch: epoch + 1,
                    step: step + 1,
                    source: e.source,
                })?;
                totals.add(&s);
                bar.inc(1);
                step += 1;
            }
            drop(stream);
            drop(x);
            let epoch_seconds = t0.elapsed().as_secs_f64();
            let t1 = Instant::now();
            let mut test_accuracy = None;
            let mut evaluations = IndexMap::new();
            let mut parts = Vec::new();
            for e in self.evaluators {
                let acc = self.evaluate(&network, e.split, e.data.unwrap_or(self.data), epoch)?;
                // The summary's test accuracy is the trainer's own test split.
                if e.split == Split::Test && e.data.is_none() && test_accuracy.is_none() {
                    test_accuracy = Some(acc);
                }
                parts.push(format!("{} {:.2}%", e.name, acc * 100.0));
                evaluations.insert(e.name.clone(), acc);
            }
            let classes = network.layers.last().map_or(1, |l| l.output_shape(1).1) as f64;
            let rows = totals.rows.max(1) as f64;
            let is_pl = self.solver.reports_residual();
            let mut record = EpochRecord {
                stage: self.stage.to_owned(),
                epoch: epoch + 1,
                train_residual: is_pl.then(|| totals.loss_sum / (rows * classes)),
                train_loss: (!is_pl).then(|| totals.loss_sum / rows),
                train_accuracy: totals.correct as f64 / totals.rows.max(1) as f64,
                test_accuracy,
                evaluations,
                epoch_seconds,
                samples_per_second: totals.rows as f64 / epoch_seconds.max(1e-9),
                eval_seconds: t1.elapsed().as_secs_f64(),
                save_seconds: 0.0,
                forward_seconds: totals.forward_seconds,
                propagate_seconds: totals.propagate_seconds,
                solve_seconds: totals.solve_seconds,
                ledger_peak_mb: report::mb(ledger::peak_bytes()),
                peak_rss_mb: report::peak_rss_mb(),
            };
            say(format!(
                "{} epoch {:>3}/{}: {}, train {:.2}%, {}, {:.1} s, {:.0} samples/s, ledger peak {:.1} MB",
                self.stage,
                record.epoch,
                self.epochs,
                match (record.train_residual, record.train_loss) {
                    (Some(r), _) => format!("residual {r:.5}"),
                    (None, Some(l)) => format!("loss {l:.4}"),
                    (None, None) => "no loss".to_owned(),
                },
                record.train_accuracy * 100.0,
                if parts.is_empty() { "no evaluation".to_owned() } else { parts.join(", ") },
                record.epoch_seconds,
                record.samples_per_second,
                record.ledger_peak_mb,
            ));
            let t2 = Instant::now();
            files.save(&network, epoch + 1, test_accuracy)?;
            record.save_seconds = t2.elapsed().as_secs_f64();
            records.push(record);
            ledger_peak = ledger_peak.max(ledger::peak_bytes());
            let state = StateMeta {
                format: STATE_FORMAT,
                solver: self.solver.kind().to_owned(),
                epoch: epoch + 1,
                scalars: Default::default(),
                records: records.clone(),
                ledger_peak,
            };
            files.save_state(&network, &*trainer, &state)?;
            // The checkpoint's copy of this record counts the model files only.
            let record = records.last_mut().expect("pushed above");
            record.save_seconds = t2.elapsed().as_secs_f64();
            metrics.append(record)?;
            draw_curves(metrics)?;
        }
        bar.finish_and_clear();
        let state_bytes = trainer.state_bytes();
        let parameters = network.parameter_count();
        Ok(Trained { records, parameters, state_bytes, ledger_peak: ledger_peak.max(ledger::peak_bytes()) })
    }

    fn evaluate(
        &self,
        network: &Network,
        split: Split,
        dataset: &Dataset,
        epoch: usize,
    ) -> Result<f64, EngineError> {
        let data: &dyn Source = match split {
            Split::Train => dataset.train.as_ref(),
            Split::Test => dataset.test.as_ref(),
        };
        let n = data.len();
        let correct = match self.exchange {
            None => self.count_correct(network, data, 0..n, epoch)?,
            // A distributed run counts its shards of the split and sums the counts.
            Some(exchange) => {
                let mut reducer = exchange.borrow_mut();
                let first = reducer.layout().my_samples(n).start;
                let mut count = |_, s: std::ops::Range<usize>| {
                    let c = self.count_correct(network, data, first + s.start..first + s.end, epoch)?;
                    Ok::<_, Counting>(vec![c as f64])
                };
                match shard_sum(&mut *reducer, n, &mut count) {
                    Ok(sums) => sums[0] as usize,
                    Err(Counting::Engine(e)) => return Err(e),
                    Err(Counting::Ops(source)) => return Err(self.failed(String::new(), epoch, 0, source)),
                }
            }
        };
        Ok(correct as f64 / n.max(1) as f64)
    }

    /// Examples `range` of `data` whose largest score is their label.
    fn count_correct(
        &self,
        network: &Network,
        data: &dyn Source,
        range: std::ops::Range<usize>,
        epoch: usize,
    ) -> Result<usize, EngineError> {
        let len = data.example_len();
        let mut labels = vec![0u32; self.batch_size];
        let mut correct = 0usize;
        let mut scratch = Matrix::zeros(0, 0);
        let indices: Vec<usize> = range.collect();
        for idx in indices.chunks(self.batch_size.max(1)) {
            let mut x = Matrix::zeros(idx.len(), len);
            data.read_into(idx, x.as_mut_slice(), &mut labels[..idx.len()]);
            let x_in = network_input(network, data.example_shape(), &mut x, &mut scratch, idx.len());
            let out = self.solver.readout().scores(network, x_in).map_err(|e| {
                self.failed(self.layer_names.get(e.layer).cloned().unwrap_or_default(), epoch, 0, e.source)
            })?;
            correct += (0..idx.len()).filter(|&r| argmax(out.row(r)) == labels[r] as usize).count();
            data.release(idx);
        }
        Ok(correct)
    }

    fn failed(&self, layer: String, epoch: usize, step: usize, source: plflow_ops::OpsError) -> EngineError {
        EngineError::Train { stage: self.stage.to_owned(), layer, epoch: epoch + 1, step, source }
    }
}

/// Why counting a shard of an evaluation failed.
enum Counting {
    Engine(EngineError),
    Ops(plflow_ops::OpsError),
}

impl From<EngineError> for Counting {
    fn from(e: EngineError) -> Self {
        Counting::Engine(e)
    }
}

impl From<plflow_ops::OpsError> for Counting {
    fn from(e: plflow_ops::OpsError) -> Self {
        Counting::Ops(e)
    }
}

/// A batch of `batch` examples (rows of `shape`, channels first) as the network's first layer
/// takes it: one row per example for a dense layer; one row per position with the channels
/// last (NHWC) for a convolution, transposed through `scratch` when there are several channels.
pub(crate) fn network_input<'m>(
    network: &Network,
    shape: &[usize],
    x: &'m mut Matrix,
    scratch: &'m mut Matrix,
    batch: usize,
) -> &'m Matrix {
    let len: usize = shape.iter().product();
    let (rows, cols) = network.layers.first().map_or((batch, len), |l| l.input_shape(batch));
    let channels = if rows == batch { 1 } else { cols };
    if channels == 1 {
        x.reshape(rows, cols);
        return x;
    }
    let positions = len / channels;
    if scratch.as_slice().len() != batch * len {
        *scratch = Matrix::zeros(rows, cols);
    }
    scratch.reshape(rows, cols);
    let (src, dst) = (x.as_slice(), scratch.as_mut_slice());
    for b in 0..batch {
        let (from, to) = (&src[b * len..(b + 1) * len], &mut dst[b * len..(b + 1) * len]);
        for c in 0..channels {
            for p in 0..positions {
                to[p * channels + c] = from[c * positions + p];
            }
        }
    }
    scratch
}

/// Open the dataset a data node names.
fn open_dataset(source: &DataSource, cache: &Cache) -> Result<Dataset, DatasetError> {
    use plflow_datasets::{cifar, format::TableFormat, images, parquet_source, table::TableFile};
    match source {
        DataSource::Mnist { path } => Ok(Mnist::open(&DataPath::resolve(path), cache)?.into()),
        DataSource::Cifar { path, variant } => {
            let dir = DataPath::resolve(path);
            if cifar::is_binary_folder(&dir.resolved, *variant) {
                return cifar::open(&dir, *variant);
            }
            if *variant == (cifar::Variant::Hundred { fine: false }) {
                return Err(DatasetError::format(
                    &dir.resolved,
                    "coarse CIFAR-100 labels need the binary files (`plflow fetch cifar100`); image \
                     folders carry only the fine classes",
                ));
            }
            let options = images::ImageOptions { height: 32, width: 32, channels: 3, resize: false };
            open_images(&dir, &options, cache)
        }
        DataSource::Images { path, options } => open_images(&DataPath::resolve(path), options, cache),
        DataSource::Table { train, test, columns } => {
            let open = |p: &std::path::Path| -> Result<TableFile, DatasetError> {
                let p = DataPath::resolve(p).resolved;
                match TableFormat::from_path(&p) {
                    Some(TableFormat::Parquet) => parquet_source::open(&p, columns, cache),
                    _ => TableFile::open(&p, columns),
                }
            };
            let (mut train, mut test) = (open(train)?, open(test)?);
            let classes = train.classes().max(test.classes());
            train.set_classes(classes);
            test.set_classes(classes);
            let class_names = train.class_names().unwrap_or_else(|| Dataset::numbered_classes(classes));
            Ok(Dataset { train: std::sync::Arc::new(train), test: std::sync::Arc::new(test), class_names })
        }
    }
}

/// Run (or reuse) a feature extraction and open its feature files.
fn extract(
    x: &crate::graph::ExtractOp,
    input: &Dataset,
    plan: &Plan,
    stage: &str,
    opts: &RunOptions,
) -> Result<Dataset, plflow_extract::ExtractError> {
    use plflow_datasets::{format::Columns, parquet_source};
    use std::ops::ControlFlow;
    // Pipelines that share a dataset and a backbone share the default feature files (the
    // fingerprint inside guards against anything else changing).
    let default_stem = || {
        let (kind, limit) = plan
            .graph
            .topological()
            .find(|(_, n)| n.name == stage)
            .and_then(|(i, _)| plan.graph.input_of(i))
            .map(|i| match &plan.graph.node(i).op {
                Op::Data { limit, .. } => (plan.graph.node(i).op.kind(), *limit),
                op => (op.kind(), None),
            })
            .unwrap_or(("data", None));
        let model = x.model.file_stem().map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
        let limit = limit.map_or(String::new(), |n| format!("-limit{n}"));
        opts.cache
            .dir()
            .join("features")
            .join(format!("{kind}{limit}-{model}-s{}-{}", x.preprocess.size, x.output))
    };
    let target = x.path.clone().unwrap_or_else(default_stem);
    let job = plflow_extract::ExtractJob {
        model: x.model.clone(),
        output: x.output.clone(),
        preprocess: x.preprocess.clone(),
        batch: x.batch,
        chunk: x.chunk,
        target,
    };
    let total = (input.train.len() + input.test.len()) as u64;
    let bar = if opts.progress {
        let bar = ProgressBar::new(total);
        let style =
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} images, {per_sec}, eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(stage.to_owned());
        bar
    } else {
        ProgressBar::hidden()
    };
    let started = Instant::now();
    let mut next_line = 0.1;
    let report = job.run(input, &mut |p| {
        let done = if p.split == "train" { p.done } else { input.train.len() + p.done } as u64;
        bar.set_position(done);
        let share = done as f64 / total.max(1) as f64;
        if !opts.progress && share >= next_line && p.extracted > 0 {
            let rate = p.extracted as f64 / started.elapsed().as_secs_f64().max(1e-9);
            let eta = (total - done) as f64 / rate.max(1e-9);
            println!("{stage}: {:.0}% of {total} images, {rate:.0} images/s, eta {eta:.0} s", share * 100.0);
            while next_line <= share {
                next_line += 0.1;
            }
        }
        ControlFlow::Continue(())
    })?;
    bar.finish_and_clear();
    if report.reused {
        println!(
            "{stage}: reusing {} and {} (fingerprint {} matches; the model was not run)",
            report.train.display(),
            report.test.display(),
            &report.fingerprint[..12]
        );
    } else {
        println!(
            "{stage}: extracted {} images in {:.1} s ({:.1} images/s) into {}",
            report.extracted,
            report.seconds,
            report.extracted as f64 / report.seconds.max(1e-9),
            report.train.display()
        );
    }
    let columns = Columns::default();
    let mut train = parquet_source::open(&report.train, &columns, &opts.cache)?;
    let mut test = parquet_source::open(&report.test, &columns, &opts.cache)?;
    let classes = input.train.classes().max(train.classes()).max(test.classes());
    train.set_classes(classes);
    test.set_classes(classes);
    Ok(Dataset {
        train: std::sync::Arc::new(train),
        test: std::sync::Arc::new(test),
        class_names: input.class_names.clone(),
    })
}

fn open_images(
    dir: &DataPath,
    options: &plflow_datasets::images::ImageOptions,
    cache: &Cache,
) -> Result<Dataset, DatasetError> {
    let (data, report) = plflow_datasets::images::open(dir, options, cache)?;
    if report.decoded > 0 {
        println!(
            "decoded {} images in {:.1} s ({:.0}/s) into {}",
            report.decoded,
            report.seconds,
            report.decoded as f64 / report.seconds.max(1e-9),
            report.cache_file.display()
        );
    } else {
        println!("mapped decoded images from {} in {:.2} s", report.cache_file.display(), report.seconds);
    }
    Ok(data)
}

/// The cache named by the environment (`PLFLOW_CACHE_DIR`, else the user's cache folder).
pub fn default_cache() -> Cache {
    Cache::from_env()
}
