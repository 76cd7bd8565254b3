//! `kind: dense` (a fully connected layer) and the layer kind it shares with `pointwise`
//! convolutions: `x W + b` on every row, or on every position of a map.

use super::{Builder, InitContext, LayerFormat, LayerKind, LayerNode, Stage};
use crate::error::{EngineError, SpecError};
use crate::export::{OnnxBuilder, ints_attr};
use crate::graph::{Node, Op, Port};
use crate::model::{LayerMeta, LoadedModel};
use crate::solver::{LayerWork, Solver};
use crate::spec::{ActivationSpec, InitSpec, MaskSpec, SparseSpec, defaults};
use petgraph::graph::NodeIndex;
use plflow_datasets::Source;
use plflow_datasets::stream::BatchStream;
use plflow_ops::activation::Activation;
use plflow_ops::dense::Dense;
use plflow_ops::init::{he_normal, xavier_normal};
use plflow_ops::layer::Layer;
use plflow_ops::pl::PlConfig;
use plflow_ops::sparse::{CorrelationPass, Mask, correlation_mask, masked_weights, small_world_mask};
use plflow_ops::{Matrix, OpsError};
use serde::{Deserialize, Serialize};

/// `kind: dense`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DenseSpec {
    /// The stage feeding this layer; its output is flattened.
    pub input: String,
    /// Output width.
    pub units: usize,
    /// Activation after the affine map.
    #[serde(default)]
    pub activation: ActivationSpec,
    /// Activations are clipped to `[-clip, clip]` (ELU) or `[0, clip]` (ReLU).
    #[serde(default = "defaults::clip")]
    pub clip: f32,
    /// Sparse connectivity initialisation; `null` (the default) for dense Xavier weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sparse: Option<SparseSpec>,
    /// Scale of dense initial weights: `xavier` (the default) or `he`; ignored by `sparse`,
    /// which sets its own.
    #[serde(default)]
    pub init: InitSpec,
}

impl Stage for DenseSpec {
    fn input(&self) -> Option<&str> {
        Some(&self.input)
    }

    fn build(&self, name: &str, b: &mut Builder<'_>) -> Result<NodeIndex, SpecError> {
        let (from, inputs, classes) = b.tensor_input(name, &self.input, "a dense layer")?;
        if self.units == 0 {
            return Err(b.err(name, Some("units"), "field `units`: must be at least 1".into()));
        }
        let activation = b.activation(name, self.activation, self.clip)?;
        let init = init_of(b, name, self.init, self.sparse, from)?;
        let layer = DenseNode { inputs, units: self.units, positions: 1, activation, init };
        let output = Port::Activations { shape: vec![self.units], classes };
        let op = Op::Layer(LayerNode::new(layer));
        Ok(b.add_node(Node { name: name.into(), stage: name.into(), op, output }, Some(from)))
    }
}

/// How a layer's weights start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Dense Xavier-normal weights.
    Xavier,
    /// Dense He-normal weights, `N(0, 2 / fan_in)`.
    He,
    /// Sparse connectivity (SPEC section 3). `correlated` for a layer fed by a dataset (top-k
    /// correlation), else a small-world ring.
    Sparse {
        /// Fraction of inputs each neuron connects to.
        tau: f64,
        /// Rewiring probability of the small-world ring.
        rewire: f64,
        /// Whether the mask lasts through training.
        persistent: bool,
        /// Top-k correlation with the dataset (else a small-world ring).
        correlated: bool,
    },
}

