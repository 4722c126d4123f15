//! ringmesh's control side: the configuration model and its validation,
//! compilation into the data plane's snapshots, live reload, the admin API
//! and the Prometheus exposition.
//!
//! Flow of a config: text -> [`yaml`] (nodes with positions) -> [`model`]
//! (typed document, every error collected by [`decode`] and [`validate`]) ->
//! [`compile`] (a `ringmesh_core::Snapshot`) -> `Engine::apply`.

pub mod admin;
pub mod compile;
pub mod decode;
pub mod discovery;
pub mod handover;
pub mod limits;
pub mod mesh;
pub mod model;
pub mod otlp;
pub mod process;
pub mod prometheus;
pub mod proxy;
pub mod systemd;
pub mod upgrade;
mod validate;
pub mod yaml;

pub use decode::{ConfigError, ConfigErrors};
pub use model::{Document, load};
pub use proxy::{RunError, RunOptions, run};
