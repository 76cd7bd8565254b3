//! Distributed plflow runs: several processes, on one machine or several, each train on a
//! share of every global batch and exchange the sums of their shards
//! ([`plflow_ops::shard`]) over timely-dataflow's communication layer (TCP between
//! processes, one channel per pair, in-order delivery).
//!
//! Crate map:
//! - [`hosts`]: the host file (one `host:port` per line, timely's format).
//! - [`connect`]: the TCP connections between the processes, with timeouts and a check that
//!   every process runs the same job.
//! - [`packet`]: the bytes of one exchange.
//! - [`reducer`]: [`TimelyReducer`], the [`plflow_ops::shard::Reducer`] over timely's
//!   channels, which turns a lost process into an error naming it.

pub mod connect;
pub mod hosts;
pub mod packet;
pub mod reducer;

pub use reducer::{ExchangeStats, TimelyReducer};
use std::path::PathBuf;
use std::time::Duration;

/// One process's place in a distributed run.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This process's index (its line in the host file, from 0).
    pub process: usize,
    /// Every process's `host:port`, in process order.
    pub addresses: Vec<String>,
    /// Shards per global batch (the results depend on it, not on the number of processes).
    pub shards: usize,
    /// How long to wait for every process to connect.
    pub connect_timeout: Duration,
    /// How long to wait for the other processes' sums in one exchange before giving up.
    pub exchange_timeout: Duration,
    /// A fingerprint of the job (pipeline and settings): processes of one run must agree.
    pub job: u64,
}

/// What can go wrong in setting up or running the exchange.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The host file cannot be used.
    #[error("{path}: {detail}")]
    Hosts {
        /// The host file.
        path: PathBuf,
        /// What is wrong and what to do.
        detail: String,
    },
    /// A process could not be reached or did not connect in time.
    #[error("process {process} ({address}): {detail}")]
    Connect {
        /// The process concerned.
        process: usize,
        /// Its address from the host file.
        address: String,
        /// What happened.
        detail: String,
    },
    /// The shards cannot be shared among the processes.
    #[error(transparent)]
    Layout(#[from] plflow_ops::OpsError),
}

/// Connect this process to the others of the run and return its reducer.
pub fn start(config: &ClusterConfig) -> Result<TimelyReducer, ClusterError> {
    let layout = plflow_ops::shard::Layout::new(config.shards, config.process, config.addresses.len())?;
    let sockets = connect::sockets(config)?;
    TimelyReducer::new(layout, sockets, config.exchange_timeout)
}
