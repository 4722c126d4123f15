//! `clusters[].outlier_detection` and `clusters[].health_check`: the data
//! plane's own settings types, decoded with positions and serialised back
//! for GET /config.

use std::time::Duration;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use crate::decode::{Decoder, Fields, boolean, duration, format_duration, integer, list, scalar};
use crate::yaml::Node;
use ringmesh_core::health::{HealthCheck, HealthCheckKind, OutlierDetection};

/// An integer field of [`OutlierDetection`]: key, bounds, accessor.
type IntField = (
    &'static str,
    u64,
    u64,
    fn(&mut OutlierDetection) -> &mut u32,
);
/// A duration field: key, accessor.
type DurationField = (&'static str, fn(&mut OutlierDetection) -> &mut Duration);

const INT_FIELDS: &[IntField] = &[
    ("consecutive_5xx", 0, 1_000_000, |o| &mut o.consecutive_5xx),
    ("consecutive_gateway_failure", 0, 1_000_000, |o| {
        &mut o.consecutive_gateway_failure
    }),
    ("consecutive_local_origin_failure", 0, 1_000_000, |o| {
        &mut o.consecutive_local_origin_failure
    }),
    ("max_ejection_percent", 0, 100, |o| {
        &mut o.max_ejection_percent
    }),
    ("enforcing_consecutive_5xx", 0, 100, |o| {
        &mut o.enforcing_consecutive_5xx
    }),
    ("enforcing_consecutive_gateway_failure", 0, 100, |o| {
        &mut o.enforcing_consecutive_gateway_failure
    }),
    ("enforcing_consecutive_local_origin_failure", 0, 100, |o| {
        &mut o.enforcing_consecutive_local_origin_failure
    }),
    ("enforcing_success_rate", 0, 100, |o| {
        &mut o.enforcing_success_rate
    }),
    ("enforcing_failure_percentage", 0, 100, |o| {
        &mut o.enforcing_failure_percentage
    }),
    ("success_rate_minimum_hosts", 1, 1_000_000, |o| {
        &mut o.success_rate_minimum_hosts
    }),
    ("success_rate_request_volume", 1, 1_000_000_000, |o| {
        &mut o.success_rate_request_volume
    }),
    ("success_rate_stdev_factor", 0, 1_000_000, |o| {
        &mut o.success_rate_stdev_factor
    }),
    ("failure_percentage_threshold", 0, 100, |o| {
        &mut o.failure_percentage_threshold
    }),
    ("failure_percentage_minimum_hosts", 1, 1_000_000, |o| {
        &mut o.failure_percentage_minimum_hosts
    }),
    ("failure_percentage_request_volume", 1, 1_000_000_000, |o| {
        &mut o.failure_percentage_request_volume
    }),
];

const DURATION_FIELDS: &[DurationField] = &[
    ("interval", |o| &mut o.interval),
    ("base_ejection_time", |o| &mut o.base_ejection_time),
    ("max_ejection_time", |o| &mut o.max_ejection_time),
    ("max_ejection_time_jitter", |o| {
        &mut o.max_ejection_time_jitter
    }),
];

/// A boolean field: key, accessor.
type BoolField = (&'static str, fn(&mut OutlierDetection) -> &mut bool);

const BOOL_FIELDS: &[BoolField] = &[
    ("split_external_local_origin_errors", |o| {
        &mut o.split_external_local_origin_errors
    }),
    ("successful_active_health_check_uneject_host", |o| {
        &mut o.successful_active_health_check_uneject_host
    }),
];

/// `outlier_detection:` as written, with Envoy's defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierDetectionDoc(pub OutlierDetection);

impl OutlierDetectionDoc {
    pub(crate) fn decode(d: &mut Decoder, node: &Node, path: &str) -> Option<Self> {
        let mut f = Fields::of(d, node, path)?;
        let mut o = OutlierDetection::default();
        let mut ok = true;
        for (key, min, max, field) in INT_FIELDS {
            if let Some((n, p)) = f.take(key) {
                match integer(d, n, &p, *min, *max) {
                    Some(v) => *field(&mut o) = v as u32,
                    None => ok = false,
                }
            }
        }
        for (key, field) in DURATION_FIELDS {
            if let Some((n, p)) = f.take(key) {
                let min = if *key == "max_ejection_time_jitter" {
                    Duration::ZERO
                } else {
                    Duration::from_millis(1)
                };
                match duration(d, n, &p, min, Duration::from_secs(24 * 3600)) {
                    Some(v) => *field(&mut o) = v,
                    None => ok = false,
                }
            }
        }
        for (key, field) in BOOL_FIELDS {
            if let Some((n, p)) = f.take(key) {
                match boolean(d, n, &p) {
                    Some(v) => *field(&mut o) = v,
                    None => ok = false,
                }
            }
        }
        let known: Vec<&str> = INT_FIELDS
            .iter()
            .map(|f| f.0)
            .chain(DURATION_FIELDS.iter().map(|f| f.0))
            .chain(BOOL_FIELDS.iter().map(|f| f.0))
            .collect();
        f.finish(d, &known);
        ok.then_some(OutlierDetectionDoc(o))
    }
}

impl Serialize for OutlierDetectionDoc {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut o = self.0.clone();
        let mut m = s.serialize_map(None)?;
        for (key, field) in DURATION_FIELDS {
            m.serialize_entry(key, &format_duration(*field(&mut o)))?;
        }
        for (key, _, _, field) in INT_FIELDS {
            m.serialize_entry(key, field(&mut o))?;
        }
        for (key, field) in BOOL_FIELDS {
            m.serialize_entry(key, field(&mut o))?;
        }
        m.end()
    }
}

/// Time between checks of one endpoint, by default.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// Time allowed for one check, by default.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// HAProxy's `rise`.
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 2;
/// HAProxy's `fall`.
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;

/// `health_check:` as written, with defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheckDoc(pub HealthCheck);

const CHECK_KEYS: &[&str] = &[
    "type",
    "path",
    "host",
    "expected_statuses",
    "interval",
    "interval_jitter",
    "timeout",
    "healthy_threshold",
    "unhealthy_threshold",
];

impl HealthCheckDoc {
    pub(crate) fn decode(d: &mut Decoder, node: &Node, path: &str) -> Option<Self> {
        let mut f = Fields::of(d, node, path)?;
        let http = match f.take("type") {
            None => Some(false),
            Some((n, p)) => match scalar(d, n, &p, "`tcp` or `http`")? {
                "tcp" => Some(false),
                "http" => Some(true),
                other => {
                    d.error(
                        n.mark,
                        &p,
                        format!(
                            "unknown health check type `{}` (expected tcp or http)",
                            crate::limits::quote(other)
                        ),
                    );
                    None
                }
            },
        };
        let check_path = match f.take("path") {
            None => Some("/".to_owned()),
            Some((n, p)) => scalar(d, n, &p, "a path").and_then(|v| {
                if v.starts_with('/') && !v.bytes().any(|b| b.is_ascii_whitespace() || b < 0x20) {
                    Some(v.to_owned())
                } else {
                    d.error(n.mark, &p, format!("`{}` is not a request path (it must start with / and contain no spaces)", crate::limits::quote(v)));
                    None
                }
            }),
        };
        let host = match f.take("host") {
            None => Some(None),
            Some((n, p)) => scalar(d, n, &p, "a host name").and_then(|v| {
                if !v.is_empty() && !v.bytes().any(|b| b.is_ascii_whitespace() || b < 0x20) {
                    Some(Some(v.to_owned()))
                } else {
                    d.error(n.mark, &p, "the host must be non-empty, without spaces");
                    None
                }
            }),
        };
        let statuses = match f.take("expected_statuses") {
            None => Some(vec![(200, 200)]),
            Some((n, p)) => list(d, n, &p).and_then(|items| {
                let parsed: Vec<Option<(u16, u16)>> = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| status_range(d, item, &format!("{p}[{i}]")))
                    .collect();
                if items.is_empty() {
                    d.error(n.mark, &p, "list at least one status or range");
                    return None;
                }
                parsed.into_iter().collect()
            }),
        };
        let interval = match f.take("interval") {
            None => Some(DEFAULT_CHECK_INTERVAL),
            Some((n, p)) => duration(
                d,
                n,
                &p,
                Duration::from_millis(10),
                Duration::from_secs(3600),
            ),
        };
        let jitter = match f.take("interval_jitter") {
            None => interval.map(|i| i / 10),
            Some((n, p)) => duration(d, n, &p, Duration::ZERO, Duration::from_secs(3600)),
        };
        let timeout = match f.take("timeout") {
            None => Some(DEFAULT_CHECK_TIMEOUT),
            Some((n, p)) => duration(d, n, &p, Duration::from_millis(1), Duration::from_secs(600)),
        };
        let healthy = match f.take("healthy_threshold") {
            None => Some(DEFAULT_HEALTHY_THRESHOLD),
            Some((n, p)) => integer(d, n, &p, 1, 1000).map(|v| v as u32),
        };
        let unhealthy = match f.take("unhealthy_threshold") {
            None => Some(DEFAULT_UNHEALTHY_THRESHOLD),
            Some((n, p)) => integer(d, n, &p, 1, 1000).map(|v| v as u32),
        };
        let http = http?;
        if !http {
            for key in ["path", "host", "expected_statuses"] {
                if let Some((n, p)) = f.take(key) {
                    d.error(n.mark, &p, format!("`{key}` needs `type: http`"));
                }
            }
        }
        f.finish(d, CHECK_KEYS);
        let kind = if http {
            HealthCheckKind::Http {
                path: check_path?,
                host: host?,
                expected_statuses: statuses?,
            }
        } else {
            HealthCheckKind::Tcp
        };
        Some(HealthCheckDoc(HealthCheck {
            kind,
            interval: interval?,
            interval_jitter: jitter?,
            timeout: timeout?,
            healthy_threshold: healthy?,
            unhealthy_threshold: unhealthy?,
            // The cluster's, filled in when the config is compiled.
            send_proxy_protocol: None,
        }))
    }
}