/// The initialisation of a layer of stage `stage` fed by `from`, checked.
pub(crate) fn init_of(
    b: &Builder<'_>,
    stage: &str,
    init: InitSpec,
    sparse: Option<SparseSpec>,
    from: NodeIndex,
) -> Result<Init, SpecError> {
    let Some(sp) = sparse else {
        return Ok(match init {
            InitSpec::Xavier => Init::Xavier,
            InitSpec::He => Init::He,
        });
    };
    if init != InitSpec::Xavier {
        return Err(b.err(
            stage,
            Some("init"),
            "field `init`: sparse connectivity sets its own initial weights; remove `init` or `sparse`"
                .into(),
        ));
    }
    b.range(stage, "sparse", sp.tau > 0.0 && sp.tau <= 1.0, "a `tau` in (0, 1]", sp.tau)?;
    b.range(stage, "sparse", (0.0..=1.0).contains(&sp.rewire), "a `rewire` in [0, 1]", sp.rewire)?;
    Ok(Init::Sparse {
        tau: sp.tau,
        rewire: sp.rewire,
        persistent: sp.mask == MaskSpec::Persistent,
        correlated: b.node(from).op.is_data(),
    })
}

/// A fully connected layer on flat inputs (`positions == 1`; maps are flattened), or a
/// pointwise convolution on maps with `positions` positions.
#[derive(Debug, Clone, PartialEq)]
pub struct DenseNode {
    /// Input width (channels for maps).
    pub inputs: usize,
    /// Output width (channels for maps).
    pub units: usize,
    /// Positions per example.
    pub positions: usize,
    /// After the affine map.
    pub activation: Activation,
    /// How the weights start.
    pub init: Init,
}

impl LayerKind for DenseNode {
    fn kind(&self) -> &'static str {
        if self.positions == 1 { "dense" } else { "pointwise" }
    }

    fn activation(&self) -> Activation {
        self.activation
    }

    fn parameter_count(&self) -> usize {
        self.inputs * self.units + self.units
    }

    fn meta(&self, name: &str) -> LayerMeta {
        LayerMeta {
            mask: matches!(self.init, Init::Sparse { persistent: true, .. }),
            ..LayerMeta::new(name, self.kind(), self.activation, [self.inputs, self.units, self.positions])
        }
    }

    fn init(&self, ctx: &mut InitContext<'_>) -> Result<Layer, OpsError> {
        let (inputs, units) = (self.inputs, self.units);
        let (weights, mask) = match self.init {
            Init::Xavier => (xavier_normal(inputs, units, ctx.rng), None),
            Init::He => (he_normal(inputs, inputs, units, ctx.rng), None),
            Init::Sparse { tau, rewire, persistent, correlated } => {
                let mask = match (correlated, ctx.input) {
                    (true, Some(data)) => {
                        let corr = correlation_pass(data, inputs)?;
                        correlation_mask(&corr, units, tau, ctx.rng)
                    }
                    (true, None) => {
                        return Err(OpsError::Invalid {
                            op: "dense",
                            detail: "a correlated sparse layer needs the dataset feeding it".into(),
                        });
                    }
                    (false, _) => small_world_mask(inputs, units, rewire, ctx.rng),
                };
                let weights = masked_weights(&mask, ctx.rng);
                (weights, persistent.then_some(mask))
            }
        };
        Ok(Layer { mask, ..Layer::new(Dense::new(weights), self.activation, self.positions) })
    }

    fn flat_dense(&self) -> Option<(usize, usize)> {
        (self.positions == 1).then_some((self.inputs, self.units))
    }

    fn crude_bytes(&self, batch: usize, solver: &Solver) -> f64 {
        let n = batch as f64;
        let (d, m, rows) = (self.inputs as f64, self.units as f64, n * self.positions as f64);
        // The system a PL solve factors: the smaller one unless the route is forced.
        let system = match solver.pl() {
            Some(c) if c.ridge.planned_route(batch.saturating_mul(self.positions), self.inputs).dual => {
                rows * rows
            }
            Some(_) => (d + 1.0).powi(2),
            None => 0.0,
        };
        16.0 * (d + 1.0) * m + 8.0 * (system + d * m + rows * (d + m))
    }

    fn update_bytes(&self, batch: usize, solver: &Solver) -> Option<usize> {
        let (inputs, units, parameters) = (self.inputs, self.units, self.parameter_count());
        Some(solver.update_bytes(&LayerWork {
            batch,
            rows: batch * self.positions,
            inputs,
            units,
            parameters,
        }))
    }

    fn describe_solve(&self, batch: usize, c: &PlConfig) -> Option<String> {
        let rows = batch * self.positions;
        let dual = c.ridge.dual(rows, self.inputs);
        let size = if dual { rows } else { self.inputs + 1 };
        let precision = match c.ridge.single_precision(self.inputs) {
            Some(true) => "f32",
            Some(false) => "f64",
            None => "f64?",
        };
        Some(format!("{} {size} {precision}", if dual { "dual" } else { "primal" }))
    }
}

