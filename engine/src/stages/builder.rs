//! The graph under construction while a pipeline is checked: what stage kinds build into,
//! with the checks every kind shares (references, input kinds, ranges, activations).

use crate::error::SpecError;
use crate::graph::{DataSource, Edge, Graph, Node, Op, Port};
use crate::spec::{ActivationSpec, PipelineSpec};
use indexmap::IndexMap;
use petgraph::graph::{DiGraph, NodeIndex};
use plflow_ops::activation::Activation;
use std::path::Path;

/// A pipeline's graph being built, stage by stage in dependency order.
#[derive(Debug)]
pub struct Builder<'a> {
    text: &'a str,
    file: &'a Path,
    spec: &'a PipelineSpec,
    nodes: DiGraph<Node, Edge>,
    /// Stage name -> the node other stages get when they name it as `input`.
    outputs: IndexMap<String, NodeIndex>,
}

impl<'a> Builder<'a> {
    /// An empty graph for `spec`, read from `text` in `file` (for located errors).
    pub fn new(text: &'a str, file: &'a Path, spec: &'a PipelineSpec) -> Self {
        Self { text, file, spec, nodes: DiGraph::new(), outputs: IndexMap::new() }
    }
}

impl Builder<'_> {
    /// An error located at `stage` (and its `field`, when given).
    pub fn err(&self, stage: &str, field: Option<&str>, message: String) -> SpecError {
        let e = SpecError::new(self.file, message).at_stage(self.text, stage);
        match field {
            Some(f) => e.at_field(self.text, f),
            None => e,
        }
    }

    /// The pipeline's seed, for stages that draw at run time.
    pub fn seed(&self) -> u64 {
        self.spec.seed
    }

    /// Every stage in dependency order, each checked and expanded into its nodes.
    pub fn build(mut self) -> Result<Graph, SpecError> {
        let order = self.stage_order()?;
        for name in order {
            let spec = self.spec;
            let node = spec.stages[name.as_str()].stage().build(&name, &mut self)?;
            self.outputs.insert(name, node);
        }
        Graph::new(self.nodes)
            .ok_or_else(|| SpecError::new(self.file, "internal error: expanded graph has a cycle"))
    }

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
            for (field, input) in stage.stage().references() {
                let Some(&from) = idx.get(input) else {
                    return Err(self.err(
                        name,
                        Some(field),
                        format!(
                            "field `{field}`: there is no stage `{input}` (stages: {})",
                            names.join(", ")
                        ),
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

    /// Node `i`.
    pub fn node(&self, i: NodeIndex) -> &Node {
        &self.nodes[i]
    }

    /// The node stage `stage` names (already built: stages come in dependency order).
    pub fn output_of(&self, stage: &str) -> NodeIndex {
        self.outputs[stage]
    }

    /// Nodes built so far.
    pub fn nodes(&self) -> impl Iterator<Item = (NodeIndex, &Node)> {
        self.nodes.node_indices().map(|i| (i, &self.nodes[i]))
    }

    /// The node whose output layer `i` adds (a residual connection), if any.
    pub fn residual_of(&self, i: NodeIndex) -> Option<NodeIndex> {
        use petgraph::visit::EdgeRef;
        self.nodes
            .edges_directed(i, petgraph::Direction::Incoming)
            .find(|e| *e.weight() == Edge::Residual)
            .map(|e| e.source())
    }

    /// Add an edge of kind `edge`.
    pub fn add_edge(&mut self, from: NodeIndex, to: NodeIndex, edge: Edge) {
        self.nodes.add_edge(from, to, edge);
    }

    /// The node feeding `i` through its `input`, if any.
    pub fn input_of(&self, i: NodeIndex) -> Option<NodeIndex> {
        use petgraph::visit::EdgeRef;
        self.nodes
            .edges_directed(i, petgraph::Direction::Incoming)
            .find(|e| *e.weight() == Edge::Input)
            .map(|e| e.source())
    }

    /// The input of a layer: examples or activations, as `(node, width, classes)`.
    pub fn tensor_input(
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

    /// Add `node`, fed by `input` when given; returns its index.
    pub fn add_node(&mut self, node: Node, input: Option<NodeIndex>) -> NodeIndex {
        let i = self.nodes.add_node(node);
        if let Some(from) = input {
            self.nodes.add_edge(from, i, Edge::Input);
        }
        i
    }

    /// The input of a convolution or pooling stage: feature maps `[C, H, W]`, as
    /// `(node, [C, H, W], classes)`.
    pub fn map_input(
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

    /// A dataset node, checked: `limit` and at least two classes.
    pub fn add_dataset(
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

    /// The activation `spec` with its `clip`, checked.
    pub fn activation(&self, stage: &str, spec: ActivationSpec, clip: f32) -> Result<Activation, SpecError> {
        if clip.is_nan() || clip <= 0.0 {
            return Err(self.err(stage, Some("clip"), format!("field `clip`: must be > 0, got {clip}")));
        }
        Ok(match spec {
            ActivationSpec::Elu => Activation::Elu { clip },
            ActivationSpec::Relu => Activation::Relu { clip },
            ActivationSpec::Linear => Activation::Linear,
        })
    }

    /// Fail with "field `field`: must be `want`, got `got`" unless `ok`.
    pub fn range(
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
}
