//! Dataset sources and batch streaming for plflow.
//!
//! Sources read memory-mapped files and copy the rows a step asks for into buffers the
//! caller owns, so the engine decides (and its ledger counts) what memory a batch uses. This
//! crate depends on no other plflow crate.
//!
//! Crate map:
//! - [`source`]: the [`Source`] trait every dataset implements.
//! - [`idx`]: the IDX format of MNIST, parsed and checked over a memory map.
//! - [`cache`]: where decoded or decompressed data lives (never next to the user's data).
//! - [`location`]: how a pipeline path becomes a folder (`PLFLOW_DATA_DIR`).
//! - [`mnist`]: the MNIST dataset (four IDX files, gzip'd or not).
//! - [`order`]: seeded per-epoch shuffling and batching.

pub mod cache;
pub mod error;
pub mod idx;
pub mod location;
pub mod mnist;
pub mod order;
pub mod source;

pub use error::DatasetError;
pub use source::Source;
