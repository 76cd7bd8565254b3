//! `kind: sgd`: the backprop baseline with SGD and momentum, cross-entropy on the softmax
//! outputs. The step itself is `plflow_ops::backprop`.

use super::trainer::{TrainerFields, add_trainer};
use super::{Builder, Stage};
use crate::error::SpecError;
use crate::graph::Solver;
use crate::spec::defaults;
use petgraph::graph::NodeIndex;
use plflow_ops::backprop::Optimizer;
use serde::{Deserialize, Serialize};

/// `kind: sgd`: backprop with SGD and momentum, cross-entropy on the softmax outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SgdSpec {
    /// The model's output stage; every layer between it and the dataset is trained.
    pub input: String,
    /// Passes over the training split.
    #[serde(default = "defaults::epochs")]
    pub epochs: usize,
    /// Examples per step.
    #[serde(default = "defaults::batch_size")]
    pub batch_size: usize,
    /// Start from a trained model (a run folder, for its `model.safetensors`, or a model
    /// file) instead of fresh weights; its layers must have this model's shapes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<std::path::PathBuf>,
    /// Learning rate.
    #[serde(default = "defaults::sgd_lr")]
    pub lr: f32,
    /// Momentum coefficient (0 for plain SGD).
    #[serde(default = "defaults::sgd_momentum")]
    pub momentum: f32,
    /// L2 penalty added to the weight gradients.
    #[serde(default)]
    pub weight_decay: f32,
}

impl Stage for SgdSpec {
    fn input(&self) -> Option<&str> {
        Some(&self.input)
    }

    fn build(&self, name: &str, b: &mut Builder<'_>) -> Result<NodeIndex, SpecError> {
        b.range(name, "lr", self.lr > 0.0 && self.lr.is_finite(), "> 0", self.lr)?;
        b.range(name, "momentum", (0.0..1.0).contains(&self.momentum), "in [0, 1)", self.momentum)?;
        b.range(name, "weight_decay", self.weight_decay >= 0.0, ">= 0", self.weight_decay)?;
        let solver = Solver::Backprop(Optimizer::Sgd {
            lr: self.lr,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
        });
        let fields = TrainerFields {
            input: &self.input,
            epochs: self.epochs,
            batch_size: self.batch_size,
            init_from: self.init_from.as_deref(),
        };
        add_trainer(b, name, solver, fields)
    }
}
