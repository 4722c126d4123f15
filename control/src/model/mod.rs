//! The configuration document: what an operator writes, decoded and with
//! every default filled in. One file per resource; [`load`] runs the whole
//! pipeline from text to a validated [`Document`].

mod admin;
mod cluster;
mod discovery;
mod health;
mod listener;
mod route;
mod tls;
mod tracing;

use serde::Serialize;

pub use admin::{AdminDoc, read_token};
pub use cluster::{ClusterDoc, EndpointDoc, LbPolicy, PoolDoc, ProxyProtocolVersion};
pub use discovery::{DiscoveryDoc, parse_endpoint_list};
pub use health::{HealthCheckDoc, OutlierDetectionDoc};
pub(crate) use listener::human;
pub use listener::{HttpDoc, ListenerDoc, Protocol, ProxyProtocolMode};
pub use route::{
    ActionDoc, ConditionDoc, DirectResponseDoc, FaultAbortDoc, FaultDelayDoc, FaultDoc,
    HeaderOpsDoc, MatchDoc, MirrorDoc, PathDoc, RateLimitDoc, RedirectDoc, RewriteDoc, RouteDoc,
    SplitDoc, StickyDoc, TestDoc, per_million,
};
pub use tls::{AuthzDoc, ClusterTlsDoc, ListenerTlsDoc};
pub use tracing::{NodeDoc, OtlpDoc, TracingDoc};

use crate::decode::{ConfigErrors, Decoder, Fields};
use crate::validate;
use crate::yaml::{self, Mark};

/// A whole configuration file.
#[derive(Debug, Clone, Serialize)]
pub struct Document {
    /// The admin API.
    pub admin: AdminDoc,
    /// Where traffic comes in.
    pub listeners: Vec<ListenerDoc>,
    /// Where traffic goes.
    pub clusters: Vec<ClusterDoc>,
    /// The workload this proxy serves.
    pub node: NodeDoc,
    /// Distributed tracing (off when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingDoc>,
}

impl Document {
    /// Every certificate, key and trust-bundle file the document names.
    pub fn tls_files(&self) -> Vec<String> {
        let mut files = Vec::new();
        for l in &self.listeners {
            if let Some(t) = &l.tls {
                files.extend([t.cert.clone(), t.key.clone()]);
                files.extend(t.client_ca.clone());
                for c in &t.certificates {
                    files.extend([c.cert.clone(), c.key.clone()]);
                }
            }
        }
        for c in &self.clusters {
            if let Some(t) = &c.tls {
                files.push(t.ca.clone());
                files.extend(t.cert.clone());
                files.extend(t.key.clone());
            }
        }
        files.sort();
        files.dedup();
        files
    }
}

/// A decoded value and where it was written, for errors found later
/// (cross-references, DNS resolution).
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// Position in the source.
    pub mark: Mark,
    /// Key path.
    pub path: String,
}

const TOP_KEYS: &[&str] = &["admin", "node", "tracing", "listeners", "clusters"];

/// Parses, decodes and validates `text`. `file` names the source in errors.
pub fn load(file: &str, text: &str) -> Result<Document, ConfigErrors> {
    let mut d = Decoder::new(file);
    let root = match yaml::parse(text) {
        Ok(root) => root,
        Err(e) => {
            d.error(e.mark, "", format!("YAML syntax error: {}", e.message));
            return d.finish(empty());
        }
    };
    let Some(root) = root else {
        d.error(Mark { line: 1, col: 1 }, "", "the configuration is empty");
        return d.finish(empty());
    };
    let Some(mut fields) = Fields::of(&mut d, &root, "") else {
        return d.finish(empty());
    };
    let admin = match fields.take("admin") {
        Some((node, path)) => AdminDoc::decode(&mut d, node, &path),
        None => Some(AdminDoc::default()),
    };
    let listeners =
        crate::decode::list_field(&mut d, fields.take("listeners"), ListenerDoc::decode);
    let clusters = crate::decode::list_field(&mut d, fields.take("clusters"), ClusterDoc::decode);
    let node = fields
        .take("node")
        .and_then(|(n, p)| NodeDoc::decode(&mut d, n, &p))
        .unwrap_or_default();
    let tracing = fields
        .take("tracing")
        .and_then(|(n, p)| TracingDoc::decode(&mut d, n, &p));
    fields.finish(&mut d, TOP_KEYS);
    let doc = Document {
        admin: admin.unwrap_or_default(),
        listeners,
        clusters,
        node,
        tracing,
    };
    validate::cross_references(&mut d, &doc);
    d.finish(doc)
}

