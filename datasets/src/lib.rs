//! Dataset sources and batch streaming for plflow.
//!
//! Sources read memory-mapped files and copy the rows a step asks for into buffers the
//! caller owns, so the engine decides (and its ledger counts) what memory a batch uses. This
//! crate depends on no other plflow crate.
//!
//! Crate map:
//! - [`source`]: the [`Source`] trait every split implements, and [`Dataset`] (train + test).
//! - [`stream`]: shuffled or ordered batches that release consumed pages.
//! - [`mapped`]: read-only memory maps with page release.
//! - [`idx`], [`mnist`]: the IDX format and MNIST.
//! - [`cifar`]: CIFAR-10/100 binary batches.
//! - [`images`]: image folders and tar archives, decoded once into a cached table.
//! - [`inputs`]: unlabelled files to predict on (images, archives, IDX, tables), in batches.
//! - [`format`]: the feature-table vocabulary (formats, columns, metadata keys) that
//!   [`table`], [`parquet_source`] (read) and [`sink`] (written) share.
//! - [`rows`]: result tables (predictions) written row by row as CSV or Parquet.
//! - [`subset`], [`transform`]: `limit`, standardisation and flattening.
//! - [`fetch`]: downloads with SHA-256 checks; [`inspect`]: what a dataset file holds
//!   (also a table's shape and classes from its footer, to check a pipeline).
//! - [`cache`], [`location`]: where decoded data lives and where datasets are found;
//!   [`lock`]: one writer per cache entry across processes.
//! - [`order`]: seeded per-epoch shuffling.

pub mod cache;
pub mod cifar;
pub mod error;
pub mod fetch;
pub mod format;
pub mod idx;
pub mod images;
pub mod inputs;
pub mod inspect;
pub mod join;
pub mod location;
pub mod lock;
pub mod mapped;
pub mod mnist;
pub mod order;
pub mod parquet_source;
pub mod rows;
pub mod sink;
pub mod source;
pub mod stream;
pub mod subset;
pub mod table;
pub mod transform;

pub use error::DatasetError;
pub use source::{Dataset, Source};
