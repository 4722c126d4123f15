//! ringmesh's data plane above TCP: HTTP/1.1 proxying and routing on
//! `core`'s thread-per-core engine.
//!
//! `core` accepts, admits and terminates TLS, then hands each connection of
//! a `protocol: http` listener to [`HttpHandler`] (its
//! [`ProtocolHandler`](ringmesh_core::protocol::ProtocolHandler)). From
//! there, reading order:
//!
//! - [`server`](crate::server): the connection's loop (heads, keep-alive,
//!   pipelining, drain, header timeout);
//! - [`phases`](crate::phases): one request's phases, in order;
//! - [`exchange`](crate::exchange): the upstream side (pooled connection,
//!   request and response streaming, replay on a stale pooled connection);
//! - [`record`](crate::record): metrics and the access log, once per request.
//!
//! Below them: [`codec`] (our HTTP/1.1 head checks on httparse, our strict
//! chunked decoder, head writing), [`pool`] (per-core upstream pools),
//! [`route`] (matches, the route index, splits), [`rewrite`] and
//! [`headers`] (what a route changes in a request and its response),
//! `direct` (redirects and direct responses), [`fault`] (fault injection),
//! [`ratelimit`] (local rate limits), [`retry`] (retry policies, budgets),
//! [`trace`] (trace context and spans), [`tap`] (live request records),
//! [`mesh`] (Istio's metrics by workload identity),
//! `mirror` (shadow copies),
//! [`random`] (the per-worker generator), [`local_reply`] (answers the
//! proxy makes itself, with their response flags) and [`metrics`]. Endpoint picking, connect, breakers,
//! outlier detection and the runtime are `core`'s; `l7` never depends on
//! `control` and knows nothing of YAML.

pub mod buffers;
pub mod codec;
pub mod config;
mod direct;
mod exchange;
pub mod fault;
pub mod h2;
pub mod headers;
pub mod local_reply;
pub mod mesh;
pub mod metrics;
mod mirror;
mod phases;
pub mod pool;
pub mod random;
pub mod ratelimit;
mod record;
pub mod request_id;
pub mod retry;
pub mod rewrite;
pub mod route;
mod server;
pub mod tap;
pub mod trace;

use std::any::Any;
use std::future::Future;
use std::pin::Pin;

use ringmesh_core::protocol::{Connection, ConnectionEnd, ProtocolHandler};

pub use config::{HttpListener, HttpSettings};

/// The protocol handler of an HTTP listener: what a listener's compiled
/// config carries for `protocol: http`.
#[derive(Debug)]
pub struct HttpHandler {
    /// The listener's HTTP config of this snapshot.
    pub config: HttpListener,
}

impl ProtocolHandler for HttpHandler {
    fn serve(&self, conn: Connection) -> Pin<Box<dyn Future<Output = ConnectionEnd>>> {
        Box::pin(server::serve(conn))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
