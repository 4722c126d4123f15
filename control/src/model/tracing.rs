//! `node:` (who this proxy serves) and `tracing:` (trace context and span
//! export), README "Tracing".

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::listener::human;
use crate::decode::{Decoder, Fields, duration, list, name, scalar};
use crate::limits::quote;
use crate::yaml::Node;

/// `node:` the workload this proxy runs beside (spans' `service.name`,
/// mesh metrics' destination labels).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NodeDoc {
    /// Workload name (a Deployment, say).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// Its namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Its version (`v1`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The service it serves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

impl NodeDoc {
    pub(crate) fn decode(d: &mut Decoder, n: &Node, p: &str) -> Option<Self> {
        let mut f = Fields::of(d, n, p)?;
        let mut take = |key: &str| f.take(key).and_then(|(vn, vp)| name(d, vn, &vp));
        let doc = NodeDoc {
            workload: take("workload"),
            namespace: take("namespace"),
            version: take("version"),
            service: take("service"),
        };
        f.finish(d, &["workload", "namespace", "version", "service"]);
        Some(doc)
    }

    /// The name spans carry as `service.name`: the service, else the
    /// workload, else `ringmesh`.
    pub fn service_name(&self) -> &str {
        self.service
            .as_deref()
            .or(self.workload.as_deref())
            .unwrap_or("ringmesh")
    }
}

/// `tracing:` trace context propagation, sampling and OTLP export.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TracingDoc {
    /// Percent of new traces sampled (0-100, 0.0001 resolution; a caller's
    /// decision wins). Default 1 (Istio's).
    pub sampling: f64,
    /// Formats read and written: `w3c`, `b3`. Default both.
    pub propagation: Vec<String>,
    /// Where spans go (none: context is propagated, no span is exported).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp: Option<OtlpDoc>,
}

/// `tracing.otlp`: an OTLP/HTTP protobuf collector.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OtlpDoc {
    /// `http://host:port[/path]` (default path `/v1/traces`).
    pub endpoint: String,
    /// Extra request headers (an API key, say).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Time allowed for one export. Default 10s (the OTLP exporter's).
    #[serde(serialize_with = "human")]
    pub timeout: Duration,
}

impl TracingDoc {
    pub(crate) fn decode(d: &mut Decoder, n: &Node, p: &str) -> Option<Self> {
        let mut f = Fields::of(d, n, p)?;
        let sampling = match f.take("sampling") {
            None => Some(1.0),
            Some((vn, vp)) => super::route::percent(d, vn, &vp),
        };
        let propagation = match f.take("propagation") {
            None => Some(vec!["w3c".to_owned(), "b3".to_owned()]),
            Some((vn, vp)) => {
                let mut ok = true;
                let mut out = Vec::new();
                for (i, item) in list(d, vn, &vp).unwrap_or(&[]).iter().enumerate() {
                    let ip = format!("{vp}[{i}]");
                    match scalar(d, item, &ip, "a propagation format") {
                        Some(v @ ("w3c" | "b3")) => out.push(v.to_owned()),
                        Some(v) => {
                            d.error(
                                item.mark,
                                &ip,
                                format!("unknown propagation `{}`: use `w3c` or `b3`", quote(v)),
                            );
                            ok = false;
                        }
                        None => ok = false,
                    }
                }
                ok.then_some(out)
            }
        };
        let otlp = f
            .take("otlp")
            .and_then(|(vn, vp)| OtlpDoc::decode(d, vn, &vp));
        f.finish(d, &["sampling", "propagation", "otlp"]);
        Some(TracingDoc {
            sampling: sampling?,
            propagation: propagation?,
            otlp,
        })
    }
}

impl OtlpDoc {
    fn decode(d: &mut Decoder, n: &Node, p: &str) -> Option<Self> {
        let mut f = Fields::of(d, n, p)?;
        let endpoint = match f.take("endpoint") {
            None => {
                d.error(n.mark, p, "`otlp` needs an `endpoint` (http://host:4318)");
                None
            }
            Some((vn, vp)) => {
                scalar(d, vn, &vp, "a URL").and_then(|v| match crate::otlp::Endpoint::parse(v) {
                    Ok(_) => Some(v.to_owned()),
                    Err(why) => {
                        d.error(
                            vn.mark,
                            &vp,
                            format!("invalid OTLP endpoint `{}`: {why}", quote(v)),
                        );
                        None
                    }
                })
            }
        };
        let mut headers = BTreeMap::new();
        let mut ok = true;
        if let Some((vn, vp)) = f.take("headers") {
            if let Some(mut g) = Fields::of(d, vn, &vp) {
                for (k, kn, kp) in g.take_all() {
                    let valid = !k.is_empty()
                        && k.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
                    match scalar(d, kn, &kp, "a header value") {
                        Some(v) if valid && !v.bytes().any(|b| b < 0x20 || b == 0x7f) => {
                            headers.insert(k, v.to_owned());
                        }
                        Some(_) => {
                            d.error(kn.mark, &kp, "a header name is letters, digits, `-` and `_`; a value has no control characters");
                            ok = false;
                        }
                        None => ok = false,
                    }
                }
            }
        }
        let timeout = match f.take("timeout") {
            None => Some(Duration::from_secs(10)),
            Some((vn, vp)) => duration(
                d,
                vn,
                &vp,
                Duration::from_millis(10),
                Duration::from_secs(60),
            ),
        };
        f.finish(d, &["endpoint", "headers", "timeout"]);
        ok.then_some(())?;
        Some(OtlpDoc {
            endpoint: endpoint?,
            headers,
            timeout: timeout?,
        })
    }
}
