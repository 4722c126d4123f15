//! TLS on the data plane: terminating it on listeners (`server`),
//! originating it towards clusters (`client`), the session adapter over
//! compio streams (`stream`), and workload identity with authorization
//! (`identity`).
//!
//! Not here yet: SNI passthrough and kTLS offload (see the README).

mod client;
mod identity;
mod server;
pub(crate) mod stream;

pub use client::{ClientTls, ClientTlsMaterial, ExpectedPeer};
pub use identity::{AuthzPolicy, IdentityPattern, spiffe_id};
pub use server::{ServerTls, ServerTlsMaterial, TlsError, parse_certs};
pub use stream::HandshakeError;
