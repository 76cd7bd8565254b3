//! A saved model as a standard ONNX file (opset 13): from the training stage's input (the
//! dataset's examples, or the extracted features when the pipeline had an extraction) to the
//! network's outputs, in standard operators only: `Sub`/`Mul` for standardisation, `Gemm` for
//! dense layers, grouped `Conv` for depthwise and 1x1 `Conv` for pointwise layers (maps stay
//! NCHW, ONNX's layout, where plflow computes NHWC rows), `GlobalAveragePool`, and `Elu`
//! followed by `Clip` for the clipped ELU. The protobuf is built with tract-onnx's generated
//! types and encoded by prost.

use crate::error::EngineError;
use crate::model::{LayerMeta, LoadedModel, ReadoutMeta, StepMeta, bad_model};
use plflow_datasets::transform::Stats;
use plflow_ops::network::{Layer, Network};

use prost::Message;
use std::path::Path;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::tensor_shape_proto::{Dimension, dimension};
use tract_onnx::pb::type_proto::{self, Tensor};
use tract_onnx::pb::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto, attribute_proto::AttributeType,
};

/// The ONNX opset the exported graph uses.
pub const OPSET: i64 = 13;
/// The graph's input and output names.
pub const INPUT: &str = "input";
/// See [`INPUT`].
pub const OUTPUT: &str = "logits";

/// The graph under construction: nodes, initialisers and the name of the latest value. Layer
/// formats ([`crate::stages::LayerFormat::onnx`]) append their nodes to it.
#[derive(Debug)]
pub struct OnnxBuilder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    last: String,
}

