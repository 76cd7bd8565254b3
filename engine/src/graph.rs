//! The dataflow graph of a checked pipeline: plain data (nodes, typed ports, edges) in a
//! petgraph DAG, kept separate from the scheduler that executes it.

use crate::solver::Solver;
use crate::stages::LayerNode;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;
use plflow_datasets::cifar::Variant;
use plflow_datasets::format::Columns;
use plflow_datasets::images::ImageOptions;
use std::fmt::Write as _;
use std::path::PathBuf;

/// What flows out of a node.
#[derive(Debug, Clone, PartialEq)]
pub enum Port {
    /// Labelled examples from a dataset.
    Examples {
        /// Shape of one example.
        shape: Vec<usize>,
        /// Classes of the labels.
        classes: usize,
    },
    /// Per-example activations of a layer (the dataset's labels travel alongside).
    Activations {
        /// Shape of one example.
        shape: Vec<usize>,
        /// Classes of the labels.
        classes: usize,
    },
    /// A trained model.
    Model,
    /// Measurements.
    Metrics,
}

impl Port {
    /// Shape and class count when the port carries tensors.
    pub fn tensor(&self) -> Option<(&[usize], usize)> {
        match self {
            Port::Examples { shape, classes } | Port::Activations { shape, classes } => {
                Some((shape, *classes))
            }
            Port::Model | Port::Metrics => None,
        }
    }

    /// Short human description, e.g. `1x28x28` or `model`.
    pub fn describe(&self) -> String {
        match self {
            Port::Examples { shape, .. } | Port::Activations { shape, .. } => {
                shape.iter().map(usize::to_string).collect::<Vec<_>>().join("x")
            }
            Port::Model => "model".into(),
            Port::Metrics => "metrics".into(),
        }
    }
}

/// Dataset splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Training examples.
    Train,
    /// Held-out examples.
    Test,
}

/// Where a dataset node reads its examples.
#[derive(Debug, Clone, PartialEq)]
pub enum DataSource {
    /// MNIST-layout IDX files in the folder `path` (as written in the pipeline).
    Mnist {
        /// The folder or file, as written in the pipeline.
        path: PathBuf,
    },
    /// CIFAR binary files, or an image folder / archive of 32x32 images.
    Cifar {
        /// The folder or file, as written in the pipeline.
        path: PathBuf,
        /// CIFAR-10 or CIFAR-100 (fine or coarse).
        variant: Variant,
    },
    /// An image folder or archive.
    Images {
        /// The folder or file, as written in the pipeline.
        path: PathBuf,
        /// Size, channels and resizing.
        options: ImageOptions,
    },
    /// Feature tables, one per split.
    Table {
        /// The training table, as written.
        train: PathBuf,
        /// The test table, as written.
        test: PathBuf,
        /// Feature and label column names.
        columns: Columns,
    },
}

/// A feature-extraction node's settings (see `spec::ExtractSpec`).
#[derive(Debug, Clone, PartialEq)]
pub struct ExtractOp {
    /// The ONNX file, resolved.
    pub model: PathBuf,
    /// Output name.
    pub output: String,
    /// Feature width.
    pub dim: usize,
    /// Input preparation.
    pub preprocess: plflow_extract::preprocess::Preprocess,
    /// Images per model run.
    pub batch: usize,
    /// Images per part.
    pub chunk: usize,
    /// Feature file stem as written (`None`: in the cache).
    pub path: Option<PathBuf>,
}

/// What a node does.
#[derive(Debug, Clone)]
pub enum Op {
    /// Read a dataset; `limit` caps the training examples (class-balanced).
    Data {
        /// Where the examples are.
        source: DataSource,
        /// At most this many training examples (class-balanced); `None` for all.
        limit: Option<usize>,
    },
    /// Run a frozen backbone over every image; the features are cached as Parquet files.
    Extract(ExtractOp),
    /// Standardise every feature with the training split's statistics.
    Standardize,
    /// View examples as flat vectors.
    Flatten,
    /// The examples of several data nodes side by side, flattened (`concat` of datasets).
    Join {
        /// The data nodes joined, in the order of their features.
        inputs: Vec<NodeIndex>,
    },
    /// A layer: its kind's settings (see [`crate::stages::LayerKind`]).
    Layer(LayerNode),
    /// Train the chain of layers `layers`, fed by the dataset `source`, with `solver`.
    Train {
        /// The learning rule.
        solver: Solver,
        /// Passes over the training split.
        epochs: usize,
        /// Examples per step.
        batch_size: usize,
        /// The dataset that feeds the layers.
        source: NodeIndex,
        /// The layers, from input to output.
        layers: Vec<NodeIndex>,
        /// The model file the layers start from, checked against their shapes.
        init_from: Option<std::path::PathBuf>,
    },
    /// Accuracy of a trained model on a split.
    Evaluate {
        /// The split measured.
        split: Split,
        /// The dataset measured, when not the trainer's.
        data: Option<NodeIndex>,
    },
}

impl Op {
    /// The kind shown to users.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Data { source: DataSource::Mnist { .. }, .. } => "mnist",
            Op::Data { source: DataSource::Cifar { variant: Variant::Ten, .. }, .. } => "cifar10",
            Op::Data { source: DataSource::Cifar { .. }, .. } => "cifar100",
            Op::Data { source: DataSource::Images { .. }, .. } => "image_folder",
            Op::Data { source: DataSource::Table { .. }, .. } => "table",
            Op::Extract(_) => "extract",
            Op::Standardize => "standardize",
            Op::Flatten => "flatten",
            Op::Join { .. } => "concat",
            Op::Layer(l) => l.kind(),
            Op::Train { solver, .. } => solver.kind(),
            Op::Evaluate { .. } => "evaluate",
        }
    }
}

