//! `kind: standardize` and `kind: flatten`: transforms of a dataset's examples.

use super::{Builder, Stage};
use crate::error::SpecError;
use crate::graph::{Node, Op, Port};
use petgraph::graph::NodeIndex;
use serde::{Deserialize, Serialize};

/// `kind: standardize` and `kind: flatten`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(inline)]
pub struct TransformSpec {
    /// The dataset (or transform) stage transformed.
    pub input: String,
}

/// `kind: standardize`: every feature scaled by the training split's mean and std.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
#[schemars(inline)]
pub struct StandardizeSpec(pub TransformSpec);

/// `kind: flatten`: examples as flat vectors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
#[schemars(inline)]
pub struct FlattenSpec(pub TransformSpec);

/// The node of transform `kind` over `input`, which must produce examples.
fn add_transform(
    b: &mut Builder<'_>,
    name: &str,
    kind: &str,
    input: &str,
    op: Op,
    reshape: impl Fn(Vec<usize>) -> Vec<usize>,
) -> Result<NodeIndex, SpecError> {
    let from = b.output_of(input);
    let Port::Examples { shape, classes } = b.node(from).output.clone() else {
        return Err(b.err(
            name,
            Some("input"),
            format!(
                "field `input`: {kind} transforms examples, but `{input}` produces {}",
                b.node(from).output.describe()
            ),
        ));
    };
    let output = Port::Examples { shape: reshape(shape), classes };
    Ok(b.add_node(Node { name: name.into(), stage: name.into(), op, output }, Some(from)))
}

impl Stage for StandardizeSpec {
    fn input(&self) -> Option<&str> {
        Some(&self.0.input)
    }

    fn build(&self, name: &str, b: &mut Builder<'_>) -> Result<NodeIndex, SpecError> {
        add_transform(b, name, "standardize", &self.0.input, Op::Standardize, |shape| shape)
    }
}

impl Stage for FlattenSpec {
    fn input(&self) -> Option<&str> {
        Some(&self.0.input)
    }

    fn build(&self, name: &str, b: &mut Builder<'_>) -> Result<NodeIndex, SpecError> {
        add_transform(b, name, "flatten", &self.0.input, Op::Flatten, |shape| vec![shape.iter().product()])
    }
}
