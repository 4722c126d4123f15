//! From the mesh's desired state and its registered instances to one
//! proxy's config: the same document an operator would write for
//! `ringmesh run -c`, as JSON.
//!
//! A proxy beside workload W of service S gets:
//! - `inbound`: mTLS with the mesh identity, the authz S declares, to the
//!   local app (`127.0.0.1:<app port>`), with inbound mesh metrics;
//! - `outbound`: plain HTTP from the app on 127.0.0.1, one group of routes
//!   per service W calls (matched on its Host names: `review`,
//!   `review.<ns>`, `review.<ns>.svc`, `review.<ns>.svc.cluster.local`),
//!   with source-side mesh metrics; a TCP listener per TCP service called;
//! - a cluster per called service and per declared version
//!   (`review-v2`), its endpoints the registered instances, mTLS expecting
//!   the service workload's SPIFFE ID.
//!
//! Only what W may call and says it calls is sent (Istio's Sidecar scope):
//! a proxy's config grows with its dependencies, not with the mesh.

use std::collections::{BTreeSet, HashMap};

use ringmesh_control::mesh::desired::{MeshDoc, ServiceDoc};
use ringmesh_control::mesh::protocol::{IDENTITY_FILE, Registration, TRUST_FILE};
use ringmesh_control::model::Protocol;
use serde_json::{Value, json};

/// Cluster keys the control plane sets (removed from `traffic`).
const DERIVED: [&str; 5] = ["name", "endpoints", "discovery", "tls", "http2"];

/// The Host names callers may use for `s`.
pub fn hosts(s: &ServiceDoc) -> Vec<String> {
    vec![
        s.name.clone(),
        format!("{}.{}", s.name, s.namespace),
        format!("{}.{}.svc", s.name, s.namespace),
        format!("{}.{}.svc.cluster.local", s.name, s.namespace),
    ]
}

/// The services `me` calls: those that allow it and that its service's
/// `calls` names (all allowed ones without `calls`), never its own.
pub fn called<'m>(mesh: &'m MeshDoc, me: &Registration) -> Vec<&'m ServiceDoc> {
    let own = mesh.service_of(&me.namespace, &me.workload);
    let calls = own.and_then(|s| s.calls.as_ref());
    mesh.services
        .iter()
        .filter(|t| !(t.namespace == me.namespace && t.workload == me.workload))
        .filter(|t| t.allows(&me.namespace, &me.workload))
        .filter(|t| calls.is_none_or(|c| c.contains(&t.name)))
        .collect()
}

/// Registered instances by (namespace, workload), built once per
/// derivation round: each cluster reads only its workload's instances.
pub struct Instances<'r> {
    by_workload: HashMap<(String, String), Vec<&'r Registration>>,
}

