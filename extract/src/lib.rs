//! Feature extraction with a frozen ONNX backbone: images in, a feature table out.
//!
//! This crate sits between `plflow-datasets` (image sources, feature-table sinks) and the
//! engine, and is the only one that links tract. Crate map:
//! - [`preprocess`]: resize (bilinear) and per-channel normalisation into the model's input;
//! - [`backbone`]: the ONNX model loaded, given a fixed batch shape, optimised and run;
//! - [`job`]: extraction of a whole dataset in parallel chunks, resumable, with a fingerprint
//!   that lets a later run reuse the feature files without touching the model.

pub mod backbone;
pub mod job;
pub mod preprocess;

pub use job::{ExtractError, ExtractJob, ExtractReport};