impl Op {
    /// `true` for nodes that produce examples (datasets and their transforms).
    pub fn is_data(&self) -> bool {
        matches!(self, Op::Data { .. } | Op::Extract(_) | Op::Standardize | Op::Flatten | Op::Join { .. })
    }
}

/// One node of the graph.
#[derive(Debug, Clone)]
pub struct Node {
    /// Unique name: the stage name, or `stage.i` for the layers an `mlp` expands into.
    pub name: String,
    /// The stage of the pipeline file it came from.
    pub stage: String,
    /// What it does.
    pub op: Op,
    /// What flows out.
    pub output: Port,
}

impl Node {
    /// Trainable values held by the node.
    pub fn parameter_count(&self) -> usize {
        match &self.op {
            Op::Layer(l) => l.parameter_count(),
            _ => 0,
        }
    }
}

/// Why an edge exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edge {
    /// The target's `input`.
    Input,
    /// A trainer reads batches (examples and labels) from a dataset.
    Batches,
    /// A residual add: the source's output is added to the target layer's result.
    Residual,
    /// A trainer trains the source layer, which is not on the chain its input edge walks
    /// (NoProp's blocks and classifier).
    Trains,
}

/// A checked, acyclic pipeline graph with its nodes in execution order.
#[derive(Debug, Clone)]
pub struct Graph {
    dag: DiGraph<Node, Edge>,
    order: Vec<NodeIndex>,
}

impl Graph {
    /// Wrap a DAG; `None` if it has a cycle.
    pub fn new(dag: DiGraph<Node, Edge>) -> Option<Self> {
        let order = petgraph::algo::toposort(&dag, None).ok()?;
        Some(Self { dag, order })
    }

    /// The underlying petgraph.
    pub fn dag(&self) -> &DiGraph<Node, Edge> {
        &self.dag
    }

    /// Node `i`.
    pub fn node(&self, i: NodeIndex) -> &Node {
        &self.dag[i]
    }

    /// Nodes in an order where every node comes after its inputs.
    pub fn topological(&self) -> impl Iterator<Item = (NodeIndex, &Node)> {
        self.order.iter().map(|&i| (i, &self.dag[i]))
    }

    /// The node's `input`, if any.
    pub fn input_of(&self, i: NodeIndex) -> Option<NodeIndex> {
        self.dag
            .edges_directed(i, petgraph::Direction::Incoming)
            .find(|e| *e.weight() == Edge::Input)
            .map(|e| e.source())
    }

    /// The node whose output layer `i` adds (a residual connection), if any.
    pub fn residual_of(&self, i: NodeIndex) -> Option<NodeIndex> {
        self.dag
            .edges_directed(i, petgraph::Direction::Incoming)
            .find(|e| *e.weight() == Edge::Residual)
            .map(|e| e.source())
    }

    /// The position in `chain` of the node layer `l` adds, if it adds one.
    pub fn residual_index(&self, l: NodeIndex, chain: &[NodeIndex]) -> Option<usize> {
        self.residual_of(l).and_then(|r| chain.iter().position(|&c| c == r))
    }

    /// The data nodes `i` reads from, through every input of a join, with `i` itself, in
    /// execution order: what has to run to produce its examples.
    pub fn data_ancestors(&self, i: NodeIndex) -> Vec<NodeIndex> {
        let mut wanted = std::collections::HashSet::from([i]);
        let mut stack = vec![i];
        while let Some(n) = stack.pop() {
            for e in self.dag.edges_directed(n, petgraph::Direction::Incoming) {
                if *e.weight() == Edge::Input
                    && self.dag[e.source()].op.is_data()
                    && wanted.insert(e.source())
                {
                    stack.push(e.source());
                }
            }
        }
        self.order.iter().copied().filter(|n| wanted.contains(n)).collect()
    }

    /// Nodes whose `input` is `i`.
    pub fn consumers(&self, i: NodeIndex) -> Vec<NodeIndex> {
        let mut v: Vec<_> = self
            .dag
            .edges_directed(i, petgraph::Direction::Outgoing)
            .filter(|e| *e.weight() == Edge::Input)
            .map(|e| e.target())
            .collect();
        v.sort();
        v
    }

    /// Graphviz DOT text of the graph.
    pub fn dot(&self, title: &str) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "digraph \"{}\" {{", title.replace('"', "'"));
        let _ = writeln!(s, "  rankdir=TB;\n  node [shape=box, fontname=\"monospace\"];");
        for (i, n) in self.topological() {
            let mut label = format!("{}\\n{} -> {}", n.name, n.op.kind(), n.output.describe());
            if n.parameter_count() > 0 {
                let _ = write!(label, "\\n{} params", n.parameter_count());
            }
            let shape = match n.op {
                Op::Data { .. } | Op::Extract(_) | Op::Standardize | Op::Flatten | Op::Join { .. } => {
                    "cylinder"
                }
                Op::Train { .. } => "hexagon",
                Op::Evaluate { .. } => "note",
                Op::Layer(_) => "box",
            };
            let _ = writeln!(s, "  n{} [label=\"{label}\", shape={shape}];", i.index());
        }
        for e in self.dag.edge_references() {
            let style = match e.weight() {
                Edge::Input => "",
                Edge::Batches => " [style=dashed, label=\"batches\"]",
                Edge::Residual => " [style=bold, label=\"add\"]",
                Edge::Trains => " [style=dotted, label=\"trains\"]",
            };
            let _ = writeln!(s, "  n{} -> n{}{style};", e.source().index(), e.target().index());
        }
        s.push_str("}\n");
        s
    }
}
