//! The BenchFS server: one `benchfsd` process's share of the namespace and the chunks.
//!
//! [`daemon`] runs a server (configuration, registry, signals, the event loop); [`rpc`]
//! accepts connections and turns frames into requests; [`handler`] answers them against
//! the [`metadata`] table and a chunk store; [`sweep`] removes the chunks of deleted
//! files whose removal did not reach this server, and [`repair`] brings the replicas of a
//! record back together after a double fault; [`metrics`] counts and times every
//! request, and [`prometheus`] serves those numbers over HTTP. Clients never link this
//! crate.
#![forbid(unsafe_code)]

pub mod budget;
pub mod claim;
pub mod daemon;
pub mod handler;
pub mod metadata;
pub mod metrics;
mod peer;
pub mod prometheus;
pub mod repair;
pub mod rpc;
pub mod sweep;
