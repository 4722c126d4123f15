//! Compiling a validated [`Document`] into the data plane's [`Snapshot`]:
//! resolve endpoint host names, attach the long-lived stats objects, build
//! per-core balancers. Resolution failures are config errors with positions.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use ringmesh_core::Balancer;
use ringmesh_core::health::HealthRegistry;
use ringmesh_core::snapshot::SniRoute;
use ringmesh_core::{Cluster, Endpoint, ListenerConfig, Snapshot, StatsRegistry};

use ringmesh_l7::codec::h1::Limits;
use ringmesh_l7::fault::{Abort, Delay, Fault};
use ringmesh_l7::headers::HeaderOps;
use ringmesh_l7::metrics::HttpStatsRegistry;
use ringmesh_l7::pool::PoolSettings;
use ringmesh_l7::route::matcher::{RequestMatch, compile_regex};
use ringmesh_l7::route::{
    Action, DirectResponse, Forward, HostRewrite, Mirror, PathRewrite, Redirect, RedirectPath,
    Rewrite, Route, RouteTable, Sticky, Target, WeightedTarget,
};
use ringmesh_l7::{HttpHandler, HttpListener, HttpSettings};

use crate::decode::{ConfigErrors, Decoder};
use crate::discovery::{Found, resolve_blocking};
use crate::model::DiscoveryDoc;
use ringmesh_core::tls::{
    AuthzPolicy, ClientTls, ClientTlsMaterial, ExpectedPeer, IdentityPattern, ServerTls,
    ServerTlsMaterial,
};

use crate::model::{
    ActionDoc, AuthzDoc, ClusterTlsDoc, Document, ListenerTlsDoc, StickyDoc, per_million,
};

