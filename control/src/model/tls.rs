//! `listeners[].tls` and `listeners[].authz`: terminating TLS, requiring
//! client certificates (mTLS), and which SPIFFE identities may connect.

use std::time::Duration;

use ringmesh_core::tls::IdentityPattern;
use serde::Serialize;

use super::Origin;
use super::listener::human;
use crate::decode::{Decoder, Fields, duration, list_field, scalar};
use crate::yaml::Node;

/// Default TLS handshake timeout (Envoy's transport socket default is 10s).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS termination on a listener. Paths are read when the config is loaded
/// (relative paths from the proxy's working directory).
#[derive(Debug, Clone, Serialize)]
pub struct ListenerTlsDoc {
    /// Certificate chain, PEM, leaf first.
    pub cert: String,
    /// Private key, PEM.
    pub key: String,
    /// Trust bundle for client certificates, PEM; present = mTLS required.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<String>,
    /// Time allowed for the handshake. Default 10s.
    #[serde(serialize_with = "human")]
    pub handshake_timeout: Duration,
    /// ALPN protocols offered, in preference order (none by default).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub alpn: Vec<String>,
    /// More certificates, each served to clients whose SNI its DNS SANs cover.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<CertificateDoc>,
    /// Hand sessions to kernel TLS after the handshake where the kernel
    /// offers it. Default true.
    pub ktls: bool,
    #[serde(skip)]
    pub(crate) origin: Origin,
}

/// A certificate and its key.
#[derive(Debug, Clone, Serialize)]
pub struct CertificateDoc {
    /// Chain, PEM.
    pub cert: String,
    /// Key, PEM.
    pub key: String,
}

/// Who may connect, by SPIFFE ID; with a policy present the default is deny.
#[derive(Debug, Clone, Serialize)]
pub struct AuthzDoc {
    /// Identity patterns allowed (`*` = one segment).
    pub allow: Vec<String>,
    /// Identity patterns always denied.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    #[serde(skip)]
    pub(crate) origin: Origin,
}

fn path_string(
    d: &mut Decoder,
    f: &mut Fields<'_>,
    node: &Node,
    path: &str,
    key: &str,
    required: bool,
) -> Option<String> {
    match f.take(key) {
        Some((n, p)) => {
            let v = scalar(d, n, &p, "a file path")?;
            if v.is_empty() {
                d.error(n.mark, &p, "empty path");
                return None;
            }
            Some(v.to_owned())
        }
        None => {
            if required {
                d.error(node.mark, path, format!("missing required key `{key}`"));
            }
            None
        }
    }
}

impl ListenerTlsDoc {
    pub(crate) fn decode(d: &mut Decoder, node: &Node, path: &str) -> Option<Self> {
        let mut f = Fields::of(d, node, path)?;
        let cert = path_string(d, &mut f, node, path, "cert", true);
        let key = path_string(d, &mut f, node, path, "key", true);
        let client_ca = path_string(d, &mut f, node, path, "client_ca", false);
        let handshake_timeout = match f.take("handshake_timeout") {
            None => Some(DEFAULT_HANDSHAKE_TIMEOUT),
            Some((n, p)) => duration(d, n, &p, Duration::from_millis(1), Duration::from_secs(300)),
        };
        let alpn = Some(protocols(d, &mut f));
        let ktls = match f.take("ktls") {
            None => Some(true),
            Some((n, p)) => crate::decode::boolean(d, n, &p),
        };
        let certificates = list_field(d, f.take("certificates"), |d, item, ip| {
            let mut cf = Fields::of(d, item, ip)?;
            let cert = path_string(d, &mut cf, item, ip, "cert", true);
            let key = path_string(d, &mut cf, item, ip, "key", true);
            cf.finish(d, &["cert", "key"]);
            Some(CertificateDoc {
                cert: cert?,
                key: key?,
            })
        });
        f.finish(
            d,
            &[
                "cert",
                "key",
                "client_ca",
                "handshake_timeout",
                "alpn",
                "certificates",
                "ktls",
            ],
        );
        Some(ListenerTlsDoc {
            certificates,
            ktls: ktls?,
            cert: cert?,
            key: key?,
            client_ca,
            handshake_timeout: handshake_timeout?,
            alpn: alpn?,
            origin: Origin {
                mark: node.mark,
                path: path.to_owned(),
            },
        })
    }
}

