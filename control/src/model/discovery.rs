//! `clusters[].discovery`: where a cluster's endpoints come from, and
//! the endpoint-list documents of the file and API sources.

use std::path::PathBuf;
use std::time::Duration;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use super::cluster::endpoint;
use super::{EndpointDoc, Mark};
use crate::decode::{
    ConfigErrors, Decoder, Fields, boolean, duration, format_duration, list_of, scalar,
};
use crate::yaml::{self, Node};

/// Envoy's `dns_refresh_rate`.
pub const DEFAULT_DNS_REFRESH: Duration = Duration::from_secs(5);
/// How often a watched endpoints file is checked, by default.
pub const DEFAULT_FILE_INTERVAL: Duration = Duration::from_secs(1);

/// Where a cluster's endpoints come from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DiscoveryDoc {
    /// `endpoints` as written; names resolved at load and at each reload.
    #[default]
    Static,
    /// `endpoints`' host names re-resolved in the background.
    Dns {
        /// Time between resolutions.
        refresh: Duration,
        /// Re-resolve when the answer's TTL runs out, if sooner.
        respect_ttl: bool,
        /// Name server to ask (default: the system's, /etc/resolv.conf).
        resolver: Option<std::net::SocketAddr>,
    },
    /// A file holding the endpoint list, rewritten by an external tool.
    File {
        /// The file.
        path: PathBuf,
        /// How often it is checked for changes.
        interval: Duration,
    },
    /// `PUT /clusters/{name}/endpoints`; `endpoints` is the initial list.
    Api,
    /// No endpoint list: each connection goes to its original destination,
    /// the address it was going to before iptables redirected it to a
    /// listener with `original_destination: true` (Envoy's ORIGINAL_DST).
    OriginalDestination,
}

impl DiscoveryDoc {
    /// The `type` name.
    pub fn kind(&self) -> &'static str {
        match self {
            DiscoveryDoc::Static => "static",
            DiscoveryDoc::Dns { .. } => "dns",
            DiscoveryDoc::File { .. } => "file",
            DiscoveryDoc::Api => "api",
            DiscoveryDoc::OriginalDestination => "original_destination",
        }
    }

    pub(crate) fn decode(d: &mut Decoder, node: &Node, path: &str) -> Option<Self> {
        // `discovery: dns` is short for `discovery: { type: dns }`.
        if let yaml::Value::Scalar { .. } = node.value {
            let kind = scalar(d, node, path, "a discovery type")?;
            return match kind {
                "static" => Some(DiscoveryDoc::Static),
                "dns" => Some(DiscoveryDoc::Dns {
                    refresh: DEFAULT_DNS_REFRESH,
                    respect_ttl: true,
                    resolver: None,
                }),
                "api" => Some(DiscoveryDoc::Api),
                "original_destination" => Some(DiscoveryDoc::OriginalDestination),
                "file" => {
                    d.error(
                        node.mark,
                        path,
                        "`file` discovery needs a path: `discovery: { type: file, path: ... }`",
                    );
                    None
                }
                other => {
                    unknown_type(d, node, path, other);
                    None
                }
            };
        }
        let mut f = Fields::of(d, node, path)?;
        let kind = match f.take("type") {
            Some((n, p)) => scalar(d, n, &p, "a discovery type").map(|k| (k, n, p)),
            None => {
                d.error(
                    node.mark,
                    path,
                    "missing required key `type` (static, dns, file, api or original_destination)",
                );
                None
            }
        };
        let (kind, kind_node, kind_path) = kind?;
        match kind {
            "static" => {
                f.finish(d, &["type"]);
                Some(DiscoveryDoc::Static)
            }
            "api" => {
                f.finish(d, &["type"]);
                Some(DiscoveryDoc::Api)
            }
            "original_destination" => {
                f.finish(d, &["type"]);
                Some(DiscoveryDoc::OriginalDestination)
            }
            "dns" => {
                let refresh = match f.take("refresh") {
                    None => Some(DEFAULT_DNS_REFRESH),
                    Some((n, p)) => duration(
                        d,
                        n,
                        &p,
                        Duration::from_millis(100),
                        Duration::from_secs(24 * 3600),
                    ),
                };
                let respect_ttl = match f.take("respect_ttl") {
                    None => Some(true),
                    Some((n, p)) => boolean(d, n, &p),
                };
                let resolver = match f.take("resolver") {
                    None => Some(None),
                    Some((n, p)) => {
                        scalar(d, n, &p, "an address like 127.0.0.1:53").and_then(|v| {
                            match v.parse::<std::net::SocketAddr>() {
                                Ok(a) => Some(Some(a)),
                                Err(_) => match v.parse::<std::net::IpAddr>() {
                                    Ok(ip) => Some(Some(std::net::SocketAddr::new(ip, 53))),
                                    Err(_) => {
                                        d.error(
                                            n.mark,
                                            &p,
                                            format!(
                                                "`{}` is not an IP address or IP:port",
                                                crate::limits::quote(v)
                                            ),
                                        );
                                        None
                                    }
                                },
                            }
                        })
                    }
                };
                f.finish(d, &["type", "refresh", "respect_ttl", "resolver"]);
                Some(DiscoveryDoc::Dns {
                    refresh: refresh?,
                    respect_ttl: respect_ttl?,
                    resolver: resolver?,
                })
            }
            "file" => {
                let file = match f.take("path") {
                    Some((n, p)) => scalar(d, n, &p, "a file path").map(PathBuf::from),
                    None => {
                        d.error(node.mark, path, "missing required key `path`");
                        None
                    }
                };
                let interval = match f.take("interval") {
                    None => Some(DEFAULT_FILE_INTERVAL),
                    Some((n, p)) => duration(
                        d,
                        n,
                        &p,
                        Duration::from_millis(50),
                        Duration::from_secs(3600),
                    ),
                };
                f.finish(d, &["type", "path", "interval"]);
                Some(DiscoveryDoc::File {
                    path: file?,
                    interval: interval?,
                })
            }
            other => {
                unknown_type(d, kind_node, &kind_path, other);
                None
            }
        }
    }
}

