//! `mesh.yaml`: the desired state of a whole mesh, as `ringmesh control`
//! reads it (README "The mesh"). Decoded with the proxy's own decoders, so
//! errors carry file:line:col and route policy is the proxy's route type,
//! not a second definition of it.

use std::time::Duration;

use serde::Serialize;

use crate::decode::{
    ConfigErrors, Decoder, Fields, duration, integer, list_field, name, required, scalar,
};
use crate::model::human;
use crate::model::{ClusterDoc, Origin, Protocol, RouteDoc};
use crate::yaml::{self, Mark, Node, Value};

/// Default trust domain of workload identities.
pub const DEFAULT_TRUST_DOMAIN: &str = "ringmesh.local";
/// Default workload certificate lifetime (Istio's and Linkerd's: 24h).
pub const DEFAULT_CERTIFICATE_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Default registration lease: an instance not heard from for this long
/// leaves the mesh's endpoints.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// A whole `mesh.yaml`.
#[derive(Debug, Clone, Serialize)]
pub struct MeshDoc {
    /// Mesh-wide settings.
    pub mesh: MeshSettings,
    /// The services, in document order.
    pub services: Vec<ServiceDoc>,
    /// Gateways: proxies at the edge whose listener routes any Host.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<GatewayDoc>,
}

/// An ingress gateway: the proxies of workload `name` get a listener on
/// `listen` with these routes (any Host unless a route says otherwise),
/// to the mesh's services over mTLS (Istio's Gateway and its
/// VirtualService in one).
#[derive(Debug, Clone, Serialize)]
pub struct GatewayDoc {
    /// The gateway's workload (its identity).
    pub name: String,
    /// Its namespace. Default `default`.
    pub namespace: String,
    /// Where the gateway listener binds.
    pub listen: std::net::SocketAddr,
    /// Its routes (the proxy's route type); clusters are services and
    /// their versions.
    pub routes: Vec<RouteDoc>,
    #[serde(skip)]
    pub(crate) origin: Origin,
}

/// `mesh:` settings.
#[derive(Debug, Clone, Serialize)]
pub struct MeshSettings {
    /// SPIFFE trust domain (`spiffe://<trust_domain>/ns/<ns>/sa/<workload>`).
    pub trust_domain: String,
    /// Lifetime of issued workload certificates (renewed at half).
    #[serde(serialize_with = "human")]
    pub certificate_lifetime: Duration,
    /// How long a registered instance stays without being heard from.
    #[serde(serialize_with = "human")]
    pub lease: Duration,
    /// Tracing for every proxy of the mesh (the proxy's `tracing` block:
    /// sampling, propagation, OTLP export). None: off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracing: Option<crate::model::TracingDoc>,
}

impl Default for MeshSettings {
    fn default() -> Self {
        MeshSettings {
            trust_domain: DEFAULT_TRUST_DOMAIN.into(),
            certificate_lifetime: DEFAULT_CERTIFICATE_LIFETIME,
            lease: DEFAULT_LEASE,
            tracing: None,
        }
    }
}

/// One service: a name other workloads call, the workloads that serve it,
/// and its traffic policy.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceDoc {
    /// Name (the Host callers send).
    pub name: String,
    /// Namespace. Default `default`.
    pub namespace: String,
    /// The port the service's app listens on (and callers may name in Host).
    pub port: u16,
    /// `http` (routes apply) or `tcp`.
    pub protocol: Protocol,
    /// The app speaks HTTP/2 (gRPC): sidecars call it, and each other for
    /// it, over HTTP/2. HTTP services only. Default false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub http2: bool,
    /// The workload serving it (default: named like the service): its
    /// identity (`sa/<workload>` in the SPIFFE ID) and the metrics' label.
    pub workload: String,
    /// Versions of the workload that may register; each is a cluster
    /// `<service>-<version>` for routes and splits. Empty: any version,
    /// and no version clusters.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<String>,
    /// Routes for calls to this service, first match wins (default: every
    /// request to all of its instances). The proxy's route type.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteDoc>,
    /// Cluster settings for calls to it (lb, outlier detection, breakers,
    /// retry budget, connect timeout, pool, health checks).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "traffic_fields"
    )]
    pub traffic: Option<ClusterDoc>,
    /// Who may call it (`authz.allow`): workload names of its namespace or
    /// `namespace/workload`. None: every workload of the mesh.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authz: Option<ServiceAuthz>,
    /// Services its workloads call (None: every service they may call).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calls: Option<Vec<String>>,
    /// A fault every instance's sidecar injects in front of its app (the
    /// proxy's `fault` type): callers see it as the service failing, so
    /// their retries apply. HTTP services only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbound_fault: Option<crate::model::FaultDoc>,
    #[serde(skip)]
    pub(crate) origin: Origin,
}

