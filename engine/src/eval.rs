//! A saved model measured on a dataset: accuracy, accuracy per class and the confusion
//! matrix. The model file carries its pipeline, so the run's data stages are rebuilt from it
//! (with `--set` overrides, e.g. another dataset of the same shape); standardisation uses the
//! statistics saved with the model, never ones measured on the new data.

use crate::error::{EngineError, SpecError};
use crate::graph::{Op, Split};
use crate::model::LoadedModel;
use crate::parse::parse_with_overrides;
use crate::plan::Plan;
use crate::run::{RunOptions, data_stage, network_input};
use plflow_datasets::Source;
use plflow_datasets::stream::BatchStream;
use plflow_ops::Matrix;
use plflow_ops::network::argmax;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

/// What an evaluation counted.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalReport {
    /// The split measured.
    pub split: Split,
    /// Class names, in label order.
    pub class_names: Vec<String>,
    /// `confusion[true][predicted]` example counts.
    pub confusion: Vec<Vec<u64>>,
}

impl EvalReport {
    /// Examples counted.
    pub fn total(&self) -> u64 {
        self.confusion.iter().flatten().sum()
    }

    /// Fraction of examples whose predicted class is the true one.
    pub fn accuracy(&self) -> f64 {
        let correct: u64 = (0..self.confusion.len()).map(|c| self.confusion[c][c]).sum();
        correct as f64 / self.total().max(1) as f64
    }

    /// Per class: examples, correct, accuracy (NaN for a class with no examples).
    pub fn per_class(&self) -> Vec<(u64, u64, f64)> {
        (0..self.confusion.len())
            .map(|c| {
                let n: u64 = self.confusion[c].iter().sum();
                let ok = self.confusion[c][c];
                (n, ok, if n == 0 { f64::NAN } else { ok as f64 / n as f64 })
            })
            .collect()
    }

    fn name(&self, c: usize) -> &str {
        self.class_names.get(c).map_or("?", String::as_str)
    }

