//! `kind: admm`: dlADMM (Wang et al. 2019) on mini-batches: block updates of the weights, the
//! pre-activations and activations of each batch, and the output multiplier. The method is
//! `plflow_ops::admm`; it trains MLPs of dense ReLU layers with a linear output.

use super::trainer::{add_trainer, trainer_spec};
use super::{Builder, Stage};
use crate::error::SpecError;
use crate::graph::Op;
use crate::plan::MemoryEstimate;
use crate::solver::{LayerWork, Method, Solver};
use crate::spec::defaults;
use petgraph::graph::NodeIndex;
use plflow_ops::activation::Activation;
use plflow_ops::admm::{AdmmConfig, AdmmTrainer, step_bytes};
use plflow_ops::network::Network;
use plflow_ops::state::Trainer;
use serde::{Deserialize, Serialize};

trainer_spec! {
    /// `kind: admm`: dlADMM.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct AdmmSpec {
        /// Penalty of the relaxed equalities and of the augmented Lagrangian (`rho = nu`).
        #[serde(default = "defaults::admm_rho")]
        pub rho: f32,
        /// dlADMM iterations per batch (each a backward and a forward sweep, then the multiplier).
        #[serde(default = "defaults::admm_iterations")]
        pub iterations: u32,
    }
}

impl Stage for AdmmSpec {
    fn input(&self) -> Option<&str> {
        Some(&self.input)
    }

    fn build(&self, name: &str, b: &mut Builder<'_>) -> Result<NodeIndex, SpecError> {
        b.range(name, "rho", self.rho > 0.0 && self.rho.is_finite(), "> 0", self.rho)?;
        b.range(name, "iterations", (1..=100).contains(&self.iterations), "in 1..=100", self.iterations)?;
        let solver = Solver::new(AdmmConfig { rho: self.rho, iterations: self.iterations });
        let fields = self.trainer_fields();
        let i = add_trainer(b, name, solver, fields)?;
        check_layers(b, name, i)?;
        Ok(i)
    }
}

/// dlADMM's updates are written for dense ReLU layers under a linear output, in a chain.
fn check_layers(b: &Builder<'_>, name: &str, trainer: NodeIndex) -> Result<(), SpecError> {
    let Op::Train { layers, .. } = &b.node(trainer).op else { return Ok(()) };
    for (k, &l) in layers.iter().enumerate() {
        let node = b.node(l);
        let Op::Layer(layer) = &node.op else { continue };
        let last = k + 1 == layers.len();
        let why = if layer.kind() != "dense" || layer.flat_dense().is_none() {
            format!("is a {} layer; admm trains dense layers on flat inputs (an MLP)", layer.kind())
        } else if b.residual_of(l).is_some() {
            "adds a residual; admm trains plain chains".to_owned()
        } else if last && layer.activation() != Activation::Linear {
            format!("is the output layer with activation {}; it must be linear", layer.activation().name())
        } else if !last && !matches!(layer.activation(), Activation::Relu { .. }) {
            format!(
                "has activation {}; dlADMM's closed-form update needs relu (set `activation: relu` in stage `{}`)",
                layer.activation().name(),
                node.stage
            )
        } else {
            continue;
        };
        return Err(b.err(name, Some("input"), format!("field `input`: layer `{}` {why}", node.name)));
    }
    Ok(())
}

impl Method for AdmmConfig {
    fn kind(&self) -> &'static str {
        "admm"
    }

    fn describe(&self) -> String {
        format!("dlADMM, rho {}, {} iteration(s) per batch", self.rho, self.iterations)
    }

    fn settings(&self) -> serde_json::Map<String, serde_json::Value> {
        [("rho", self.rho.into()), ("iterations", self.iterations.into())]
            .into_iter()
            .map(|(k, v): (&str, serde_json::Value)| (k.to_owned(), v))
            .collect()
    }

    fn trainer(&self, _network: &Network) -> Box<dyn Trainer> {
        Box::new(AdmmTrainer::new(*self))
    }

    /// The weights, the batch, every layer's variables and the largest block update's
    /// temporaries; no state outlives a batch.
    fn estimate(&self, dims: &[(usize, usize)], input_len: usize, batch: usize) -> MemoryEstimate {
        let parameters: usize = dims.iter().map(|&(d, m)| (d * m + m) * 4).sum();
        MemoryEstimate { parameters, state: 0, step: batch * input_len * 4 + step_bytes(dims, batch) }
    }

    fn state_per_parameter(&self) -> f64 {
        0.0
    }

    fn update_bytes(&self, w: &LayerWork) -> usize {
        step_bytes(&[(w.inputs, w.units)], w.batch)
    }
}
