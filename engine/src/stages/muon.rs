//! `kind: muon`: backprop with Muon (Jordan et al. 2024; Liu et al. 2025), cross-entropy on
//! the softmax outputs: orthogonalised momentum for weight matrices, AdamW for biases and, by
//! default, for the output layer's weights. The rule is `plflow_ops::muon`; the step is
//! `plflow_ops::backprop`.

use super::trainer::{add_trainer, trainer_spec};
use super::{Builder, Stage};
use crate::error::SpecError;
use crate::solver::Solver;
use crate::spec::defaults;
use petgraph::graph::NodeIndex;
use plflow_ops::backprop::Optimizer;
use serde::{Deserialize, Serialize};

trainer_spec! {
    /// `kind: muon`: backprop with Muon.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct MuonSpec {
        /// Learning rate of both rules (Liu et al.'s scale gives Muon's update AdamW's size).
        #[serde(default = "defaults::adam_lr")]
        pub lr: f32,
        /// Momentum coefficient.
        #[serde(default = "defaults::muon_momentum")]
        pub momentum: f32,
        /// Orthogonalise the Nesterov direction `g + momentum * buf`.
        #[serde(default = "defaults::yes")]
        pub nesterov: bool,
        /// Newton-Schulz iterations per step.
        #[serde(default = "defaults::ns_steps")]
        pub ns_steps: u32,
        /// Decoupled weight decay of the weights.
        #[serde(default = "defaults::adamw_weight_decay")]
        pub weight_decay: f32,
        /// First-moment decay of the AdamW part.
        #[serde(default = "defaults::beta1")]
        pub beta1: f32,
        /// Second-moment decay of the AdamW part.
        #[serde(default = "defaults::beta2")]
        pub beta2: f32,
        /// Denominator guard of the AdamW part.
        #[serde(default = "defaults::adam_eps")]
        pub eps: f32,
        /// Train the output layer's weights with AdamW (Muon is meant for hidden layers).
        #[serde(default = "defaults::yes")]
        pub adamw_output: bool,
    }
}

impl Stage for MuonSpec {
    fn input(&self) -> Option<&str> {
        Some(&self.input)
    }

    fn build(&self, name: &str, b: &mut Builder<'_>) -> Result<NodeIndex, SpecError> {
        b.range(name, "lr", self.lr > 0.0 && self.lr.is_finite(), "> 0", self.lr)?;
        b.range(name, "momentum", (0.0..1.0).contains(&self.momentum), "in [0, 1)", self.momentum)?;
        b.range(name, "ns_steps", (1..=20).contains(&self.ns_steps), "in 1..=20", self.ns_steps)?;
        b.range(name, "weight_decay", self.weight_decay >= 0.0, ">= 0", self.weight_decay)?;
        super::adam::check_moments(b, name, self.beta1, self.beta2, self.eps)?;
        let solver = Solver::new(Optimizer::Muon {
            lr: self.lr,
            momentum: self.momentum,
            nesterov: self.nesterov,
            ns_steps: self.ns_steps,
            weight_decay: self.weight_decay,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            adamw_output: self.adamw_output,
        });
        let fields = self.trainer_fields();
        add_trainer(b, name, solver, fields)
    }
}
