//! From a [`PipelineSpec`] to a checked [`Plan`]: every reference resolved, no cycles, every
//! stage fed the kind of data it needs, shapes agreeing across edges, numeric settings in
//! range, and an estimate of the memory a run will hold. All before any data is read.

use crate::error::{EngineError, SpecError};
use crate::graph::{Graph, Op, Port, Split};
use crate::parse::parse_with_overrides;
use crate::spec::PipelineSpec;
use crate::stages::Builder;
use petgraph::graph::NodeIndex;
use plflow_ops::backprop::{GRADIENT_TILE_ROWS, Optimizer};
use plflow_ops::dense::error_scratch_bytes as dense_error_scratch_bytes;
use plflow_ops::pl::PlConfig;
use plflow_ops::solve::{Delivery, workspace_bytes};
use plflow_ops::update::Storage;
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
            crate::files::read_text(file, crate::files::MAX_PIPELINE_BYTES, "cannot read the pipeline")?;
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
        let graph = Builder::new(text, file, &spec).build()?;
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
            if let Op::Layer(layer) = &self.graph.node(l).op {
                total += layer.crude_bytes(*batch_size, solver);
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
            .filter_map(|&l| match &self.graph.node(l).op {
                Op::Layer(layer) => layer.flat_dense(),
                _ => None,
            })
            .collect();
        let input_len = self.graph.node(*source).output.tensor().map_or(0, |(s, _)| s.iter().product());
        if dims.len() != layers.len() {
            return self.estimate_maps(trainer);
        }
        solver.estimate(&dims, input_len, *batch_size)
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
        let per_param = solver.state_per_parameter();
        let acts: Vec<usize> = layers.iter().map(|&l| n * size(l) * F32).collect();
        let workspace = layers
            .iter()
            .filter_map(|&l| match &self.graph.node(l).op {
                Op::Layer(layer) => layer.update_bytes(*n, solver),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        // Both steps write each propagated error over the activation it was the last use
        // of, one sample's map per thread at a time through a scratch buffer.
        let largest = acts.iter().copied().max().unwrap_or(0);
        let scratch = largest / (*n).max(1) * plflow_ops::threads();
        // A residual add keeps a copy of its error until the output it added gets its own.
        let residual: usize =
            layers.iter().filter(|&&l| self.graph.residual_of(l).is_some()).map(|&l| n * size(l) * F32).sum();
        let step = n * size(*source) * F32 + acts.iter().sum::<usize>() + scratch + workspace + residual;
        MemoryEstimate { parameters, state: (parameters as f64 * per_param) as usize, step }
    }

    /// The text `plflow check` prints: nodes in order with shapes and parameter counts, and
    /// the memory estimate of each training stage.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let _ =
            writeln!(s, "pipeline `{}` ({}), seed {}", self.spec.name, self.file.display(), self.spec.seed);
        let _ = writeln!(
            s,
            "{:>3}  {:<12} {:<15} {:<12} {:<22} {:>10}",
            "#", "node", "kind", "input", "output", "params"
        );
        let mut total = 0;
        for (k, (i, n)) in self.graph.topological().enumerate() {
            let input = match &n.op {
                Op::Join { inputs } => {
                    inputs.iter().map(|&j| self.graph.node(j).name.as_str()).collect::<Vec<_>>().join("+")
                }
                _ => self.graph.input_of(i).map_or("-".to_owned(), |j| self.graph.node(j).name.clone()),
            };
            let output = match (&n.output, &n.op) {
                (Port::Examples { classes, .. }, _) => {
                    format!("{} ({classes} classes)", n.output.describe())
                }
                (_, Op::Layer(layer)) => {
                    let add = self.graph.residual_of(i).map_or(String::new(), |r| {
                        let how = if layer.kind() == "concat" { "|" } else { "+" };
                        format!(" {how} {}", self.graph.node(r).name)
                    });
                    format!("{}{add} {}", n.output.describe(), layer.activation().name())
                }
                (_, Op::Evaluate { split, data }) => {
                    let on = data.map_or(String::new(), |d| format!(" of {}", self.graph.node(d).name));
                    format!("{}{on} accuracy", if *split == Split::Test { "test" } else { "train" })
                }
                _ => n.output.describe(),
            };
            let params = n.parameter_count();
            total += params;
            let params = if params > 0 { thousands(params) } else { "-".into() };
            let _ = writeln!(
                s,
                "{:>3}  {:<12} {:<15} {:<12} {:<22} {:>10}",
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
                solver.describe(),
                init_from.as_ref().map_or(String::new(), |f| format!(", starting from {}", f.display()))
            );
            if let Some(c) = solver.pl() {
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
            .filter_map(|&l| match &self.graph.node(l).op {
                Op::Layer(layer) => {
                    layer.describe_solve(batch, c).map(|d| format!("{} {d}", self.graph.node(l).name))
                }
                _ => None,
            })
            .collect();
        solves.join(", ")
    }
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
        .map(|&(d, m)| {
            let momentum = match rule.momentum_storage {
                Storage::F32 => d * m * F32,
                Storage::Bf16 => d * m * 2,
            };
            let traces = rule.metaplasticity.map_or(0, |_| d * m * F32);
            rule.momentum.map_or(0, |_| momentum) + traces + rule.spectral_max.map_or(0, |_| m * F32)
        })
        .sum();
    let batch = n * input_len * F32;
    let act = |l: usize| n * dims[l].1 * F32;
    let forward: usize = (0..dims.len()).map(act).sum();
    let mut step = forward;
    for (l, &(d, m)) in dims.iter().enumerate() {
        let alive_acts: usize = (0..l).map(act).sum(); // inputs of layers 1..=l (x is `batch`)
        let err = act(l);
        // the first layer's solve consumes its error and streams its update into its state;
        // a hidden layer's streams into its velocity (its bias update waits beside it) or,
        // without momentum, is held whole until the error below is formed (see
        // plflow_ops::pl); an absolute ridge may need f64 (it depends on the data), so the
        // planned route counts that
        let (delivery, update) = match (l, rule.momentum) {
            (0, _) => (Delivery::TilesConsuming, 0),
            (_, Some(_)) => (Delivery::Tiles, m * F32),
            (_, None) => (Delivery::Whole, (d * m + m) * F32),
        };
        let held = if delivery == Delivery::Tiles { update } else { 0 };
        let solve = alive_acts + err + held + workspace_bytes(n, d, m, ridge.planned_route(n, d), delivery);
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
    let state = dims.iter().map(|&(d, m)| (d * m * opt.buffers(true) + m * opt.buffers(false)) * F32).sum();
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
        step = step.max(alive_acts + act(l) + gradient + opt.update_workspace_bytes(d, m));
    }
    MemoryEstimate { parameters, state, step: step + batch }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse_pipeline;
    use plflow_ops::update::{Metaplasticity, UpdateRule};

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
        let graph = Builder::new(text, file, &spec).build().expect("a graph");
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

    /// `evaluate` may measure another dataset stage with the model's example shape and
    /// classes; one of another shape, or a layer, is refused naming `data`.
    #[test]
    fn evaluate_measures_other_datasets_of_the_same_shape() {
        let with = |other: &str| {
            format!(
                "{GOOD}  other:\n{other}  again:\n    kind: evaluate\n    input: train\n    data: other\n"
            )
        };
        let plan = unchecked(&with("    kind: mnist\n    path: elsewhere\n"));
        let (i, node) = plan.graph.topological().find(|(_, n)| n.name == "again").expect("again");
        let Op::Evaluate { data: Some(d), .. } = node.op else { panic!("evaluates other data: {node:?}") };
        assert_eq!(plan.graph.node(d).name, "other");
        let order: Vec<&str> = plan.graph.topological().map(|(_, n)| n.name.as_str()).collect();
        let at = |name: &str| order.iter().position(|n| *n == name).expect(name);
        assert!(
            at("other") < at("train")
                && at("train") < plan.graph.topological().position(|(j, _)| j == i).expect("again")
        );
        let msg = err(&with("    kind: cifar10\n"));
        assert!(msg.contains("field `data`") && msg.contains("3x32x32"), "{msg}");
        let msg = err(&with("    kind: dense\n    input: data\n    units: 10\n"));
        assert!(msg.contains("field `data`") && msg.contains("not examples"), "{msg}");
    }

    /// A residual block becomes an `add` edge from its input to its pointwise node; blocks
    /// that change the shape, or read the dataset, are refused naming the field.
    #[test]
    fn residual_blocks_add_their_input_or_are_refused() {
        let cnn = |block: &str| {
            format!(
                "name: r\nstages:\n  data:\n    kind: mnist\n  stem:\n    kind: pointwise\n    input: data\n    channels: 4\n  block:\n    kind: ds_block\n    residual: true\n{block}  pool:\n    kind: global_avg_pool\n    input: block\n  head:\n    kind: dense\n    input: pool\n    units: 10\n  train:\n    kind: pl\n    input: head\n"
            )
        };
        let plan = unchecked(&cnn("    input: stem\n    channels: 4\n"));
        let node = |name: &str| plan.graph.topological().find(|(_, n)| n.name == name).expect(name).0;
        assert_eq!(plan.graph.residual_of(node("block.pw")), Some(node("stem")));
        assert!(plan.describe().contains("4x28x28 + stem elu"), "{}", plan.describe());
        for (block, why) in [
            ("    input: stem\n    channels: 4\n    stride: 2\n", "needs stride 1, but `stride` is 2"),
            ("    input: stem\n    channels: 8\n", "`channels` is 8 and `stem` has 4"),
            ("    input: data\n    channels: 1\n", "`data` is not a layer"),
        ] {
            let msg = err(&cnn(block));
            assert!(msg.contains("field `residual`") && msg.contains(why), "{block}: {msg}");
        }
    }

    /// A concatenation becomes a layer node fed by the later of its inputs with a skip edge
    /// from the earlier, in either order; inputs that are not one chain, shapes that do not
    /// line up, or a dataset are refused naming the field.
    #[test]
    fn concatenations_join_a_layer_with_an_earlier_one_or_are_refused() {
        let mlp = |join: &str, head_input: &str| {
            format!(
                "name: c\nstages:\n  data:\n    kind: mnist\n  h1:\n    kind: dense\n    input: data\n    units: 12\n  h2:\n    kind: dense\n    input: h1\n    units: 5\n  other:\n    kind: dense\n    input: data\n    units: 3\n  join:\n    kind: concat\n{join}  head:\n    kind: dense\n    input: {head_input}\n    units: 10\n  train:\n    kind: pl\n    input: head\n"
            )
        };
        for (inputs, skip_first) in [("[h2, h1]", false), ("[h1, h2]", true)] {
            let plan = unchecked(&mlp(&format!("    inputs: {inputs}\n"), "join"));
            let node = |name: &str| plan.graph.topological().find(|(_, n)| n.name == name).expect(name).0;
            let join = node("join");
            assert_eq!(plan.graph.input_of(join), Some(node("h2")));
            assert_eq!(plan.graph.residual_of(join), Some(node("h1")));
            assert_eq!(plan.graph.node(join).output.tensor(), Some((&[17][..], 10)));
            let meta = crate::model::layer_meta(plan.graph.node(join));
            assert_eq!(
                (meta.kind.as_str(), meta.inputs, meta.outputs, meta.skip_first),
                ("concat", 5, 17, skip_first)
            );
            assert!(plan.describe().contains("17 | h1 linear"), "{}", plan.describe());
            let Op::Train { layers, .. } = &plan.graph.node(node("train")).op else { panic!("a trainer") };
            assert_eq!(layers.len(), 4);
        }
        for (inputs, why) in [
            ("[h2]", "give two stages to join, got 1"),
            ("[h2, other]", "one feeding the other"),
            ("[h1, data]", "`data` is not a layer"),
            ("[h2, nothing]", "there is no stage `nothing`"),
        ] {
            let msg = err(&mlp(&format!("    inputs: {inputs}\n"), "join"));
            assert!(msg.contains("`inputs`") && msg.contains(why), "{inputs}: {msg}");
        }
        let cnn = "name: c\nstages:\n  data:\n    kind: mnist\n  stem:\n    kind: pointwise\n    input: data\n    channels: 4\n  down:\n    kind: depthwise\n    input: stem\n    stride: 2\n  join:\n    kind: concat\n    inputs: [down, stem]\n  head:\n    kind: dense\n    input: join\n    units: 10\n  train:\n    kind: pl\n    input: head\n";
        let msg = err(cnn);
        assert!(msg.contains("two maps of the same height and width, got 4x14x14 and 4x28x28"), "{msg}");
        let data = "name: c\nstages:\n  data:\n    kind: mnist\n  more:\n    kind: cifar100\n  both:\n    kind: concat\n    inputs: [data, more]\n  head:\n    kind: dense\n    input: both\n    units: 10\n  train:\n    kind: pl\n    input: head\n";
        let msg = err(data);
        assert!(msg.contains("`data` has 10 classes but `more` has 100"), "{msg}");
        let plan = unchecked(&data.replace("kind: cifar100", "kind: cifar10"));
        let both = plan.graph.topological().find(|(_, n)| n.name == "both").expect("both").1;
        assert_eq!(both.output.tensor(), Some((&[784 + 3072][..], 10)));
        assert!(plan.describe().contains("data+more"), "{}", plan.describe());
        let same = cnn.replace("    stride: 2\n", "");
        let plan = unchecked(&same);
        let join = plan.graph.topological().find(|(_, n)| n.name == "join").expect("join").1;
        assert_eq!(join.output.tensor(), Some((&[8, 28, 28][..], 10)));
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
        let muon = GOOD.replace("kind: pl\n", "kind: muon\n");
        let plan = check(&muon).expect("muon with its defaults");
        assert!(plan.describe().contains("backprop with Muon, lr 0.001, momentum 0.95 (Nesterov)"));
        let msg = err(&muon.replace("    input: net\n", "    input: net\n    ns_steps: 0\n"));
        assert!(msg.starts_with("p.yaml:12: stage `train`: field `ns_steps`"), "{msg}");
    }

    #[test]
    fn admm_takes_relu_mlps_and_refuses_the_rest_at_check_time() {
        let admm = GOOD
            .replace("kind: pl\n", "kind: admm\n    batch_size: 32\n")
            .replace("hidden: [32, 16]", "hidden: [32, 16]\n    activation: relu");
        let plan = check(&admm).expect("a relu MLP");
        assert!(
            plan.describe().contains("dlADMM, rho 0.01, 1 iteration(s) per batch"),
            "{}",
            plan.describe()
        );
        let estimate = plan.estimate(plan.trainers()[0]);
        let dims = [(784, 32), (32, 16), (16, 10)];
        assert_eq!(estimate.state, 0);
        assert_eq!(estimate.step, 32 * 784 * 4 + plflow_ops::admm::step_bytes(&dims, 32));
        let msg = err(&GOOD.replace("kind: pl\n", "kind: admm\n"));
        assert!(
            msg.starts_with("p.yaml:11: stage `train`: field `input`: layer `net.0` has activation elu"),
            "{msg}"
        );
        assert!(msg.contains("set `activation: relu` in stage `net`"), "{msg}");
        let msg = err(&admm.replace("    input: net\n", "    input: net\n    rho: 0\n"));
        assert!(msg.contains("field `rho`"), "{msg}");
    }

    /// Forward-Forward takes dense ReLU chains with no output layer (the label goes into the
    /// input), and refuses a linear layer and a dataset as its model.
    #[test]
    fn ff_takes_relu_chains_of_any_width_and_refuses_the_rest_at_check_time() {
        const FF: &str = "name: t\nstages:\n  data:\n    kind: mnist\n  h1:\n    kind: dense\n    input: data\n    units: 32\n    activation: relu\n  h2:\n    kind: dense\n    input: h1\n    units: 16\n    activation: relu\n  train:\n    kind: ff\n    input: h2\n    batch_size: 64\n";
        let plan = check(FF).expect("a relu chain with 16 outputs for 10 classes");
        let text = plan.describe();
        assert!(text.contains("Forward-Forward, threshold 2, label scale 1, hard negatives"), "{text}");
        let e = plan.estimate(plan.trainers()[0]);
        let params = (784 * 32 + 32 + 32 * 16 + 16) * 4;
        assert_eq!((e.parameters, e.state), (params, 2 * params));
        let dims = [(784, 32), (32, 16)];
        assert_eq!(e.step, 64 * 784 * 4 + plflow_ops::ff::step_bytes(&dims, 64, 10));

        let msg = err(&FF.replace("units: 16\n    activation: relu", "units: 16\n    activation: linear"));
        assert!(msg.contains("layer `h2` has activation linear") && msg.contains("needs relu"), "{msg}");
        let msg = err(&FF.replace("input: h2", "input: data"));
        assert!(msg.contains("field `input`"), "{msg}");
        let msg = err(&FF.replace("input: h2\n", "input: h2\n    threshold: 0\n"));
        assert!(msg.contains("field `threshold`"), "{msg}");
    }

    /// NoProp makes its own blocks from a dataset: T blocks of an input part, a `z` part, the
    /// hidden layers and the logits, then the classifier, all before the trainer.
    #[test]
    fn noprop_makes_its_blocks_from_a_dataset_and_refuses_a_model_as_input() {
        const NP: &str = "name: t\nstages:\n  data:\n    kind: mnist\n  train:\n    kind: noprop\n    input: data\n    hidden: [16]\n    steps: 3\n    batch_size: 32\n";
        let plan = check(NP).expect("a noprop stage on a dataset");
        let t = plan.trainers()[0];
        let Op::Train { layers, .. } = &plan.graph.node(t).op else { panic!("a trainer") };
        let names: Vec<&str> = layers.iter().map(|&l| plan.graph.node(l).name.as_str()).collect();
        assert_eq!(names[..3], ["train.block1.x", "train.block1.z", "train.block1.1"]);
        assert_eq!((names.len(), names[9]), (10, "train.out"));
        let order: Vec<_> = plan.graph.topological().map(|(i, _)| i).collect();
        let at = |i| order.iter().position(|&o| o == i).expect("in the order");
        assert!(layers.iter().all(|&l| at(l) < at(t)), "every block is initialised before its trainer");
        let e = plan.estimate(t);
        let params = 3 * ((784 * 16 + 16) + (10 * 16 + 16) + (16 * 10 + 10)) * 4 + (10 * 10 + 10) * 4;
        assert_eq!((e.parameters, e.state), (params, 2 * params));
        let block = [(784, 16), (10, 16), (16, 10)];
        assert_eq!(e.step, 32 * 784 * 4 + plflow_ops::noprop::step_bytes(&block, 32, 10));
        assert!(
            plan.describe().contains("NoProp-DT, 3 blocks, cosine schedule, eta 0.1"),
            "{}",
            plan.describe()
        );

        let with_net = NP
            .replace("  train:\n", "  net:\n    kind: mlp\n    input: data\n  train:\n")
            .replace("input: data\n    hidden: [16]", "input: net\n    hidden: [16]");
        let msg = err(&with_net);
        assert!(
            msg.contains("noprop makes its own blocks") && msg.contains("`net` is a dense stage"),
            "{msg}"
        );
        let msg = err(&NP.replace("steps: 3", "steps: 0"));
        assert!(msg.contains("field `steps`"), "{msg}");
    }

    #[test]
    fn estimate_counts_parameters_and_state() {
        let config = PlConfig {
            rule: UpdateRule { spectral_max: None, ..PlConfig::foundation(0.1, 0.1).rule },
            ..PlConfig::foundation(0.1, 0.1)
        };
        let e = estimate_pl(&[(784, 512), (512, 128), (128, 10)], 784, 512, &config);
        assert_eq!(e.parameters, (784 * 512 + 512 + 512 * 128 + 128 + 128 * 10 + 10) * 4);
        let weights = 784 * 512 + 512 * 128 + 128 * 10;
        assert_eq!(e.state, weights * 4);
        assert!(e.step > 512 * 784 * 4);
        // bf16 momentum is 2 bytes a weight; metaplasticity's traces are 4 more.
        let mut config = config;
        config.rule.momentum_storage = Storage::Bf16;
        let e = estimate_pl(&[(784, 512), (512, 128), (128, 10)], 784, 512, &config);
        assert_eq!(e.state, weights * 2);
        config.rule.metaplasticity =
            Some(Metaplasticity { beta: 0.7, gamma: 0.15, tau_inactive: 1e-3, xi: 3.0, theta0: 0.1 });
        let e = estimate_pl(&[(784, 512), (512, 128), (128, 10)], 784, 512, &config);
        assert_eq!(e.state, weights * 6);
    }
}
