//! A frozen ONNX model: loaded with tract, its input fixed to `[batch, 3, size, size]`, the
//! chosen tensor selected by name (a graph output or any intermediate tensor, such as a
//! classifier's pooled features before its last layer), the rest pruned, optimised once, then
//! run on many batches (from several threads: a runnable model is shared, each thread has its
//! own [`Runner`]).

use crate::preprocess::Preprocess;
use rayon::prelude::*;
use std::path::Path;
use tract_onnx::prelude::*;

/// A backbone ready to run.
#[derive(Debug)]
pub struct Backbone {
    plan: Arc<TypedRunnableModel>,
    batch: usize,
    size: usize,
    dim: usize,
}

impl Backbone {
    /// Load `path` for batches of `batch` images of `size x size`, producing `output`.
    pub fn load(path: &Path, output: &str, batch: usize, size: usize) -> Result<Self, String> {
        let mut model = tract_onnx::onnx()
            .model_for_path(path)
            .map_err(|e| format!("cannot load the ONNX model: {e}"))?;
        let inputs = model.input_outlets().map_err(|e| e.to_string())?.len();
        if inputs != 1 {
            return Err(format!(
                "the model has {inputs} inputs; feature extraction needs exactly one (an image batch)"
            ));
        }
        model
            .set_input_fact(0, f32::fact([batch, 3, size, size]).into())
            .map_err(|e| format!("cannot set the input shape: {e}"))?;
        if find(&model, output).is_none() {
            return Err(missing_tensor(&model, output));
        }
        model.select_outputs_by_name([output]).map_err(|e| e.to_string())?;
        let plan = model
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(|e| format!("cannot prepare the model for input [{batch}, 3, {size}, {size}]: {e}"))?;
        let mut this = Self { plan, batch, size, dim: 0 };
        let probe = this.run(&vec![0.0; batch * 3 * size * size])?;
        this.dim = probe.len() / batch;
        if this.dim == 0 || probe.len() % batch != 0 {
            return Err(format!("output `{output}` has {} values for a batch of {batch}", probe.len()));
        }
        Ok(this)
    }

    /// Values per image of the output.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Images per run.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Run one full batch (`batch x 3 x size x size` values); returns `batch x dim` values.
    pub fn run(&self, input: &[f32]) -> Result<Vec<f32>, String> {
        self.runner()?.run(input)
    }

    /// Features of `images` (`[channels, h, w]` each, values in [0, 1]), in order: each run's
    /// images are preprocessed and run on every core, one [`Runner`] per thread; the last run
    /// is zero-padded.
    pub fn features(
        &self,
        images: &[f32],
        shape: [usize; 3],
        preprocess: &Preprocess,
    ) -> Result<Vec<f32>, String> {
        let [channels, h, w] = shape;
        let len = channels * h * w;
        let input_len = 3 * self.size * self.size;
        let outputs: Vec<Result<Vec<f32>, String>> = images
            .par_chunks(self.batch * len)
            .map_init(
                || self.runner(),
                |runner, group| {
                    let runner = runner.as_mut().map_err(|e| e.clone())?;
                    let mut input = vec![0.0f32; self.batch * input_len];
                    for (img, out) in group.chunks_exact(len).zip(input.chunks_exact_mut(input_len)) {
                        preprocess.apply(img, channels, h, w, out);
                    }
                    let mut y = runner.run(&input)?;
                    y.truncate(group.len() / len * self.dim);
                    Ok(y)
                },
            )
            .collect();
        let mut features = Vec::with_capacity(images.len() / len.max(1) * self.dim);
        for o in outputs {
            features.extend(o?);
        }
        Ok(features)
    }

    /// A runner for many batches on one thread: the model's per-run state (its operators'
    /// scratch buffers) is made once instead of once per batch.
    pub fn runner(&self) -> Result<Runner<'_>, String> {
        let state = self.plan.spawn().map_err(|e| format!("cannot start the model: {e}"))?;
        Ok(Runner { backbone: self, state })
    }
}