impl OnnxBuilder {
    /// Add a constant.
    pub fn constant(&mut self, name: &str, dims: &[usize], values: &[f32]) -> String {
        let raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(TensorProto {
            name: name.to_owned(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: DataType::Float as i32,
            raw_data,
            ..Default::default()
        });
        name.to_owned()
    }

    /// Add node `op` on the latest value (and `extra` inputs), making its output the latest.
    pub fn node(&mut self, name: &str, op: &str, extra: &[String], attributes: Vec<AttributeProto>) {
        let mut input = vec![self.last.clone()];
        input.extend_from_slice(extra);
        let output = name.to_owned();
        self.nodes.push(NodeProto {
            input,
            output: vec![output.clone()],
            name: name.to_owned(),
            op_type: op.to_owned(),
            attribute: attributes,
            ..Default::default()
        });
        self.last = output;
    }

    /// The name of the latest value.
    pub fn last(&self) -> &str {
        &self.last
    }

    /// Add node `op` on `inputs` (not only the latest value), making its output the latest.
    pub fn node_on(&mut self, name: &str, op: &str, inputs: &[String], attributes: Vec<AttributeProto>) {
        self.last.clone_from(&inputs[0]);
        self.node(name, op, &inputs[1..], attributes);
    }

    /// Flatten the latest value to `[N, features]`.
    pub fn flatten(&mut self, name: &str) {
        self.node(name, "Flatten", &[], vec![int_attr("axis", 1)]);
    }

    /// The clipped ELU or ReLU, or nothing for a linear layer.
    fn activation(&mut self, name: &str, layer: &Layer) {
        use plflow_ops::activation::Activation;
        let (low, clip) = match layer.activation {
            Activation::Linear => return,
            Activation::Elu { clip } => {
                self.node(&format!("{name}.elu"), "Elu", &[], vec![float_attr("alpha", 1.0)]);
                (-clip, clip)
            }
            // ReLU is the clip from zero.
            Activation::Relu { clip } => (0.0, clip),
        };
        let lo = self.constant(&format!("{name}.clip_min"), &[], &[low]);
        let hi = self.constant(&format!("{name}.clip_max"), &[], &[clip]);
        self.node(&format!("{name}.clip"), "Clip", &[lo, hi], vec![]);
    }
}

fn float_attr(name: &str, f: f32) -> AttributeProto {
    AttributeProto { name: name.to_owned(), r#type: AttributeType::Float as i32, f, ..Default::default() }
}

pub(crate) fn int_attr(name: &str, i: i64) -> AttributeProto {
    AttributeProto { name: name.to_owned(), r#type: AttributeType::Int as i32, i, ..Default::default() }
}

pub(crate) fn ints_attr(name: &str, ints: &[usize]) -> AttributeProto {
    let ints = ints.iter().map(|&v| v as i64).collect();
    AttributeProto { name: name.to_owned(), r#type: AttributeType::Ints as i32, ints, ..Default::default() }
}

/// A float tensor value of shape `[N, dims...]`.
fn value(name: &str, dims: &[usize]) -> ValueInfoProto {
    let batch = Dimension { value: Some(dimension::Value::DimParam("N".into())), ..Default::default() };
    let rest = dims
        .iter()
        .map(|&d| Dimension { value: Some(dimension::Value::DimValue(d as i64)), ..Default::default() });
    let shape = TensorShapeProto { dim: std::iter::once(batch).chain(rest).collect() };
    let tensor = Tensor { elem_type: DataType::Float as i32, shape: Some(shape) };
    ValueInfoProto {
        name: name.to_owned(),
        r#type: Some(TypeProto { value: Some(type_proto::Value::TensorType(tensor)), ..Default::default() }),
        ..Default::default()
    }
}

/// The ONNX nodes of one layer, appended to `b`; `flat` says whether the value flowing is
/// already flat (a map is flattened before the first dense layer on flat inputs).
/// `skip` names the value a residual connection adds before the activation.
fn layer_nodes(
    b: &mut OnnxBuilder,
    layer: &Layer,
    name: &str,
    flat: &mut bool,
    skip: Option<&str>,
) -> Result<(), String> {
    let mut skip = skip;
    if !crate::stages::LAYER_FORMATS.iter().any(|f| f.onnx(layer, b, name, flat, &mut skip)) {
        return Err(format!(
            "layer `{name}` is a {} layer, which ONNX export does not know yet",
            layer.op.kind()
        ));
    }
    if let Some(skip) = skip {
        b.node(&format!("{name}.add"), "Add", &[skip.to_owned()], vec![]);
    }
    b.activation(name, layer);
    Ok(())
}

/// The ONNX graph of `network` (with `names` from the model file) behind the standardisation
/// `stats`, taking examples of `input_shape` (channels first for maps) as value `input`.
pub fn graph(
    network: &Network,
    names: &[String],
    input: &str,
    input_shape: &[usize],
    stats: Option<&Stats>,
) -> Result<GraphProto, String> {
    let mut b = OnnxBuilder { nodes: Vec::new(), initializers: Vec::new(), last: input.to_owned() };
    if let Some(s) = stats {
        let scale: Vec<f32> = s.std.iter().map(|&v| if v > 1e-6 { 1.0 / v } else { 1.0 }).collect();
        let mean = b.constant("standardize.mean", input_shape, &s.mean);
        let scale = b.constant("standardize.scale", input_shape, &scale);
        b.node("standardize.sub", "Sub", &[mean], vec![]);
        b.node("standardize.mul", "Mul", &[scale], vec![]);
    }
    let mut flat = input_shape.len() <= 1;
    // Every layer's output value, for the residual adds that read them later.
    let mut outputs: Vec<String> = Vec::with_capacity(names.len());
    for (layer, name) in network.layers.iter().zip(names) {
        let skip = match layer.residual {
            Some(r) => {
                Some(outputs.get(r).ok_or(format!("layer `{name}` adds layer {r}, not below it"))?.as_str())
            }
            None => None,
        };
        layer_nodes(&mut b, layer, name, &mut flat, skip)?;
        outputs.push(b.last.clone());
    }
    // The last node's output is renamed to the graph's output.
    let classes = network.layers.last().map_or(0, |l| l.output_shape(1).1);
    if let Some(last) = b.nodes.last_mut() {
        last.output = vec![OUTPUT.to_owned()];
    }
    Ok(GraphProto {
        node: b.nodes,
        name: "plflow".into(),
        initializer: b.initializers,
        input: vec![value(input, input_shape)],
        output: vec![value(OUTPUT, &[classes])],
        ..Default::default()
    })
}

/// What stands in front of a saved network.
struct Front<'a> {
    /// The dataset's example shape.
    data: Vec<usize>,
    extract: Option<&'a StepMeta>,
    stats: Option<Stats>,
}

impl<'a> Front<'a> {
    fn of(model: &'a LoadedModel) -> Result<Self, EngineError> {
        let mut front = Front { data: Vec::new(), extract: None, stats: None };
        for step in &model.meta.preprocessing {
            match step {
                StepMeta::Data { shape, .. } => front.data.clone_from(shape),
                StepMeta::Extract { .. } => front.extract = Some(step),
                StepMeta::Standardize { stage, features } => {
                    front.stats = Some(model.stats(stage, *features)?)
                }
                StepMeta::Flatten { .. } => {}
                // The network's input starts at a join: what came before is not exported.
                StepMeta::Join { features, .. } => {
                    front = Front { data: vec![*features], extract: None, stats: None };
                }
            }
        }
        Ok(front)
    }

    /// The network's input as a graph input: the extracted features, or the examples.
    fn network_input(&self) -> Vec<usize> {
        match self.extract {
            Some(StepMeta::Extract { dim, .. }) => vec![*dim],
            _ => self.data.clone(),
        }
    }
}

/// Export the model file `model` as ONNX to `out` (temporary file, then renamed), with the
/// extraction's backbone and image preparation in front when `with_backbone`; returns the
/// graph's input shape (without the batch).
pub fn export(model: &Path, out: &Path, with_backbone: bool) -> Result<Vec<usize>, EngineError> {
    let loaded = LoadedModel::read(model)?;
    let network = loaded.saved_network()?;
    let meta = &loaded.meta;
    if let Some(readout) = meta.readout {
        let how = match readout {
            ReadoutMeta::Goodness { .. } => {
                "a Forward-Forward model classifies by running the network once per label and comparing goodness"
            }
            ReadoutMeta::Noprop { .. } => {
                "a NoProp model classifies by a chain of denoising blocks and a classifier"
            }
        };
        let message = format!(
            "{how}; ONNX export writes one forward pass of a chain, so it does not export these models yet \
             (`plflow predict` and `plflow eval` use them)"
        );
        return Err(bad_model(model, None, message));
    }
    let front = Front::of(&loaded)?;
    let features = front.network_input();
    if features.iter().product::<usize>() != meta.input_shape.iter().product::<usize>() {
        let message =
            format!("its preprocessing gives {features:?}, its network takes {:?}", meta.input_shape);
        return Err(bad_model(model, None, message));
    }
    let names: Vec<String> = meta.layers.iter().map(|l: &LayerMeta| l.name.clone()).collect();
    let (graph, shape, ir) = if with_backbone {
        let Some(StepMeta::Extract { model: file, sha256, output, size, mean, std, bgr, .. }) = front.extract
        else {
            let message =
                "it has no extraction stage, so no backbone to put in front; export without --with-backbone";
            return Err(bad_model(model, None, message));
        };
        let path = crate::predict::backbone_path(model, Path::new(file), sha256)?;
        let bytes = std::fs::read(&path).map_err(EngineError::io(&path, "cannot read the backbone"))?;
        let backbone = ModelProto::decode(bytes.as_slice())
            .map_err(|e| bad_model(&path, None, format!("not an ONNX model ({e})")))?;
        let head = graph(&network, &names, "features", &features, front.stats.as_ref())
            .map_err(|m| bad_model(model, None, m))?;
        let prep = Preparation { size: *size, mean: *mean, std: *std, bgr: *bgr };
        let merged =
            with_backbone_graph(backbone.graph.unwrap_or_default(), output, &prep, &front.data, head)
                .map_err(|m| bad_model(&path, None, m))?;
        (merged, front.data.clone(), backbone.ir_version.max(8))
    } else {
        let graph = graph(&network, &names, INPUT, &features, front.stats.as_ref())
            .map_err(|m| bad_model(model, None, m))?;
        (graph, features, 8)
    };
    let proto = ModelProto {
        ir_version: ir,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: OPSET }],
        producer_name: "plflow".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(graph),
        doc_string: format!("stage `{}` after epoch {}", meta.stage, meta.epoch),
        metadata_props: vec![StringStringEntryProto {
            key: "class_names".into(),
            value: serde_json::to_string(&meta.class_names).unwrap_or_default(),
        }],
        ..Default::default()
    };
    crate::report::write_atomic(out, &proto.encode_to_vec())?;
    Ok(shape)
}

/// How images are prepared for a backbone (as `plflow_extract::preprocess::Preprocess`).
struct Preparation {
    size: usize,
    mean: [f32; 3],
    std: [f32; 3],
    bgr: bool,
}

/// One graph from images (`[N, C, H, W]` of `data`, values in `[0, 1]`) to logits: the image
/// preparation (grey repeated to RGB, channel order, bilinear resize with half-pixel centres,
/// per-channel normalisation), the `backbone` graph with its names prefixed by `backbone/`
/// up to its `output`, flattened, then `head` (whose input is `features`).
fn with_backbone_graph(
    mut backbone: GraphProto,
    output: &str,
    prep: &Preparation,
    data: &[usize],
    head: GraphProto,
) -> Result<GraphProto, String> {
    let [c, h, w] = match data[..] {
        [c, h, w] => [c, h, w],
        [h, w] => [1, h, w],
        _ => return Err(format!("the data stage's examples have shape {data:?}, not images")),
    };
    let weights: std::collections::HashSet<String> =
        backbone.initializer.iter().map(|t| t.name.clone()).collect();
    let inputs: Vec<String> =
        backbone.input.iter().map(|v| v.name.clone()).filter(|n| !weights.contains(n)).collect();
    let [image_input] = &inputs[..] else {
        return Err(format!("the backbone has {} inputs; one image input is needed", inputs.len()));
    };
    if !backbone.output.iter().any(|v| v.name == output) {
        return Err(format!("the backbone has no output `{output}`"));
    }
    let rename = |n: &mut String| {
        if !n.is_empty() {
            *n = format!("backbone/{n}");
        }
    };
    for node in &mut backbone.node {
        node.input.iter_mut().for_each(rename);
        node.output.iter_mut().for_each(rename);
        rename(&mut node.name);
    }
    backbone.initializer.iter_mut().for_each(|t| rename(&mut t.name));

    let mut b = OnnxBuilder { nodes: Vec::new(), initializers: Vec::new(), last: INPUT.to_owned() };
    if c == 1 {
        let grey = b.last.clone();
        b.node("prepare.rgb", "Concat", &[grey.clone(), grey], vec![int_attr("axis", 1)]);
    } else if prep.bgr {
        b.initializers.push(TensorProto {
            name: "prepare.bgr_order".into(),
            dims: vec![3],
            data_type: DataType::Int64 as i32,
            int64_data: vec![2, 1, 0],
            ..Default::default()
        });
        b.node("prepare.bgr", "Gather", &["prepare.bgr_order".into()], vec![int_attr("axis", 1)]);
    }
    if (h, w) != (prep.size, prep.size) {
        let s = prep.size as f32;
        let scales = b.constant("prepare.scales", &[4], &[1.0, 1.0, s / h as f32, s / w as f32]);
        let attributes =
            vec![string_attr("mode", "linear"), string_attr("coordinate_transformation_mode", "half_pixel")];
        b.node("prepare.resize", "Resize", &[String::new(), scales], attributes);
    }
    let inv: Vec<f32> = prep.std.iter().map(|s| 1.0 / s).collect();
    let mean = b.constant("prepare.mean", &[1, 3, 1, 1], &prep.mean);
    let inv = b.constant("prepare.inv_std", &[1, 3, 1, 1], &inv);
    b.node("prepare.sub", "Sub", &[mean], vec![]);
    b.node("prepare.mul", "Mul", &[inv], vec![]);
    // The backbone reads the prepared images, and the head its flattened output.
    let prepared = b.last.clone();
    let image_input = format!("backbone/{image_input}");
    for node in &mut backbone.node {
        node.input.iter_mut().filter(|i| **i == image_input).for_each(|i| i.clone_from(&prepared));
    }
    b.nodes.append(&mut backbone.node);
    b.initializers.append(&mut backbone.initializer);
    b.last = format!("backbone/{output}");
    b.node("features", "Flatten", &[], vec![int_attr("axis", 1)]);
    b.nodes.extend(head.node);
    b.initializers.extend(head.initializer);
    Ok(GraphProto {
        node: b.nodes,
        name: "plflow".into(),
        initializer: b.initializers,
        input: vec![value(INPUT, &[c, h, w])],
        output: head.output,
        ..Default::default()
    })
}

fn string_attr(name: &str, s: &str) -> AttributeProto {
    let s = s.as_bytes().to_vec();
    AttributeProto { name: name.to_owned(), r#type: AttributeType::String as i32, s, ..Default::default() }
}

/// Run the ONNX file `file` with tract (an independent runtime) and the model file `model`
/// with plflow (through `predict`'s path: backbone, standardisation, network) on the same `n`
/// seeded inputs (uniform in `[0, 1]`, pixels' range, or in `[0, 4]` for features); returns
/// the largest absolute difference of their outputs. `with_backbone` says whether the file
/// takes images in front of an extraction.
pub fn verify(model: &Path, file: &Path, n: usize, with_backbone: bool) -> Result<f32, EngineError> {
    use rand::{RngExt as _, SeedableRng as _};
    use tract_onnx::prelude::*;
    let loaded = LoadedModel::read(model)?;
    let front = Front::of(&loaded)?;
    let pixels = with_backbone || (front.extract.is_none() && front.data.len() > 1);
    let shape = if with_backbone { front.data.clone() } else { front.network_input() };
    let len: usize = shape.iter().product();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let high = if pixels { 1.0 } else { 4.0 };
    let inputs: Vec<f32> = (0..n * len).map(|_| rng.random_range(0.0..high)).collect();

    let fail = |e: TractError| bad_model(file, None, format!("tract cannot run it: {e:#}"));
    let mut dims = vec![n];
    dims.extend_from_slice(&shape);
    let plan = tract_onnx::onnx()
        .model_for_path(file)
        .and_then(|m| m.with_input_fact(0, f32::fact(&dims).into()))
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .map_err(fail)?;
    let input = tract_ndarray::ArrayD::from_shape_vec(dims, inputs.clone()).map_err(|e| fail(e.into()))?;
    let out = plan.run(tvec!(Tensor::from(input).into())).map_err(fail)?;
    let theirs = out[0].to_plain_array_view::<f32>().map_err(fail)?;

    let predictor = crate::predict::Predictor::load(model)?;
    let ids = vec![String::new(); n];
    let batch = plflow_datasets::inputs::Batch { file, ids: &ids, values: &inputs, len, pixels };
    let ours = predictor.logits(&batch, &mut plflow_ops::Matrix::zeros(0, 0))?;
    if theirs.len() != ours.as_slice().len() {
        let message = format!("{} outputs from tract, {} from plflow", theirs.len(), ours.as_slice().len());
        return Err(bad_model(file, None, message));
    }
    Ok(theirs.iter().zip(ours.as_slice()).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModelMeta, write_model};
    use plflow_ops::Matrix;
    use plflow_ops::activation::Activation;
    use plflow_ops::dense::Dense;
    use plflow_ops::depthwise::{Depthwise, Geometry};
    use plflow_ops::pool::GlobalAvgPool;

    fn values(n: usize, k: f32) -> Vec<f32> {
        (0..n).map(|i| (i as f32 * 0.37 + k).sin() * 0.5).collect()
    }

    fn layer_meta(name: &str, kind: &str, io: (usize, usize), positions: usize, elu: bool) -> LayerMeta {
        LayerMeta {
            name: name.into(),
            kind: kind.into(),
            inputs: io.0,
            outputs: io.1,
            positions,
            activation: if elu { "elu" } else { "linear" }.into(),
            clip: elu.then_some(1.5),
            conv: None,
            mask: false,
            residual: None,
            skip_first: false,
        }
    }

    /// A small CNN on 2x6x6 maps standardised first: pointwise stem, depthwise 3x3 stride 2,
    /// pooling, dense head; written as a model file in `dir`. `residual`: the depthwise layer
    /// has stride 1, adds the stem's output and uses ReLU instead of ELU.
    fn cnn_model(dir: &Path, residual: bool) -> std::path::PathBuf {
        let dense = |i: usize, o: usize, k: f32| {
            let mut d = Dense::new(Matrix::from_vec(i, o, values(i * o, k)));
            d.bias = Matrix::from_vec(1, o, values(o, k + 1.0));
            d
        };
        let stride = if residual { 1 } else { 2 };
        let geometry = Geometry { h: 6, w: 6, k: 3, stride };
        let pooled = geometry.out_h() * geometry.out_w();
        let from_stem = residual.then_some(0);
        let mut dw = Depthwise::new(Matrix::from_vec(9, 4, values(36, 0.3)), geometry);
        dw.params.bias = Matrix::from_vec(1, 4, values(4, 0.9));
        let elu = Activation::Elu { clip: 1.5 };
        let dw_act = if residual { Activation::Relu { clip: 1.5 } } else { elu };
        let network = Network {
            layers: vec![
                Layer { input_positions: 36, ..Layer::dense(dense(2, 4, 0.1), elu) },
                Layer { residual: from_stem, ..Layer::new(dw, dw_act, 36) },
                Layer::new(GlobalAvgPool { positions: pooled, channels: 4 }, Activation::Linear, pooled),
                Layer::dense(dense(4, 3, 0.5), Activation::Linear),
            ],
        };
        let names: Vec<String> = ["stem", "dw", "pool", "head"].map(String::from).to_vec();
        let layers = vec![
            layer_meta("stem", "pointwise", (2, 4), 36, true),
            LayerMeta {
                conv: Some([3, stride, 6, 6]),
                residual: from_stem,
                activation: dw_act.name().into(),
                ..layer_meta("dw", "depthwise", (4, 4), 36, true)
            },
            layer_meta("pool", "global_avg_pool", (4, 4), pooled, false),
            layer_meta("head", "dense", (4, 3), 1, false),
        ];
        let stats =
            Stats { mean: values(72, 2.0), std: values(72, 3.0).iter().map(|v| v.abs() + 0.5).collect() };
        let meta = ModelMeta {
            input_shape: vec![2, 6, 6],
            classes: 3,
            layers,
            preprocessing: vec![
                StepMeta::Data { stage: "data".into(), source: "table".into(), shape: vec![2, 6, 6] },
                StepMeta::Standardize { stage: "scaled".into(), features: 72 },
            ],
            ..crate::model::tests::meta()
        };
        let path = dir.join("model.safetensors");
        write_model(&path, &network, &names, &[("scaled".into(), stats)], &meta).expect("write");
        path
    }

    #[test]
    fn a_cnn_exports_to_onnx_that_tract_runs_like_plflow() {
        let dir = tempfile::tempdir().expect("tempdir");
        let model = cnn_model(dir.path(), false);
        let onnx = dir.path().join("model.onnx");
        assert_eq!(export(&model, &onnx, false).expect("export"), vec![2, 6, 6]);
        let diff = verify(&model, &onnx, 50, false).expect("verify");
        assert!(diff <= 1e-5, "largest difference {diff}");

        // The check can fail: one changed depthwise weight shows.
        let bytes = std::fs::read(&onnx).expect("read");
        let mut proto = ModelProto::decode(bytes.as_slice()).expect("decode");
        let graph = proto.graph.as_mut().expect("graph");
        let w = graph.initializer.iter_mut().find(|t| t.name == "dw.weight").expect("weight");
        w.raw_data[0..4].copy_from_slice(&0.75f32.to_le_bytes());
        std::fs::write(&onnx, proto.encode_to_vec()).expect("write");
        let diff = verify(&model, &onnx, 50, false).expect("verify");
        assert!(diff > 1e-3, "a changed weight changes the outputs: {diff}");
    }

    /// A concatenation of maps exports as an ONNX `Concat` over channels (NCHW's axis 1,
    /// where plflow joins NHWC rows' columns), and tract's outputs match plflow's.
    #[test]
    fn a_concatenation_of_maps_exports_to_onnx_that_tract_runs_like_plflow() {
        use plflow_ops::concat::Concat;
        let dir = tempfile::tempdir().expect("tempdir");
        let dense = |i: usize, o: usize, k: f32| {
            let mut d = Dense::new(Matrix::from_vec(i, o, values(i * o, k)));
            d.bias = Matrix::from_vec(1, o, values(o, k + 1.0));
            d
        };
        let geometry = Geometry { h: 6, w: 6, k: 3, stride: 1 };
        let dw = Depthwise::new(Matrix::from_vec(9, 4, values(36, 0.3)), geometry);
        let elu = Activation::Elu { clip: 1.5 };
        let cat = Concat { positions: 36, input: 4, skip: 4, skip_first: true };
        let network = Network {
            layers: vec![
                Layer { input_positions: 36, ..Layer::dense(dense(2, 4, 0.1), elu) },
                Layer::new(dw, elu, 36),
                Layer { residual: Some(0), ..Layer::new(cat, Activation::Linear, 36) },
                Layer::new(GlobalAvgPool { positions: 36, channels: 8 }, Activation::Linear, 36),
                Layer::dense(dense(8, 3, 0.5), Activation::Linear),
            ],
        };
        let names: Vec<String> = ["stem", "dw", "join", "pool", "head"].map(String::from).to_vec();
        let layers = vec![
            layer_meta("stem", "pointwise", (2, 4), 36, true),
            LayerMeta { conv: Some([3, 1, 6, 6]), ..layer_meta("dw", "depthwise", (4, 4), 36, true) },
            LayerMeta {
                residual: Some(0),
                skip_first: true,
                ..layer_meta("join", "concat", (4, 8), 36, false)
            },
            layer_meta("pool", "global_avg_pool", (8, 8), 36, false),
            layer_meta("head", "dense", (8, 3), 1, false),
        ];
        let meta = ModelMeta {
            input_shape: vec![2, 6, 6],
            classes: 3,
            layers,
            preprocessing: vec![StepMeta::Data {
                stage: "data".into(),
                source: "table".into(),
                shape: vec![2, 6, 6],
            }],
            ..crate::model::tests::meta()
        };
        let model = dir.path().join("model.safetensors");
        write_model(&model, &network, &names, &[], &meta).expect("write");
        let onnx = dir.path().join("model.onnx");
        export(&model, &onnx, false).expect("export");
        let proto = ModelProto::decode(std::fs::read(&onnx).expect("read").as_slice()).expect("decode");
        let join = proto.graph.as_ref().expect("graph").node.iter().find(|n| n.op_type == "Concat");
        let join = join.expect("a Concat");
        assert_eq!(join.input, vec!["stem.clip".to_owned(), "dw.clip".to_owned()], "the stem's maps first");
        let diff = verify(&model, &onnx, 50, false).expect("verify");
        assert!(diff <= 1e-5, "largest difference {diff}");
    }

    /// A residual add exports as an ONNX `Add` before the activation, and tract's outputs
    /// match plflow's forward pass.
    #[test]
    fn a_residual_cnn_exports_to_onnx_that_tract_runs_like_plflow() {
        let dir = tempfile::tempdir().expect("tempdir");
        let model = cnn_model(dir.path(), true);
        let onnx = dir.path().join("model.onnx");
        export(&model, &onnx, false).expect("export");
        let proto = ModelProto::decode(std::fs::read(&onnx).expect("read").as_slice()).expect("decode");
        let add =
            proto.graph.as_ref().expect("graph").node.iter().find(|n| n.op_type == "Add").expect("an Add");
        assert_eq!(
            add.input,
            vec!["dw".to_owned(), "stem.clip".to_owned()],
            "the depthwise result plus the stem's output"
        );
        let diff = verify(&model, &onnx, 50, false).expect("verify");
        assert!(diff <= 1e-5, "largest difference {diff}");
    }
}