/// Builds snapshot `version` of `doc` for an engine with `workers` cores.
/// Host names of static clusters are resolved now (blocking
/// `getaddrinfo`): call this off the data plane.
pub fn compile(
    file: &str,
    doc: &Document,
    version: u64,
    registries: Registries<'_>,
    workers: usize,
) -> Result<Snapshot, ConfigErrors> {
    let stats = registries.stats;
    let mut d = Decoder::new(file);
    let mut clusters: HashMap<&str, Arc<Cluster>> = HashMap::new();
    let mut ordered = Vec::with_capacity(doc.clusters.len());
    for c in &doc.clusters {
        let endpoints: Vec<Found> = match (&c.discovery, registries.discovered.get(&c.name)) {
            // Each connection brings its own destination: no list.
            (DiscoveryDoc::OriginalDestination, _) => Vec::new(),
            (DiscoveryDoc::Static, _) | (DiscoveryDoc::Api, None) => {
                // One endpoint at a time, so an error points at its line.
                let mut out = Vec::with_capacity(c.endpoints.len());
                for e in &c.endpoints {
                    match resolve_blocking(std::slice::from_ref(e)) {
                        Ok(found) => out.extend(found),
                        Err(msg) => d.error(e.origin.mark, &e.origin.path, msg),
                    }
                }
                out
            }
            (_, Some(list)) => list.clone(),
            // Nothing discovered yet (or the source failed from the start):
            // no endpoints until it answers.
            (_, None) => Vec::new(),
        };
        let tls = c
            .tls
            .as_ref()
            .and_then(|t| client_tls(&mut d, t, c.http2))
            .map(Arc::new);
        // Health state is per address and survives snapshots.
        let health = registries.health.cluster(&c.name);
        let addrs: Vec<SocketAddr> = endpoints.iter().map(|e| e.addr).collect();
        let endpoint_health = health.endpoints_for(&addrs);
        let endpoints: Vec<Endpoint> = endpoints
            .into_iter()
            .zip(endpoint_health)
            .map(|(f, health)| Endpoint {
                addr: f.addr,
                hostname: f.hostname,
                weight: f.weight,
                metadata: f.metadata.into(),
                health,
            })
            .collect();
        let weights: Vec<u32> = endpoints.iter().map(|e| e.weight).collect();
        let ids: Vec<String> = endpoints.iter().map(|e| e.addr.to_string()).collect();
        let original_destination = match c.discovery {
            DiscoveryDoc::OriginalDestination => Some(
                c.original_destination
                    .map(|o| o.runtime())
                    .unwrap_or_default(),
            ),
            _ => None,
        };
        // Seeded per version so runs differ; any seed is correct. An
        // `original_destination` cluster never asks its balancer (no
        // endpoints); round robin keeps no per-endpoint state to update.
        let lb = match original_destination {
            Some(_) => ringmesh_core::LbPolicy::RoundRobin,
            None => c.lb,
        };
        let balancer = Balancer::with_peak_ewma(
            lb,
            &ids,
            &weights,
            workers,
            version ^ 0x9e37_79b9_7f4a_7c15,
            c.peak_ewma.unwrap_or_default(),
        );
        let send_proxy_protocol = c.send_proxy_protocol.map(|v| match v {
            crate::model::ProxyProtocolVersion::V1 => ringmesh_core::proxy_protocol::Version::V1,
            crate::model::ProxyProtocolVersion::V2 => ringmesh_core::proxy_protocol::Version::V2,
        });
        let cluster = Arc::new(Cluster {
            name: Arc::from(c.name.as_str()),
            endpoints,
            connect_timeout: c.connect_timeout,
            connect_attempts: c.connect_attempts,
            balancer,
            max_connections: c.circuit_breakers.max_connections,
            max_pending: c.circuit_breakers.max_pending_requests,
            max_requests: c.circuit_breakers.max_requests,
            max_retries: c.circuit_breakers.max_retries,
            tls,
            stats: stats.cluster(&c.name),
            health,
            outlier: c.outlier_detection.as_ref().map(|o| o.0.clone()),
            health_check: c.health_check.as_ref().map(|h| {
                let mut check = h.0.clone();
                check.send_proxy_protocol = send_proxy_protocol;
                check
            }),
            panic_threshold: c.panic_threshold,
            original_destination,
            send_proxy_protocol,
        });
        clusters.insert(c.name.as_str(), cluster.clone());
        ordered.push(cluster);
    }
    let mut listeners = Vec::with_capacity(doc.listeners.len());
    for l in &doc.listeners {
        // An HTTP listener with routes names no cluster of its own: core's
        // listener config takes its first route's (it only labels
        // connections that never reach the HTTP handler), or a placeholder
        // when every route answers by itself.
        let cluster = if l.cluster.is_empty() && l.http.is_some() {
            l.http
                .as_ref()
                .and_then(|h| h.routes.iter().flat_map(|r| r.clusters()).next())
                .and_then(|(c, _)| clusters.get(c).cloned())
                .unwrap_or_else(|| Arc::new(Cluster::empty("-")))
        } else if let Some(c) = clusters.get(l.cluster.as_str()) {
            c.clone()
        } else {
            // Validation guarantees the reference; stay defensive anyway.
            d.error(
                l.cluster_origin.mark,
                &l.cluster_origin.path,
                format!("unknown cluster `{}`", l.cluster),
            );
            continue;
        };
        let cluster = &cluster;
        let stats = stats.listener(&l.name);
        let tls = match &l.tls {
            None => None,
            Some(t) => {
                let http2 = l.http.as_ref().is_some_and(|h| h.http2.enabled);
                server_tls(&mut d, t, l.authz.as_ref(), &stats.authz_denied, http2).map(Arc::new)
            }
        };
        let sni_routes = l
            .sni_routes
            .iter()
            .filter_map(|r| {
                clusters.get(r.cluster.as_str()).map(|c| SniRoute {
                    server_names: r.server_names.clone(),
                    cluster: c.clone(),
                })
            })
            .collect();
        let protocol = l.http.as_ref().map(|h| {
            let targets = Targets {
                doc,
                clusters: &clusters,
                http: registries.http,
            };
            http_handler(&mut d, l, h, &targets, tls.is_some())
        });
        let observer: Option<Arc<dyn ringmesh_core::protocol::ConnectionObserver>> =
            match (&protocol, doc.node != crate::model::NodeDoc::default()) {
                (None, true) => Some(registries.http.mesh()),
                _ => None,
            };
        listeners.push(Arc::new(ListenerConfig {
            observer,
            name: Arc::from(l.name.as_str()),
            listen: l.listen,
            cluster: cluster.clone(),
            max_connections: l.max_connections,
            max_connections_per_client: l.max_connections_per_client,
            first_byte_timeout: l.first_byte_timeout,
            idle_timeout: l.idle_timeout,
            access_log: l.access_log,
            zero_copy: l.zero_copy,
            original_destination: l.original_destination,
            resolve_local_address: doc.clusters.iter().any(|c| c.send_proxy_protocol.is_some()),
            proxy_protocol: l
                .proxy_protocol
                .map(|mode| ringmesh_core::AcceptProxyProtocol {
                    required: mode == crate::model::ProxyProtocolMode::Required,
                    timeout: l.proxy_protocol_timeout,
                }),
            tls,
            sni_routes,
            protocol,
            stats,
        }));
    }
    d.finish(Snapshot {
        version,
        listeners,
        clusters: ordered,
    })
}

