//! Resumable training. After every epoch a training stage writes `state.safetensors` (prefixed
//! with the stage's name when the pipeline has several): the model file's tensors and
//! metadata, plus the trainer's whole state (`state.<layer>.<part>` tensors, e.g.
//! `state.net.0.velocity`) and, under the metadata key [`STATE_KEY`], the epochs finished,
//! the trainer's counters and the epoch records written so far. Training draws no random
//! numbers after initialisation (batch order is a function of the seed and the epoch), so
//! this is everything a resumed run needs to continue bit for bit.
//!
//! The file is self-contained: a process killed between writing `model.safetensors` and the
//! checkpoint resumes from the checkpoint's epoch and recomputes the later one identically.

use crate::error::EngineError;
use crate::model::{LoadedModel, ModelFiles, Tensor, bad_model, model_tensors, to_json, write_tensors};
use crate::model::{META_KEY, ModelMeta};
use crate::report::EpochRecord;
use plflow_ops::network::Network;
use plflow_ops::state::{StateTensor, StateTensorMut, TrainerState};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The metadata key holding [`StateMeta`] as JSON.
pub const STATE_KEY: &str = "plflow_state";
/// Version of the checkpoint layout.
pub const STATE_FORMAT: u32 = 1;

/// What a checkpoint holds besides tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateMeta {
    /// [`STATE_FORMAT`] when written.
    pub format: u32,
    /// The learning rule (`pl`, `sgd`, `adam`, `adamw`).
    pub solver: String,
    /// Epochs finished.
    pub epoch: usize,
    /// The trainer's counters and scalars, `<layer>.<name>` or `<name>`.
    pub scalars: BTreeMap<String, f64>,
    /// The records of the finished epochs, as written to `metrics.jsonl`.
    pub records: Vec<EpochRecord>,
    /// The stage's ledger peak so far, bytes.
    pub ledger_peak: usize,
}

/// The name of a state part in the file.
fn part_name(layer_names: &[String], layer: Option<usize>, name: &str) -> String {
    match layer.and_then(|l| layer_names.get(l)) {
        Some(layer) => format!("{layer}.{name}"),
        None => name.to_owned(),
    }
}

impl ModelFiles {
    /// Write the checkpoint after epoch `state.epoch`: `network` (as in the model file),
    /// `trainer`'s buffers and `state`.
    pub fn save_state(
        &self,
        network: &Network,
        trainer: &dyn TrainerState,
        state: &StateMeta,
    ) -> Result<(), EngineError> {
        let path = &self.state;
        let mut tensors = model_tensors(network, &self.layer_names, &self.stats);
        for part in trainer.tensors() {
            let name = format!("state.{}", part_name(&self.layer_names, part.layer, part.name));
            let tensor = match part.value {
                StateTensor::F32(m) => Tensor::matrix(m),
                StateTensor::Bf16(m) => {
                    Tensor::Bf16 { shape: vec![m.rows(), m.cols()], values: m.as_slice() }
                }
            };
            tensors.push((name, tensor));
        }
        let mut state = state.clone();
        state.scalars = trainer
            .scalars()
            .into_iter()
            .map(|p| (part_name(&self.layer_names, p.layer, p.name), p.value))
            .collect();
        let meta = ModelMeta { epoch: state.epoch, ..self.meta.clone() };
        let metadata = HashMap::from([
            (META_KEY.to_owned(), to_json(path, &meta)?),
            (STATE_KEY.to_owned(), to_json(path, &state)?),
        ]);
        write_tensors(path, tensors, metadata)
    }

    /// The checkpoint of an earlier process of this run, if it wrote one.
    pub fn read_state(&self) -> Result<Option<Checkpoint>, EngineError> {
        if !self.state.exists() {
            return Ok(None);
        }
        Checkpoint::read(&self.state, &self.meta.stage).map(Some)
    }
}

/// A checkpoint read back.
#[derive(Debug)]
pub struct Checkpoint {
    /// The network's tensors and the model metadata.
    pub model: LoadedModel,
    /// Epochs, counters and records.
    pub state: StateMeta,
}

