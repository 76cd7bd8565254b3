//! `kind: ff`: Forward-Forward (Hinton 2022) for chains of dense ReLU layers: every layer
//! trained by its own goodness on positive and negative (wrong-label) data, the label written
//! into the first features of the input, and prediction by the label with the most goodness.
//! The method is `plflow_ops::ff`.

use super::adam::check_moments;
use super::trainer::{add_trainer, trainer_spec};
use super::{Builder, Stage};
use crate::error::SpecError;
use crate::graph::Op;
use crate::plan::MemoryEstimate;
use crate::solver::{LayerWork, Method, Solver};
use crate::spec::defaults;
use petgraph::graph::NodeIndex;
use plflow_ops::activation::Activation;
use plflow_ops::backprop::Optimizer;
use plflow_ops::ff::{FfConfig, FfTrainer, Goodness, Negatives, step_bytes};
use plflow_ops::network::Network;
use plflow_ops::readout::Readout;
use plflow_ops::state::Trainer;
use serde::{Deserialize, Serialize};

/// Which wrong label negative data carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NegativesSpec {
    /// In proportion to the current network's belief in each wrong label (the paper's).
    #[default]
    Hard,
    /// Uniform over the wrong labels.
    Random,
}

trainer_spec! {
    /// `kind: ff`: Forward-Forward.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct FfSpec {
        /// Goodness threshold `theta` on the mean squared activity of a layer.
        #[serde(default = "defaults::ff_threshold")]
        pub threshold: f32,
        /// The value written at the label's feature (the first `classes` input features are
        /// replaced by the one-hot label).
        #[serde(default = "defaults::one")]
        pub label_scale: f32,
        /// How negative labels are chosen: `hard` or `random`.
        #[serde(default)]
        pub negatives: NegativesSpec,
        /// Adam's learning rate on every layer's local loss.
        #[serde(default = "defaults::ff_lr")]
        pub lr: f32,
        /// Adam's first-moment decay.
        #[serde(default = "defaults::beta1")]
        pub beta1: f32,
        /// Adam's second-moment decay.
        #[serde(default = "defaults::beta2")]
        pub beta2: f32,
        /// Adam's denominator guard.
        #[serde(default = "defaults::adam_eps")]
        pub eps: f32,
    }
}

impl Stage for FfSpec {
    fn input(&self) -> Option<&str> {
        Some(&self.input)
    }

    fn build(&self, name: &str, b: &mut Builder<'_>) -> Result<NodeIndex, SpecError> {
        let finite = |v: f32| v > 0.0 && v.is_finite();
        b.range(name, "threshold", finite(self.threshold), "> 0", self.threshold)?;
        b.range(name, "label_scale", finite(self.label_scale), "> 0", self.label_scale)?;
        b.range(name, "lr", finite(self.lr), "> 0", self.lr)?;
        check_moments(b, name, self.beta1, self.beta2, self.eps)?;
        let (_, _, classes) = b.tensor_input(name, &self.input, "ff")?;
        let (lr, beta1, beta2, eps) = (self.lr, self.beta1, self.beta2, self.eps);
        let solver = Solver::new(FfConfig {
            goodness: Goodness { classes, label_scale: self.label_scale },
            threshold: self.threshold,
            negatives: match self.negatives {
                NegativesSpec::Hard => Negatives::Hard,
                NegativesSpec::Random => Negatives::Random,
            },
            optimizer: Optimizer::Adam { lr, beta1, beta2, eps, weight_decay: 0.0 },
            seed: b.seed(),
        });
        let i = add_trainer(b, name, solver, self.trainer_fields())?;
        check_layers(b, name, i, classes)?;
        Ok(i)
    }
}

/// Forward-Forward's goodness is written for ReLU layers on flat inputs, in a chain, and the
/// first layer's input must have room for the label.
fn check_layers(b: &Builder<'_>, name: &str, trainer: NodeIndex, classes: usize) -> Result<(), SpecError> {
    let Op::Train { layers, .. } = &b.node(trainer).op else { return Ok(()) };
    for (k, &l) in layers.iter().enumerate() {
        let node = b.node(l);
        let Op::Layer(layer) = &node.op else { continue };
        let why = match layer.flat_dense() {
            None => format!("is a {} layer; ff trains dense layers on flat inputs (an MLP)", layer.kind()),
            Some(_) if b.residual_of(l).is_some() => "adds a residual; ff trains plain chains".to_owned(),
            Some(_) if !matches!(layer.activation(), Activation::Relu { .. }) => format!(
                "has activation {}; Forward-Forward's goodness needs relu on every layer, the last too \
                 (set `activation: relu` in stage `{}`)",
                layer.activation().name(),
                node.stage
            ),
            Some((inputs, _)) if k == 0 && inputs < classes => format!(
                "takes {inputs} features; ff writes the label into the first {classes}, so it needs at least that many"
            ),
            Some(_) => continue,
        };
        return Err(b.err(name, Some("input"), format!("field `input`: layer `{}` {why}", node.name)));
    }
    Ok(())
}

impl Method for FfConfig {
    fn kind(&self) -> &'static str {
        "ff"
    }

    fn describe(&self) -> String {
        let Optimizer::Adam { lr, beta1, beta2, .. } = self.optimizer else { unreachable!("ff uses Adam") };
        format!(
            "Forward-Forward, threshold {}, label scale {}, {} negatives; Adam, lr {lr}, betas ({beta1}, {beta2})",
            self.threshold,
            self.goodness.label_scale,
            match self.negatives {
                Negatives::Hard => "hard",
                Negatives::Random => "random",
            }
        )
    }

    fn settings(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut map = self.optimizer.settings();
        map.retain(|(k, _)| *k != "weight_decay");
        let mut out: serde_json::Map<_, _> =
            map.into_iter().map(|(k, v)| (k.to_owned(), (v as f32).into())).collect();
        out.insert("threshold".into(), self.threshold.into());
        out.insert("label_scale".into(), self.goodness.label_scale.into());
        let negatives = if self.negatives == Negatives::Hard { "hard" } else { "random" };
        out.insert("negatives".into(), negatives.into());
        out
    }

    fn trainer(&self, network: &Network) -> Box<dyn Trainer> {
        Box::new(FfTrainer::new(network, *self))
    }

    /// The weights, Adam's two moments, the batch and the step's largest working set.
    fn estimate(&self, dims: &[(usize, usize)], input_len: usize, batch: usize) -> MemoryEstimate {
        let parameters: usize = dims.iter().map(|&(d, m)| (d * m + m) * 4).sum();
        let step = batch * input_len * 4 + step_bytes(dims, batch, self.goodness.classes);
        MemoryEstimate { parameters, state: 2 * parameters, step }
    }

    fn state_per_parameter(&self) -> f64 {
        2.0
    }

    fn update_bytes(&self, w: &LayerWork) -> usize {
        step_bytes(&[(w.inputs, w.units)], w.batch, self.goodness.classes)
    }

    fn readout(&self) -> Readout {
        Readout::Goodness(self.goodness)
    }
}