/// Pearson-correlation statistics of the first `features` values of every training example,
/// in one sequential pass.
fn correlation_pass(data: &dyn Source, features: usize) -> Result<CorrelationPass, OpsError> {
    const ROWS: usize = 256;
    let mut pass = CorrelationPass::new(features);
    let mut labels = vec![0u32; ROWS];
    let mut stream = BatchStream::in_order(data, ROWS);
    while let Some(idx) = stream.next_batch() {
        let mut x = Matrix::zeros(idx.len(), data.example_len());
        data.read_into(idx, x.as_mut_slice(), &mut labels[..idx.len()]);
        pass.add(&x)?;
    }
    Ok(pass)
}

/// Dense and pointwise layers in model files: `weight` (inputs x outputs), `bias` and, for a
/// persistent sparse layer, `mask` (the kept entries' row-major indices).
#[derive(Debug)]
pub struct Format;

impl LayerFormat for Format {
    fn kinds(&self) -> &'static [&'static str] {
        &["dense", "pointwise"]
    }

    fn load(&self, m: &LayerMeta, model: &LoadedModel, activation: Activation) -> Result<Layer, EngineError> {
        let mask_name = format!("layers.{}.mask", m.name);
        let mask = match model.u32_tensor(&mask_name) {
            Some(idx) => Some(
                Mask::from_indices(m.inputs, m.outputs, idx.to_vec())
                    .map_err(|e| model.bad(Some(&mask_name), e.to_string()))?,
            ),
            None if m.mask => return Err(model.bad(Some(&mask_name), "missing")),
            None => None,
        };
        let params = model.dense_params(&m.name, m.inputs, m.outputs)?;
        Ok(Layer { mask, ..Layer::new(params, activation, m.positions) })
    }

    fn onnx(
        &self,
        layer: &Layer,
        b: &mut OnnxBuilder,
        name: &str,
        flat: &mut bool,
        _: &mut Option<&str>,
    ) -> bool {
        let Some(d) = layer.op_as::<Dense>() else { return false };
        if layer.input_positions == 1 {
            if !*flat {
                b.flatten(&format!("{name}.flatten"));
                *flat = true;
            }
            let w = b.constant(&format!("{name}.weight"), &[d.inputs(), d.outputs()], d.weights.as_slice());
            let bias = b.constant(&format!("{name}.bias"), &[d.outputs()], d.bias.as_slice());
            b.node(name, "Gemm", &[w, bias], vec![]);
        } else {
            // Pointwise: the kernel is the weight matrix transposed, `out x in x 1 x 1`.
            let (i, o) = (d.inputs(), d.outputs());
            let w = d.weights.as_slice();
            let kernel: Vec<f32> = (0..o).flat_map(|c| (0..i).map(move |r| w[r * o + c])).collect();
            let w = b.constant(&format!("{name}.weight"), &[o, i, 1, 1], &kernel);
            let bias = b.constant(&format!("{name}.bias"), &[o], d.bias.as_slice());
            b.node(name, "Conv", &[w, bias], vec![ints_attr("kernel_shape", &[1, 1])]);
        }
        true
    }
}
