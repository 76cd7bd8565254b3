//! `kind: evaluate`: a trained model measured on a split after every epoch and at the end
//! (the trainer runs it; see `run`).

use super::{Builder, Stage};
use crate::error::SpecError;
use crate::graph::{Edge, Node, Op, Port, Split};
use petgraph::graph::NodeIndex;
use serde::{Deserialize, Serialize};

/// Which split of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SplitSpec {
    /// The training split.
    Train,
    /// The test split.
    #[default]
    Test,
}

/// `kind: evaluate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluateSpec {
    /// The training stage whose model is measured.
    pub input: String,
    /// The split measured.
    #[serde(default)]
    pub split: SplitSpec,
    /// Another dataset stage (or a transform of one) to measure, with the examples' shape and
    /// the classes the model was trained on; by default the trainer's own dataset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}

impl Stage for EvaluateSpec {
    fn input(&self) -> Option<&str> {
        Some(&self.input)
    }

    fn references(&self) -> Vec<(&'static str, &str)> {
        let mut refs = vec![("input", self.input.as_str())];
        refs.extend(self.data.as_deref().map(|d| ("data", d)));
        refs
    }

    fn build(&self, name: &str, b: &mut Builder<'_>) -> Result<NodeIndex, SpecError> {
        let from = b.output_of(&self.input);
        if !matches!(b.node(from).op, Op::Train { .. }) {
            return Err(b.err(
                name,
                Some("input"),
                format!(
                    "field `input`: evaluate needs a training stage (kind: pl, sgd, adam or adamw), but `{}` is a {} stage",
                    self.input,
                    b.node(from).op.kind()
                ),
            ));
        }
        let split = match self.split {
            SplitSpec::Train => Split::Train,
            SplitSpec::Test => Split::Test,
        };
        let data = match &self.data {
            Some(data) => Some(self.other_data(name, b, from, data)?),
            None => None,
        };
        let op = Op::Evaluate { split, data };
        let node =
            b.add_node(Node { name: name.into(), stage: name.into(), op, output: Port::Metrics }, Some(from));
        if let Some(d) = data {
            // The trainer measures it after every epoch: it must be open before training.
            b.add_edge(d, node, Edge::Batches);
            b.add_edge(d, from, Edge::Batches);
        }
        Ok(node)
    }
}

impl EvaluateSpec {
    /// The dataset node `data` names, checked against what trainer `trainer` was trained on.
    fn other_data(
        &self,
        name: &str,
        b: &Builder<'_>,
        trainer: NodeIndex,
        data: &str,
    ) -> Result<NodeIndex, SpecError> {
        let Op::Train { source, .. } = b.node(trainer).op else { unreachable!("checked above") };
        let node = b.output_of(data);
        let (want, have) = (&b.node(source).output, &b.node(node).output);
        let why = match (want, have) {
            (Port::Examples { shape: s1, classes: c1 }, Port::Examples { shape: s2, classes: c2 }) => {
                if s1 != s2 {
                    Some(format!(
                        "has examples of shape {}, the model reads {}",
                        have.describe(),
                        want.describe()
                    ))
                } else if c1 != c2 {
                    Some(format!("has {c2} classes, the model was trained on {c1}"))
                } else {
                    None
                }
            }
            _ => Some(format!("produces {}, not examples", have.describe())),
        };
        match why {
            Some(why) => Err(b.err(name, Some("data"), format!("field `data`: `{data}` {why}"))),
            None => Ok(node),
        }
    }
}