impl<'r> Instances<'r> {
    /// Indexes `all` (in the order given: sorted by node, configs are
    /// stable).
    pub fn new(all: &[&'r Registration]) -> Instances<'r> {
        let mut by_workload: HashMap<(String, String), Vec<&Registration>> = HashMap::new();
        for r in all {
            by_workload
                .entry((r.namespace.clone(), r.workload.clone()))
                .or_default()
                .push(r);
        }
        Instances { by_workload }
    }

    fn of(&self, namespace: &str, workload: &str) -> &[&'r Registration] {
        self.by_workload
            .get(&(namespace.to_owned(), workload.to_owned()))
            .map(Vec::as_slice)
            .unwrap_or_default()
    }
}

/// A derived config and the workloads whose instances it lists (a change
/// of their membership changes it; nothing else's does).
pub struct Derived {
    /// The config.
    pub config: Value,
    /// (namespace, workload) of every service it has clusters of.
    pub depends_on: Vec<(String, String)>,
}

fn protocol(p: Protocol) -> &'static str {
    match p {
        Protocol::Http => "http",
        Protocol::Tcp => "tcp",
    }
}

fn cluster(
    mesh: &MeshDoc,
    s: &ServiceDoc,
    name: &str,
    version: Option<&str>,
    instances: &Instances<'_>,
) -> Value {
    let endpoints: Vec<Value> = instances
        .of(&s.namespace, &s.workload)
        .iter()
        .filter(|r| version.is_none_or(|v| r.version.as_deref() == Some(v)))
        .map(|r| match &r.version {
            Some(v) => json!({ "address": r.address.to_string(), "metadata": { "version": v } }),
            None => json!(r.address.to_string()),
        })
        .collect();
    let mut c = s
        .traffic
        .as_ref()
        .and_then(|t| serde_json::to_value(t).ok())
        .unwrap_or_else(|| json!({}));
    if let Some(map) = c.as_object_mut() {
        for k in DERIVED {
            map.remove(k);
        }
        map.insert("name".into(), json!(name));
        map.insert("endpoints".into(), Value::Array(endpoints));
        if s.http2 {
            map.insert("http2".into(), json!(true));
        }
        map.insert(
            "tls".into(),
            json!({
                "ca": TRUST_FILE,
                "san": mesh.spiffe_id(&s.namespace, &s.workload),
                "cert": IDENTITY_FILE,
                "key": IDENTITY_FILE,
            }),
        );
    }
    c
}

/// The config of the proxy registered as `me`, given every live
/// instance (`instances`, sorted by node, `me` among them).
pub fn derive(mesh: &MeshDoc, instances: &[&Registration], me: &Registration) -> Value {
    derive_indexed(mesh, &Instances::new(instances), me).config
}

/// [`derive`] over an index built once for many proxies, with what the
/// config depends on.
pub fn derive_indexed(mesh: &MeshDoc, instances: &Instances<'_>, me: &Registration) -> Derived {
    let td = &mesh.mesh.trust_domain;
    let own = mesh.service_of(&me.namespace, &me.workload);
    let mut listeners = Vec::new();
    let mut clusters = Vec::new();
    if let Some(s) = own {
        let allow: Vec<String> = match &s.authz {
            None => vec![format!("spiffe://{td}/ns/*/sa/*")],
            Some(a) => a
                .allow
                .iter()
                .map(|c| {
                    let (ns, w) = c.split_once('/').unwrap_or((&s.namespace, c));
                    mesh.spiffe_id(ns, w)
                })
                .collect(),
        };
        let mut inbound = json!({
            "name": "inbound",
            "listen": me.inbound.to_string(),
            "protocol": protocol(s.protocol),
            "cluster": "inbound-app",
            "tls": { "cert": IDENTITY_FILE, "key": IDENTITY_FILE, "client_ca": TRUST_FILE },
            "authz": { "allow": allow },
        });
        if s.protocol == Protocol::Http {
            inbound["mesh_role"] = json!("inbound");
            if let Some(fault) = &s.inbound_fault {
                if let Some(map) = inbound.as_object_mut() {
                    map.remove("cluster");
                }
                inbound["routes"] = json!([{
                    "name": "inbound",
                    "cluster": "inbound-app",
                    "fault": serde_json::to_value(fault).unwrap_or_default(),
                }]);
            }
        }
        listeners.push(inbound);
        let mut app = json!({
            "name": "inbound-app",
            "endpoints": [format!("127.0.0.1:{}", me.app_port)],
        });
        if s.http2 {
            app["http2"] = json!(true);
        }
        clusters.push(app);
    }
    let called = called(mesh, me);
    let mut routes = Vec::new();
    // Clusters routes send to (a route may split to another service's).
    let mut wanted: BTreeSet<String> = BTreeSet::new();
    for t in &called {
        match t.protocol {
            Protocol::Http => {
                let hosts = hosts(t);
                let service_routes: Vec<Value> = if t.routes.is_empty() {
                    vec![json!({ "cluster": t.name })]
                } else {
                    t.routes
                        .iter()
                        .filter_map(|r| serde_json::to_value(r).ok())
                        .collect()
                };
                for (i, mut r) in service_routes.into_iter().enumerate() {
                    let name = match r.get("name").and_then(Value::as_str) {
                        Some(n) => format!("{}.{n}", t.name),
                        None => format!("{}.{i}", t.name),
                    };
                    r["name"] = json!(name);
                    if r.get("match").is_none() {
                        r["match"] = json!({});
                    }
                    r["match"]["host"] = json!(hosts);
                    for key in ["cluster"] {
                        if let Some(c) = r.get(key).and_then(Value::as_str) {
                            wanted.insert(c.to_owned());
                        }
                    }
                    if let Some(split) = r.get("split").and_then(Value::as_array) {
                        for part in split {
                            if let Some(c) = part.get("cluster").and_then(Value::as_str) {
                                wanted.insert(c.to_owned());
                            }
                        }
                    }
                    if let Some(c) = r.pointer("/mirror/cluster").and_then(Value::as_str) {
                        wanted.insert(c.to_owned());
                    }
                    routes.push(r);
                }
            }
            Protocol::Tcp => {
                let mut listen = me.outbound;
                listen.set_port(t.port);
                listeners.push(json!({
                    "name": format!("outbound-{}", t.name),
                    "listen": listen.to_string(),
                    "protocol": "tcp",
                    "cluster": t.name,
                }));
                wanted.insert(t.name.clone());
            }
        }
    }
    let mut outbound = json!({
        "name": "outbound",
        "listen": me.outbound.to_string(),
        "protocol": "http",
        "mesh_role": "outbound",
    });
    if me.capture {
        // The app's connections arrive redirected by iptables: calls to
        // no service of the mesh go where the app sent them (Istio's
        // PassthroughCluster).
        outbound["original_destination"] = json!(true);
        routes.push(json!({ "name": "passthrough", "cluster": "passthrough" }));
        clusters.push(json!({ "name": "passthrough", "discovery": "original_destination" }));
    } else if routes.is_empty() {
        routes.push(json!({
            "name": "no-service",
            "direct_response": { "status": 404, "body": "this workload calls no HTTP service of the mesh\n" },
        }));
    }
    outbound["routes"] = json!(routes);
    listeners.push(outbound);
    let gateway = mesh
        .gateways
        .iter()
        .find(|g| g.namespace == me.namespace && g.name == me.workload);
    if let Some(g) = gateway {
        let mut routes = Vec::new();
        for (i, r) in g.routes.iter().enumerate() {
            let Ok(mut r) = serde_json::to_value(r) else {
                continue;
            };
            let name = match r.get("name").and_then(Value::as_str) {
                Some(n) => format!("gateway.{n}"),
                None => format!("gateway.{i}"),
            };
            r["name"] = json!(name);
            if let Some(c) = r.get("cluster").and_then(Value::as_str) {
                wanted.insert(c.to_owned());
            }
            for part in r
                .get("split")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(c) = part.get("cluster").and_then(Value::as_str) {
                    wanted.insert(c.to_owned());
                }
            }
            if let Some(c) = r.pointer("/mirror/cluster").and_then(Value::as_str) {
                wanted.insert(c.to_owned());
            }
            routes.push(r);
        }
        listeners.push(json!({
            "name": "gateway",
            "listen": g.listen.to_string(),
            "protocol": "http",
            "mesh_role": "outbound",
            "routes": routes,
        }));
    }
    let mut depends_on = Vec::new();
    for s in &mesh.services {
        let before = clusters.len();
        if wanted.contains(&s.name) {
            clusters.push(cluster(mesh, s, &s.name, None, instances));
        }
        for v in &s.versions {
            let name = format!("{}-{v}", s.name);
            if wanted.contains(&name) {
                clusters.push(cluster(mesh, s, &name, Some(v), instances));
            }
        }
        if clusters.len() > before {
            depends_on.push((s.namespace.clone(), s.workload.clone()));
        }
    }
    let mut node = json!({ "workload": me.workload, "namespace": me.namespace });
    if let Some(v) = &me.version {
        node["version"] = json!(v);
    }
    if let Some(s) = own {
        node["service"] = json!(s.name);
    }
    let mut config = json!({ "node": node, "listeners": listeners, "clusters": clusters });
    if let Some(t) = &mesh.mesh.tracing {
        config["tracing"] = serde_json::to_value(t).unwrap_or_default();
    }
    Derived { config, depends_on }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringmesh_control::mesh::load_mesh;

