//! What every training stage shares: the chain of layers it trains, walked back from its
//! `input` to the dataset, checked against the dataset's labels, and the model file it may
//! start from.

use super::Builder;
use crate::error::SpecError;
use crate::graph::{Edge, Node, Op, Port};
use crate::solver::Solver;
use petgraph::graph::NodeIndex;
use std::path::{Path, PathBuf};

/// A training stage's spec struct with the fields every training stage has (`input`,
/// `epochs`, `batch_size`, `init_from`) first, and `trainer_fields()` to hand them to
/// [`add_trainer`]. (serde's `flatten` would share a struct, but it does not work with
/// `deny_unknown_fields`, which every stage keeps.)
macro_rules! trainer_spec {
    ($(#[$meta:meta])* pub struct $name:ident { $($body:tt)* }) => {
        $(#[$meta])*
        pub struct $name {
            /// The model's output stage; every layer between it and the dataset is trained.
            pub input: String,
            /// Passes over the training split.
            #[serde(default = "crate::spec::defaults::epochs")]
            pub epochs: usize,
            /// Examples per step.
            #[serde(default = "crate::spec::defaults::batch_size")]
            pub batch_size: usize,
            /// Start from a trained model (a run folder, for its `model.safetensors`, or a model
            /// file) instead of fresh weights; its layers must have this model's shapes.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub init_from: Option<std::path::PathBuf>,
            $($body)*
        }

        impl $name {
            /// The settings every training stage has, for [`add_trainer`](super::trainer::add_trainer).
            pub(crate) fn trainer_fields(&self) -> super::trainer::TrainerFields<'_> {
                super::trainer::TrainerFields {
                    input: &self.input,
                    epochs: self.epochs,
                    batch_size: self.batch_size,
                    init_from: self.init_from.as_deref(),
                }
            }
        }
    };
}
pub(crate) use trainer_spec;

/// The settings every training stage has.
pub(crate) struct TrainerFields<'s> {
    /// The model's last layer.
    pub input: &'s str,
    /// Passes over the training split.
    pub epochs: usize,
    /// Examples per step.
    pub batch_size: usize,
    /// A run folder or model file to start from.
    pub init_from: Option<&'s Path>,
}

/// A training node for the layers feeding `fields.input`, checked against the dataset's
/// labels.
pub(crate) fn add_trainer(
    b: &mut Builder<'_>,
    name: &str,
    solver: Solver,
    fields: TrainerFields<'_>,
) -> Result<NodeIndex, SpecError> {
    let (kind, input) = (solver.kind(), fields.input);
    let model = b.output_of(input);
    let trained_by = b.nodes().find_map(|(_, n)| match &n.op {
        Op::Train { layers, .. } if layers.contains(&model) => Some(n.name.clone()),
        _ => None,
    });
    if let Some(other) = trained_by {
        return Err(b.err(
            name,
            Some("input"),
            format!(
                "field `input`: the layers of `{input}` are already trained by stage `{other}`; a model \
                 has one training stage (to compare learning rules, give each its own model stage)"
            ),
        ));
    }
    let (source, layers) = chain(b, name, kind, model)?;
    if layers.is_empty() {
        return Err(b.err(
            name,
            Some("input"),
            format!("field `input`: `{input}` is a dataset; name the model's last layer"),
        ));
    }
    let Some((shape, classes)) = b.node(model).output.tensor() else { unreachable!("layers carry tensors") };
    let units: usize = shape.iter().product();
    // A rule that reads classes another way (Forward-Forward's goodness) has no output layer.
    if units != classes && solver.readout() == plflow_ops::readout::Readout::Outputs {
        return Err(b.err(
            name,
            Some("input"),
            format!(
                "shape mismatch: the model's output `{}` has {units} units but the dataset `{}` has {classes} classes",
                b.node(model).name,
                b.node(source).name
            ),
        ));
    }
    b.range(name, "epochs", fields.epochs > 0, "at least 1", fields.epochs)?;
    b.range(name, "batch_size", fields.batch_size > 0, "at least 1", fields.batch_size)?;
    let init_from = match fields.init_from {
        Some(from) => Some(init_from(b, name, from, &layers)?),
        None => None,
    };
    let (epochs, batch_size) = (fields.epochs, fields.batch_size);
    let op = Op::Train { solver, epochs, batch_size, source, layers, init_from };
    let node = Node { name: name.into(), stage: name.into(), op, output: Port::Model };
    let i = b.add_node(node, Some(model));
    b.add_edge(source, i, Edge::Batches);
    Ok(i)
}

/// The dataset feeding `model` and the chain of layers from it to `model`, in order.
fn chain(
    b: &Builder<'_>,
    name: &str,
    kind: &str,
    model: NodeIndex,
) -> Result<(NodeIndex, Vec<NodeIndex>), SpecError> {
    let mut layers = Vec::new();
    let mut at = model;
    let source = loop {
        match &b.node(at).op {
            Op::Layer(_) => layers.push(at),
            op if op.is_data() => break at,
            other => {
                return Err(b.err(
                    name,
                    Some("input"),
                    format!(
                        "field `input`: {kind} trains the layers feeding it, but `{}` is a {} stage{}",
                        b.node(at).name,
                        other.kind(),
                        if at == model { "" } else { " inside the model" }
                    ),
                ));
            }
        }
        let Some(prev) = b.input_of(at) else {
            return Err(b.err(
                name,
                Some("input"),
                "field `input`: the model is not fed by a dataset".into(),
            ));
        };
        at = prev;
    };
    layers.reverse();
    for &l in &layers {
        if let Some(r) = b.residual_of(l).filter(|r| !layers.contains(r)) {
            return Err(b.err(
                name,
                Some("input"),
                format!(
                    "field `input`: layer `{}` adds the output of `{}`, which is not a layer of the model {kind} trains",
                    b.node(l).name,
                    b.node(r).name
                ),
            ));
        }
    }
    Ok((source, layers))
}

/// The model file `from` names (a run folder's `model.safetensors`, or a file), read and
/// checked layer by layer against the nodes `layers`.
pub(crate) fn init_from(
    b: &Builder<'_>,
    name: &str,
    from: &Path,
    layers: &[NodeIndex],
) -> Result<PathBuf, SpecError> {
    let file = if from.is_dir() { from.join("model.safetensors") } else { from.to_path_buf() };
    let fail = |message: String| b.err(name, Some("init_from"), format!("field `init_from`: {message}"));
    let model = crate::model::LoadedModel::read(&file).map_err(|e| {
        let mut message = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            message.push_str(&format!(": {c}"));
            cause = c.source();
        }
        fail(format!("{message} (give a run folder holding model.safetensors, or a model file)"))
    })?;
    let wanted: Vec<_> = layers
        .iter()
        .map(|&l| crate::model::LayerMeta {
            residual: b.residual_of(l).and_then(|r| layers.iter().position(|&c| c == r)),
            ..crate::model::layer_meta(b.node(l))
        })
        .collect();
    crate::model::check_layers(&model.meta.layers, &wanted)
        .map_err(|m| fail(format!("{}: {m}", file.display())))?;
    Ok(file)
}
