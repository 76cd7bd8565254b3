//! `kind: evaluate`: a trained model measured on a split after every epoch and at the end
//! (the trainer runs it; see `run`).

use super::{Builder, Stage};
use crate::error::SpecError;
use crate::graph::{Node, Op, Port, Split};
use petgraph::graph::NodeIndex;
use serde::{Deserialize, Serialize};

/// Which split of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitSpec {
    /// The training split.
    Train,
    /// The test split.
    #[default]
    Test,
}

/// `kind: evaluate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluateSpec {
    /// The training stage whose model is measured.
    pub input: String,
    /// The split measured.
    #[serde(default)]
    pub split: SplitSpec,
}

impl Stage for EvaluateSpec {
    fn input(&self) -> Option<&str> {
        Some(&self.input)
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
        let op = Op::Evaluate { split };
        Ok(b.add_node(Node { name: name.into(), stage: name.into(), op, output: Port::Metrics }, Some(from)))
    }
}
