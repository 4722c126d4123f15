//! The mesh: the desired state `ringmesh control` holds ([`desired`]), the
//! protocol between it and the proxies ([`protocol`]), and a proxy's side
//! of joining ([`client`]: options and state; [`identity`]: key,
//! certificate, renewal; [`watch`]: pushes, ACK/NACK), over [`channel`].

mod backoff;
pub mod channel;
pub mod client;
pub mod desired;
pub mod durable;
pub mod identity;
pub mod protocol;
pub mod watch;

pub use client::{JoinError, JoinOptions, MeshClient};
pub use desired::{MeshDoc, ServiceDoc, load_mesh};