/// What an HTTP listener's routes resolve cluster names with.
struct Targets<'a> {
    doc: &'a Document,
    clusters: &'a HashMap<&'a str, Arc<Cluster>>,
    http: &'a HttpStatsRegistry,
}

impl Targets<'_> {
    /// The cluster `name` with its HTTP stats and pool settings.
    fn target(&self, name: &str) -> Option<Target> {
        let cluster = self.clusters.get(name)?;
        let doc = self.doc.clusters.iter().find(|c| c.name == name);
        let pool = doc.map(|c| c.pool).unwrap_or_default();
        let budget = doc.map(|c| c.retry_budget).unwrap_or_default();
        Some(Target {
            cluster: cluster.clone(),
            stats: self.http.upstream(name),
            pool: PoolSettings {
                max_idle_per_endpoint: pool.max_idle_per_endpoint,
                idle_timeout: pool.idle_timeout,
            },
            budget: self.http.retry_budget(name, budget.settings()),
            mesh_id: self.http.mesh().destinations.intern(Some(name)),
            http2: doc.is_some_and(|c| c.http2),
        })
    }
}

/// The protocol handler of an HTTP listener: its settings and compiled
/// route table (a listener with `cluster` has one route, `default`, that
/// takes every request there).
fn http_handler(
    d: &mut Decoder,
    l: &crate::model::ListenerDoc,
    h: &crate::model::HttpDoc,
    targets: &Targets<'_>,
    tls: bool,
) -> Arc<dyn ringmesh_core::protocol::ProtocolHandler> {
    let http = targets.http;
    let settings = HttpSettings {
        limits: Limits {
            max_request_line: h.max_request_line_bytes,
            max_head: h.max_request_headers_bytes,
            max_headers: h.max_headers,
        },
        request_headers_timeout: h.request_headers_timeout,
        idle_timeout: l.idle_timeout,
        generate_request_id: h.generate_request_id,
        append_x_forwarded_for: h.append_x_forwarded_for,
        access_log: l.access_log,
        http2: ringmesh_l7::config::Http2Settings {
            enabled: h.http2.enabled,
            max_concurrent_streams: h.http2.max_concurrent_streams,
            initial_stream_window_size: h.http2.initial_stream_window_size,
            initial_connection_window_size: h.http2.initial_connection_window_size,
            max_connection_duration: h.http2.max_connection_duration,
            ..Default::default()
        },
    };
    let listener_request = h
        .request_headers
        .as_ref()
        .map(|o| o.spec())
        .unwrap_or_default();
    let listener_response = h
        .response_headers
        .as_ref()
        .map(|o| o.spec())
        .unwrap_or_default();
    let forward = |name: &str, route: &str, weight: u32| {
        targets.target(name).map(|target| WeightedTarget {
            target,
            weight,
            stats: http.route(&l.name, route, name),
        })
    };
    let mut routes = Vec::with_capacity(h.routes.len().max(1));
    if h.routes.is_empty() {
        if let Some(t) = forward(&l.cluster, "default", 1) {
            routes.push(Route {
                name: Arc::from("default"),
                matcher: RequestMatch::default(),
                action: Action::Forward(Forward {
                    targets: vec![t],
                    total_weight: 1,
                    sticky: None,
                    timeout: h.timeout,
                    rewrite: Rewrite::default(),
                    mirror: None,
                    fault: None,
                    per_try_timeout: None,
                    idle_timeout: None,
                    retries: None,
                }),
                request_headers: HeaderOps::fold(&[&listener_request]),
                response_headers: HeaderOps::fold(&[&listener_response]),
                local_stats: http.route(&l.name, "default", "-"),
                rate_limit: None,
            });
        }
    }
    for (i, r) in h.routes.iter().enumerate() {
        let name: Arc<str> = match &r.name {
            Some(n) => Arc::from(n.as_str()),
            None => Arc::from(i.to_string()),
        };
        let Some(matcher) = r.request_match() else {
            d.error(
                r.origin.mark,
                &r.origin.path,
                "route match does not compile",
            );
            continue;
        };
        let action = match &r.action {
            ActionDoc::Cluster(_) | ActionDoc::Split(_) => {
                let weighted: Vec<(&str, u32)> = match &r.action {
                    ActionDoc::Cluster(c) => vec![(c.as_str(), 1)],
                    ActionDoc::Split(s) => {
                        s.iter().map(|s| (s.cluster.as_str(), s.weight)).collect()
                    }
                    _ => Vec::new(),
                };
                let list: Vec<WeightedTarget> = weighted
                    .iter()
                    .filter_map(|(c, w)| forward(c, &name, *w))
                    .collect();
                let total_weight: u64 = list.iter().map(|t| u64::from(t.weight)).sum();
                if list.len() != weighted.len() || total_weight == 0 {
                    d.error(
                        r.origin.mark,
                        &r.origin.path,
                        "route clusters do not resolve",
                    );
                    continue;
                }
                // Fail closed: a fault whose conditions no longer compile
                // refuses the config instead of faulting every request.
                let fault = match &r.fault {
                    None => None,
                    Some(f) => match f.header_matches() {
                        Some(headers) => Some(Box::new(Fault {
                            delay: f.delay.as_ref().map(|d| Delay {
                                fixed: d.fixed,
                                per_million: per_million(d.percent),
                            }),
                            abort: f.abort.as_ref().map(|a| Abort {
                                status: a.status,
                                grpc_status: a.grpc_status,
                                per_million: per_million(a.percent),
                            }),
                            headers,
                            header_control: f.header_control,
                            stats: http.fault(&l.name, &name),
                        })),
                        None => {
                            d.error(
                                r.origin.mark,
                                &r.origin.path,
                                "fault conditions do not compile",
                            );
                            continue;
                        }
                    },
                };
                let mirror = r.mirror.as_ref().and_then(|m| {
                    targets.target(&m.cluster).map(|target| Mirror {
                        target,
                        per_million: per_million(m.percent),
                        max_in_flight: m.max_in_flight,
                        stats: http.mirror(&l.name, &name, &m.cluster),
                    })
                });
                Action::Forward(Forward {
                    targets: list,
                    total_weight,
                    sticky: r.sticky.as_ref().map(|s| match s {
                        StickyDoc::Header(h) => Sticky::Header(h.as_bytes().into()),
                        StickyDoc::Cookie(c) => Sticky::Cookie(c.as_bytes().into()),
                    }),
                    timeout: r.timeout.unwrap_or(h.timeout),
                    rewrite: rewrite(r.rewrite.as_ref()),
                    mirror,
                    fault,
                    per_try_timeout: r.per_try_timeout,
                    idle_timeout: r.idle_timeout,
                    retries: r.retries.as_ref().map(|p| Box::new(p.policy())),
                })
            }
            ActionDoc::Redirect(rd) => Action::Redirect(Redirect {
                scheme: rd
                    .scheme
                    .as_deref()
                    .map(|s| if s == "https" { "https" } else { "http" }),
                host: rd.host.as_deref().map(Box::from),
                port: rd.port,
                path: match (&rd.path, &rd.prefix) {
                    (Some(p), _) => Some(RedirectPath::Path(p.as_str().into())),
                    (None, Some(p)) => Some(RedirectPath::Prefix(p.as_str().into())),
                    (None, None) => None,
                },
                strip_query: rd.strip_query,
                status: rd.status,
            }),
            ActionDoc::DirectResponse(dr) => Action::Direct(DirectResponse {
                status: dr.status,
                body: dr.body.as_bytes().into(),
            }),
        };
        let route_request = r
            .request_headers
            .as_ref()
            .map(|o| o.spec())
            .unwrap_or_default();
        let route_response = r
            .response_headers
            .as_ref()
            .map(|o| o.spec())
            .unwrap_or_default();
        let rate_limit = r
            .rate_limit
            .as_ref()
            .map(|rl| rl.runtime(http.rate_limit(&l.name, &name)));
        routes.push(Route {
            local_stats: http.route(&l.name, &name, "-"),
            rate_limit,
            name,
            matcher,
            action,
            request_headers: HeaderOps::fold(&[&listener_request, &route_request]),
            response_headers: HeaderOps::fold(&[&listener_response, &route_response]),
        });
    }
    Arc::new(HttpHandler {
        config: HttpListener {
            name: Arc::from(l.name.as_str()),
            settings,
            routes: RouteTable::new(routes),
            tls,
            stats: http.listener(&l.name),
            unrouted: http.route(&l.name, "-", "-"),
            rate_limit: h
                .rate_limit
                .as_ref()
                .map(|rl| rl.runtime(http.rate_limit(&l.name, "-"))),
            tracing: targets.doc.tracing.as_ref().map(|t| tracing(t, http)),
            taps: http.taps(),
            mesh: (targets.doc.node != crate::model::NodeDoc::default()).then(|| http.mesh()),
            mesh_outbound: h.mesh_role == "outbound",
        },
    })
}

