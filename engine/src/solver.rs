//! The learning rule of a training stage as a plug-in: what the planner (memory estimate,
//! description), the scheduler (the trainer and its settings) and the reports ask of it. A
//! new rule is a type implementing [`Method`] in its stage's file, and the stage's line in
//! `stage_kinds!`; nothing else matches on solver kinds.

use crate::plan::MemoryEstimate;
use plflow_ops::network::Network;
use plflow_ops::pl::PlConfig;
use plflow_ops::readout::Readout;
use plflow_ops::state::Trainer;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// One layer's share of a step, for the per-layer workspace a rule needs.
#[derive(Debug, Clone, Copy)]
pub struct LayerWork {
    /// Examples per step.
    pub batch: usize,
    /// Rows the layer sees per step (examples times positions).
    pub rows: usize,
    /// Inputs per row.
    pub inputs: usize,
    /// Outputs per row.
    pub units: usize,
    /// Trainable parameters.
    pub parameters: usize,
}

/// A learning rule: its settings, already checked by its stage.
pub trait Method: fmt::Debug + Send + Sync {
    /// The stage kind, as written in pipelines and checkpoints.
    fn kind(&self) -> &'static str;
    /// One line for `plflow check`.
    fn describe(&self) -> String;
    /// The settings for `summary.json` (without `kind`, `epochs` and `batch_size`).
    fn settings(&self) -> serde_json::Map<String, serde_json::Value>;
    /// Fresh state for training `network`.
    fn trainer(&self, network: &Network) -> Box<dyn Trainer>;
    /// Expected peak of a chain of flat dense layers `dims` (inputs, units) over a
    /// `input_len`-wide batch of `batch` examples.
    fn estimate(&self, dims: &[(usize, usize)], input_len: usize, batch: usize) -> MemoryEstimate;
    /// Bytes of state kept per byte of trainable parameters (`f32` buffers count 1, `bf16`
    /// ones one half).
    fn state_per_parameter(&self) -> f64;
    /// Bytes of one layer's update workspace at its peak.
    fn update_bytes(&self, work: &LayerWork) -> usize;
    /// Whether the step's loss is PL's residual (reported as `train_residual`) rather than
    /// a loss.
    fn reports_residual(&self) -> bool {
        false
    }
    /// How the trained network's class scores are read (its outputs unless the rule says
    /// otherwise); model files keep it.
    fn readout(&self) -> Readout {
        Readout::Outputs
    }
    /// The PL settings, for what only PL plans (its solve routes).
    fn pl(&self) -> Option<&PlConfig> {
        None
    }
}

/// The learning rule of a training node: shared, immutable settings.
#[derive(Debug, Clone)]
pub struct Solver(Arc<dyn Method>);

impl Solver {
    /// The rule `method`.
    pub fn new(method: impl Method + 'static) -> Self {
        Self(Arc::new(method))
    }
}

impl Deref for Solver {
    type Target = dyn Method;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl PartialEq for Solver {
    fn eq(&self, other: &Self) -> bool {
        self.kind() == other.kind() && self.settings() == other.settings()
    }
}
