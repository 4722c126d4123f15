//! `ringmesh bench`: a thread-per-core load generator and a side-by-side
//! comparison of proxies.
//!
//! This crate depends on no other ringmesh crate, so it can measure any
//! gateway. It runs on the proxy's runtime (compio: io_uring, epoll
//! fallback), one runtime per generator thread, so the ruler is at least as
//! fast as the thing it measures.
//!
//! - [`runner`] runs a [`LoadSpec`]: threads, connections, window, progress.
//! - `scenarios/` holds one file per workload (HTTP, TCP request/response,
//!   TCP stream).
//! - [`schedule`] decides send times and applies the coordinated-omission
//!   correction; [`stats`] records per thread and merges.
//! - [`http1`] builds requests and checks response framing.
//! - [`report`] prints tables, JSON, `.hgrm` files and SVG plots.
//! - [`backend`] serves echo, sink, source and HTTP to measure against.
//! - `compare` runs the proxy matrix.

pub mod backend;
mod cli;
mod compare;
pub mod http1;
pub mod report;
pub mod runner;
mod scenarios;
pub mod schedule;
pub mod stats;

pub use cli::{BenchArgs, main};
pub use report::Report;
pub use runner::{BenchError, Direction, HttpWorkload, LoadSpec, Workload, run};
