//! `kind: noprop`: NoProp, discrete time (Li, Teh and Pascanu 2025), with MLP blocks. The
//! stage makes its own layers from a dataset: `steps` blocks, each reading the input and a
//! noisy class embedding `z` (nodes `<name>.block<t>.x` and `<name>.block<t>.z`, then the
//! hidden layers and the logits, `<name>.block<t>.1`...), and the classifier `<name>.out`.
//! Each block is trained alone to denoise the embedding; the prediction runs the chain. The
//! method is `plflow_ops::noprop`.

use super::adam::check_moments;
use super::dense::{DenseNode, Init};
use super::trainer::{init_from, trainer_spec};
use super::{Builder, LayerNode, Stage};
use crate::error::SpecError;
use crate::graph::{Edge, Node, Op, Port};
use crate::plan::MemoryEstimate;
use crate::solver::{LayerWork, Method, Solver};
use crate::spec::{ActivationSpec, defaults};
use petgraph::graph::NodeIndex;
use plflow_ops::activation::Activation;
use plflow_ops::backprop::Optimizer;
use plflow_ops::network::Network;
use plflow_ops::noprop::{NoPropConfig, NoPropReadout, NoPropTrainer, step_bytes};
use plflow_ops::readout::Readout;
use plflow_ops::state::Trainer;
use serde::{Deserialize, Serialize};

trainer_spec! {
    /// `kind: noprop`: NoProp-DT; `input` names the dataset (or its standardised or flattened
    /// examples), and the stage makes the blocks.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct NoPropSpec {
        /// Widths of each block's hidden layers; the first reads the input and `z`, a last
        /// linear layer gives one logit per class.
        #[serde(default = "defaults::hidden")]
        pub hidden: Vec<usize>,
        /// Activation of the hidden layers.
        #[serde(default)]
        pub activation: ActivationSpec,
        /// Hidden activations are clipped to `[-clip, clip]` (ELU) or `[0, clip]` (ReLU).
        #[serde(default = "defaults::clip")]
        pub clip: f32,
        /// Denoising blocks `T`.
        #[serde(default = "defaults::noprop_steps")]
        pub steps: usize,
        /// `eta`, the weight of the denoising terms against the classifier's.
        #[serde(default = "defaults::noprop_eta")]
        pub eta: f64,
        /// AdamW's learning rate. The paper's 1e-3 is for CNN blocks over 150 epochs; MLP
        /// blocks on MNIST reach 97.7% training accuracy in 2 epochs at 3e-3, 86% at 1e-3.
        #[serde(default = "defaults::noprop_lr")]
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
        /// AdamW's decoupled weight decay (the paper's 1e-3).
        #[serde(default = "defaults::noprop_weight_decay")]
        pub weight_decay: f32,
    }
}

impl Stage for NoPropSpec {
    fn input(&self) -> Option<&str> {
        Some(&self.input)
    }

    fn build(&self, name: &str, b: &mut Builder<'_>) -> Result<NodeIndex, SpecError> {
        self.check(name, b)?;
        let (source, inputs, classes) = b.tensor_input(name, &self.input, "noprop")?;
        if !b.node(source).op.is_data() {
            let message = format!(
                "field `input`: noprop makes its own blocks and reads examples, but `{}` is a {} stage; name the dataset (or its standardize or flatten stage)",
                self.input,
                b.node(source).op.kind()
            );
            return Err(b.err(name, Some("input"), message));
        }
        let activation = b.activation(name, self.activation, self.clip)?;
        let mut layers = Vec::new();
        for t in 1..=self.steps {
            layers.extend(self.block(b, name, t, source, inputs, classes, activation));
        }
        let out = dense(b, format!("{name}.out"), (classes, classes), Activation::Linear, classes, None);
        layers.push(out);
        let fields = self.trainer_fields();
        let init_from = match fields.init_from {
            Some(from) => Some(init_from(b, name, from, &layers)?),
            None => None,
        };
        let (lr, beta1, beta2, eps, weight_decay) =
            (self.lr, self.beta1, self.beta2, self.eps, self.weight_decay);
        let solver = Solver::new(NoPropConfig {
            readout: NoPropReadout::new(self.steps, classes),
            eta: self.eta,
            optimizer: Optimizer::AdamW { lr, beta1, beta2, eps, weight_decay },
            seed: b.seed(),
        });
        let (epochs, batch_size) = (fields.epochs, fields.batch_size);
        b.range(name, "epochs", epochs > 0, "at least 1", epochs)?;
        b.range(name, "batch_size", batch_size > 0, "at least 1", batch_size)?;
        let op = Op::Train { solver, epochs, batch_size, source, layers: layers.clone(), init_from };
        let i =
            b.add_node(Node { name: name.into(), stage: name.into(), op, output: Port::Model }, Some(out));
        b.add_edge(source, i, Edge::Batches);
        // Every block comes before the trainer, not only the classifier its input names.
        for &l in layers.iter().filter(|&&l| l != out) {
            b.add_edge(l, i, Edge::Trains);
        }
        Ok(i)
    }
}