    /// The per-class table and, up to 20 classes, the confusion matrix, as printed.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let split = if self.split == Split::Test { "test" } else { "train" };
        let _ =
            writeln!(s, "{split} accuracy {:.2}% over {} examples", self.accuracy() * 100.0, self.total());
        let width = self.class_names.iter().map(String::len).max().unwrap_or(5).clamp(5, 24);
        let _ = writeln!(s, "{:<width$} {:>9} {:>9} {:>9}", "class", "examples", "correct", "accuracy");
        for (c, (n, ok, acc)) in self.per_class().into_iter().enumerate() {
            let _ = writeln!(s, "{:<width$} {n:>9} {ok:>9} {:>8.2}%", self.name(c), acc * 100.0);
        }
        let k = self.confusion.len();
        if k <= 20 {
            let _ = writeln!(s, "confusion matrix (rows: true class, columns: predicted)");
            let _ = write!(s, "{:<width$}", "");
            for c in 0..k {
                let _ = write!(s, " {:>6}", truncate(self.name(c), 6));
            }
            let _ = writeln!(s);
            for (t, row) in self.confusion.iter().enumerate() {
                let _ = write!(s, "{:<width$}", truncate(self.name(t), width));
                for v in row {
                    let _ = write!(s, " {v:>6}");
                }
                let _ = writeln!(s);
            }
        }
        s
    }

    /// One row per true class: its name, examples, correct, accuracy, then the count
    /// predicted as each class (`predicted:<name>` columns).
    pub fn csv(&self) -> String {
        let quote = |t: &str| format!("\"{}\"", t.replace('"', "\"\""));
        let mut s = String::from("class,examples,correct,accuracy");
        for c in 0..self.confusion.len() {
            let _ = write!(s, ",{}", quote(&format!("predicted:{}", self.name(c))));
        }
        s.push('\n');
        for (c, (n, ok, acc)) in self.per_class().into_iter().enumerate() {
            let _ = write!(
                s,
                "{},{n},{ok},{}",
                quote(self.name(c)),
                if acc.is_nan() { String::new() } else { format!("{acc:.6}") }
            );
            for v in &self.confusion[c] {
                let _ = write!(s, ",{v}");
            }
            s.push('\n');
        }
        s
    }
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// Evaluate the model file `model` on `split` of its pipeline's data, with `sets` applied
/// to the pipeline it carries.
pub fn evaluate(
    model: &Path,
    split: Split,
    sets: &[String],
    opts: &RunOptions,
) -> Result<EvalReport, EngineError> {
    let loaded = LoadedModel::read(model)?;
    let text = &loaded.meta.pipeline;
    let spec = parse_with_overrides(text, model, sets)?;
    let plan = Plan::check(spec, text, model)?;
    let stage = &loaded.meta.stage;
    let trainer =
        plan.trainers().into_iter().find(|&t| plan.graph.node(t).name == *stage).ok_or_else(|| {
            SpecError::new(model, format!("the model's training stage `{stage}` is not in its pipeline"))
        })?;
    let Op::Train { layers, source, batch_size, .. } = &plan.graph.node(trainer).op else {
        unreachable!("trainers are training nodes")
    };
    // The stages in front of the network, dataset first.
    let chain = plan.graph.data_ancestors(*source);
    let mut datasets = HashMap::new();
    for &i in &chain {
        let node = plan.graph.node(i);
        let saved = match node.op {
            Op::Standardize => {
                let features = node.output.tensor().map_or(0, |(s, _)| s.iter().product());
                Some(loaded.stats(&node.name, features)?)
            }
            _ => None,
        };
        data_stage(&plan, i, &mut datasets, opts, saved)?;
    }
    let network = loaded.network(&plan, layers)?;
    let readout = loaded.readout()?;
    let data = &datasets[source];
    let classes = loaded.meta.classes;
    let class_names = if loaded.meta.class_names.len() == classes {
        loaded.meta.class_names.clone()
    } else {
        data.class_names.clone()
    };
    let examples: &dyn Source = match split {
        Split::Train => data.train.as_ref(),
        Split::Test => data.test.as_ref(),
    };
    let mut confusion = vec![vec![0u64; classes]; classes];
    let (len, batch) = (examples.example_len(), *batch_size);
    let mut labels = vec![0u32; batch];
    let mut scratch = Matrix::zeros(0, 0);
    let mut stream = BatchStream::in_order(examples, batch);
    while let Some(idx) = stream.next_batch() {
        let mut x = Matrix::zeros(idx.len(), len);
        examples.read_into(idx, x.as_mut_slice(), &mut labels[..idx.len()]);
        let x_in = network_input(&network, examples.example_shape(), &mut x, &mut scratch, idx.len());
        let out = readout.scores(&network, x_in).map_err(|e| EngineError::Train {
            stage: stage.clone(),
            layer: plan.graph.node(layers[e.layer.min(layers.len() - 1)]).name.clone(),
            epoch: 0,
            step: 0,
            source: e.source,
        })?;
        for (r, &label) in labels[..idx.len()].iter().enumerate() {
            let (t, p) = (label as usize, argmax(out.row(r)));
            if t >= classes {
                return Err(EngineError::DataMismatch {
                    stage: stage.clone(),
                    message: format!("label {t} but the model has {classes} classes"),
                });
            }
            confusion[t][p] += 1;
        }
    }
    Ok(EvalReport { split, class_names, confusion })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_per_class_and_csv_follow_the_counts() {
        let r = EvalReport {
            split: Split::Test,
            class_names: vec!["cat".into(), "dog, big".into()],
            confusion: vec![vec![3, 1], vec![0, 4]],
        };
        assert_eq!(r.total(), 8);
        assert!((r.accuracy() - 7.0 / 8.0).abs() < 1e-12);
        assert_eq!(r.per_class()[0], (4, 3, 0.75));
        let csv = r.csv();
        assert_eq!(
            csv,
            "class,examples,correct,accuracy,\"predicted:cat\",\"predicted:dog, big\"\n\
             \"cat\",4,3,0.750000,3,1\n\"dog, big\",4,4,1.000000,0,4\n"
        );
        assert!(r.table().contains("test accuracy 87.50% over 8 examples"));
    }
}
