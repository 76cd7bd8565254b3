//! From a [`PipelineSpec`] to a checked [`Plan`]: every reference resolved, no cycles, every
//! stage fed the kind of data it needs, shapes agreeing across edges, numeric settings in
//! range, and an estimate of the memory a run will hold. All before any data is read.

use crate::error::{EngineError, SpecError};
use crate::graph::{DataSource, Edge, Graph, Init, Node, Op, Port, Solver, Split};
use crate::parse::parse_with_overrides;
use crate::spec::{
    ActivationSpec, AdamSpec, CifarLabels, ErrorScaleSpec, InitSpec, LambdaScale, MaskSpec, PipelineSpec,
    PlSpec, PrecisionSpec, SgdSpec, SolveSpec, SparseSpec, SplitSpec, StageSpec,
};
use indexmap::IndexMap;
use petgraph::graph::{DiGraph, NodeIndex};
use plflow_datasets::cifar::Variant;
use plflow_datasets::images::ImageOptions;
use plflow_datasets::location::DataPath;
use plflow_datasets::table::Columns;
use plflow_ops::activation::Activation;
use plflow_ops::backprop::{GRADIENT_TILE_ROWS, Optimizer};
use plflow_ops::dense::error_scratch_bytes as dense_error_scratch_bytes;
use plflow_ops::depthwise::Geometry;
use plflow_ops::pl::{ErrorScale, PlConfig};
use plflow_ops::solve::{Delivery, Precision, RidgeConfig, RidgeScale, SolvePath, workspace_bytes};
use plflow_ops::update::{Metaplasticity, Orthogonalize, UpdateRule};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A checked pipeline, ready to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The pipeline file.
    pub file: PathBuf,
    /// The pipeline with overrides applied and every default filled in.
    pub spec: PipelineSpec,
    /// The dataflow graph.
    pub graph: Graph,
}

/// Bytes a training stage is expected to hold at its peak, by purpose.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// Weights and biases.
    pub parameters: usize,
    /// Per-weight optimiser state (momentum, power-iteration vectors).
    pub state: usize,
    /// The largest simultaneous set of batch tensors (input, activations, errors, solver
    /// workspace) over the phases of a step.
    pub step: usize,
}

impl MemoryEstimate {
    /// Everything together.
    pub fn total(&self) -> usize {
        self.parameters + self.state + self.step
    }
}

/// What a plan is checked against besides its own consistency.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Bytes a training stage may need at its peak (`None`: not checked).
    pub max_memory: Option<f64>,
    /// Where the limit comes from, for the message (`--max-memory`, the machine).
    pub source: &'static str,
}

impl Limits {
    /// The memory this machine has available now (`MemAvailable`).
    pub fn machine() -> Self {
        Self { max_memory: crate::report::memory_available_bytes(), source: "available on this machine" }
    }

    /// At most `bytes`, as the user said with `--max-memory`.
    pub fn max_memory(bytes: f64) -> Self {
        Self { max_memory: Some(bytes), source: "allowed by --max-memory" }
    }
}

impl Plan {
    /// Read, parse (with `--set` overrides) and check the pipeline at `file` against the
    /// machine's available memory.
    pub fn load(file: &Path, sets: &[String]) -> Result<Self, EngineError> {
        Self::load_within(file, sets, &Limits::machine())
    }

    /// [`Plan::load`] against `limits`.
    pub fn load_within(file: &Path, sets: &[String], limits: &Limits) -> Result<Self, EngineError> {
        let text =
            std::fs::read_to_string(file).map_err(EngineError::io(file, "cannot read the pipeline"))?;
        let spec = parse_with_overrides(&text, file, sets)?;
        Ok(Self::check_within(spec, &text, file, limits).map_err(|e| e.blame_set(sets))?)
    }

    /// Check a parsed pipeline against the machine's available memory; `text` is used to
    /// locate errors.
    pub fn check(spec: PipelineSpec, text: &str, file: &Path) -> Result<Self, SpecError> {
        Self::check_within(spec, text, file, &Limits::machine())
    }

    /// [`Plan::check`] against `limits`.
    pub fn check_within(
        spec: PipelineSpec,
        text: &str,
        file: &Path,
        limits: &Limits,
    ) -> Result<Self, SpecError> {
        let graph =
            Builder { text, file, spec: &spec, nodes: DiGraph::new(), outputs: IndexMap::new() }.build()?;
        let plan = Self { file: file.to_path_buf(), spec, graph };
        if plan.trainers().is_empty() {
            let message = "nothing to train: the pipeline has no training stage; add one (kind: pl, sgd, \
                           adam or adamw) whose `input` is the model's last layer";
            return Err(SpecError::new(file, message));
        }
        if let Some(limit) = limits.max_memory {
            plan.fits_in(limit, limits.source, text)?;
        }
        Ok(plan)
    }

    /// Refuse a plan whose training stage would need more than `limit` bytes, before any
    /// of it is allocated. A crude bound in `f64` (every term of the estimate, added) comes
    /// first, so that absurd sizes are refused without overflowing the exact estimate.
    fn fits_in(&self, limit: f64, source: &str, text: &str) -> Result<(), SpecError> {
        const CRUDE_LIMIT: f64 = (1u64 << 50) as f64;
        for t in self.trainers() {
            let crude = self.crude_bytes(t);
            let (need, about) = if crude > CRUDE_LIMIT {
                (crude, "on the order of")
            } else {
                (self.estimate(t).total() as f64, "about")
            };
            if need > limit {
                let stage = &self.graph.node(t).stage;
                let message = format!(
                    "this training stage needs {about} {} at its peak (parameters, optimiser state, \
                     batch tensors and solver workspace), more than the {} of memory {source}; \
                     use fewer or narrower layers or a smaller batch_size, or raise --max-memory",
                    bytes(need),
                    bytes(limit)
                );
                return Err(SpecError::new(&self.file, message).at_stage(text, stage));
            }
        }
        Ok(())
    }

    /// An upper bound of every product in [`Plan::estimate`], summed, in `f64`.
    fn crude_bytes(&self, trainer: NodeIndex) -> f64 {
        let Op::Train { solver, batch_size, layers, source, .. } = &self.graph.node(trainer).op else {
            return 0.0;
        };
        let n = *batch_size as f64;
        let size = |i: NodeIndex| {
            self.graph.node(i).output.tensor().map_or(0.0, |(s, _)| s.iter().map(|&d| d as f64).product())
        };
        let mut total = 8.0 * n * size(*source);
        for &l in layers {
            total += 8.0 * n * size(l);
            match self.graph.node(l).op {
                Op::Dense { inputs, units, positions, .. } => {
                    let (d, m, rows) = (inputs as f64, units as f64, n * positions as f64);
                    // The system a PL solve factors: the smaller one unless the route is forced.
                    let system = match solver {
                        Solver::Pl(c)
                            if c.ridge.planned_route(n_rows(*batch_size, positions), inputs).dual =>
                        {
                            rows * rows
                        }
                        Solver::Pl(_) => (d + 1.0).powi(2),
                        Solver::Backprop(_) => 0.0,
                    };
                    total += 16.0 * (d + 1.0) * m + 8.0 * (system + d * m + rows * (d + m));
                }
                Op::Depthwise { channels, geometry, .. } => {
                    total += 16.0 * (geometry.k as f64).powi(2) * channels as f64 + 16.0 * channels as f64;
                }
                _ => {}
            }
        }
        total
    }

