//! A frozen ONNX model: loaded with tract, its input fixed to `[batch, 3, size, size]`, the
//! chosen output selected by name, optimised once, then run on many batches (from several
//! threads: a runnable model is shared, each run has its own state).

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
        let names: Vec<String> = model
            .output_outlets()
            .map_err(|e| e.to_string())?
            .iter()
            .map(|&o| model.outlet_label(o).map_or_else(|| model.node(o.node).name.clone(), str::to_owned))
            .collect();
        if !names.iter().any(|n| n == output) {
            return Err(format!("the model has no output `{output}` (outputs: {})", names.join(", ")));
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
        let s = self.size;
        let tensor = tract_ndarray::Array4::from_shape_vec((self.batch, 3, s, s), input.to_vec())
            .map_err(|e| e.to_string())?;
        let out = self
            .plan
            .run(tvec!(Tensor::from(tensor).into()))
            .map_err(|e| format!("the model failed on a batch: {e}"))?;
        let view = out[0].to_plain_array_view::<f32>().map_err(|e| format!("output is not f32: {e}"))?;
        Ok(view.iter().copied().collect())
    }
}