/// A model's inputs, outputs and the tensors just before the outputs, with their shapes: what
/// `plflow inspect model.onnx` prints to choose an extraction's `output`.
pub fn describe(path: &Path) -> Result<String, String> {
    let model =
        tract_onnx::onnx().model_for_path(path).map_err(|e| format!("cannot load the ONNX model: {e}"))?;
    let typed = model.clone().into_typed().ok();
    let fact = |label: &str| match &typed {
        Some(t) => find(t, label).and_then(|o| t.outlet_fact(o).ok()).map(|f| format!("{f:?}")),
        None => find(&model, label).and_then(|o| model.outlet_fact(o).ok()).map(|f| format!("{f:?}")),
    };
    let line = |label: String| {
        let shape = fact(&label).unwrap_or_else(|| "shape unknown".into());
        format!("  {label}  {shape}\n")
    };
    let mut out = format!("ONNX model {}: {} nodes\ninputs:\n", path.display(), model.nodes().len());
    names(&model, model.input_outlets()).into_iter().for_each(|l| out.push_str(&line(l)));
    out.push_str("outputs:\n");
    names(&model, model.output_outlets()).into_iter().for_each(|l| out.push_str(&line(l)));
    out.push_str("the last tensors (any tensor can be an extraction's `output`):\n");
    last_tensors(&model, 12).into_iter().for_each(|l| out.push_str(&line(l)));
    Ok(out)
}

/// The names of `outlets`: their labels, else their nodes' names (graph inputs have no label).
fn names(model: &InferenceModel, outlets: TractResult<&[OutletId]>) -> Vec<String> {
    let name =
        |o: OutletId| model.outlet_label(o).map_or_else(|| model.node(o.node).name.clone(), str::to_owned);
    outlets.map(|l| l.iter().map(|&o| name(o)).collect()).unwrap_or_default()
}

/// The outlet labelled `name`, else the first outlet of the node named `name` (graph inputs
/// have no label).
fn find<F: Fact + Clone + 'static, O>(model: &Graph<F, O>, name: &str) -> Option<OutletId>
where
    O: std::fmt::Debug + std::fmt::Display + AsRef<dyn Op> + AsMut<dyn Op> + Clone + 'static,
{
    model
        .find_outlet_label(name)
        .or_else(|| model.nodes().iter().find(|n| n.name == name).map(|n| n.id.into()))
}

/// The labels of the last `n` tensors in evaluation order, earliest first.
fn last_tensors(model: &InferenceModel, n: usize) -> Vec<String> {
    let order = model.eval_order().unwrap_or_default();
    let mut last: Vec<String> = order
        .iter()
        .rev()
        .flat_map(|&i| (0..model.node(i).outputs.len()).rev().map(move |k| OutletId::new(i, k)))
        .filter(|o| !model.node(o.node).inputs.is_empty())
        .filter_map(|o| model.outlet_label(o).map(str::to_owned))
        .take(n)
        .collect();
    last.reverse();
    last
}

/// The error for a tensor name the model does not have: its outputs and the tensors just
/// before them, where the features of a classifier usually are.
fn missing_tensor(model: &InferenceModel, name: &str) -> String {
    let outputs = names(model, model.output_outlets());
    let last = last_tensors(model, 8);
    format!(
        "the model has no tensor `{name}` (outputs: {}; the last tensors before them: {}). `output` \
         may name a graph output or any intermediate tensor; `plflow inspect` on the model lists them",
        outputs.join(", "),
        last.join(", ")
    )
}

/// One thread's handle on a [`Backbone`].
#[derive(Debug)]
pub struct Runner<'a> {
    backbone: &'a Backbone,
    state: TypedSimpleState,
}

impl Runner<'_> {
    /// Run one full batch (`batch x 3 x size x size` values); returns `batch x dim` values.
    pub fn run(&mut self, input: &[f32]) -> Result<Vec<f32>, String> {
        let (b, s) = (self.backbone.batch, self.backbone.size);
        let tensor = Tensor::from_shape(&[b, 3, s, s], input).map_err(|e| e.to_string())?;
        let out =
            self.state.run(tvec!(tensor.into())).map_err(|e| format!("the model failed on a batch: {e}"))?;
        let view = out[0].to_plain_array_view::<f32>().map_err(|e| format!("output is not f32: {e}"))?;
        Ok(view.iter().copied().collect())
    }
}