    /// The training nodes, in execution order.
    pub fn trainers(&self) -> Vec<NodeIndex> {
        self.graph.topological().filter(|(_, n)| matches!(n.op, Op::Train { .. })).map(|(i, _)| i).collect()
    }

    /// Expected peak memory of training stage `trainer`.
    pub fn estimate(&self, trainer: NodeIndex) -> MemoryEstimate {
        let Op::Train { solver, batch_size, layers, source, .. } = &self.graph.node(trainer).op else {
            return MemoryEstimate::default();
        };
        let dims: Vec<(usize, usize)> = layers
            .iter()
            .filter_map(|&l| match self.graph.node(l).op {
                Op::Dense { inputs, units, positions: 1, .. } => Some((inputs, units)),
                _ => None,
            })
            .collect();
        let input_len = self.graph.node(*source).output.tensor().map_or(0, |(s, _)| s.iter().product());
        if dims.len() != layers.len() {
            return self.estimate_maps(trainer);
        }
        match solver {
            Solver::Pl(config) => estimate_pl(&dims, input_len, *batch_size, config),
            Solver::Backprop(opt) => estimate_backprop(&dims, input_len, *batch_size, opt),
        }
    }

    /// A simpler estimate for chains with convolutions: parameters, optimiser state, the
    /// batch, every activation of a step (errors take their places), one sample's scratch
    /// per thread, and the largest solve workspace or gradient (pointwise solves over all
    /// positions; depthwise solves are tiny).
    fn estimate_maps(&self, trainer: NodeIndex) -> MemoryEstimate {
        const F32: usize = 4;
        let Op::Train { solver, batch_size: n, layers, source, .. } = &self.graph.node(trainer).op else {
            return MemoryEstimate::default();
        };
        let size =
            |i: NodeIndex| self.graph.node(i).output.tensor().map_or(0, |(s, _)| s.iter().product::<usize>());
        let parameters: usize = layers.iter().map(|&l| self.graph.node(l).parameter_count() * F32).sum();
        let per_param = match solver {
            Solver::Pl(c) => {
                usize::from(c.rule.momentum.is_some()) + usize::from(c.rule.metaplasticity.is_some())
            }
            Solver::Backprop(o) => o.buffers_per_parameter(),
        };
        let acts: Vec<usize> = layers.iter().map(|&l| n * size(l) * F32).collect();
        let workspace = layers
            .iter()
            .filter_map(|&l| match (&self.graph.node(l).op, solver) {
                (&Op::Dense { inputs, units, positions, .. }, Solver::Pl(c)) => {
                    let (rows, threads) = (n * positions, plflow_ops::threads());
                    let route = c.ridge.planned_route(rows, inputs);
                    Some(workspace_bytes(rows, inputs, units, route, Delivery::Whole, threads))
                }
                (&Op::Dense { inputs, units, .. }, Solver::Backprop(_)) => {
                    Some((inputs * units + units) * F32)
                }
                _ => None,
            })
            .max()
            .unwrap_or(0);
        // Both steps write each propagated error over the activation it was the last use
        // of, one sample's map per thread at a time through a scratch buffer.
        let largest = acts.iter().copied().max().unwrap_or(0);
        let scratch = largest / (*n).max(1) * plflow_ops::threads();
        let step = n * size(*source) * F32 + acts.iter().sum::<usize>() + scratch + workspace;
        MemoryEstimate { parameters, state: parameters * per_param, step }
    }

    /// The text `plflow check` prints: nodes in order with shapes and parameter counts, and
    /// the memory estimate of each training stage.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let _ =
            writeln!(s, "pipeline `{}` ({}), seed {}", self.spec.name, self.file.display(), self.spec.seed);
        let _ = writeln!(
            s,
            "{:>3}  {:<12} {:<11} {:<12} {:<22} {:>10}",
            "#", "node", "kind", "input", "output", "params"
        );
        let mut total = 0;
        for (k, (i, n)) in self.graph.topological().enumerate() {
            let input = self.graph.input_of(i).map_or("-".to_owned(), |j| self.graph.node(j).name.clone());
            let output = match (&n.output, &n.op) {
                (Port::Examples { classes, .. }, _) => {
                    format!("{} ({classes} classes)", n.output.describe())
                }
                (_, Op::Dense { activation: Activation::Elu { .. }, .. })
                | (_, Op::Depthwise { activation: Activation::Elu { .. }, .. }) => {
                    format!("{} elu", n.output.describe())
                }
                (_, Op::Dense { activation: Activation::Linear, .. })
                | (_, Op::Depthwise { activation: Activation::Linear, .. }) => {
                    format!("{} linear", n.output.describe())
                }
                (_, Op::Evaluate { split }) => {
                    format!("{} accuracy", if *split == Split::Test { "test" } else { "train" })
                }
                _ => n.output.describe(),
            };
            let params = n.parameter_count();
            total += params;
            let params = if params > 0 { thousands(params) } else { "-".into() };
            let _ = writeln!(
                s,
                "{:>3}  {:<12} {:<11} {:<12} {:<22} {:>10}",
                k + 1,
                n.name,
                n.op.kind(),
                input,
                output,
                params
            );
        }
        let _ = writeln!(s, "trainable parameters: {}", thousands(total));
        for t in self.trainers() {
            let Op::Train { solver, epochs, batch_size, layers, init_from, .. } = &self.graph.node(t).op
            else {
                continue;
            };
            let _ = writeln!(
                s,
                "`{}`: {}, {epochs} epochs, batch {batch_size}{}",
                self.graph.node(t).name,
                describe_solver(solver),
                init_from.as_ref().map_or(String::new(), |f| format!(", starting from {}", f.display()))
            );
            if let Solver::Pl(c) = solver {
                let _ = writeln!(s, "  solves: {}", self.describe_solves(layers, *batch_size, c));
            }
            let e = self.estimate(t);
            let _ = writeln!(
                s,
                "  memory estimate: {} parameters + {} optimiser state + {} per step (batch, activations, errors, workspace) = {}",
                mib(e.parameters),
                mib(e.state),
                mib(e.step),
                mib(e.total())
            );
        }
        s
    }
}

