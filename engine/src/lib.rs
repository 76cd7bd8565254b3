//! The plflow engine: pipeline files in, trained models and run reports out.
//!
//! A pipeline goes through four stages, each its own module, with data flowing one way:
//! - [`spec`]: the YAML types as written, with the defaults of SPEC section 5;
//! - [`parse`]: text and `--set` overrides into a spec, with located errors;
//! - [`stages`]: one module per stage kind (its fields, checks, the nodes it becomes and, for
//!   layers, their estimate, initialisation and model-file format), listed in one registry;
//! - [`plan`]: the spec checked and expanded into a [`graph::Graph`] of typed, shaped nodes
//!   (references, cycles, shapes, memory estimate), before any data is read;
//! - [`run`]: the scheduler that executes a plan over dataset batches, writing [`report`]s
//!   and, after every epoch, the trained [`model`] files;
//! - [`checkpoint`]: a training stage's whole state after every epoch, for `--resume`;
//! - [`eval`]: a saved model measured on a dataset (accuracy, per class, confusion matrix);
//! - [`export`]: a saved model as a standard ONNX graph;
//! - [`predict`]: a saved model applied to new files (images, archives, IDX, tables);
//! - [`bench`]: the comparison table of several runs;
//! - [`plot`]: training curves of runs and benches, and sweep charts, as SVG;
//! - [`sweep`]: a pipeline over a grid of settings: points, their folders, tables;
//! - [`folder_lock`]: one writer per run, bench or sweep folder.
//!
//! Numeric work lives in `plflow_ops`, data access in `plflow_datasets`, feature extraction
//! with ONNX backbones in `plflow_extract`; none of them depends on this crate. The memory
//! ledger is `plflow_ops::ledger`, re-exported here as [`ledger`].

pub mod bench;
pub mod checkpoint;
pub mod error;
pub mod eval;
pub mod export;
pub mod files;
pub mod folder_lock;
pub mod graph;
pub mod model;
pub mod parse;
pub mod plan;
pub mod plot;
pub mod predict;
pub mod report;
pub mod run;
pub mod solver;
pub mod spec;
pub mod stages;
pub mod sweep;

pub use error::{EngineError, SpecError};
pub use plan::Plan;
pub use plflow_datasets as datasets;
pub use plflow_extract as extract;
pub use plflow_ops::ledger;
pub use plflow_ops::main_thread_in_pool;
pub use plflow_ops::shard::DEFAULT_SHARDS;
