//! ringmesh's data plane: a thread-per-core L4 (TCP) engine, and the seam
//! on which protocols above TCP (HTTP, in the `l7` crate) are served.
//!
//! One worker per core runs its own single-threaded runtime (io_uring, or
//! epoll where io_uring is unavailable), its own SO_REUSEPORT accept socket
//! per listener, and every connection it accepts. Configuration arrives as
//! an immutable [`Snapshot`] through [`Engine::apply`]; statistics are kept
//! per core and merged when read ([`StatsRegistry`]).
//!
//! This crate knows nothing about YAML, the admin API or Prometheus: the
//! `ringmesh-control` crate compiles configuration into [`Snapshot`]s and
//! renders statistics.
//!
//! Reading order for one connection: [`listener`](crate::listener) accepts,
//! `conn` admits and serves it ([`capture`] first recovers its original
//! destination on a capturing listener), `connect` opens the upstream, `forward`
//! copies both ways, and `conn` records the outcome once. A listener with a
//! [`protocol::ProtocolHandler`] hands the connection to it after TLS
//! instead of forwarding; the handler uses [`upstream`], [`rt`],
//! [`drain`] and [`per_core`] rather than its own copies of them.

pub mod balance;
mod bind;
pub mod capture;
pub mod client_limit;
mod conn;
mod connect;
pub mod drain;
mod engine;
pub mod fd_share;
mod forward;
pub mod health;
mod listener;
pub mod local_resource;
pub mod metrics;
pub mod per_core;
pub mod protocol;
pub mod proxy_protocol;
pub mod rt;
mod runtime;
pub mod snapshot;
mod splice;
mod stream;
pub mod tls;
pub mod upstream;
mod worker;

pub use balance::{Balancer, LbPolicy};
pub use bind::{BindError, ListenKey};
pub use connect::{AttemptError, ConnectError};
pub use engine::{
    BoundListener, Engine, EngineError, EngineOptions, HandoverListener, InheritedListener,
};
pub use forward::{BULK_BUFFER, INITIAL_BUFFER, MAX_BUFFER, RING_BUFFER, SUSTAINED_BULK_BYTES};
pub use metrics::{CloseReason, StatsRegistry};
pub use runtime::{IoEngine, IoEngineChoice};
pub use snapshot::{
    AcceptProxyProtocol, Cluster, Endpoint, ListenerConfig, OriginalDestination, Snapshot, ZeroCopy,
};
pub use stream::{Stream, TunnelEnd};