/// `authz:` of a service.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceAuthz {
    /// Callers allowed: `workload` (same namespace) or `namespace/workload`.
    pub allow: Vec<String>,
}

/// `traffic` as written: the cluster without the keys the control plane
/// derives (so that a served mesh loads back).
fn traffic_fields<S: serde::Serializer>(c: &Option<ClusterDoc>, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::Error;
    let mut value = serde_json::to_value(c).map_err(S::Error::custom)?;
    if let Some(map) = value.as_object_mut() {
        for k in DERIVED_CLUSTER_KEYS {
            map.remove(*k);
        }
    }
    value.serialize(s)
}

impl ServiceDoc {
    /// Where the service was written.
    pub fn position(&self) -> (usize, usize) {
        (self.origin.mark.line, self.origin.mark.col)
    }

    /// Whether workload `caller_ns/caller` may call this service.
    pub fn allows(&self, caller_ns: &str, caller: &str) -> bool {
        let Some(authz) = &self.authz else {
            return true;
        };
        authz.allow.iter().any(|a| match a.split_once('/') {
            Some((ns, w)) => ns == caller_ns && w == caller,
            None => self.namespace == caller_ns && a == caller,
        })
    }

    /// The cluster names routes may send this service's traffic to: the
    /// service, and `<service>-<version>` per declared version.
    pub fn cluster_names(&self) -> Vec<String> {
        let mut out = vec![self.name.clone()];
        out.extend(self.versions.iter().map(|v| format!("{}-{v}", self.name)));
        out
    }
}

impl GatewayDoc {
    /// Where the gateway was written.
    pub fn position(&self) -> (usize, usize) {
        (self.origin.mark.line, self.origin.mark.col)
    }
}

impl MeshDoc {
    /// The service a workload serves, if any.
    pub fn service_of(&self, namespace: &str, workload: &str) -> Option<&ServiceDoc> {
        self.services
            .iter()
            .find(|s| s.namespace == namespace && s.workload == workload)
    }

    /// The SPIFFE ID of a workload.
    pub fn spiffe_id(&self, namespace: &str, workload: &str) -> String {
        format!(
            "spiffe://{}/ns/{namespace}/sa/{workload}",
            self.mesh.trust_domain
        )
    }
}

const TOP_KEYS: &[&str] = &["mesh", "services", "gateways"];
const SERVICE_KEYS: &[&str] = &[
    "name",
    "namespace",
    "port",
    "protocol",
    "http2",
    "workload",
    "versions",
    "routes",
    "traffic",
    "authz",
    "calls",
    "inbound_fault",
];
/// Cluster keys the control plane sets itself in `traffic`.
const DERIVED_CLUSTER_KEYS: &[&str] = &["name", "endpoints", "discovery", "tls", "http2"];