impl Checkpoint {
    /// Read the checkpoint at `path`, which must be training stage `stage`'s.
    pub fn read(path: &Path, stage: &str) -> Result<Self, EngineError> {
        let model = LoadedModel::read(path)?;
        let json = model
            .metadata
            .get(STATE_KEY)
            .ok_or_else(|| bad_model(path, None, format!("no `{STATE_KEY}` metadata: not a checkpoint")))?;
        let state: StateMeta = serde_json::from_str(json)
            .map_err(|e| bad_model(path, None, format!("its `{STATE_KEY}` metadata does not parse ({e})")))?;
        if state.format != STATE_FORMAT {
            return Err(bad_model(
                path,
                None,
                format!("checkpoint format {}; this plflow reads format {STATE_FORMAT}", state.format),
            ));
        }
        if model.meta.stage != stage || state.records.len() != state.epoch {
            return Err(bad_model(
                path,
                None,
                format!(
                    "written by stage `{}` after {} epochs with {} records; expected stage `{stage}`",
                    model.meta.stage,
                    state.epoch,
                    state.records.len()
                ),
            ));
        }
        Ok(Self { model, state })
    }

    /// Overwrite `trainer`'s state with the checkpoint's (`solver` is the stage's learning
    /// rule). Every buffer must be present with its shape, and every counter too.
    pub fn restore(
        &self,
        trainer: &mut dyn TrainerState,
        solver: &str,
        layer_names: &[String],
    ) -> Result<(), EngineError> {
        let path = &self.model.path;
        if self.state.solver != solver {
            let message = format!("written by a `{}` trainer; this stage is `{solver}`", self.state.solver);
            return Err(bad_model(path, None, message));
        }
        for part in trainer.tensors_mut() {
            let name = format!("state.{}", part_name(layer_names, part.layer, part.name));
            let shape = part.value.shape();
            match part.value {
                StateTensorMut::F32(m) => {
                    m.as_mut_slice().copy_from_slice(self.model.f32_tensor(&name, &shape)?)
                }
                StateTensorMut::Bf16(m) => {
                    m.as_mut_slice().copy_from_slice(self.model.bf16_tensor(&name, &shape)?)
                }
            }
        }
        let wanted: Vec<_> = trainer.scalars().into_iter().map(|p| (p.layer, p.name)).collect();
        for (layer, name) in wanted {
            let key = part_name(layer_names, layer, name);
            let value = self.state.scalars.get(&key).copied();
            if !value.is_some_and(|v| trainer.set_scalar(layer, name, v)) {
                let message = format!("counter `{key}` is missing or invalid ({value:?})");
                return Err(bad_model(path, None, message));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plflow_ops::Matrix;
    use plflow_ops::activation::Activation;
    use plflow_ops::dense::Dense;
    use plflow_ops::network::Layer;
    use plflow_ops::pl::{PlConfig, PlTrainer};
    use plflow_ops::update::{Metaplasticity, Storage};

    fn network() -> Network {
        let values = |n: usize, k: f32| (0..n).map(|i| (i as f32 * 0.41 + k).sin()).collect::<Vec<f32>>();
        Network {
            layers: vec![
                Layer::dense(
                    Dense::new(Matrix::from_vec(5, 4, values(20, 0.1))),
                    Activation::Elu { clip: 10.0 },
                ),
                Layer::dense(Dense::new(Matrix::from_vec(4, 3, values(12, 0.7))), Activation::Linear),
            ],
        }
    }

    /// A PL trainer on `net` after two steps.
    fn trained(net: &mut Network, config: PlConfig) -> PlTrainer {
        let mut t = PlTrainer::new(net, config);
        let x = Matrix::from_vec(6, 5, (0..30).map(|i| ((i * 7 % 11) as f32 - 5.0) / 4.0).collect());
        for _ in 0..2 {
            t.step(net, &x, &[0, 1, 2, 0, 1, 2]).expect("step");
        }
        t
    }

    fn files(dir: &Path) -> ModelFiles {
        ModelFiles::in_dir(dir, crate::model::tests::meta(), vec!["a".into(), "b".into()])
    }

    fn state(epoch: usize) -> StateMeta {
        StateMeta {
            format: STATE_FORMAT,
            solver: "pl".into(),
            epoch,
            scalars: BTreeMap::new(),
            records: Vec::new(),
            ledger_peak: 1234,
        }
    }

    #[test]
    fn a_checkpoint_restores_every_buffer_and_counter_bit_for_bit() {
        for storage in [Storage::F32, Storage::Bf16] {
            restores_bit_for_bit(storage);
        }
    }

    fn restores_bit_for_bit(storage: Storage) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut net = network();
        let mut config = PlConfig::foundation(0.5, 1.0);
        config.rule.momentum_storage = storage;
        let trainer = trained(&mut net, config);
        let files = files(dir.path());
        files.save_state(&net, &trainer, &state(0)).expect("save");
        let c = files.read_state().expect("read").expect("present");
        assert_eq!(c.state.ledger_peak, 1234);
        let mut fresh = PlTrainer::new(&network(), config);
        c.restore(&mut fresh, "pl", &files.layer_names).expect("restore");
        for (a, b) in trainer.tensors().iter().zip(fresh.tensors()) {
            assert_eq!((a.layer, a.name), (b.layer, b.name));
            assert_eq!(a.value.shape(), b.value.shape());
            assert_eq!(a.value.to_f32(), b.value.to_f32(), "{}", a.name);
            let bf16 = matches!(b.value, StateTensor::Bf16(_));
            assert_eq!(
                bf16,
                a.name == "velocity" && storage == Storage::Bf16,
                "{} stays {storage:?}",
                a.name
            );
        }
        let scalars = |t: &PlTrainer| t.scalars().into_iter().map(|p| p.value.to_bits()).collect::<Vec<_>>();
        assert_eq!(scalars(&trainer), scalars(&fresh));
        let weights = c.model.f32_tensor("layers.b.weight", &[4, 3]).expect("weights");
        assert_eq!(weights, net.layers[1].params().expect("dense").weights.as_slice());
    }

    #[test]
    fn mismatched_truncated_or_foreign_checkpoints_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut net = network();
        let trainer = trained(&mut net, PlConfig::foundation(0.5, 1.0));
        let files = files(dir.path());
        files.save_state(&net, &trainer, &state(0)).expect("save");
        let c = files.read_state().expect("read").expect("present");

        let mut other = PlConfig::foundation(0.5, 1.0);
        other.rule.metaplasticity =
            Some(Metaplasticity { beta: 0.9, gamma: 0.5, tau_inactive: 0.01, xi: 1.5, theta0: 0.1 });
        let err =
            c.restore(&mut PlTrainer::new(&network(), other), "pl", &files.layer_names).expect_err("refused");
        assert!(err.to_string().contains("state.safetensors, tensor `state.a.theta`: missing"), "{err}");
        let err = c
            .restore(&mut PlTrainer::new(&network(), other), "adam", &files.layer_names)
            .expect_err("refused");
        assert!(err.to_string().contains("written by a `pl` trainer; this stage is `adam`"), "{err}");

        let bytes = std::fs::read(&files.state).expect("bytes");
        std::fs::write(&files.state, &bytes[..bytes.len() - 7]).expect("cut");
        let err = files.read_state().expect_err("refused").to_string();
        assert!(err.contains("state.safetensors") && err.contains("truncated"), "{err}");

        crate::model::write_model(&files.state, &net, &files.layer_names, &[], &files.meta).expect("model");
        let err = files.read_state().expect_err("refused").to_string();
        assert!(err.contains("not a checkpoint"), "{err}");
        let err = Checkpoint::read(&dir.path().join("model-free"), "train").expect_err("refused").to_string();
        assert!(err.contains("model-free"), "{err}");
    }
}
