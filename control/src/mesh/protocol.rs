//! What a proxy and `ringmesh control` say to each other: JSON over
//! HTTPS/1.1, a long-poll watch modelled on xDS (DESIGN section 2).
//!
//! - `POST /v1/certificate` ([`CertificateRequest`]): a CSR for the
//!   proxy's own identity, authenticated by its bootstrap token (first
//!   time) or its mesh certificate (renewals). The key never leaves the proxy.
//! - `POST /v1/watch` ([`WatchRequest`] -> [`Push`]): authenticated by the
//!   mesh certificate. The request registers the instance (renewing its
//!   lease) and reports the last push it processed: `nonce` with no `error`
//!   is an ACK of `applied`, with an `error` a NACK. The answer is the
//!   proxy's derived config when it has not seen the latest one, else the
//!   control plane holds the request until it changes (or for a third of
//!   the lease, then `204 No Content`).
//! - `POST /v1/leave` ([`LeaveRequest`]): the instance leaves at shutdown.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Path of the certificate endpoint.
pub const CERTIFICATE_PATH: &str = "/v1/certificate";
/// Path of the watch.
pub const WATCH_PATH: &str = "/v1/watch";
/// Path of the leave call.
pub const LEAVE_PATH: &str = "/v1/leave";

/// Pushed configs name the proxy's mesh files with these placeholders; the
/// proxy replaces them with its own paths (its key never leaves it, and
/// the control plane does not know its file system).
pub const IDENTITY_FILE: &str = "@mesh/identity.pem";
/// Placeholder of the mesh's trust bundle.
pub const TRUST_FILE: &str = "@mesh/ca.pem";

/// Who a proxy is and where it can be reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// Node name, unique in the mesh.
    pub node: String,
    /// Namespace of the workload.
    pub namespace: String,
    /// Workload (its identity).
    pub workload: String,
    /// Version label (`v1`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Address other sidecars connect to (the inbound listener, as seen
    /// from elsewhere).
    pub address: SocketAddr,
    /// Where the inbound listener binds.
    pub inbound: SocketAddr,
    /// Where the outbound listener binds (the app's calls).
    pub outbound: SocketAddr,
    /// Port of the local app the inbound listener forwards to.
    pub app_port: u16,
    /// Inbound listener in transparent-capture mode (iptables REDIRECT).
    #[serde(default)]
    pub capture: bool,
    /// The proxy's admin API, where the mesh-wide dashboard reads its
    /// metrics (when reachable from the control plane).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<SocketAddr>,
}

/// A watch poll.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WatchRequest {
    /// The instance.
    pub registration: Registration,
    /// Version of the config the proxy runs (from the control plane).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<String>,
    /// Nonce of the last push the proxy processed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// Why the push with `nonce` was refused (a NACK); none: an ACK.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the proxy's certificate expires (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_expiry: Option<i64>,
}

/// A derived config for one proxy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Push {
    /// Opaque version: `<mesh version>-<hash of the content>`.
    pub version: String,
    /// Nonce of this push (ACK/NACK name it).
    pub nonce: String,
    /// The proxy config (JSON text, loaded like `ringmesh.yaml`).
    pub config: String,
    /// The registration lease, in milliseconds: poll again well within it.
    pub lease_ms: u64,
}

/// A certificate signing request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertificateRequest {
    /// Namespace of the identity asked for.
    pub namespace: String,
    /// Workload of the identity asked for.
    pub workload: String,
    /// PKCS#10 CSR, PEM.
    pub csr: String,
}

/// An issued workload certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertificateResponse {
    /// The certificate, PEM (the leaf: the mesh CA signs directly).
    pub certificate: String,
    /// The mesh's trust bundle, PEM.
    pub ca: String,
    /// The SPIFFE ID it carries.
    pub spiffe_id: String,
    /// Expiry, Unix seconds.
    pub not_after: i64,
    /// Issue time, Unix seconds (renewal is due halfway).
    pub not_before: i64,
}

/// An instance leaving.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaveRequest {
    /// Its node name.
    pub node: String,
}

/// Whether a proxy runs what the control plane wants it to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncState {
    /// It ACKed the latest config derived for it.
    #[serde(rename = "SYNCED")]
    Synced,
    /// It has not ACKed the latest config yet.
    #[serde(rename = "STALE")]
    Stale,
    /// It refused the latest config (see `error`).
    #[serde(rename = "NACK")]
    Nack,
    /// Its lease expired: the control plane has not heard from it.
    #[serde(rename = "NOT CONNECTED")]
    NotConnected,
}

impl SyncState {
    /// As `ctl status` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncState::Synced => "SYNCED",
            SyncState::Stale => "STALE",
            SyncState::Nack => "NACK",
            SyncState::NotConnected => "NOT CONNECTED",
        }
    }
}

/// One proxy as `GET /proxies` and `ctl status` show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProxyStatus {
    /// Node name.
    pub node: String,
    /// Namespace.
    pub namespace: String,
    /// Workload.
    pub workload: String,
    /// Version label.
    #[serde(default)]
    pub version: Option<String>,
    /// Address other sidecars reach it at.
    pub address: SocketAddr,
    /// Sync state.
    pub state: SyncState,
    /// The config version it ACKed last.
    #[serde(default)]
    pub acked: Option<String>,
    /// The latest config version derived for it.
    #[serde(default)]
    pub latest: Option<String>,
    /// The first error of its NACK.
    #[serde(default)]
    pub error: Option<String>,
    /// Certificate expiry, Unix seconds.
    #[serde(default)]
    pub certificate_expiry: Option<i64>,
    /// Milliseconds since the control plane last heard from it.
    pub last_seen_ms: u64,
}