/// Parses, decodes and validates a `mesh.yaml`. `file` names the source.
pub fn load_mesh(file: &str, text: &str) -> Result<MeshDoc, ConfigErrors> {
    let mut d = Decoder::new(file);
    let empty = || MeshDoc {
        mesh: MeshSettings::default(),
        services: Vec::new(),
        gateways: Vec::new(),
    };
    let root = match yaml::parse(text) {
        Ok(Some(root)) => root,
        Ok(None) => {
            d.error(Mark { line: 1, col: 1 }, "", "the mesh document is empty");
            return d.finish(empty());
        }
        Err(e) => {
            d.error(e.mark, "", format!("YAML syntax error: {}", e.message));
            return d.finish(empty());
        }
    };
    let Some(mut f) = Fields::of(&mut d, &root, "") else {
        return d.finish(empty());
    };
    let mesh = match f.take("mesh") {
        Some((n, p)) => settings(&mut d, n, &p),
        None => Some(MeshSettings::default()),
    };
    let services = list_field(&mut d, f.take("services"), service);
    let gateways = list_field(&mut d, f.take("gateways"), gateway);
    f.finish(&mut d, TOP_KEYS);
    let doc = MeshDoc {
        mesh: mesh.unwrap_or_default(),
        services,
        gateways,
    };
    cross_check(&mut d, &doc);
    d.finish(doc)
}

fn settings(d: &mut Decoder, node: &Node, path: &str) -> Option<MeshSettings> {
    let mut f = Fields::of(d, node, path)?;
    let trust_domain = match f.take("trust_domain") {
        None => Some(DEFAULT_TRUST_DOMAIN.to_owned()),
        Some((n, p)) => scalar(d, n, &p, "a trust domain").and_then(|v| {
            let ok = !v.is_empty()
                && v.len() <= 255
                && v.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
            if !ok {
                d.error(
                    n.mark,
                    &p,
                    format!(
                        "invalid trust domain `{}`: use lowercase letters, digits, `-`, `.` and `_` (SPIFFE)",
                        crate::limits::quote(v)
                    ),
                );
            }
            ok.then(|| v.to_owned())
        }),
    };
    let certificate_lifetime = match f.take("certificate_lifetime") {
        None => Some(DEFAULT_CERTIFICATE_LIFETIME),
        Some((n, p)) => duration(
            d,
            n,
            &p,
            Duration::from_secs(10),
            Duration::from_secs(365 * 24 * 3600),
        ),
    };
    let lease = match f.take("lease") {
        None => Some(DEFAULT_LEASE),
        Some((n, p)) => duration(d, n, &p, Duration::from_secs(1), Duration::from_secs(3600)),
    };
    let tracing = f
        .take("tracing")
        .and_then(|(n, p)| crate::model::TracingDoc::decode(d, n, &p));
    f.finish(
        d,
        &["trust_domain", "certificate_lifetime", "lease", "tracing"],
    );
    Some(MeshSettings {
        trust_domain: trust_domain?,
        certificate_lifetime: certificate_lifetime?,
        lease: lease?,
        tracing,
    })
}