fn empty() -> Document {
    Document {
        admin: AdminDoc::default(),
        listeners: Vec::new(),
        clusters: Vec::new(),
        node: NodeDoc::default(),
        tracing: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "\
admin: { listen: 127.0.0.1:9901 }
listeners:
  - name: db
    listen: 127.0.0.1:15432
    cluster: pg
    max_connections: 10
    idle_timeout: 1m30s
    access_log: false
clusters:
  - name: pg
    endpoints: [127.0.0.1:5432, \"[::1]:5432\"]
    connect_timeout: 250ms
    connect_attempts: 2
    outlier_detection: { consecutive_5xx: 3, interval: 1s, max_ejection_percent: 50 }
    health_check: { type: http, path: /healthz, expected_statuses: [200, 300-302] }
    panic_threshold: 30
";

    #[test]
    fn a_valid_document_decodes_with_every_field() {
        let doc = load("t.yaml", VALID).expect("valid");
        let l = &doc.listeners[0];
        assert_eq!(l.max_connections, Some(10));
        assert_eq!(l.idle_timeout, std::time::Duration::from_secs(90));
        assert!(!l.access_log);
        let c = &doc.clusters[0];
        assert_eq!(c.endpoints.len(), 2);
        assert_eq!(c.endpoints[1].host, "::1");
        assert_eq!(c.connect_attempts, 2);
        let o = &c.outlier_detection.as_ref().expect("outlier").0;
        assert_eq!((o.consecutive_5xx, o.max_ejection_percent), (3, 50));
        // Fields left out keep Envoy's defaults.
        assert_eq!(o.base_ejection_time, std::time::Duration::from_secs(30));
        assert_eq!(o.enforcing_consecutive_gateway_failure, 0);
        let h = &c.health_check.as_ref().expect("health check").0;
        assert_eq!(
            h.kind,
            ringmesh_core::health::HealthCheckKind::Http {
                path: "/healthz".into(),
                host: None,
                expected_statuses: vec![(200, 200), (300, 302)],
            }
        );
        assert_eq!((h.healthy_threshold, h.unhealthy_threshold), (2, 3));
        assert_eq!(c.panic_threshold, 30);
    }

    #[test]
    fn zero_copy_defaults_to_auto_and_an_unknown_value_is_named() {
        let base = "listeners:\n  - { name: l, listen: 127.0.0.1:1, cluster: c";
        let clusters = " }\nclusters:\n  - { name: c, endpoints: [127.0.0.1:2] }\n";
        let doc = load("t.yaml", &format!("{base}{clusters}")).expect("valid");
        assert_eq!(doc.listeners[0].zero_copy, ringmesh_core::ZeroCopy::Auto);
        for (v, want) in [
            ("always", ringmesh_core::ZeroCopy::Always),
            ("never", ringmesh_core::ZeroCopy::Never),
        ] {
            let doc = load("t.yaml", &format!("{base}, zero_copy: {v}{clusters}")).expect("valid");
            assert_eq!(doc.listeners[0].zero_copy, want);
        }
        let errs = load("t.yaml", &format!("{base}, zero_copy: sometimes{clusters}"))
            .expect_err("invalid");
        assert_eq!(errs.0[0].path, "listeners[0].zero_copy");
        assert!(
            errs.0[0]
                .message
                .contains("unknown zero_copy `sometimes` (expected auto, always or never)"),
            "{}",
            errs.0[0].message
        );
    }

    #[test]
    fn health_settings_are_checked_field_by_field() {
        let text = "clusters:\n  - name: c\n    endpoints: [{ address: 127.0.0.1:1, metadata: { version: v2, zone: [a] } }]\n    outlier_detection: { consecutive_5xx: -1, max_ejection_percent: 101, interval: soon, typo: 1 }\n    health_check: { type: grpc, path: nope, expected_statuses: [99, 300-200] }\n    panic_threshold: 101\n";
        let errs = load("t.yaml", text).expect_err("invalid");
        let paths: Vec<&str> = errs.0.iter().map(|e| e.path.as_str()).collect();
        for expected in [
            "clusters[0].endpoints[0].metadata.zone",
            "clusters[0].outlier_detection.consecutive_5xx",
            "clusters[0].outlier_detection.max_ejection_percent",
            "clusters[0].outlier_detection.interval",
            "clusters[0].outlier_detection.typo",
            "clusters[0].health_check.type",
            "clusters[0].health_check.path",
            "clusters[0].health_check.expected_statuses[0]",
            "clusters[0].health_check.expected_statuses[1]",
            "clusters[0].panic_threshold",
        ] {
            assert!(paths.contains(&expected), "{expected} missing from {errs}");
        }
    }

    #[test]
    fn the_served_config_loads_back_to_the_same_document() {
        // GET /config serves JSON, which is YAML: PUT-ing it back must work.
        let doc = load("t.yaml", VALID).expect("valid");
        let json = serde_json::to_string(&doc).expect("serialise");
        let again = load("get.json", &json).unwrap_or_else(|e| panic!("{e}\n{json}"));
        assert_eq!(serde_json::to_string(&again).expect("serialise"), json);
    }

    #[test]
    fn peak_ewma_constants_need_the_peak_ewma_policy() {
        let ok = "clusters:\n  - name: c\n    endpoints: [127.0.0.1:1]\n    lb: peak_ewma\n    peak_ewma: { decay: 2s }\n";
        let doc = load("t.yaml", ok).expect("valid");
        let c = doc.clusters[0].peak_ewma.expect("set");
        assert_eq!(c.decay, std::time::Duration::from_secs(2));
        assert_eq!(c.default_rtt, std::time::Duration::from_millis(30));
        let bad =
            "clusters:\n  - name: c\n    endpoints: [127.0.0.1:1]\n    peak_ewma: { decay: 0s }\n";
        let errs = load("t.yaml", bad).expect_err("invalid");
        let paths: Vec<&str> = errs.0.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"clusters[0].peak_ewma"), "{errs}");
        assert!(paths.contains(&"clusters[0].peak_ewma.decay"), "{errs}");
    }

    #[test]
    fn http_only_check_fields_need_type_http() {
        let text = "clusters:\n  - name: c\n    endpoints: [127.0.0.1:1]\n    health_check: { path: /x }\n";
        let errs = load("t.yaml", text).expect_err("invalid");
        assert!(
            errs.0
                .iter()
                .any(|e| e.path == "clusters[0].health_check.path"
                    && e.message.contains("type: http")),
            "{errs}"
        );
    }

    #[test]
    fn a_missing_required_key_names_the_resource() {
        let errs = load("t.yaml", "listeners:\n  - listen: 127.0.0.1:1\n    cluster: x\nclusters: [{name: x, endpoints: []}]\n")
            .expect_err("invalid");
        assert_eq!(errs.0.len(), 1, "{errs}");
        assert_eq!(errs.0[0].path, "listeners[0]");
        assert!(errs.0[0].message.contains("missing required key `name`"));
        assert_eq!((errs.0[0].line, errs.0[0].column), (2, 5));
    }

    /// Deterministic mutation fuzzing: bytes flipped, dropped and duplicated
    /// in a valid config must give `Ok` or positioned errors, never a panic.
    /// (The admin API feeds request bodies straight into `load`.)
    #[test]
    fn mutated_configs_never_panic() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet = b"{}[]:,-'\"&*!|>#\n \t0123456789abcxyz.%@`\\";
        for _ in 0..20_000 {
            let mut bytes = VALID.as_bytes().to_vec();
            for _ in 0..(1 + next() % 4) {
                let at = (next() as usize) % bytes.len().max(1);
                match next() % 3 {
                    0 => bytes[at] = alphabet[(next() as usize) % alphabet.len()],
                    1 => {
                        bytes.remove(at);
                    }
                    _ => {
                        let end = (at + (next() as usize % 16)).min(bytes.len());
                        let chunk = bytes[at..end].to_vec();
                        bytes.splice(at..at, chunk);
                    }
                }
            }
            let text = String::from_utf8_lossy(&bytes);
            if let Err(errs) = load("fuzz.yaml", &text) {
                assert!(!errs.0.is_empty());
                for e in &errs.0 {
                    assert!(e.line >= 1 && e.column >= 1, "{e} from:\n{text}");
                }
            }
        }
    }
}