/// The runtime tracing settings of the config's `tracing`.
fn tracing(
    t: &crate::model::TracingDoc,
    http: &HttpStatsRegistry,
) -> ringmesh_l7::trace::TracingSettings {
    ringmesh_l7::trace::TracingSettings {
        sampling_per_million: crate::model::per_million(t.sampling),
        w3c: t.propagation.iter().any(|p| p == "w3c"),
        b3: t.propagation.iter().any(|p| p == "b3"),
        sink: t.otlp.as_ref().map(|_| http.spans()),
    }
}

/// The exporter's settings of a config (`None`: no `tracing.otlp`).
pub fn export_settings(doc: &Document) -> Option<crate::otlp::ExportSettings> {
    let otlp = doc.tracing.as_ref()?.otlp.as_ref()?;
    let node = &doc.node;
    let mut resource = Vec::new();
    if let Some(ns) = &node.namespace {
        resource.push(("service.namespace", ns.clone()));
    }
    if let Some(v) = &node.version {
        resource.push(("service.version", v.clone()));
    }
    if let Some(w) = &node.workload {
        resource.push(("k8s.deployment.name", w.clone()));
    }
    Some(crate::otlp::ExportSettings {
        endpoint: crate::otlp::Endpoint::parse(&otlp.endpoint).ok()?,
        headers: otlp.headers.clone().into_iter().collect(),
        timeout: otlp.timeout,
        service_name: node.service_name().to_owned(),
        resource,
    })
}