fn service(d: &mut Decoder, node: &Node, path: &str) -> Option<ServiceDoc> {
    let mut f = Fields::of(d, node, path)?;
    let service_name = required(d, &mut f, node, path, "name").and_then(|(n, p)| name(d, n, &p));
    let namespace = match f.take("namespace") {
        None => Some("default".to_owned()),
        Some((n, p)) => name(d, n, &p),
    };
    let port = required(d, &mut f, node, path, "port")
        .and_then(|(n, p)| integer(d, n, &p, 1, 65535).map(|v| v as u16));
    let protocol = match f.take("protocol") {
        None => Some(Protocol::Http),
        Some((n, p)) => match scalar(d, n, &p, "a protocol")? {
            "http" => Some(Protocol::Http),
            "tcp" => Some(Protocol::Tcp),
            other => {
                d.error(
                    n.mark,
                    &p,
                    format!(
                        "unknown protocol `{}` (expected http or tcp)",
                        crate::limits::quote(other)
                    ),
                );
                None
            }
        },
    };
    let workload = match f.take("workload") {
        None => service_name.clone(),
        Some((n, p)) => name(d, n, &p),
    };
    let versions = list_field(d, f.take("versions"), name);
    let routes_field = f.take("routes");
    if let (Some((n, p)), Some(Protocol::Tcp)) = (&routes_field, protocol) {
        d.error(n.mark, p, "routes apply to `protocol: http` services only");
    }
    let routes = list_field(d, routes_field, RouteDoc::decode);
    let traffic = f.take("traffic").and_then(|(n, p)| traffic(d, n, &p));
    let authz = f.take("authz").and_then(|(n, p)| {
        let mut af = Fields::of(d, n, &p)?;
        let allow = required(d, &mut af, n, &p, "allow").map(|(ln, lp)| {
            crate::decode::list_of(d, ln, &lp, |d, item, ip| {
                let v = scalar(d, item, ip, "a workload (`name` or `namespace/name`)")?;
                let ok = v.split('/').count() <= 2
                    && v.split('/').all(|part| {
                        !part.is_empty()
                            && part.len() <= 64
                            && part
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
                    });
                if !ok {
                    d.error(
                        item.mark,
                        ip,
                        format!(
                            "invalid caller `{}`: write a workload name or namespace/workload",
                            crate::limits::quote(v)
                        ),
                    );
                }
                ok.then(|| v.to_owned())
            })
            .unwrap_or_default()
        });
        af.finish(d, &["allow"]);
        allow.map(|allow| ServiceAuthz { allow })
    });
    let calls = f
        .take("calls")
        .map(|(n, p)| crate::decode::list_of(d, n, &p, name).unwrap_or_default());
    let http2 = match f.take("http2") {
        None => false,
        Some((n, p)) => {
            let v = crate::decode::boolean(d, n, &p).unwrap_or(false);
            if v && protocol == Some(Protocol::Tcp) {
                d.error(
                    n.mark,
                    &p,
                    "`http2` applies to `protocol: http` services only",
                );
            }
            v
        }
    };
    let inbound_fault = f.take("inbound_fault").and_then(|(n, p)| {
        if protocol == Some(Protocol::Tcp) {
            d.error(
                n.mark,
                &p,
                "`inbound_fault` applies to `protocol: http` services only",
            );
        }
        crate::model::FaultDoc::decode(d, n, &p)
    });
    f.finish(d, SERVICE_KEYS);
    Some(ServiceDoc {
        name: service_name?,
        namespace: namespace?,
        port: port?,
        protocol: protocol?,
        http2,
        workload: workload?,
        versions,
        routes,
        traffic,
        authz,
        calls,
        inbound_fault,
        origin: Origin {
            mark: node.mark,
            path: path.to_owned(),
        },
    })
}

fn gateway(d: &mut Decoder, node: &Node, path: &str) -> Option<GatewayDoc> {
    let mut f = Fields::of(d, node, path)?;
    let gateway_name = required(d, &mut f, node, path, "name").and_then(|(n, p)| name(d, n, &p));
    let namespace = match f.take("namespace") {
        None => Some("default".to_owned()),
        Some((n, p)) => name(d, n, &p),
    };
    let listen = required(d, &mut f, node, path, "listen")
        .and_then(|(n, p)| crate::decode::listen_addr(d, n, &p));
    let routes_field = required(d, &mut f, node, path, "routes");
    let routes = list_field(d, routes_field, RouteDoc::decode);
    f.finish(d, &["name", "namespace", "listen", "routes"]);
    Some(GatewayDoc {
        name: gateway_name?,
        namespace: namespace?,
        listen: listen?,
        routes,
        origin: Origin {
            mark: node.mark,
            path: path.to_owned(),
        },
    })
}

