//! Backprop as a learning rule: what `sgd`, `adam`, `adamw` and `muon` share once their
//! stages have checked their settings into an [`Optimizer`]. The step is
//! `plflow_ops::backprop`.

use crate::plan::{MemoryEstimate, estimate_backprop};
use crate::solver::{LayerWork, Method};
use plflow_ops::backprop::{BackpropTrainer, Optimizer};
use plflow_ops::network::Network;
use plflow_ops::state::Trainer;

impl Method for Optimizer {
    fn kind(&self) -> &'static str {
        Optimizer::kind(self)
    }

    fn describe(&self) -> String {
        Optimizer::describe(self)
    }

    fn settings(&self) -> serde_json::Map<String, serde_json::Value> {
        Optimizer::settings(self).into_iter().map(|(k, v)| (k.to_owned(), (v as f32).into())).collect()
    }

    fn trainer(&self, network: &Network) -> Box<dyn Trainer> {
        Box::new(BackpropTrainer::new(network, *self))
    }

    fn estimate(&self, dims: &[(usize, usize)], input_len: usize, batch: usize) -> MemoryEstimate {
        estimate_backprop(dims, input_len, batch, self)
    }

    fn state_per_parameter(&self) -> f64 {
        self.buffers_per_parameter() as f64
    }

    fn update_bytes(&self, w: &LayerWork) -> usize {
        w.parameters * 4 + self.update_workspace_bytes(w.inputs, w.units)
    }
}