impl Plan {
    /// Which system each dense layer's solve factors, and in which precision: `net.0 dual 512
    /// f32`; `f64?` where an absolute ridge leaves it to the data.
    fn describe_solves(&self, layers: &[NodeIndex], batch: usize, c: &PlConfig) -> String {
        let solves: Vec<String> = layers
            .iter()
            .filter_map(|&l| match self.graph.node(l).op {
                Op::Dense { inputs, positions, .. } => {
                    let rows = batch * positions;
                    let dual = c.ridge.dual(rows, inputs);
                    let size = if dual { rows } else { inputs + 1 };
                    let precision = match c.ridge.single_precision(inputs) {
                        Some(true) => "f32",
                        Some(false) => "f64",
                        None => "f64?",
                    };
                    let route = if dual { "dual" } else { "primal" };
                    Some(format!("{} {route} {size} {precision}", self.graph.node(l).name))
                }
                Op::Depthwise { .. } => Some(format!("{} per-channel f64", self.graph.node(l).name)),
                _ => None,
            })
            .collect();
        solves.join(", ")
    }
}

/// Rows of a layer's solve: examples times positions, saturating (sizes are checked later).
fn n_rows(batch: usize, positions: usize) -> usize {
    batch.saturating_mul(positions)
}

/// A size in bytes as MiB, GiB or TiB, whichever reads best.
fn bytes(b: f64) -> String {
    let units = [("TiB", 40), ("GiB", 30), ("MiB", 20)];
    let (unit, shift) = units.into_iter().find(|&(_, s)| b >= (1u64 << s) as f64).unwrap_or(("MiB", 20));
    format!("{:.1} {unit}", b / (1u64 << shift) as f64)
}

/// Peak bytes of a PL step over a chain of dense layers `(inputs, units)`, following the
/// order of `plflow_ops::pl::PlTrainer::step` and `plflow_ops::solve::ridge_update`.
pub fn estimate_pl(dims: &[(usize, usize)], input_len: usize, n: usize, config: &PlConfig) -> MemoryEstimate {
    const F32: usize = 4;
    let (rule, ridge, threads) = (&config.rule, &config.ridge, plflow_ops::threads());
    let parameters: usize = dims.iter().map(|&(d, m)| (d * m + m) * F32).sum();
    let state: usize = dims
        .iter()
        .map(|&(d, m)| rule.momentum.map_or(0, |_| d * m * F32) + rule.spectral_max.map_or(0, |_| m * F32))
        .sum();
    let batch = n * input_len * F32;
    let act = |l: usize| n * dims[l].1 * F32;
    let forward: usize = (0..dims.len()).map(act).sum();
    let mut step = forward;
    for (l, &(d, m)) in dims.iter().enumerate() {
        let alive_acts: usize = (0..l).map(act).sum(); // inputs of layers 1..=l (x is `batch`)
        let err = act(l);
        let update = (d * m + m) * F32;
        // the first layer's solve consumes its error and streams its update into its state
        // (see plflow_ops::pl); an absolute ridge may need f64 (it depends on the data), so
        // the planned route counts that
        let delivery = if l == 0 { Delivery::TilesConsuming } else { Delivery::Whole };
        let solve = alive_acts + err + workspace_bytes(n, d, m, ridge.planned_route(n, d), delivery, threads);
        // the error below is written over the activation below (already in `alive_acts`)
        let propagate =
            if l > 0 { alive_acts + err + update + dense_error_scratch_bytes(n, d, threads) } else { 0 };
        step = step.max(solve).max(propagate);
    }
    MemoryEstimate { parameters, state, step: step + batch }
}

/// Peak bytes of a backprop step over a chain of dense layers `(inputs, units)`, following
/// `plflow_ops::backprop::BackpropTrainer::step`: all activations cached by the forward pass,
/// then on the way back one layer's gradient, its delta and the error below written over the
/// activation below; the first layer's gradient a tile of rows at a time.
pub fn estimate_backprop(
    dims: &[(usize, usize)],
    input_len: usize,
    n: usize,
    opt: &Optimizer,
) -> MemoryEstimate {
    const F32: usize = 4;
    let parameters: usize = dims.iter().map(|&(d, m)| (d * m + m) * F32).sum();
    let state = parameters * opt.buffers_per_parameter();
    let batch = n * input_len * F32;
    let act = |l: usize| n * dims[l].1 * F32;
    let threads = plflow_ops::threads();
    let mut step: usize = (0..dims.len()).map(act).sum();
    for (l, &(d, m)) in dims.iter().enumerate() {
        let alive_acts: usize = (0..l).map(act).sum();
        let gradient = if l > 0 {
            (d * m + m) * F32 + dense_error_scratch_bytes(n, d, threads)
        } else {
            (GRADIENT_TILE_ROWS.min(d) * m + m) * F32
        };
        step = step.max(alive_acts + act(l) + gradient);
    }
    MemoryEstimate { parameters, state, step: step + batch }
}

fn describe_solver(solver: &Solver) -> String {
    match solver {
        Solver::Pl(config) => {
            let r = &config.ridge;
            format!(
                "Prospective Learning, alpha {}, lambda {} ({}), momentum {}, spectral max {}, {} errors",
                r.alpha,
                r.lambda,
                if r.scale == RidgeScale::Relative {
                    "relative to the mean Gram diagonal"
                } else {
                    "absolute"
                },
                config.rule.momentum.map_or("off".into(), |m| m.to_string()),
                config.rule.spectral_max.map_or("off".into(), |m| m.to_string()),
                match config.error_scale {
                    ErrorScale::Raw => "raw",
                    ErrorScale::Output => "output-scaled",
                },
            ) + &if config.alpha_decay < 1.0 {
                format!(", alpha x{} per epoch", config.alpha_decay)
            } else {
                String::new()
            }
        }
        Solver::Backprop(Optimizer::Sgd { lr, momentum, weight_decay }) => {
            format!("backprop with SGD, lr {lr}, momentum {momentum}, weight decay {weight_decay}")
        }
        Solver::Backprop(Optimizer::Adam { lr, beta1, beta2, eps, weight_decay }) => {
            format!(
                "backprop with Adam, lr {lr}, betas ({beta1}, {beta2}), eps {eps}, weight decay {weight_decay}"
            )
        }
        Solver::Backprop(Optimizer::AdamW { lr, beta1, beta2, eps, weight_decay }) => {
            format!(
                "backprop with AdamW, lr {lr}, betas ({beta1}, {beta2}), eps {eps}, decoupled weight decay {weight_decay}"
            )
        }
    }
}

fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

struct Builder<'a> {
    text: &'a str,
    file: &'a Path,
    spec: &'a PipelineSpec,
    nodes: DiGraph<Node, Edge>,
    /// Stage name -> the node other stages get when they name it as `input`.
    outputs: IndexMap<String, NodeIndex>,
}