/// `traffic:` is a cluster without the keys the control plane derives;
/// it is decoded by the proxy's cluster decoder.
fn traffic(d: &mut Decoder, node: &Node, path: &str) -> Option<ClusterDoc> {
    let Value::Map(entries) = &node.value else {
        d.error(
            node.mark,
            path,
            format!("expected a mapping, found {}", node.kind()),
        );
        return None;
    };
    let mut with_derived: Vec<(Node, Node)> = Vec::with_capacity(entries.len() + 2);
    for (k, v) in entries.iter() {
        if let Value::Scalar { text, .. } = &k.value
            && DERIVED_CLUSTER_KEYS.contains(&text.as_str())
        {
            d.error(
                k.mark,
                &crate::decode::child(path, text),
                format!(
                    "`{text}` is derived by the control plane (endpoints from registered instances, mTLS from the mesh CA, HTTP/2 from the service's `http2`)"
                ),
            );
            continue;
        }
        with_derived.push((k.clone(), v.clone()));
    }
    let scalar_node = |text: &str| Node {
        value: Value::Scalar {
            text: text.to_owned(),
            plain: true,
        },
        mark: node.mark,
    };
    with_derived.push((scalar_node("name"), scalar_node("traffic")));
    with_derived.push((scalar_node("discovery"), scalar_node("api")));
    let synthetic = Node {
        value: Value::Map(with_derived.into()),
        mark: node.mark,
    };
    ClusterDoc::decode(d, &synthetic, path)
}