/// The runtime form of a route's `rewrite`.
fn rewrite(doc: Option<&crate::model::RewriteDoc>) -> Rewrite {
    let Some(doc) = doc else {
        return Rewrite::default();
    };
    let path = match (&doc.path_prefix, &doc.path_regex) {
        (Some(p), _) => Some(PathRewrite::Prefix(p.as_bytes().into())),
        (None, Some(r)) => compile_regex(&r.pattern, false)
            .ok()
            .map(|regex| PathRewrite::Regex {
                regex,
                substitution: r.substitution.as_bytes().into(),
            }),
        (None, None) => None,
    };
    let host = match (&doc.host, doc.host_from_cluster) {
        (Some(h), _) => Some(HostRewrite::Literal(h.as_bytes().into())),
        (None, true) => Some(HostRewrite::FromCluster),
        (None, false) => None,
    };
    Rewrite { path, host }
}

/// The long-lived registries a snapshot takes its shared state from.
#[derive(Clone, Copy)]
pub struct Registries<'a> {
    /// HTTP counters by listener, route and cluster name.
    pub http: &'a HttpStatsRegistry,
    /// Counters by listener and cluster name.
    pub stats: &'a StatsRegistry,
    /// Endpoint health by cluster name.
    pub health: &'a HealthRegistry,
    /// Endpoint lists found by discovery, by cluster name (clusters with
    /// `discovery` other than `static`).
    pub discovered: &'a HashMap<String, Vec<Found>>,
}