/// `alpn: [...]`: protocol names of 1-255 bytes.
fn protocols(d: &mut Decoder, f: &mut Fields<'_>) -> Vec<String> {
    list_field(d, f.take("alpn"), |d, item, ip| {
        let v = scalar(d, item, ip, "a protocol name")?;
        if v.is_empty() || v.len() > 255 {
            d.error(item.mark, ip, "ALPN protocol names are 1-255 bytes");
            return None;
        }
        Some(v.to_owned())
    })
}

fn patterns(d: &mut Decoder, f: &mut Fields<'_>, key: &str) -> Vec<String> {
    list_field(d, f.take(key), |d, item, ip| {
        let v = scalar(d, item, ip, "a SPIFFE ID pattern")?;
        match IdentityPattern::parse(v) {
            Ok(_) => Some(v.to_owned()),
            Err(e) => {
                d.error(item.mark, ip, e);
                None
            }
        }
    })
}

impl AuthzDoc {
    pub(crate) fn decode(d: &mut Decoder, node: &Node, path: &str) -> Option<Self> {
        let mut f = Fields::of(d, node, path)?;
        let allow = patterns(d, &mut f, "allow");
        let deny = patterns(d, &mut f, "deny");
        f.finish(d, &["allow", "deny"]);
        Some(AuthzDoc {
            allow,
            deny,
            origin: Origin {
                mark: node.mark,
                path: path.to_owned(),
            },
        })
    }
}

/// TLS towards a cluster's endpoints.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterTlsDoc {
    /// Trust bundle for the endpoints' certificates, PEM.
    pub ca: String,
    /// Identity the endpoint must prove: a DNS name, or a SPIFFE ID
    /// (`spiffe://...`, matched exactly).
    pub san: String,
    /// Server name to send; default: `san` when it is a DNS name, else none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// Certificate chain to present (the proxy's workload certificate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    /// Key of `cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Time allowed for the handshake (within each connect attempt). Default 10s.
    #[serde(serialize_with = "human")]
    pub handshake_timeout: Duration,
    /// ALPN protocols offered.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub alpn: Vec<String>,
    #[serde(skip)]
    pub(crate) origin: Origin,
}

impl ClusterTlsDoc {
    pub(crate) fn decode(d: &mut Decoder, node: &Node, path: &str) -> Option<Self> {
        let mut f = Fields::of(d, node, path)?;
        let ca = path_string(d, &mut f, node, path, "ca", true);
        let san = match f.take("san") {
            Some((n, p)) => scalar(d, n, &p, "a DNS name or SPIFFE ID").map(str::to_owned),
            None => {
                d.error(node.mark, path, "missing required key `san` (the DNS name or SPIFFE ID the endpoints must prove)");
                None
            }
        };
        let sni = match f.take("sni") {
            Some((n, p)) => scalar(d, n, &p, "a server name").map(|v| Some(v.to_owned())),
            None => Some(None),
        };
        let cert = path_string(d, &mut f, node, path, "cert", false);
        let key = path_string(d, &mut f, node, path, "key", false);
        if cert.is_some() != key.is_some() {
            d.error(node.mark, path, "`cert` and `key` go together");
        }
        let handshake_timeout = match f.take("handshake_timeout") {
            None => Some(DEFAULT_HANDSHAKE_TIMEOUT),
            Some((n, p)) => duration(d, n, &p, Duration::from_millis(1), Duration::from_secs(300)),
        };
        let alpn = protocols(d, &mut f);
        f.finish(
            d,
            &[
                "ca",
                "san",
                "sni",
                "cert",
                "key",
                "handshake_timeout",
                "alpn",
            ],
        );
        Some(ClusterTlsDoc {
            ca: ca?,
            san: san?,
            sni: sni?,
            cert,
            key,
            handshake_timeout: handshake_timeout?,
            alpn,
            origin: Origin {
                mark: node.mark,
                path: path.to_owned(),
            },
        })
    }
}