impl NoPropSpec {
    fn check(&self, name: &str, b: &Builder<'_>) -> Result<(), SpecError> {
        b.range(name, "steps", (1..=100).contains(&self.steps), "in 1..=100", self.steps)?;
        b.range(name, "eta", self.eta > 0.0 && self.eta.is_finite(), "> 0", self.eta)?;
        b.range(name, "lr", self.lr > 0.0 && self.lr.is_finite(), "> 0", self.lr)?;
        b.range(name, "weight_decay", self.weight_decay >= 0.0, ">= 0", self.weight_decay)?;
        check_moments(b, name, self.beta1, self.beta2, self.eps)?;
        if self.hidden.is_empty() {
            return Err(b.err(
                name,
                Some("hidden"),
                "field `hidden`: a block needs at least one hidden layer".into(),
            ));
        }
        if let Some(i) = self.hidden.iter().position(|&h| h == 0) {
            let message = format!("field `hidden[{i}]`: a layer needs at least 1 unit");
            return Err(b.err(name, Some("hidden"), message));
        }
        Ok(())
    }

    /// Block `t`'s layers: the input part, the `z` part, the hidden layers and the logits.
    #[allow(clippy::too_many_arguments)]
    fn block(
        &self,
        b: &mut Builder<'_>,
        name: &str,
        t: usize,
        source: NodeIndex,
        inputs: usize,
        classes: usize,
        activation: Activation,
    ) -> Vec<NodeIndex> {
        let first = self.hidden[0];
        let prefix = format!("{name}.block{t}");
        let x = dense(b, format!("{prefix}.x"), (inputs, first), activation, classes, Some(source));
        let z = dense(b, format!("{prefix}.z"), (classes, first), Activation::Linear, classes, None);
        let mut layers = vec![x, z];
        let (mut from, mut width) = (x, first);
        let widths: Vec<usize> = self.hidden[1..].iter().copied().chain([classes]).collect();
        for (k, &units) in widths.iter().enumerate() {
            let last = k + 1 == widths.len();
            let act = if last { Activation::Linear } else { activation };
            from = dense(b, format!("{prefix}.{}", k + 1), (width, units), act, classes, Some(from));
            layers.push(from);
            width = units;
        }
        layers
    }
}

/// A dense node `name` of `(inputs, units)` with Xavier weights, fed by `input` if given.
fn dense(
    b: &mut Builder<'_>,
    name: String,
    (inputs, units): (usize, usize),
    activation: Activation,
    classes: usize,
    input: Option<NodeIndex>,
) -> NodeIndex {
    let layer = DenseNode { inputs, units, positions: 1, activation, init: Init::Xavier };
    let stage = name.split('.').next().unwrap_or_default().to_owned();
    let output = Port::Activations { shape: vec![units], classes };
    b.add_node(Node { name, stage, op: Op::Layer(LayerNode::new(layer)), output }, input)
}

impl Method for NoPropConfig {
    fn kind(&self) -> &'static str {
        "noprop"
    }

    fn describe(&self) -> String {
        let Optimizer::AdamW { lr, beta1, beta2, weight_decay, .. } = self.optimizer else {
            unreachable!("noprop uses AdamW")
        };
        format!(
            "NoProp-DT, {} blocks, cosine schedule, eta {}; AdamW, lr {lr}, betas ({beta1}, {beta2}), weight decay {weight_decay}",
            self.readout.schedule.steps(),
            self.eta
        )
    }

    fn settings(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut out: serde_json::Map<_, _> =
            self.optimizer.settings().into_iter().map(|(k, v)| (k.to_owned(), (v as f32).into())).collect();
        out.insert("steps".into(), self.readout.schedule.steps().into());
        out.insert("eta".into(), self.eta.into());
        out
    }

    fn trainer(&self, network: &Network) -> Box<dyn Trainer> {
        Box::new(NoPropTrainer::new(network, self.clone()))
    }

    /// The weights, AdamW's two moments, the batch and the largest of the chain's and a
    /// block update's working sets.
    fn estimate(&self, dims: &[(usize, usize)], input_len: usize, batch: usize) -> MemoryEstimate {
        let parameters: usize = dims.iter().map(|&(d, m)| (d * m + m) * 4).sum();
        let per = dims.len().saturating_sub(1) / self.readout.schedule.steps().max(1);
        let step =
            batch * input_len * 4 + step_bytes(&dims[..per.min(dims.len())], batch, self.readout.classes);
        MemoryEstimate { parameters, state: 2 * parameters, step }
    }

    fn state_per_parameter(&self) -> f64 {
        2.0
    }

    fn update_bytes(&self, w: &LayerWork) -> usize {
        w.parameters * 4
    }

    fn readout(&self) -> Readout {
        Readout::NoProp(self.readout.clone())
    }
}