/// Reads a listener's TLS material and builds its server config; problems
/// are reported at the `tls` key.
fn server_tls(
    d: &mut Decoder,
    t: &ListenerTlsDoc,
    authz: Option<&AuthzDoc>,
    denied: &Arc<std::sync::atomic::AtomicU64>,
    http2: bool,
) -> Option<ServerTls> {
    let mut read = |key: &str, path: &str| read_material(d, &t.origin, key, path);
    let cert = read("cert", &t.cert);
    let key = read("key", &t.key);
    let client_ca = match &t.client_ca {
        Some(p) => Some(read("client_ca", p)?),
        None => None,
    };
    let mut sni_certificates = Vec::with_capacity(t.certificates.len());
    for (i, c) in t.certificates.iter().enumerate() {
        let pair = (
            read(&format!("certificates[{i}].cert"), &c.cert),
            read(&format!("certificates[{i}].key"), &c.key),
        );
        sni_certificates.push((pair.0?, pair.1?));
    }
    let material = ServerTlsMaterial {
        cert_chain_pem: cert?,
        key_pem: key?,
        client_ca_pem: client_ca,
        sni_certificates,
        ktls: t.ktls,
    };
    let policy = authz.map(|a| AuthzPolicy {
        allow: a
            .allow
            .iter()
            .filter_map(|p| IdentityPattern::parse(p).ok())
            .collect(),
        deny: a
            .deny
            .iter()
            .filter_map(|p| IdentityPattern::parse(p).ok())
            .collect(),
    });
    // An HTTP listener offers h2 and http/1.1 unless told otherwise.
    let alpn = match (&t.alpn, http2) {
        (a, _) if !a.is_empty() => a.clone(),
        (_, true) => vec!["h2".to_owned(), "http/1.1".to_owned()],
        (_, false) => Vec::new(),
    };
    match ServerTls::new(
        &material,
        &alpn,
        t.handshake_timeout,
        policy,
        denied.clone(),
    ) {
        Ok(tls) => Some(tls),
        Err(e) => {
            d.error(t.origin.mark, &t.origin.path, e.to_string());
            None
        }
    }
}

/// Reads a cluster's TLS material and builds its client config; problems
/// are reported at the cluster's `tls` key.
fn client_tls(d: &mut Decoder, t: &ClusterTlsDoc, http2: bool) -> Option<ClientTls> {
    let mut read = |key: &str, path: &str| read_material(d, &t.origin, key, path);
    let ca = read("ca", &t.ca);
    let identity = match (&t.cert, &t.key) {
        (Some(c), Some(k)) => Some((read("cert", c)?, read("key", k)?)),
        _ => None,
    };
    let material = ClientTlsMaterial {
        ca_pem: ca?,
        identity,
    };
    let expected = ExpectedPeer::parse(&t.san);
    let sni = t.sni.clone().or_else(|| match &expected {
        ExpectedPeer::Dns(name) => Some(name.clone()),
        ExpectedPeer::Spiffe(_) => None,
    });
    // An HTTP/2 cluster offers h2 unless told otherwise.
    let alpn = match (&t.alpn, http2) {
        (a, _) if !a.is_empty() => a.clone(),
        (_, true) => vec!["h2".to_owned()],
        (_, false) => Vec::new(),
    };
    match ClientTls::new(
        &material,
        expected,
        sni.as_deref(),
        &alpn,
        t.handshake_timeout,
    ) {
        Ok(tls) => Some(tls),
        Err(e) => {
            d.error(t.origin.mark, &t.origin.path, e.to_string());
            None
        }
    }
}

/// Reads a certificate, key or bundle file named at `origin.<key>`; a
/// failure is a config error there.
fn read_material(
    d: &mut Decoder,
    origin: &crate::model::Origin,
    key: &str,
    path: &str,
) -> Option<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            d.error(
                origin.mark,
                &format!("{}.{key}", origin.path),
                format!("cannot read `{path}`: {e}"),
            );
            None
        }
    }
}
