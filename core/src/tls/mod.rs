//! TLS on the data plane: terminating it on listeners (`server`),
//! originating it towards clusters (`client`), the session adapter over
//! compio streams (`stream`), and workload identity with authorization
//! (`identity`).
//!
//! Not here yet: SNI passthrough, and the kTLS offload itself (`ktls` only
//! probes; every session runs in userspace).

mod client;
pub mod client_hello;
mod identity;
pub mod ktls;
mod server;
pub(crate) mod stream;

pub use client::{ClientTls, ClientTlsMaterial, ExpectedPeer};
pub use identity::{AuthzPolicy, IdentityPattern, not_after, spiffe_id};
pub use server::{ServerTls, ServerTlsMaterial, TlsError, parse_certs};
pub use stream::HandshakeError;
