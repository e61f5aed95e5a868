//! The benchmark framework of BenchFS: IOR- and mdtest-like workloads, the IO500 phases
//! and score, sweeps, the machine's limits measured in the same run, and reports (a table,
//! JSON, CSV, plots, markdown and HTML).
//!
//! A run is a [`run::Plan`]: phases, in order, over one or more targets (the native client
//! or a POSIX directory), repeated. Every rank (a local process started by `benchfs bench`,
//! or an MPI rank) executes the same plan with [`run::execute`], meeting the others at
//! barriers made of files; rank 0 aggregates each phase, reads the servers' counters and
//! builds the [`report::Report`].

pub mod error;
pub mod hist;
pub mod io500;
pub mod ior;
pub mod limits;
pub mod mdtest;
pub mod pattern;
pub mod phase;
pub mod plot;
pub mod report;
pub mod run;
pub mod storage;
pub mod sync;

pub use error::{BenchError, Result};
