//! ringmesh's data plane: a thread-per-core L4 (TCP) engine.
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
//! `conn` admits and serves it, `connect` opens the upstream, `forward`
//! copies both ways, and `conn` records the outcome once.

pub mod balance;
mod bind;
pub mod client_limit;
mod conn;
mod connect;
mod engine;
pub mod fd_share;
mod forward;
pub mod health;
mod listener;
pub mod local_resource;
pub mod metrics;
pub mod per_core;
mod runtime;
pub mod snapshot;
mod splice;
mod stream;
pub mod tls;
mod worker;

pub use balance::{Balancer, LbPolicy};
pub use bind::{BindError, ListenKey};
pub use connect::{AttemptError, ConnectError};
pub use engine::{BoundListener, Engine, EngineError, EngineOptions};
pub use forward::{BULK_BUFFER, INITIAL_BUFFER, MAX_BUFFER, RING_BUFFER, SUSTAINED_BULK_BYTES};
pub use metrics::{CloseReason, StatsRegistry};
pub use runtime::{IoEngine, IoEngineChoice};
pub use snapshot::{Cluster, Endpoint, ListenerConfig, Snapshot, ZeroCopy};
