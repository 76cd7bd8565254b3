//! `kind: adam` and `kind: adamw`: the backprop baselines with Adam and with decoupled weight
//! decay, cross-entropy on the softmax outputs. The step itself is `plflow_ops::backprop`.

use super::trainer::{add_trainer, trainer_spec};
use super::{Builder, Stage};
use crate::error::SpecError;
use crate::solver::Solver;
use crate::spec::defaults;
use petgraph::graph::NodeIndex;
use plflow_ops::backprop::Optimizer;
use serde::{Deserialize, Serialize};

trainer_spec! {
    /// `kind: adam` and `kind: adamw`: backprop with Adam, cross-entropy on the softmax outputs.
    /// For `adam` the weight decay is an L2 penalty on the gradient; for `adamw` it is decoupled.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[schemars(inline)]
    pub struct AdamSpec {
        /// Learning rate.
        #[serde(default = "defaults::adam_lr")]
        pub lr: f32,
        /// First-moment decay.
        #[serde(default = "defaults::beta1")]
        pub beta1: f32,
        /// Second-moment decay.
        #[serde(default = "defaults::beta2")]
        pub beta2: f32,
        /// Denominator guard.
        #[serde(default = "defaults::adam_eps")]
        pub eps: f32,
        /// Weight decay; defaults to 0 for `adam` and 0.01 for `adamw`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub weight_decay: Option<f32>,
    }
}

/// `kind: adamw`: the fields of `adam`, with AdamW's weight decay by default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
#[schemars(inline)]
pub struct AdamwSpec(pub AdamSpec);

impl AdamSpec {
    /// The optimiser these settings describe (decoupled decay for AdamW), checked.
    fn solver(&self, name: &str, b: &Builder<'_>, decoupled: bool) -> Result<Solver, SpecError> {
        b.range(name, "lr", self.lr > 0.0 && self.lr.is_finite(), "> 0", self.lr)?;
        check_moments(b, name, self.beta1, self.beta2, self.eps)?;
        let default_decay = if decoupled { crate::spec::defaults::adamw_weight_decay() } else { 0.0 };
        let weight_decay = self.weight_decay.unwrap_or(default_decay);
        b.range(name, "weight_decay", weight_decay >= 0.0, ">= 0", weight_decay)?;
        let (lr, beta1, beta2, eps) = (self.lr, self.beta1, self.beta2, self.eps);
        Ok(Solver::new(if decoupled {
            Optimizer::AdamW { lr, beta1, beta2, eps, weight_decay }
        } else {
            Optimizer::Adam { lr, beta1, beta2, eps, weight_decay }
        }))
    }

    fn add(&self, name: &str, b: &mut Builder<'_>, decoupled: bool) -> Result<NodeIndex, SpecError> {
        let solver = self.solver(name, b, decoupled)?;
        let fields = self.trainer_fields();
        add_trainer(b, name, solver, fields)
    }
}

/// Adam's moment settings (`beta1`, `beta2`, `eps`), which Muon's AdamW part shares.
pub(super) fn check_moments(
    b: &Builder<'_>,
    name: &str,
    beta1: f32,
    beta2: f32,
    eps: f32,
) -> Result<(), SpecError> {
    b.range(name, "beta1", (0.0..1.0).contains(&beta1), "in [0, 1)", beta1)?;
    b.range(name, "beta2", (0.0..1.0).contains(&beta2), "in [0, 1)", beta2)?;
    b.range(name, "eps", eps > 0.0, "> 0", eps)
}

impl Stage for AdamSpec {
    fn input(&self) -> Option<&str> {
        Some(&self.input)
    }

    fn build(&self, name: &str, b: &mut Builder<'_>) -> Result<NodeIndex, SpecError> {
        self.add(name, b, false)
    }
}

impl Stage for AdamwSpec {
    fn input(&self) -> Option<&str> {
        Some(&self.0.input)
    }

    fn build(&self, name: &str, b: &mut Builder<'_>) -> Result<NodeIndex, SpecError> {
        self.0.add(name, b, true)
    }
}
