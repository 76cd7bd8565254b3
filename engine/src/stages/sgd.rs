//! `kind: sgd`: the backprop baseline with SGD and momentum, cross-entropy on the softmax
//! outputs. The step itself is `plflow_ops::backprop`.

use super::trainer::{add_trainer, trainer_spec};
use super::{Builder, Stage};
use crate::error::SpecError;
use crate::solver::Solver;
use crate::spec::defaults;
use petgraph::graph::NodeIndex;
use plflow_ops::backprop::Optimizer;
use serde::{Deserialize, Serialize};

trainer_spec! {
    /// `kind: sgd`: backprop with SGD and momentum, cross-entropy on the softmax outputs.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct SgdSpec {
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
}

impl Stage for SgdSpec {
    fn input(&self) -> Option<&str> {
        Some(&self.input)
    }

    fn build(&self, name: &str, b: &mut Builder<'_>) -> Result<NodeIndex, SpecError> {
        b.range(name, "lr", self.lr > 0.0 && self.lr.is_finite(), "> 0", self.lr)?;
        b.range(name, "momentum", (0.0..1.0).contains(&self.momentum), "in [0, 1)", self.momentum)?;
        b.range(name, "weight_decay", self.weight_decay >= 0.0, ">= 0", self.weight_decay)?;
        let solver = Solver::new(Optimizer::Sgd {
            lr: self.lr,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
        });
        let fields = self.trainer_fields();
        add_trainer(b, name, solver, fields)
    }
}
