//! TLS on the data plane: terminating it on listeners (`server`), the
//! session adapter over compio streams (`stream`), and workload identity
//! with authorization (`identity`).
//!
//! Not here yet: origination towards upstreams, SNI passthrough, material
//! rotation and kTLS (see the README's status).

mod identity;
mod server;
pub(crate) mod stream;

pub use identity::{AuthzPolicy, IdentityPattern, spiffe_id};
pub use server::{ServerTls, ServerTlsMaterial, TlsError, parse_certs};
pub use stream::HandshakeError;
