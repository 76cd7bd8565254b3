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
        if model.find_outlet_label(output).is_none() && !model.nodes().iter().any(|n| n.name == output) {
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

/// The error for a tensor name the model does not have: its outputs and the tensors just
/// before them, where the features of a classifier usually are.
fn missing_tensor(model: &InferenceModel, name: &str) -> String {
    let label =
        |o: OutletId| model.outlet_label(o).map_or_else(|| model.node(o.node).name.clone(), str::to_owned);
    let outputs: Vec<String> =
        model.output_outlets().map(|o| o.iter().map(|&o| label(o)).collect()).unwrap_or_default();
    let order = model.eval_order().unwrap_or_default();
    let last: Vec<String> = order
        .iter()
        .rev()
        .flat_map(|&n| (0..model.node(n).outputs.len()).map(move |i| OutletId::new(n, i)))
        .filter_map(|o| model.outlet_label(o).map(str::to_owned))
        .take(8)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!(
        "the model has no tensor `{name}` (outputs: {}; the last tensors before them: {}). `output` \
         may name a graph output or any intermediate tensor",
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