/// `200`, or `"200-299"`.
fn status_range(d: &mut Decoder, node: &Node, path: &str) -> Option<(u16, u16)> {
    let text = scalar(d, node, path, "a status or a range like 200-299")?;
    let parse = |s: &str| {
        s.trim()
            .parse::<u16>()
            .ok()
            .filter(|c| (100..=599).contains(c))
    };
    let range = match text.split_once('-') {
        Some((lo, hi)) => parse(lo).zip(parse(hi)).filter(|(lo, hi)| lo <= hi),
        None => parse(text).map(|c| (c, c)),
    };
    if range.is_none() {
        d.error(
            node.mark,
            path,
            format!(
                "`{}` is not a status (100-599) or a range like 200-299",
                crate::limits::quote(text)
            ),
        );
    }
    range
}

impl Serialize for HealthCheckDoc {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let c = &self.0;
        let mut m = s.serialize_map(None)?;
        match &c.kind {
            HealthCheckKind::Tcp => m.serialize_entry("type", "tcp")?,
            HealthCheckKind::Http {
                path,
                host,
                expected_statuses,
            } => {
                m.serialize_entry("type", "http")?;
                m.serialize_entry("path", path)?;
                if let Some(h) = host {
                    m.serialize_entry("host", h)?;
                }
                let statuses: Vec<String> = expected_statuses
                    .iter()
                    .map(|(lo, hi)| {
                        if lo == hi {
                            lo.to_string()
                        } else {
                            format!("{lo}-{hi}")
                        }
                    })
                    .collect();
                m.serialize_entry("expected_statuses", &statuses)?;
            }
        }
        m.serialize_entry("interval", &format_duration(c.interval))?;
        m.serialize_entry("interval_jitter", &format_duration(c.interval_jitter))?;
        m.serialize_entry("timeout", &format_duration(c.timeout))?;
        m.serialize_entry("healthy_threshold", &c.healthy_threshold)?;
        m.serialize_entry("unhealthy_threshold", &c.unhealthy_threshold)?;
        m.end()
    }
}