fn unknown_type(d: &mut Decoder, node: &Node, path: &str, other: &str) {
    d.error(
        node.mark,
        path,
        format!(
            "unknown discovery type `{}` (expected static, dns, file, api or original_destination)",
            crate::limits::quote(other)
        ),
    );
}

impl Serialize for DiscoveryDoc {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("type", self.kind())?;
        match self {
            DiscoveryDoc::Dns {
                refresh,
                respect_ttl,
                resolver,
            } => {
                m.serialize_entry("refresh", &format_duration(*refresh))?;
                m.serialize_entry("respect_ttl", respect_ttl)?;
                if let Some(r) = resolver {
                    m.serialize_entry("resolver", &r.to_string())?;
                }
            }
            DiscoveryDoc::File { path, interval } => {
                m.serialize_entry("path", &path.display().to_string())?;
                m.serialize_entry("interval", &format_duration(*interval))?;
            }
            DiscoveryDoc::Static | DiscoveryDoc::Api | DiscoveryDoc::OriginalDestination => {}
        }
        m.end()
    }
}

/// Parses an endpoint list (an endpoints file, or a `PUT
/// /clusters/{name}/endpoints` body): a YAML or JSON list in the syntax of
/// `clusters[].endpoints`, or `{ endpoints: [...] }`. An empty document is
/// an error, not an empty list: a truncated file or a lost body must not
/// remove every endpoint; an explicit `[]` does.
pub fn parse_endpoint_list(file: &str, text: &str) -> Result<Vec<EndpointDoc>, ConfigErrors> {
    let mut d = Decoder::new(file);
    let root = match yaml::parse(text) {
        Ok(Some(root)) => root,
        Ok(None) => {
            d.error(
                Mark { line: 1, col: 1 },
                "",
                "the endpoint list is empty; send `[]` to remove every endpoint",
            );
            return d.finish(Vec::new());
        }
        Err(e) => {
            d.error(e.mark, "", format!("YAML syntax error: {}", e.message));
            return d.finish(Vec::new());
        }
    };
    let (node, path) = match &root.value {
        yaml::Value::Map(_) => {
            let Some(mut f) = Fields::of(&mut d, &root, "") else {
                return d.finish(Vec::new());
            };
            let taken = f.take("endpoints");
            f.finish(&mut d, &["endpoints"]);
            match taken {
                Some((n, p)) => (n, p),
                None => {
                    d.error(
                        Mark { line: 1, col: 1 },
                        "",
                        "missing required key `endpoints`",
                    );
                    return d.finish(Vec::new());
                }
            }
        }
        _ => (&root, "endpoints".to_owned()),
    };
    let endpoints = list_of(&mut d, node, &path, endpoint).unwrap_or_default();
    d.finish(endpoints)
}