impl Builder<'_> {
    fn err(&self, stage: &str, field: Option<&str>, message: String) -> SpecError {
        let e = SpecError::new(self.file, message).at_stage(self.text, stage);
        match field {
            Some(f) => e.at_field(self.text, f),
            None => e,
        }
    }

    fn build(mut self) -> Result<Graph, SpecError> {
        let order = self.stage_order()?;
        for name in order {
            let stage = &self.spec.stages[name.as_str()];
            self.add_stage(&name, stage)?;
        }
        Graph::new(self.nodes)
            .ok_or_else(|| SpecError::new(self.file, "internal error: expanded graph has a cycle"))
    }

    /// Stages in dependency order; rejects bad names, dangling references and cycles.
    fn stage_order(&self) -> Result<Vec<String>, SpecError> {
        let names: Vec<&str> = self.spec.stages.keys().map(String::as_str).collect();
        let mut g = DiGraph::<&str, ()>::new();
        let idx: IndexMap<&str, NodeIndex> = names.iter().map(|&n| (n, g.add_node(n))).collect();
        for (name, stage) in &self.spec.stages {
            if name.is_empty() || name.contains(['.', ' ', '=']) {
                return Err(self.err(
                    name,
                    None,
                    format!("`{name}` is not a valid stage name (no dots, spaces or `=`)"),
                ));
            }
            if let Some(input) = stage.input() {
                let Some(&from) = idx.get(input) else {
                    return Err(self.err(
                        name,
                        Some("input"),
                        format!("field `input`: there is no stage `{input}` (stages: {})", names.join(", ")),
                    ));
                };
                g.add_edge(from, idx[name.as_str()], ());
            }
        }
        match petgraph::algo::toposort(&g, None) {
            Ok(order) => Ok(order.into_iter().map(|i| g[i].to_owned()).collect()),
            Err(cycle) => {
                let scc = petgraph::algo::tarjan_scc(&g)
                    .into_iter()
                    .find(|c| c.contains(&cycle.node_id()))
                    .unwrap_or_default();
                let mut members: Vec<&str> = scc.iter().map(|&i| g[i]).collect();
                members.sort_by_key(|m| idx.get_index_of(m));
                let first = members.first().copied().unwrap_or(g[cycle.node_id()]);
                Err(self.err(
                    first,
                    Some("input"),
                    format!(
                        "stages {} form a cycle through their `input` fields",
                        members.iter().map(|m| format!("`{m}`")).collect::<Vec<_>>().join(" -> ")
                    ),
                ))
            }
        }
    }

    fn tensor_input(
        &self,
        stage: &str,
        input: &str,
        who: &str,
    ) -> Result<(NodeIndex, usize, usize), SpecError> {
        let from = self.outputs[input];
        match self.nodes[from].output.tensor() {
            Some((shape, classes)) => Ok((from, shape.iter().product(), classes)),
            None => Err(self.err(
                stage,
                Some("input"),
                format!(
                    "field `input`: {who} needs examples or activations, but `{input}` produces a {}",
                    self.nodes[from].output.describe()
                ),
            )),
        }
    }

    fn add_node(&mut self, node: Node, input: Option<NodeIndex>) -> NodeIndex {
        let i = self.nodes.add_node(node);
        if let Some(from) = input {
            self.nodes.add_edge(from, i, Edge::Input);
        }
        i
    }

    /// The input of a convolution or pooling stage: feature maps `[C, H, W]`.
    fn map_input(
        &self,
        stage: &str,
        input: &str,
        who: &str,
    ) -> Result<(NodeIndex, [usize; 3], usize), SpecError> {
        let (from, _, classes) = self.tensor_input(stage, input, who)?;
        match self.nodes[from].output.tensor() {
            Some((&[c, h, w], _)) => Ok((from, [c, h, w], classes)),
            Some((shape, _)) => Err(self.err(
                stage,
                Some("input"),
                format!(
                    "shape mismatch: {who} needs feature maps (channels x height x width), but `{input}` produces {}",
                    shape.iter().map(usize::to_string).collect::<Vec<_>>().join("x")
                ),
            )),
            None => unreachable!("tensor_input checked the port"),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn add_depthwise(
        &mut self,
        node: &str,
        stage: &str,
        from: NodeIndex,
        [c, h, w]: [usize; 3],
        classes: usize,
        kernel: usize,
        stride: usize,
        activation: Activation,
    ) -> Result<NodeIndex, SpecError> {
        self.range(
            stage,
            "kernel",
            kernel % 2 == 1 && kernel <= h.min(w).max(1) * 2 + 1,
            "odd (3, 5, ...)",
            kernel,
        )?;
        self.range(stage, "stride", (1..=2).contains(&stride), "1 or 2", stride)?;
        let geometry = Geometry { h, w, k: kernel, stride };
        let op = Op::Depthwise { channels: c, geometry, activation };
        let output = Port::Activations { shape: vec![c, geometry.out_h(), geometry.out_w()], classes };
        Ok(self.add_node(Node { name: node.into(), stage: stage.into(), op, output }, Some(from)))
    }

    #[allow(clippy::too_many_arguments)]
    fn add_pointwise(
        &mut self,
        node: &str,
        stage: &str,
        from: NodeIndex,
        [c, h, w]: [usize; 3],
        classes: usize,
        channels: usize,
        activation: Activation,
    ) -> Result<NodeIndex, SpecError> {
        self.range(stage, "channels", channels > 0, "at least 1", channels)?;
        let op = Op::Dense { inputs: c, units: channels, positions: h * w, activation, init: Init::He };
        let output = Port::Activations { shape: vec![channels, h, w], classes };
        Ok(self.add_node(Node { name: node.into(), stage: stage.into(), op, output }, Some(from)))
    }

    /// A dataset node.
    fn add_data(
        &mut self,
        name: &str,
        source: DataSource,
        limit: Option<usize>,
        shape: Vec<usize>,
        classes: usize,
    ) -> Result<NodeIndex, SpecError> {
        if limit == Some(0) {
            return Err(self.err(
                name,
                Some("limit"),
                "field `limit`: must be at least 1 (or null for all)".into(),
            ));
        }
        if classes < 2 {
            return Err(self.err(
                name,
                None,
                format!("the dataset has {classes} classes; training needs at least 2"),
            ));
        }
        let op = Op::Data { source, limit };
        let output = Port::Examples { shape, classes };
        Ok(self.add_node(Node { name: name.into(), stage: name.into(), op, output }, None))
    }

    /// The initialisation of a layer fed by `from`.
    fn init(
        &self,
        stage: &str,
        init: InitSpec,
        sparse: Option<SparseSpec>,
        from: NodeIndex,
    ) -> Result<Init, SpecError> {
        let Some(sp) = sparse else {
            return Ok(match init {
                InitSpec::Xavier => Init::Xavier,
                InitSpec::He => Init::He,
            });
        };
        if init != InitSpec::Xavier {
            return Err(self.err(
                stage,
                Some("init"),
                "field `init`: sparse connectivity sets its own initial weights; remove `init` or `sparse`"
                    .into(),
            ));
        }
        self.range(stage, "sparse", sp.tau > 0.0 && sp.tau <= 1.0, "a `tau` in (0, 1]", sp.tau)?;
        self.range(stage, "sparse", (0.0..=1.0).contains(&sp.rewire), "a `rewire` in [0, 1]", sp.rewire)?;
        Ok(Init::Sparse {
            tau: sp.tau,
            rewire: sp.rewire,
            persistent: sp.mask == MaskSpec::Persistent,
            correlated: self.nodes[from].op.is_data(),
        })
    }

    fn activation(&self, stage: &str, spec: ActivationSpec, clip: f32) -> Result<Activation, SpecError> {
        if clip.is_nan() || clip <= 0.0 {
            return Err(self.err(stage, Some("clip"), format!("field `clip`: must be > 0, got {clip}")));
        }
        Ok(match spec {
            ActivationSpec::Elu => Activation::Elu { clip },
            ActivationSpec::Linear => Activation::Linear,
        })
    }

    fn add_stage(&mut self, name: &str, stage: &StageSpec) -> Result<(), SpecError> {
        let out = match stage {
            StageSpec::Mnist(s) => {
                let source = DataSource::Mnist { path: s.path.clone() };
                self.add_data(name, source, s.limit, vec![1, 28, 28], plflow_datasets::mnist::CLASSES)?
            }
            StageSpec::Cifar10(s) => {
                let source = DataSource::Cifar { path: s.path.clone(), variant: Variant::Ten };
                self.add_data(name, source, s.limit, vec![3, 32, 32], 10)?
            }
            StageSpec::Cifar100(s) => {
                let variant = Variant::Hundred { fine: s.labels == CifarLabels::Fine };
                let source = DataSource::Cifar { path: s.path.clone(), variant };
                self.add_data(name, source, s.limit, vec![3, 32, 32], variant.classes())?
            }
            StageSpec::ImageFolder(s) => {
                let [height, width] = s.size;
                if height == 0 || width == 0 {
                    return Err(self.err(
                        name,
                        Some("size"),
                        "field `size`: [height, width] must be positive".into(),
                    ));
                }
                if !matches!(s.channels, 1 | 3) {
                    return Err(self.err(
                        name,
                        Some("channels"),
                        format!("field `channels`: must be 1 or 3, got {}", s.channels),
                    ));
                }
                let options = ImageOptions { height, width, channels: s.channels, resize: s.resize };
                let shape = vec![s.channels as usize, height as usize, width as usize];
                // Classes are the train folders: counted without decoding.
                let classes = plflow_datasets::images::survey(&DataPath::resolve(&s.path))
                    .map(|counts| counts.iter().filter(|(split, ..)| *split == "train").count())
                    .map_err(|e| self.err(name, Some("path"), format!("field `path`: {e}")))?;
                let source = DataSource::Images { path: s.path.clone(), options };
                self.add_data(name, source, s.limit, shape, classes)?
            }
            StageSpec::Table(s) => {
                let columns =
                    Columns { features: s.features.clone(), label: s.label.clone(), ..Columns::default() };
                let mut shape = None;
                let mut classes = 0;
                for (field, path) in [("train", &s.train), ("test", &s.test)] {
                    let resolved = DataPath::resolve(path).resolved;
                    let (sh, c) = plflow_datasets::table::peek(&resolved, &columns)
                        .map_err(|e| self.err(name, Some(field), format!("field `{field}`: {e}")))?;
                    if shape.as_ref().is_some_and(|s| s != &sh) {
                        return Err(self.err(
                            name,
                            Some("test"),
                            format!(
                                "shape mismatch: test rows have shape {sh:?}, train rows {:?}",
                                shape.unwrap_or_default()
                            ),
                        ));
                    }
                    shape = Some(sh);
                    classes = classes.max(c);
                }
                let source = DataSource::Table { train: s.train.clone(), test: s.test.clone(), columns };
                self.add_data(name, source, s.limit, shape.unwrap_or_default(), classes)?
            }
            StageSpec::Extract(s) => {
                let from = self.outputs[s.input.as_str()];
                let images = match &self.nodes[from].output {
                    Port::Examples { shape, classes } if shape.len() == 3 && matches!(shape[0], 1 | 3) => {
                        Some(*classes)
                    }
                    _ => None,
                };
                let Some(classes) = images else {
                    return Err(self.err(name, Some("input"), format!(
                        "field `input`: extract runs a model over images (1 or 3 channels x height x width), but `{}` produces {}",
                        s.input, self.nodes[from].output.describe()
                    )));
                };
                for (field, v) in [("dim", s.dim), ("size", s.size), ("batch", s.batch), ("chunk", s.chunk)] {
                    if v == 0 {
                        return Err(self.err(
                            name,
                            Some(field),
                            format!("field `{field}`: must be at least 1"),
                        ));
                    }
                }
                if let Some(c) = s.std.iter().position(|&v| v.is_nan() || v <= 0.0) {
                    return Err(self.err(name, Some("std"), format!("field `std[{c}]`: must be > 0")));
                }
                let model = plflow_datasets::location::resolve_model(&s.model);
                if !model.is_file() {
                    return Err(self.err(name, Some("model"), format!(
                        "field `model`: {} not found (relative paths are looked up under ${} when it is set)",
                        model.display(), plflow_datasets::location::MODEL_DIR_ENV
                    )));
                }
                let preprocess = plflow_extract::preprocess::Preprocess {
                    size: s.size,
                    mean: s.mean,
                    std: s.std,
                    bgr: s.channel_order == crate::spec::ChannelOrder::Bgr,
                };
                let op = Op::Extract(crate::graph::ExtractOp {
                    model,
                    output: s.output.clone(),
                    dim: s.dim,
                    preprocess,
                    batch: s.batch,
                    chunk: s.chunk,
                    path: s.path.clone(),
                });
                let output = Port::Examples { shape: vec![s.dim], classes };
                self.add_node(Node { name: name.into(), stage: name.into(), op, output }, Some(from))
            }
            StageSpec::Standardize(s) | StageSpec::Flatten(s) => {
                let from = self.outputs[s.input.as_str()];
                let Port::Examples { shape, classes } = self.nodes[from].output.clone() else {
                    return Err(self.err(
                        name,
                        Some("input"),
                        format!(
                            "field `input`: {} transforms examples, but `{}` produces {}",
                            stage.kind(),
                            s.input,
                            self.nodes[from].output.describe()
                        ),
                    ));
                };
                let (op, shape) = match stage {
                    StageSpec::Flatten(_) => (Op::Flatten, vec![shape.iter().product()]),
                    _ => (Op::Standardize, shape),
                };
                let output = Port::Examples { shape, classes };
                self.add_node(Node { name: name.into(), stage: name.into(), op, output }, Some(from))
            }
            StageSpec::Dense(s) => {
                let (from, inputs, classes) = self.tensor_input(name, &s.input, "a dense layer")?;
                if s.units == 0 {
                    return Err(self.err(name, Some("units"), "field `units`: must be at least 1".into()));
                }
                let activation = self.activation(name, s.activation, s.clip)?;
                let init = self.init(name, s.init, s.sparse, from)?;
                let op = Op::Dense { inputs, units: s.units, positions: 1, activation, init };
                let output = Port::Activations { shape: vec![s.units], classes };
                self.add_node(Node { name: name.into(), stage: name.into(), op, output }, Some(from))
            }
            StageSpec::Mlp(s) => {
                let (mut from, mut inputs, classes) = self.tensor_input(name, &s.input, "an mlp")?;
                if let Some(i) = s.hidden.iter().position(|&h| h == 0) {
                    return Err(self.err(
                        name,
                        Some("hidden"),
                        format!("field `hidden[{i}]`: a layer needs at least 1 unit"),
                    ));
                }
                let outputs = s.outputs.unwrap_or(classes);
                if outputs == 0 {
                    return Err(self.err(
                        name,
                        Some("outputs"),
                        "field `outputs`: must be at least 1".into(),
                    ));
                }
                let hidden = self.activation(name, s.activation, s.clip)?;
                let widths: Vec<usize> = s.hidden.iter().copied().chain([outputs]).collect();
                for (k, &units) in widths.iter().enumerate() {
                    let activation = if k + 1 == widths.len() { Activation::Linear } else { hidden };
                    let init = self.init(name, s.init, s.sparse, from)?;
                    let op = Op::Dense { inputs, units, positions: 1, activation, init };
                    let output = Port::Activations { shape: vec![units], classes };
                    let node = Node { name: format!("{name}.{k}"), stage: name.into(), op, output };
                    from = self.add_node(node, Some(from));
                    inputs = units;
                }
                from
            }
            StageSpec::Depthwise(s) => {
                let (from, shape, classes) = self.map_input(name, &s.input, "a depthwise convolution")?;
                let activation = self.activation(name, s.activation, s.clip)?;
                self.add_depthwise(name, name, from, shape, classes, s.kernel, s.stride, activation)?
            }
            StageSpec::Pointwise(s) => {
                let (from, shape, classes) = self.map_input(name, &s.input, "a pointwise convolution")?;
                let activation = self.activation(name, s.activation, s.clip)?;
                self.add_pointwise(name, name, from, shape, classes, s.channels, activation)?
            }
            StageSpec::DsBlock(s) => {
                let (from, shape, classes) = self.map_input(name, &s.input, "a ds_block")?;
                let activation = self.activation(name, s.activation, s.clip)?;
                let dw = self.add_depthwise(
                    &format!("{name}.dw"),
                    name,
                    from,
                    shape,
                    classes,
                    s.kernel,
                    s.stride,
                    activation,
                )?;
                let Some((mid, _)) = self.nodes[dw].output.tensor() else {
                    unreachable!("maps carry tensors")
                };
                let mid = [mid[0], mid[1], mid[2]];
                self.add_pointwise(&format!("{name}.pw"), name, dw, mid, classes, s.channels, activation)?
            }
            StageSpec::GlobalAvgPool(s) => {
                let (from, [c, h, w], classes) = self.map_input(name, &s.input, "global average pooling")?;
                let op = Op::Pool { channels: c, positions: h * w };
                let output = Port::Activations { shape: vec![c], classes };
                self.add_node(Node { name: name.into(), stage: name.into(), op, output }, Some(from))
            }
            StageSpec::Pl(s) => {
                let solver = self.pl_solver(name, s)?;
                self.add_trainer(name, &s.input, solver, s.epochs, s.batch_size, s.init_from.as_deref())?
            }
            StageSpec::Sgd(s) => {
                let solver = self.sgd_solver(name, s)?;
                self.add_trainer(name, &s.input, solver, s.epochs, s.batch_size, s.init_from.as_deref())?
            }
            StageSpec::Adam(s) | StageSpec::Adamw(s) => {
                let solver = self.adam_solver(name, s, matches!(stage, StageSpec::Adamw(_)))?;
                self.add_trainer(name, &s.input, solver, s.epochs, s.batch_size, s.init_from.as_deref())?
            }
            StageSpec::Evaluate(s) => {
                let from = self.outputs[s.input.as_str()];
                if !matches!(self.nodes[from].op, Op::Train { .. }) {
                    return Err(self.err(
                        name,
                        Some("input"),
                        format!("field `input`: evaluate needs a training stage (kind: pl, sgd, adam or adamw), but `{}` is a {} stage", s.input, self.nodes[from].op.kind()),
                    ));
                }
                let split = match s.split {
                    SplitSpec::Train => Split::Train,
                    SplitSpec::Test => Split::Test,
                };
                let op = Op::Evaluate { split };
                self.add_node(
                    Node { name: name.into(), stage: name.into(), op, output: Port::Metrics },
                    Some(from),
                )
            }
        };
        self.outputs.insert(name.to_owned(), out);
        Ok(())
    }

    /// Fail with "field `field`: must be `want`" unless `ok`.
    fn range(
        &self,
        stage: &str,
        field: &str,
        ok: bool,
        want: &str,
        got: impl ToString,
    ) -> Result<(), SpecError> {
        if ok {
            Ok(())
        } else {
            Err(self.err(
                stage,
                Some(field),
                format!("field `{field}`: must be {want}, got {}", got.to_string()),
            ))
        }
    }

    fn pl_solver(&self, name: &str, s: &PlSpec) -> Result<Solver, SpecError> {
        self.range(name, "alpha", s.alpha > 0.0 && s.alpha.is_finite(), "> 0", s.alpha)?;
        self.range(
            name,
            "lambda",
            s.lambda > 0.0 && s.lambda.is_finite(),
            "> 0 (the solve needs a positive ridge)",
            s.lambda,
        )?;
        if let Some(m) = s.momentum {
            self.range(name, "momentum", (0.0..1.0).contains(&m), "in [0, 1) or null", m)?;
        }
        if let Some(m) = &s.metaplasticity {
            self.range(name, "metaplasticity", (0.0..1.0).contains(&m.beta), "a beta in [0, 1)", m.beta)?;
            self.range(name, "metaplasticity", m.gamma >= 0.0 && m.xi > 0.0, "gamma >= 0 and xi > 0", m.xi)?;
        }
        if let Some(o) = &s.orthogonalize {
            self.range(name, "orthogonalize", o.every > 0, "a period `every` of at least 1", o.every)?;
            self.range(
                name,
                "orthogonalize",
                (0.0..=1.0).contains(&o.strength),
                "a strength in [0, 1]",
                o.strength,
            )?;
        }
        if let Some(m) = s.spectral_max {
            self.range(name, "spectral_max", m > 0.0 && m.is_finite(), "> 0 or null", m)?;
        }
        self.range(
            name,
            "alpha_decay",
            s.alpha_decay > 0.0 && s.alpha_decay <= 1.0,
            "in (0, 1]",
            s.alpha_decay,
        )?;
        self.range(
            name,
            "label_smoothing",
            (0.0..1.0).contains(&s.label_smoothing),
            "in [0, 1)",
            s.label_smoothing,
        )?;
        Ok(Solver::Pl(PlConfig {
            ridge: RidgeConfig {
                alpha: s.alpha,
                lambda: s.lambda,
                scale: match s.lambda_scale {
                    LambdaScale::Relative => RidgeScale::Relative,
                    LambdaScale::Absolute => RidgeScale::Absolute,
                },
                path: match s.solve {
                    SolveSpec::Auto => SolvePath::Auto,
                    SolveSpec::Primal => SolvePath::Primal,
                    SolveSpec::Dual => SolvePath::Dual,
                },
                precision: match s.precision {
                    PrecisionSpec::Auto => Precision::Auto,
                    PrecisionSpec::F64 => Precision::F64,
                },
            },
            rule: UpdateRule {
                metaplasticity: s.metaplasticity.map(|m| Metaplasticity {
                    beta: m.beta,
                    gamma: m.gamma,
                    tau_inactive: m.tau_inactive,
                    xi: m.xi,
                    theta0: m.theta0,
                }),
                momentum: s.momentum,
                orthogonalize: s
                    .orthogonalize
                    .map(|o| Orthogonalize { every: o.every, strength: o.strength }),
                spectral_max: s.spectral_max,
            },
            label_smoothing: s.label_smoothing,
            alpha_decay: s.alpha_decay,
            error_scale: match s.error_scale {
                ErrorScaleSpec::Raw => ErrorScale::Raw,
                ErrorScaleSpec::Output => ErrorScale::Output,
            },
        }))
    }

    fn sgd_solver(&self, name: &str, s: &SgdSpec) -> Result<Solver, SpecError> {
        self.range(name, "lr", s.lr > 0.0 && s.lr.is_finite(), "> 0", s.lr)?;
        self.range(name, "momentum", (0.0..1.0).contains(&s.momentum), "in [0, 1)", s.momentum)?;
        self.range(name, "weight_decay", s.weight_decay >= 0.0, ">= 0", s.weight_decay)?;
        Ok(Solver::Backprop(Optimizer::Sgd { lr: s.lr, momentum: s.momentum, weight_decay: s.weight_decay }))
    }

    fn adam_solver(&self, name: &str, s: &AdamSpec, decoupled: bool) -> Result<Solver, SpecError> {
        self.range(name, "lr", s.lr > 0.0 && s.lr.is_finite(), "> 0", s.lr)?;
        self.range(name, "beta1", (0.0..1.0).contains(&s.beta1), "in [0, 1)", s.beta1)?;
        self.range(name, "beta2", (0.0..1.0).contains(&s.beta2), "in [0, 1)", s.beta2)?;
        self.range(name, "eps", s.eps > 0.0, "> 0", s.eps)?;
        let default_decay = if decoupled { crate::spec::defaults::adamw_weight_decay() } else { 0.0 };
        let weight_decay = s.weight_decay.unwrap_or(default_decay);
        self.range(name, "weight_decay", weight_decay >= 0.0, ">= 0", weight_decay)?;
        let (lr, beta1, beta2, eps) = (s.lr, s.beta1, s.beta2, s.eps);
        Ok(Solver::Backprop(if decoupled {
            Optimizer::AdamW { lr, beta1, beta2, eps, weight_decay }
        } else {
            Optimizer::Adam { lr, beta1, beta2, eps, weight_decay }
        }))
    }

    /// The model file `from` names (a run folder's `model.safetensors`, or a file), read and
    /// checked layer by layer against the nodes `layers`.
    fn init_from(&self, name: &str, from: &Path, layers: &[NodeIndex]) -> Result<PathBuf, SpecError> {
        let file = if from.is_dir() { from.join("model.safetensors") } else { from.to_path_buf() };
        let fail =
            |message: String| self.err(name, Some("init_from"), format!("field `init_from`: {message}"));
        let model = crate::model::LoadedModel::read(&file).map_err(|e| {
            let mut message = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                message.push_str(&format!(": {c}"));
                cause = c.source();
            }
            fail(format!("{message} (give a run folder holding model.safetensors, or a model file)"))
        })?;
        let wanted: Vec<_> = layers.iter().map(|&l| crate::model::layer_meta(&self.nodes[l])).collect();
        crate::model::check_layers(&model.meta.layers, &wanted)
            .map_err(|m| fail(format!("{}: {m}", file.display())))?;
        Ok(file)
    }

    /// A training node for the layers feeding `input`, checked against the dataset's labels.
    fn add_trainer(
        &mut self,
        name: &str,
        input: &str,
        solver: Solver,
        epochs: usize,
        batch_size: usize,
        init_from: Option<&Path>,
    ) -> Result<NodeIndex, SpecError> {
        let kind = solver.kind();
        let model = self.outputs[input];
        let trained_by = self.nodes.node_indices().find_map(|i| match &self.nodes[i].op {
            Op::Train { layers, .. } if layers.contains(&model) => Some(self.nodes[i].name.clone()),
            _ => None,
        });
        if let Some(other) = trained_by {
            return Err(self.err(
                name,
                Some("input"),
                format!(
                    "field `input`: the layers of `{input}` are already trained by stage `{other}`; a model \
                     has one training stage (to compare learning rules, give each its own model stage)"
                ),
            ));
        }
        // Walk the chain of layers back to the dataset.
        let mut layers = Vec::new();
        let mut at = model;
        let source = loop {
            match &self.nodes[at].op {
                Op::Dense { .. } | Op::Depthwise { .. } | Op::Pool { .. } => layers.push(at),
                op if op.is_data() => break at,
                other => {
                    return Err(self.err(
                        name,
                        Some("input"),
                        format!(
                            "field `input`: {kind} trains the layers feeding it, but `{}` is a {} stage{}",
                            self.nodes[at].name,
                            other.kind(),
                            if at == model { "" } else { " inside the model" }
                        ),
                    ));
                }
            }
            let Some(prev) = self.nodes.neighbors_directed(at, petgraph::Direction::Incoming).next() else {
                return Err(self.err(
                    name,
                    Some("input"),
                    "field `input`: the model is not fed by a dataset".into(),
                ));
            };
            at = prev;
        };
        layers.reverse();
        if layers.is_empty() {
            return Err(self.err(
                name,
                Some("input"),
                format!("field `input`: `{input}` is a dataset; name the model's last layer"),
            ));
        }
        let Some((shape, classes)) = self.nodes[model].output.tensor() else {
            unreachable!("layers carry tensors")
        };
        let units: usize = shape.iter().product();
        if units != classes {
            return Err(self.err(
                name,
                Some("input"),
                format!(
                    "shape mismatch: the model's output `{}` has {units} units but the dataset `{}` has {classes} classes",
                    self.nodes[model].name, self.nodes[source].name
                ),
            ));
        }
        self.range(name, "epochs", epochs > 0, "at least 1", epochs)?;
        self.range(name, "batch_size", batch_size > 0, "at least 1", batch_size)?;
        let init_from = match init_from {
            Some(from) => Some(self.init_from(name, from, &layers)?),
            None => None,
        };
        let op = Op::Train { solver, epochs, batch_size, source, layers, init_from };
        let node = Node { name: name.into(), stage: name.into(), op, output: Port::Model };
        let i = self.add_node(node, Some(model));
        self.nodes.add_edge(source, i, Edge::Batches);
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse_pipeline;

    const GOOD: &str = "name: t\nstages:\n  data:\n    kind: mnist\n  net:\n    kind: mlp\n    input: data\n    hidden: [32, 16]\n  train:\n    kind: pl\n    input: net\n  eval:\n    kind: evaluate\n    input: train\n";

    fn check(text: &str) -> Result<Plan, SpecError> {
        let file = Path::new("p.yaml");
        Plan::check(parse_pipeline(text, file)?, text, file)
    }

    fn err(text: &str) -> String {
        check(text).expect_err("must fail").to_string()
    }

    /// A plan built from `text` without the memory check.
    fn unchecked(text: &str) -> Plan {
        let file = Path::new("p.yaml");
        let spec = parse_pipeline(text, file).expect("parse");
        let graph = Builder { text, file, spec: &spec, nodes: DiGraph::new(), outputs: IndexMap::new() }
            .build()
            .expect("a graph");
        Plan { file: file.into(), spec, graph }
    }

    #[test]
    fn plans_larger_than_memory_are_refused_before_anything_is_allocated() {
        let huge = GOOD.replace("hidden: [32, 16]", "hidden: [3000000000, 10]");
        let err = unchecked(&huge)
            .fits_in(24.0 * (1u64 << 30) as f64, "here", &huge)
            .expect_err("refused")
            .to_string();
        assert!(err.contains("stage `train`") && err.contains("more than the 24.0 GiB"), "{err}");
        // Widths whose products overflow 64 bits are refused by the crude bound.
        let absurd = GOOD.replace("hidden: [32, 16]", "hidden: [4000000000000000000, 4000000000000000000]");
        assert!(unchecked(&absurd).fits_in(1e12, "here", &absurd).is_err());
        assert!(unchecked(GOOD).fits_in(1e9, "here", GOOD).is_ok(), "a small plan fits");
    }

    #[test]
    fn a_model_trained_by_two_stages_is_refused() {
        let msg = err(&format!("{GOOD}  again:\n    kind: sgd\n    input: net\n"));
        let names = msg.contains("`again`") && msg.contains("`train`");
        assert!(names && msg.contains("are already trained by stage"), "{msg}");
    }

    #[test]
    fn mlp_expands_into_one_node_per_layer() {
        let plan = check(GOOD).expect("valid");
        let names: Vec<_> = plan.graph.topological().map(|(_, n)| n.name.clone()).collect();
        assert_eq!(names, ["data", "net.0", "net.1", "net.2", "train", "eval"]);
        let text = plan.describe();
        assert!(
            text.contains("net.0") && text.contains("25,120") && text.contains("memory estimate"),
            "{text}"
        );
        let dot = plan.graph.dot("t");
        assert!(dot.starts_with("digraph") && dot.contains("batches"), "{dot}");
    }

    #[test]
    fn unknown_input_is_rejected_with_its_line() {
        let msg = err(&GOOD.replace("input: train", "input: trian"));
        assert!(
            msg.starts_with("p.yaml:14: stage `eval`: field `input`: there is no stage `trian`"),
            "{msg}"
        );
    }

    #[test]
    fn cycles_are_rejected() {
        let text = "name: t\nstages:\n  a:\n    kind: dense\n    input: b\n    units: 3\n  b:\n    kind: dense\n    input: a\n    units: 3\n";
        let msg = err(text);
        assert!(msg.contains("`a` -> `b` form a cycle"), "{msg}");
        let msg = err("name: t\nstages:\n  a:\n    kind: dense\n    input: a\n    units: 3\n");
        assert!(msg.contains("cycle"), "{msg}");
    }

    #[test]
    fn shape_mismatch_between_model_and_labels_is_rejected() {
        let msg = err(&GOOD.replace("hidden: [32, 16]", "hidden: [32, 16]\n    outputs: 12"));
        assert!(
            msg.contains("shape mismatch") && msg.contains("12 units") && msg.contains("10 classes"),
            "{msg}"
        );
    }

    #[test]
    fn wrong_kind_of_input_is_rejected() {
        let msg = err(&GOOD.replace("    input: train\n", "    input: net\n"));
        assert!(msg.contains("evaluate needs a training stage"), "{msg}");
        let msg = err(&GOOD.replace("    kind: pl\n    input: net\n", "    kind: pl\n    input: data\n"));
        assert!(msg.contains("is a dataset"), "{msg}");
    }

    #[test]
    fn out_of_range_settings_are_rejected() {
        let msg = err(&GOOD.replace("    input: net\n", "    input: net\n    lambda: 0\n"));
        assert!(msg.starts_with("p.yaml:12: stage `train`: field `lambda`"), "{msg}");
        let msg = err(&GOOD.replace("    input: net\n", "    input: net\n    momentum: 1.5\n"));
        assert!(msg.contains("field `momentum`"), "{msg}");
        let msg = err(&GOOD.replace("    input: net\n", "    input: net\n    alpha_decay: 1.5\n"));
        assert!(msg.contains("field `alpha_decay`"), "{msg}");
    }

    #[test]
    fn estimate_counts_parameters_and_state() {
        let config = PlConfig {
            rule: UpdateRule { spectral_max: None, ..PlConfig::foundation(0.1, 0.1).rule },
            ..PlConfig::foundation(0.1, 0.1)
        };
        let e = estimate_pl(&[(784, 512), (512, 128), (128, 10)], 784, 512, &config);
        assert_eq!(e.parameters, (784 * 512 + 512 + 512 * 128 + 128 + 128 * 10 + 10) * 4);
        assert_eq!(e.state, (784 * 512 + 512 * 128 + 128 * 10) * 4);
        assert!(e.step > 512 * 784 * 4);
    }
}