/// Names unique, route clusters known, callers and calls declared.
fn cross_check(d: &mut Decoder, doc: &MeshDoc) {
    let mut clusters: Vec<(String, &ServiceDoc)> = Vec::new();
    for (i, s) in doc.services.iter().enumerate() {
        if doc.services[..i]
            .iter()
            .any(|o| o.name == s.name && o.namespace == s.namespace)
        {
            d.error(
                s.origin.mark,
                &s.origin.path,
                format!(
                    "duplicate service `{}` in namespace `{}`",
                    s.name, s.namespace
                ),
            );
        }
        let elsewhere = doc.services[..i]
            .iter()
            .find(|o| o.namespace == s.namespace && o.workload == s.workload);
        if let Some(other) = elsewhere {
            d.error(
                s.origin.mark,
                &format!("{}.workload", s.origin.path),
                format!(
                    "workload `{}` already serves service `{}` of namespace `{}`: a workload serves one service",
                    s.workload, other.name, s.namespace
                ),
            );
        }
        for c in s.cluster_names() {
            if let Some((_, other)) = clusters.iter().find(|(n, _)| *n == c) {
                d.error(
                    s.origin.mark,
                    &s.origin.path,
                    format!(
                        "cluster name `{c}` (of service `{}`) is also a cluster of service `{}` (line {}): rename a service or a version",
                        s.name, other.name, other.origin.mark.line
                    ),
                );
            } else {
                clusters.push((c, s));
            }
        }
    }
    for g in &doc.gateways {
        if doc.service_of(&g.namespace, &g.name).is_some() {
            d.error(
                g.origin.mark,
                &g.origin.path,
                format!(
                    "gateway `{}` is also a service's workload: a gateway is a workload of its own",
                    g.name
                ),
            );
        }
        for (ri, r) in g.routes.iter().enumerate() {
            for (c, _) in r.clusters() {
                if !clusters.iter().any(|(n, _)| n == c) {
                    d.error(
                        g.origin.mark,
                        &format!("{}.routes[{ri}]", g.origin.path),
                        format!("route sends to unknown cluster `{c}`"),
                    );
                }
            }
        }
    }
    for s in &doc.services {
        for (ri, r) in s.routes.iter().enumerate() {
            for (c, _) in r.clusters() {
                if !clusters.iter().any(|(n, _)| n == c) {
                    let known: Vec<&str> = clusters.iter().map(|(n, _)| n.as_str()).collect();
                    d.error(
                        s.origin.mark,
                        &format!("{}.routes[{ri}]", s.origin.path),
                        format!(
                            "route sends to unknown cluster `{c}` (known: {})",
                            known.join(", ")
                        ),
                    );
                }
            }
        }
        if let Some(calls) = &s.calls {
            for c in calls {
                if !doc.services.iter().any(|o| &o.name == c) {
                    d.error(
                        s.origin.mark,
                        &format!("{}.calls", s.origin.path),
                        format!("`calls` names unknown service `{c}`"),
                    );
                }
            }
        }
        if let Some(authz) = &s.authz {
            for a in &authz.allow {
                let (ns, w) = a.split_once('/').unwrap_or((&s.namespace, a));
                if doc.service_of(ns, w).is_none() {
                    d.error(
                        s.origin.mark,
                        &format!("{}.authz.allow", s.origin.path),
                        format!("`{a}` is not a workload of the mesh"),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESH: &str = "\
mesh: { trust_domain: shop.local, certificate_lifetime: 1h, tracing: { sampling: 100 } }
services:
  - name: product
    port: 9080
    calls: [review]
  - name: review
    port: 9081
    versions: [v1, v2]
    authz: { allow: [product] }
    traffic: { lb: least_request, retry_budget: { retry_ratio: 0.1 } }
    routes:
      - match: { headers: { x-canary: { exact: \"true\" } } }
        cluster: review-v2
      - split: [{ cluster: review-v1, weight: 90 }, { cluster: review-v2, weight: 10 }]
        retries: { attempts: 2 }
";

    #[test]
    fn a_mesh_decodes_with_its_defaults() {
        let m = load_mesh("mesh.yaml", MESH).expect("valid");
        assert_eq!(m.mesh.trust_domain, "shop.local");
        assert_eq!(m.mesh.lease, DEFAULT_LEASE);
        let review = &m.services[1];
        assert_eq!(review.namespace, "default");
        assert_eq!(review.cluster_names(), ["review", "review-v1", "review-v2"]);
        assert!(review.allows("default", "product"));
        assert!(!review.allows("default", "review"));
        assert!(!review.allows("other", "product"));
        assert_eq!(review.routes.len(), 2);
        assert_eq!(
            review.traffic.as_ref().map(|c| c.lb),
            Some(crate::model::LbPolicy::LeastRequest)
        );
        assert_eq!(m.services[0].workload, "product");
        assert_eq!(
            m.spiffe_id("default", "review"),
            "spiffe://shop.local/ns/default/sa/review"
        );
    }

    #[test]
    fn errors_name_their_position() {
        let bad = "\
services:
  - name: review
    port: 70000
    protocol: udp
    authz: { allow: [nobody] }
    traffic: { endpoints: [127.0.0.1:1], lb: fastest }
    routes: [{ cluster: review-v9 }]
    typo: 1
";
        let errs = load_mesh("mesh.yaml", bad).expect_err("invalid");
        let text = errs.to_string();
        for want in [
            "mesh.yaml:3:11",
            "services[0].protocol",
            "services[0].traffic.endpoints",
            "services[0].traffic.lb",
            "unknown key `typo`",
        ] {
            assert!(text.contains(want), "{want} missing from:\n{text}");
        }
    }

    #[test]
    fn cross_references_are_checked() {
        let bad = "\
services:
  - { name: review, port: 1, authz: { allow: [ghost] }, calls: [nowhere], routes: [{ cluster: review-v9 }] }
  - { name: review, port: 2 }
";
        let errs = load_mesh("mesh.yaml", bad)
            .expect_err("invalid")
            .to_string();
        for want in [
            "duplicate service `review`",
            "`ghost` is not a workload",
            "unknown service `nowhere`",
            "unknown cluster `review-v9`",
        ] {
            assert!(errs.contains(want), "{want} missing from:\n{errs}");
        }
    }

    #[test]
    fn the_serialised_mesh_loads_back() {
        let m = load_mesh("mesh.yaml", MESH).expect("valid");
        let json = serde_json::to_string(&m).expect("serialise");
        let again = load_mesh("get.json", &json).unwrap_or_else(|e| panic!("{e}\n{json}"));
        assert_eq!(serde_json::to_string(&again).expect("serialise"), json);
    }
}