    const MESH: &str = "\
services:
  - { name: product, port: 9080, calls: [review] }
  - name: review
    port: 9081
    versions: [v1, v2]
    authz: { allow: [product] }
    inbound_fault: { abort: { percent: 50, status: 503 } }
    routes:
      - { name: canary, match: { headers: { x-canary: { exact: \"true\" } } }, cluster: review-v2 }
      - split: [{ cluster: review-v1, weight: 90 }, { cluster: review-v2, weight: 10 }]
  - { name: recommendation, port: 9082 }
  - { name: db, port: 5432, protocol: tcp }
";

    fn reg(node: &str, workload: &str, version: Option<&str>, port: u16) -> Registration {
        Registration {
            node: node.into(),
            namespace: "default".into(),
            workload: workload.into(),
            version: version.map(Into::into),
            address: format!("127.0.0.1:{port}").parse().expect("addr"),
            inbound: format!("127.0.0.1:{port}").parse().expect("addr"),
            outbound: format!("127.0.0.{}:15001", port % 200 + 2)
                .parse()
                .expect("addr"),
            app_port: port + 1000,
            capture: false,
            admin: None,
        }
    }

    #[test]
    fn a_caller_gets_only_what_it_calls_and_the_config_loads() {
        let mesh = load_mesh("mesh.yaml", MESH).expect("mesh");
        let product = reg("p1", "product", Some("v1"), 7000);
        let r1 = reg("r1", "review", Some("v1"), 7001);
        let r2 = reg("r2", "review", Some("v2"), 7002);
        let all = [&product, &r1, &r2];
        let doc = derive(&mesh, &all, &product);
        let text = doc.to_string();
        let loaded =
            ringmesh_control::load("derived.json", &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let names: Vec<&str> = loaded.clusters.iter().map(|c| c.name.as_str()).collect();
        // product calls review only (`calls`), not recommendation or db.
        assert_eq!(names, ["inbound-app", "review-v1", "review-v2"]);
        let v2 = &loaded.clusters[2];
        assert_eq!(v2.endpoints.len(), 1);
        assert_eq!(v2.endpoints[0].port, 7002);
        assert_eq!(
            v2.tls.as_ref().map(|t| t.san.as_str()),
            Some("spiffe://ringmesh.local/ns/default/sa/review")
        );
        let outbound = &loaded.listeners[1];
        assert_eq!(outbound.name, "outbound");
        let routes = &outbound.http.as_ref().expect("http").routes;
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[0].name.as_deref(), Some("review.canary"));
        assert_eq!(routes[0].matcher.host[0], "review");
    }

    #[test]
    fn an_http2_service_is_called_over_http2_by_sidecars_and_its_own() {
        let text = MESH.replace("    port: 9081\n", "    port: 9081\n    http2: true\n");
        let mesh = load_mesh("mesh.yaml", &text).expect("mesh");
        let product = reg("p1", "product", Some("v1"), 7000);
        let r1 = reg("r1", "review", Some("v1"), 7001);
        let http2_of = |me: &Registration| -> Vec<(String, bool)> {
            let doc = derive(&mesh, &[&product, &r1], me);
            let loaded = ringmesh_control::load("d.json", &doc.to_string())
                .unwrap_or_else(|e| panic!("{e}\n{doc}"));
            loaded
                .clusters
                .iter()
                .map(|c| (c.name.clone(), c.http2))
                .collect()
        };
        // product (HTTP/1.1 itself) calls review over HTTP/2, sidecar to
        // sidecar; review's sidecar reaches its app over HTTP/2.
        let s = |n: &str, b: bool| (n.to_owned(), b);
        assert_eq!(
            http2_of(&product),
            [
                s("inbound-app", false),
                s("review-v1", true),
                s("review-v2", true)
            ]
        );
        assert_eq!(http2_of(&r1)[0], s("inbound-app", true));
        // `http2` is the control plane's to derive, not a traffic setting.
        let bad = MESH.replace(
            "  - { name: recommendation, port: 9082 }",
            "  - { name: recommendation, port: 9082, traffic: { http2: true } }",
        );
        let errs = load_mesh("mesh.yaml", &bad)
            .expect_err("refused")
            .to_string();
        assert!(errs.contains("derived by the control plane"), "{errs}");
        let bad = MESH.replace(
            "  - { name: db, port: 5432, protocol: tcp }",
            "  - { name: db, port: 5432, protocol: tcp, http2: true }",
        );
        let errs = load_mesh("mesh.yaml", &bad)
            .expect_err("refused")
            .to_string();
        assert!(
            errs.contains("`http2` applies to `protocol: http`"),
            "{errs}"
        );
    }

    #[test]
    fn a_capturing_proxy_passes_calls_to_unknown_hosts_through() {
        let mesh = load_mesh("mesh.yaml", MESH).expect("mesh");
        let mut product = reg("p1", "product", Some("v1"), 7000);
        product.capture = true;
        let doc = derive(&mesh, &[&product], &product);
        let loaded = ringmesh_control::load("d.json", &doc.to_string())
            .unwrap_or_else(|e| panic!("{e}\n{doc}"));
        let outbound = loaded
            .listeners
            .iter()
            .find(|l| l.name == "outbound")
            .expect("outbound");
        assert!(outbound.original_destination);
        let routes = &outbound.http.as_ref().expect("http").routes;
        assert_eq!(
            routes.last().and_then(|r| r.name.as_deref()),
            Some("passthrough")
        );
        // The inbound listener takes mesh peers dialling it directly and
        // redirected connections alike: no original destination there.
        let inbound = loaded
            .listeners
            .iter()
            .find(|l| l.name == "inbound")
            .expect("inbound");
        assert!(!inbound.original_destination);
    }

    #[test]
    fn a_gateway_gets_a_listener_routing_any_host_to_the_services() {
        let text = format!(
            "{MESH}gateways:\n  - name: ingress\n    listen: 127.0.0.1:8080\n    routes: [{{ match: {{ path_prefix: /product }}, cluster: product }}]\n"
        );
        let mesh = load_mesh("mesh.yaml", &text).expect("mesh");
        let gw = reg("gw-1", "ingress", None, 7100);
        let product = reg("p1", "product", Some("v1"), 7000);
        let doc = derive(&mesh, &[&gw, &product], &gw);
        let loaded = ringmesh_control::load("d.json", &doc.to_string())
            .unwrap_or_else(|e| panic!("{e}\n{doc}"));
        let l = loaded
            .listeners
            .iter()
            .find(|l| l.name == "gateway")
            .expect("gateway");
        assert_eq!(l.listen.to_string(), "127.0.0.1:8080");
        let routes = &l.http.as_ref().expect("http").routes;
        assert_eq!(routes[0].name.as_deref(), Some("gateway.0"));
        assert!(routes[0].matcher.host.is_empty());
        // No inbound listener: a gateway serves no service of its own.
        assert!(!loaded.listeners.iter().any(|l| l.name == "inbound"));
        let product_cluster = loaded
            .clusters
            .iter()
            .find(|c| c.name == "product")
            .expect("product");
        assert_eq!(product_cluster.endpoints[0].port, 7000);
        // A gateway route to nothing is refused where it was written.
        let bad = text.replace("cluster: product }]", "cluster: nowhere }]");
        let errs = load_mesh("mesh.yaml", &bad)
            .expect_err("invalid")
            .to_string();
        assert!(
            errs.contains("gateways[0].routes[0]") && errs.contains("nowhere"),
            "{errs}"
        );
    }

    #[test]
    fn authz_is_derived_from_the_allowed_callers() {
        let mesh = load_mesh("mesh.yaml", MESH).expect("mesh");
        let r1 = reg("r1", "review", Some("v1"), 7001);
        let doc = derive(&mesh, &[&r1], &r1);
        assert_eq!(
            doc.pointer("/listeners/0/authz/allow/0"),
            Some(&json!("spiffe://ringmesh.local/ns/default/sa/product"))
        );
        // Its inbound fault sits in front of its app.
        assert_eq!(
            doc.pointer("/listeners/0/routes/0/fault/abort/status"),
            Some(&json!(503))
        );
        // review calls every service that allows it (no `calls`), never
        // itself.
        let loaded = ringmesh_control::load("d.json", &doc.to_string()).expect("loads");
        let names: Vec<&str> = loaded.clusters.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["inbound-app", "product", "recommendation", "db"]);
        assert!(loaded.listeners.iter().any(|l| l.name == "outbound-db"));
    }
}
