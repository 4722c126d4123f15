//! The mesh: the desired state `ringmesh control` holds ([`desired`]), the
//! protocol between it and the proxies ([`protocol`]), and a proxy's side
//! of joining ([`client`], over [`channel`]).

pub mod channel;
pub mod client;
pub mod desired;
pub mod durable;
pub mod protocol;

pub use client::{JoinError, JoinOptions, MeshClient};
pub use desired::{MeshDoc, ServiceDoc, load_mesh};
