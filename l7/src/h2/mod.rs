//! HTTP/2 on both sides of the proxy, with the `h2` crate (DESIGN.md §2),
//! translated to and from HTTP/1.1 so that every HTTP feature (routing,
//! splits, retries, faults, rate limits, tracing, metrics) works the same
//! on HTTP/2 requests. Reading order:
//!
//! - [`server`]: one downstream HTTP/2 connection (handshake with the
//!   listener's limits, a task per stream, Rapid Reset, GOAWAY on drain);
//! - [`request`]: one stream's phases and attempts, to an HTTP/2 or an
//!   HTTP/1.1 upstream;
//! - [`pool`]: per-core multiplexed upstream sessions;
//! - [`translate`]: heads and trailers between HTTP/2 and HTTP/1.1;
//! - [`grpc`]: gRPC statuses, `grpc-timeout`, the proxy's gRPC errors;
//! - [`io`]: core's completion-based stream as the I/O traits h2 drives.
//!
//! HTTP/1.1 clients of an HTTP/2 cluster go through [`h1_client`].

pub mod grpc;
pub(crate) mod h1_client;
pub(crate) mod io;
pub(crate) mod pool;
pub(crate) mod request;
pub(crate) mod server;
pub(crate) mod translate;
