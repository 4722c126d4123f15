//! Rendering statistics in the Prometheus text exposition format (0.0.4).
//!
//! Values are merged from per-core slots at scrape time, so there is no
//! registry of live metric objects to hand to a client library: this module
//! writes the format directly, with every metric's help text beside it.

use std::fmt::Write;

use ringmesh_core::health::{Detector, HealthRegistry};
use ringmesh_core::metrics::HistogramSnapshot;
use ringmesh_core::{CloseReason, StatsRegistry};
use std::sync::atomic::Ordering;

use ringmesh_l7::metrics::{CODE_CLASSES, HttpStatsRegistry};

use crate::process::ProcessStats;

/// Proxy-wide values that are not per listener or cluster.
pub struct ProxyInfo<'a> {
    /// Build version.
    pub version: &'a str,
    /// `io_uring` or `epoll`.
    pub io_engine: &'a str,
    /// Worker count.
    pub workers: usize,
    /// Version of the running config.
    pub config_version: u64,
    /// Configs applied since start (the first included).
    pub reloads_applied: u64,
    /// Configs rejected since start.
    pub reloads_rejected: u64,
    /// Whether the proxy is draining.
    pub draining: bool,
    /// `(name, seconds until expiry)` of every certificate the proxy presents.
    pub certificates: Vec<(String, i64)>,
    /// Whether the kernel offers kTLS.
    pub ktls_available: bool,
    /// `(listener, data path)` of every TLS listener: `userspace` or `ktls`.
    pub tls_paths: Vec<(String, &'static str)>,
    /// The running config's `node` when it has one (mesh metrics on).
    pub node: Option<crate::model::NodeDoc>,
    /// Discovery per cluster: `(cluster, lists applied, failures)`.
    pub discovery: Vec<(String, u64, u64)>,
    /// Admin connections closed at once because the cap was reached.
    pub admin_connections_rejected: u64,
    /// Admin requests refused by the admin API's guard, `(reason, count)`.
    pub admin_refused: Vec<(&'static str, u64)>,
    /// The process's descriptor limit and the data plane's ceiling.
    pub fd_share: Option<ringmesh_core::fd_share::FdShare>,
    /// Joined to a mesh: whether the control plane answers, and pushes
    /// applied and refused (NACKed).
    pub control_plane: Option<(bool, u64, u64)>,
}

/// A Prometheus text exposition, for exporters other than the proxy's
/// (the control plane's `GET /metrics`), with the same escaping.
#[derive(Default)]
pub struct Exposition(String);

impl Exposition {
    /// `# HELP` and `# TYPE` lines.
    pub fn header(&mut self, name: &str, kind: &str, help: &str) {
        let mut o = Out(std::mem::take(&mut self.0));
        o.header(name, kind, help);
        self.0 = o.0;
    }

    /// One sample.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let mut o = Out(std::mem::take(&mut self.0));
        o.sample(name, labels, value);
        self.0 = o.0;
    }

    /// The text.
    pub fn finish(self) -> String {
        self.0
    }
}

struct Out(String);

impl Out {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &HistogramSnapshot) {
        let bucket = format!("{name}_bucket");
        for (bound, count) in &h.buckets {
            let le = if bound.is_infinite() {
                "+Inf".to_owned()
            } else {
                bound.to_string()
            };
            let mut l = labels.to_vec();
            l.push(("le", &le));
            self.sample(&bucket, &l, count);
        }
        self.sample(&format!("{name}_sum"), labels, h.sum);
        self.sample(&format!("{name}_count"), labels, h.count);
    }
}

/// Endpoint health: membership, panic mode, ejections, active checks.
fn render_health(o: &mut Out, health: &HealthRegistry) {
    let clusters = health.clusters();
    o.header(
        "ringmesh_cluster_membership_endpoints",
        "gauge",
        "Endpoints of the cluster, by cluster.",
    );
    for c in &clusters {
        o.sample(
            "ringmesh_cluster_membership_endpoints",
            &[("cluster", &c.name)],
            c.membership().1,
        );
    }
    o.header(
        "ringmesh_cluster_membership_healthy",
        "gauge",
        "Endpoints the balancer may pick (not ejected, not failing health checks), by cluster.",
    );
    for c in &clusters {
        o.sample(
            "ringmesh_cluster_membership_healthy",
            &[("cluster", &c.name)],
            c.membership().0,
        );
    }
    o.header(
        "ringmesh_lb_healthy_panic_total",
        "counter",
        "Picks made while too few endpoints were healthy (below panic_threshold), so health was ignored, by cluster.",
    );
    for c in &clusters {
        o.sample(
            "ringmesh_lb_healthy_panic_total",
            &[("cluster", &c.name)],
            c.panic_picks(),
        );
    }
    o.header(
        "ringmesh_outlier_ejections_active",
        "gauge",
        "Endpoints ejected now, by cluster.",
    );
    for c in &clusters {
        o.sample(
            "ringmesh_outlier_ejections_active",
            &[("cluster", &c.name)],
            c.ejected_count(),
        );
    }
    for (name, help, counters) in [
        (
            "ringmesh_outlier_ejections_total",
            "Ejections carried out, by cluster and detector.",
            true,
        ),
        (
            "ringmesh_outlier_ejections_detected_total",
            "Outliers detected (ejected or not: enforcement percentage, max_ejection_percent), by cluster and detector.",
            false,
        ),
    ] {
        o.header(name, "counter", help);
        for c in &clusters {
            let set = if counters {
                &c.outlier.enforced
            } else {
                &c.outlier.detected
            };
            for d in Detector::ALL {
                o.sample(
                    name,
                    &[("cluster", &c.name), ("detector", d.as_str())],
                    set[d as usize].load(Ordering::Relaxed),
                );
            }
        }
    }
    o.header(
        "ringmesh_outlier_ejections_overflow_total",
        "counter",
        "Ejections skipped because max_ejection_percent was reached, by cluster.",
    );
    for c in &clusters {
        o.sample(
            "ringmesh_outlier_ejections_overflow_total",
            &[("cluster", &c.name)],
            c.outlier.overflow.load(Ordering::Relaxed),
        );
    }
    o.header(
        "ringmesh_health_checks_total",
        "counter",
        "Active health checks, by cluster and result (success, failure).",
    );
    for c in &clusters {
        let (passed, failed) = c.check_totals();
        o.sample(
            "ringmesh_health_checks_total",
            &[("cluster", &c.name), ("result", "success")],
            passed,
        );
        o.sample(
            "ringmesh_health_checks_total",
            &[("cluster", &c.name), ("result", "failure")],
            failed,
        );
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Per-request HTTP metrics (l7).
fn render_http(o: &mut Out, http: &HttpStatsRegistry) {
    // A route's series appear once it has taken a request: a table of
    // thousands of routes, most of them idle, would otherwise make every
    // scrape hundreds of thousands of lines.
    let routes: Vec<_> = http
        .routes()
        .into_iter()
        .filter(|(_, r)| r.codes().iter().any(|&n| n > 0))
        .collect();
    o.header(
        "ringmesh_http_requests_total",
        "counter",
        "HTTP requests answered, by listener, route, cluster and status class (answers the proxy made itself included; route `-`: no route matched; cluster `-`: answered by the route itself).",
    );
    for ((listener, route, cluster), r) in &routes {
        for (class, n) in CODE_CLASSES.iter().zip(r.codes()) {
            o.sample(
                "ringmesh_http_requests_total",
                &[
                    ("listener", listener),
                    ("route", route),
                    ("cluster", cluster),
                    ("code", class),
                ],
                n,
            );
        }
    }
    o.header(
        "ringmesh_http_request_duration_seconds",
        "histogram",
        "Time from a request's first head byte to the end of its response, by listener, route and cluster.",
    );
    for ((listener, route, cluster), r) in &routes {
        o.histogram(
            "ringmesh_http_request_duration_seconds",
            &[
                ("listener", listener),
                ("route", route),
                ("cluster", cluster),
            ],
            &r.duration(),
        );
    }
    o.header(
        "ringmesh_http_timeouts_total",
        "counter",
        "Requests ended by a timeout, by listener, route, cluster and kind (`request`: the route timeout, answered 504 UT; `per_try`: an attempt's per_try_timeout, retried or answered 504 UT; `idle`: no bytes either way for idle_timeout while a body streamed).",
    );
    for ((listener, route, cluster), r) in &routes {
        for (kind, n) in ringmesh_l7::metrics::TIMEOUT_KINDS.iter().zip(r.timeouts()) {
            o.sample(
                "ringmesh_http_timeouts_total",
                &[
                    ("listener", listener),
                    ("route", route),
                    ("cluster", cluster),
                    ("kind", kind),
                ],
                n,
            );
        }
    }
    o.header(
        "ringmesh_http_grpc_responses_total",
        "counter",
        "gRPC responses by listener, route, cluster and grpc_code (the grpc-status they ended with, from the server or from the proxy's own answer; codes seen so far).",
    );
    for ((listener, route, cluster), r) in &routes {
        for (code, n) in ringmesh_l7::h2::grpc::CODE_NAMES.iter().zip(r.grpc_codes()) {
            if n > 0 {
                o.sample(
                    "ringmesh_http_grpc_responses_total",
                    &[
                        ("listener", listener),
                        ("route", route),
                        ("cluster", cluster),
                        ("grpc_code", code),
                    ],
                    n,
                );
            }
        }
    }
    o.header(
        "ringmesh_http_rate_limited_total",
        "counter",
        "Requests refused with 429 by a local rate limit, by listener and route (`-`: the listener's own limit).",
    );
    for ((listener, route), l) in http.rate_limits() {
        o.sample(
            "ringmesh_http_rate_limited_total",
            &[("listener", &listener), ("route", &route)],
            l.limited(),
        );
    }
    o.header(
        "ringmesh_http_faults_total",
        "counter",
        "Faults injected by routes' fault filters, by listener, route and kind (`delay`, `abort`).",
    );
    for ((listener, route), f) in http.faults() {
        let (delays, aborts) = f.injected();
        for (kind, n) in [("delay", delays), ("abort", aborts)] {
            o.sample(
                "ringmesh_http_faults_total",
                &[("listener", &listener), ("route", &route), ("kind", kind)],
                n,
            );
        }
    }
    o.header(
        "ringmesh_http_mirror_requests_total",
        "counter",
        "Copies of requests mirrored to a shadow cluster, by listener, route, shadow cluster and result (`sent`: the shadow answered; `failed`: no answer; `overflow`: the shadow's breaker was full; `skipped`: the body was not in the buffer).",
    );
    for ((listener, route, cluster), m) in http.mirrors() {
        for (result, n) in ringmesh_l7::metrics::MIRROR_RESULTS.iter().zip(m.results()) {
            o.sample(
                "ringmesh_http_mirror_requests_total",
                &[
                    ("listener", &listener),
                    ("route", &route),
                    ("cluster", &cluster),
                    ("result", result),
                ],
                n,
            );
        }
    }
    o.header(
        "ringmesh_admin_taps_open",
        "gauge",
        "Taps open on the admin API now (GET /tap).",
    );
    o.sample("ringmesh_admin_taps_open", &[], http.taps().open() as u64);
    let spans = http.spans();
    o.header(
        "ringmesh_tracing_spans_total",
        "counter",
        "Spans of sampled requests by result (`exported`: the collector took them; `dropped`: the queue of 2048 was full; `failed`: the export failed).",
    );
    for (result, counter) in [
        ("exported", &spans.exported),
        ("dropped", &spans.dropped),
        ("failed", &spans.failed),
    ] {
        o.sample(
            "ringmesh_tracing_spans_total",
            &[("result", result)],
            counter.load(std::sync::atomic::Ordering::Relaxed),
        );
    }
    let listeners = http.listeners();
    o.header(
        "ringmesh_http_requests_active",
        "gauge",
        "HTTP requests in flight now, by listener.",
    );
    for (name, l) in &listeners {
        o.sample(
            "ringmesh_http_requests_active",
            &[("listener", name)],
            l.active(),
        );
    }
    o.header(
        "ringmesh_http_rejected_total",
        "counter",
        "Requests refused before routing (malformed or smuggling-prone heads, limits, header timeout, bad chunked bodies, CONNECT), by listener and reason.",
    );
    for (name, l) in &listeners {
        for (reason, n) in l.rejected() {
            o.sample(
                "ringmesh_http_rejected_total",
                &[("listener", name), ("reason", reason)],
                n,
            );
        }
    }
    let upstreams = http.upstreams();
    o.header(
        "ringmesh_upstream_requests_total",
        "counter",
        "Responses received from endpoints, by cluster and status class.",
    );
    for (name, u) in &upstreams {
        for (class, n) in CODE_CLASSES.iter().zip(u.codes()) {
            o.sample(
                "ringmesh_upstream_requests_total",
                &[("cluster", name), ("code", class)],
                n,
            );
        }
    }
    o.header(
        "ringmesh_upstream_pool_requests_total",
        "counter",
        "HTTP requests sent upstream, by cluster and connection (`reused`: an idle pooled connection, `new`: a new connection).",
    );
    for (name, u) in &upstreams {
        let (reused, new) = u.pool();
        o.sample(
            "ringmesh_upstream_pool_requests_total",
            &[("cluster", name), ("connection", "reused")],
            reused,
        );
        o.sample(
            "ringmesh_upstream_pool_requests_total",
            &[("cluster", name), ("connection", "new")],
            new,
        );
    }
    o.header(
        "ringmesh_upstream_replayed_total",
        "counter",
        "Requests replayed on a new connection after a pooled one failed before any response byte, by cluster.",
    );
    for (name, u) in &upstreams {
        o.sample(
            "ringmesh_upstream_replayed_total",
            &[("cluster", name)],
            u.replayed(),
        );
    }
    o.header(
        "ringmesh_retries_total",
        "counter",
        "Retries a route's retry policy asked for, by cluster and result (`sent`; `budget_exhausted`: the cluster's retry budget was spent; `overflow`: max_retries retries were in progress).",
    );
    for (name, u) in &upstreams {
        for (result, n) in ringmesh_l7::metrics::RETRY_RESULTS.iter().zip(u.retries()) {
            o.sample(
                "ringmesh_retries_total",
                &[("cluster", name), ("result", result)],
                n,
            );
        }
    }
    o.header(
        "ringmesh_upstream_bad_responses_total",
        "counter",
        "Malformed upstream responses (answered 502, connection discarded), by cluster.",
    );
    for (name, u) in &upstreams {
        o.sample(
            "ringmesh_upstream_bad_responses_total",
            &[("cluster", name)],
            u.bad_responses(),
        );
    }
}

/// Istio's labels of the destination (this proxy's `node`; what is not
/// configured is `unknown`).
struct Destination {
    workload: String,
    namespace: String,
    app: String,
    version: String,
    service: String,
    service_name: String,
}

impl Destination {
    fn of(node: &crate::model::NodeDoc) -> Destination {
        let or_unknown = |v: Option<&String>| v.cloned().unwrap_or_else(|| "unknown".into());
        Destination {
            workload: or_unknown(node.workload.as_ref()),
            namespace: or_unknown(node.namespace.as_ref()),
            app: or_unknown(node.service.as_ref().or(node.workload.as_ref())),
            version: or_unknown(node.version.as_ref()),
            service_name: or_unknown(node.service.as_ref()),
            service: match (&node.service, &node.namespace) {
                (Some(s), Some(ns)) => format!("{s}.{ns}.svc.cluster.local"),
                (Some(s), None) => s.clone(),
                _ => "unknown".into(),
            },
        }
    }

    /// Every label but the request's own for a call this proxy made on its
    /// workload's behalf (`mesh_role: outbound`): the node is the source,
    /// the cluster called the destination service (Istio's source
    /// reporter knows no more of the destination).
    fn outbound_labels<'a>(
        &'a self,
        cluster: &'a str,
        protocol: &'a str,
    ) -> Vec<(&'a str, &'a str)> {
        vec![
            ("reporter", "source"),
            ("source_workload", &self.workload),
            ("source_workload_namespace", &self.namespace),
            ("source_principal", "unknown"),
            ("source_app", &self.app),
            ("source_version", &self.version),
            ("source_canonical_service", &self.app),
            ("source_canonical_revision", &self.version),
            ("source_cluster", "unknown"),
            ("destination_workload", "unknown"),
            ("destination_workload_namespace", "unknown"),
            ("destination_principal", "unknown"),
            ("destination_app", "unknown"),
            ("destination_version", "unknown"),
            ("destination_service", cluster),
            ("destination_service_name", cluster),
            ("destination_service_namespace", "unknown"),
            ("destination_canonical_service", "unknown"),
            ("destination_canonical_revision", "unknown"),
            ("destination_cluster", "unknown"),
            ("request_protocol", protocol),
            ("connection_security_policy", "unknown"),
        ]
    }

    /// Every label but the request's own, for a source whose principal
    /// (SPIFFE ID) is `principal` (or `unknown`, `overflow`).
    fn labels<'a>(&'a self, principal: &'a str, protocol: &'a str) -> Vec<(&'a str, &'a str)> {
        let known = principal != "unknown" && principal != "overflow";
        let (src_workload, src_namespace) = if known {
            ringmesh_l7::mesh::spiffe_workload(principal)
        } else {
            (principal, principal)
        };
        vec![
            ("reporter", "destination"),
            ("source_workload", src_workload),
            ("source_workload_namespace", src_namespace),
            ("source_principal", principal),
            ("source_app", src_workload),
            ("source_version", "unknown"),
            ("source_canonical_service", src_workload),
            ("source_canonical_revision", "latest"),
            ("source_cluster", "unknown"),
            ("destination_workload", &self.workload),
            ("destination_workload_namespace", &self.namespace),
            ("destination_principal", "unknown"),
            ("destination_app", &self.app),
            ("destination_version", &self.version),
            ("destination_service", &self.service),
            ("destination_service_name", &self.service_name),
            ("destination_service_namespace", &self.namespace),
            ("destination_canonical_service", &self.app),
            ("destination_canonical_revision", &self.version),
            ("destination_cluster", "unknown"),
            ("request_protocol", protocol),
            (
                "connection_security_policy",
                if known { "mutual_tls" } else { "none" },
            ),
        ]
    }
}

/// Istio's standard metrics (README "Mesh metrics"), reported as the
/// destination: the source from the client's SPIFFE ID, the destination
/// from the config's `node`.
fn render_mesh(o: &mut Out, node: &crate::model::NodeDoc, mesh: &ringmesh_l7::mesh::MeshStats) {
    use ringmesh_l7::mesh::{BYTES_BUCKETS, DURATION_BUCKETS_MS};
    let destination = Destination::of(node);
    let series = mesh.series();
    let names = [
        (
            "istio_requests_total",
            "counter",
            "Requests, by Istio's standard labels (reporter destination: the client's identity as source, this proxy's node as destination).",
        ),
        (
            "istio_request_duration_milliseconds",
            "histogram",
            "Request durations in milliseconds, by Istio's standard labels.",
        ),
        (
            "istio_request_bytes",
            "histogram",
            "Request sizes in bytes (head and body), by Istio's standard labels.",
        ),
        (
            "istio_response_bytes",
            "histogram",
            "Response sizes in bytes (head and body), by Istio's standard labels.",
        ),
    ];
    for (name, kind, help) in names {
        o.header(name, kind, help);
        for s in &series {
            let code = s.code.to_string();
            let grpc = s.grpc.map(|g| g.to_string()).unwrap_or_default();
            let protocol = if s.grpc.is_some() { "grpc" } else { "http" };
            let mut labels = match &s.destination {
                Some(cluster) if s.outbound => destination.outbound_labels(cluster, protocol),
                _ => destination.labels(&s.source, protocol),
            };
            labels.extend([
                ("response_code", code.as_str()),
                ("grpc_response_status", grpc.as_str()),
                ("response_flags", s.flag.map_or("-", |f| f.as_str())),
            ]);
            match name {
                "istio_requests_total" => o.sample(name, &labels, s.requests),
                "istio_request_duration_milliseconds" => mesh_histogram(
                    o,
                    name,
                    &labels,
                    &DURATION_BUCKETS_MS,
                    &s.duration,
                    s.duration_sum_ms,
                ),
                "istio_request_bytes" => mesh_histogram(
                    o,
                    name,
                    &labels,
                    &BYTES_BUCKETS,
                    &s.request_bytes,
                    s.request_bytes_sum as f64,
                ),
                _ => mesh_histogram(
                    o,
                    name,
                    &labels,
                    &BYTES_BUCKETS,
                    &s.response_bytes,
                    s.response_bytes_sum as f64,
                ),
            }
        }
    }
}

/// Istio's TCP metrics of TCP listeners (with a `node`), by source.
fn render_mesh_tcp(o: &mut Out, node: &crate::model::NodeDoc, mesh: &ringmesh_l7::mesh::MeshStats) {
    type Value = fn(&ringmesh_l7::mesh::TcpSeries) -> u64;
    let destination = Destination::of(node);
    let series = mesh.tcp_series();
    let families: [(&str, &str, Value); 4] = [
        (
            "istio_tcp_connections_opened_total",
            "TCP connections opened, by Istio's standard labels.",
            |s| s.opened,
        ),
        (
            "istio_tcp_connections_closed_total",
            "TCP connections closed, by Istio's standard labels.",
            |s| s.closed,
        ),
        (
            "istio_tcp_received_bytes_total",
            "Bytes received from clients on TCP connections, by Istio's standard labels.",
            |s| s.received,
        ),
        (
            "istio_tcp_sent_bytes_total",
            "Bytes sent to clients on TCP connections, by Istio's standard labels.",
            |s| s.sent,
        ),
    ];
    for (name, help, value) in families {
        o.header(name, "counter", help);
        for s in &series {
            let mut labels = destination.labels(&s.source, "tcp");
            labels.push(("response_flags", "-"));
            o.sample(name, &labels, value(s));
        }
    }
}

/// A histogram from per-bucket counts (the last one: above every bound).
fn mesh_histogram(
    o: &mut Out,
    name: &str,
    labels: &[(&str, &str)],
    bounds: &[f64],
    counts: &[u64],
    sum: f64,
) {
    let bucket = format!("{name}_bucket");
    let mut total = 0;
    for (i, count) in counts.iter().enumerate() {
        total += count;
        let le = bounds
            .get(i)
            .map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
        let mut l = labels.to_vec();
        l.push(("le", &le));
        o.sample(&bucket, &l, total);
    }
    o.sample(&format!("{name}_sum"), labels, sum);
    o.sample(&format!("{name}_count"), labels, total);
}

/// Renders every metric.
pub fn render(
    info: &ProxyInfo<'_>,
    stats: &StatsRegistry,
    health: &HealthRegistry,
    http: &HttpStatsRegistry,
    process: &ProcessStats,
) -> String {
    let mut o = Out(String::with_capacity(16 * 1024));
    o.header(
        "ringmesh_info",
        "gauge",
        "Build and runtime information; always 1.",
    );
    o.sample(
        "ringmesh_info",
        &[("version", info.version), ("io_engine", info.io_engine)],
        1,
    );
    o.header(
        "ringmesh_workers",
        "gauge",
        "Worker threads (one runtime each).",
    );
    o.sample("ringmesh_workers", &[], info.workers);
    o.header(
        "ringmesh_config_version",
        "gauge",
        "Version of the running configuration.",
    );
    o.sample("ringmesh_config_version", &[], info.config_version);
    o.header(
        "ringmesh_config_reloads_total",
        "counter",
        "Configurations applied or rejected, by result.",
    );
    o.sample(
        "ringmesh_config_reloads_total",
        &[("result", "applied")],
        info.reloads_applied,
    );
    o.sample(
        "ringmesh_config_reloads_total",
        &[("result", "rejected")],
        info.reloads_rejected,
    );
    o.header(
        "ringmesh_draining",
        "gauge",
        "1 while the proxy drains before exiting.",
    );
    o.sample("ringmesh_draining", &[], u8::from(info.draining));
    if let Some((connected, applied, refused)) = info.control_plane {
        o.header(
            "ringmesh_control_plane_connected",
            "gauge",
            "1 while the control plane answers this joined proxy's watch.",
        );
        o.sample("ringmesh_control_plane_connected", &[], u8::from(connected));
        o.header(
            "ringmesh_control_plane_pushes_total",
            "counter",
            "Configs pushed by the control plane, by result (applied, refused: NACKed).",
        );
        o.sample(
            "ringmesh_control_plane_pushes_total",
            &[("result", "applied")],
            applied,
        );
        o.sample(
            "ringmesh_control_plane_pushes_total",
            &[("result", "refused")],
            refused,
        );
    }
    o.header(
        "ringmesh_certificate_expiry_seconds",
        "gauge",
        "Seconds until a certificate the proxy presents expires (negative: expired); name is listener/<name> or cluster/<name>.",
    );
    for (name, secs) in &info.certificates {
        o.sample(
            "ringmesh_certificate_expiry_seconds",
            &[("name", name)],
            secs,
        );
    }
    o.header(
        "ringmesh_ktls_available",
        "gauge",
        "1 when the kernel offers kernel TLS (probed at startup).",
    );
    o.sample(
        "ringmesh_ktls_available",
        &[],
        u8::from(info.ktls_available),
    );
    o.header(
        "ringmesh_tls_data_path",
        "gauge",
        "1 for the path a TLS listener's sessions take after the handshake: path=ktls (handed to kernel TLS when the session allows it) or userspace (rustls).",
    );
    for (listener, path) in &info.tls_paths {
        o.sample(
            "ringmesh_tls_data_path",
            &[("listener", listener), ("path", path)],
            1,
        );
    }

    let listeners: Vec<_> = stats
        .listeners()
        .into_iter()
        .map(|(n, s)| (n, s.totals()))
        .collect();
    o.header(
        "ringmesh_downstream_connections_total",
        "counter",
        "Downstream connections accepted, by listener.",
    );
    for (n, t) in &listeners {
        o.sample(
            "ringmesh_downstream_connections_total",
            &[("listener", n)],
            t.accepted,
        );
    }
    o.header(
        "ringmesh_downstream_connections_active",
        "gauge",
        "Downstream connections open now, by listener.",
    );
    for (n, t) in &listeners {
        o.sample(
            "ringmesh_downstream_connections_active",
            &[("listener", n)],
            t.active,
        );
    }
    o.header(
        "ringmesh_downstream_connections_rejected_total",
        "counter",
        "Downstream connections closed at once instead of served, by listener and reason.",
    );
    for (n, t) in &listeners {
        for (reason, count) in [
            ("max_connections", t.rejected_max_connections),
            ("max_connections_per_client", t.rejected_per_client),
            ("local_resource", t.rejected_local_resource),
        ] {
            o.sample(
                "ringmesh_downstream_connections_rejected_total",
                &[("listener", n), ("reason", reason)],
                count,
            );
        }
    }
    o.header(
        "ringmesh_local_resource_errors_total",
        "counter",
        "Times the proxy ran out of a local resource (emfile: descriptors, or the data plane's share of them; enfile; enobufs; enomem; eaddrnotavail: local ports) while accepting or connecting upstream. Never counted against an endpoint.",
    );
    for (kind, count) in stats.local_resources().totals() {
        o.sample(
            "ringmesh_local_resource_errors_total",
            &[("kind", kind.as_str())],
            count,
        );
    }
    o.header(
        "ringmesh_downstream_connections_closed_total",
        "counter",
        "Served downstream connections that ended, by listener and reason.",
    );
    for (n, t) in &listeners {
        for (reason, count) in &t.closed {
            o.sample(
                "ringmesh_downstream_connections_closed_total",
                &[("listener", n), ("reason", reason_label(*reason))],
                count,
            );
        }
    }
    o.header(
        "ringmesh_tls_sessions_total",
        "counter",
        "Terminated TLS sessions by listener and by where their records were processed: path=ktls (kernel TLS) or userspace (rustls).",
    );
    for (n, t) in &listeners {
        o.sample(
            "ringmesh_tls_sessions_total",
            &[("listener", n), ("path", "userspace")],
            t.tls_sessions_userspace,
        );
        o.sample(
            "ringmesh_tls_sessions_total",
            &[("listener", n), ("path", "ktls")],
            t.tls_sessions_ktls,
        );
    }
    o.header(
        "ringmesh_forwarded_connections_total",
        "counter",
        "Closed connections that reached forwarding, by listener and by how their bytes moved: path=splice (at least one direction went socket -> pipe -> socket in the kernel) or buffered (user-space buffers only).",
    );
    for (n, t) in &listeners {
        o.sample(
            "ringmesh_forwarded_connections_total",
            &[("listener", n), ("path", "buffered")],
            t.forwarded_buffered,
        );
        o.sample(
            "ringmesh_forwarded_connections_total",
            &[("listener", n), ("path", "splice")],
            t.forwarded_splice,
        );
    }
    o.header(
        "ringmesh_authz_denied_total",
        "counter",
        "Clients refused by the listener's authorization policy (TLS alert access_denied), by listener.",
    );
    for (n, t) in &listeners {
        o.sample(
            "ringmesh_authz_denied_total",
            &[("listener", n)],
            t.authz_denied,
        );
    }
    o.header(
        "ringmesh_bytes_total",
        "counter",
        "Bytes moved for downstream clients, by listener; direction=received is client to proxy, sent is proxy to client.",
    );
    for (n, t) in &listeners {
        o.sample(
            "ringmesh_bytes_total",
            &[("listener", n), ("direction", "received")],
            t.bytes_received,
        );
        o.sample(
            "ringmesh_bytes_total",
            &[("listener", n), ("direction", "sent")],
            t.bytes_sent,
        );
    }
    o.header(
        "ringmesh_downstream_connection_duration_seconds",
        "histogram",
        "Lifetime of served downstream connections, by listener.",
    );
    for (n, t) in &listeners {
        o.histogram(
            "ringmesh_downstream_connection_duration_seconds",
            &[("listener", n)],
            &t.duration,
        );
    }

    let clusters: Vec<_> = stats
        .clusters()
        .into_iter()
        .map(|(n, s)| (n, s.totals()))
        .collect();
    o.header(
        "ringmesh_upstream_connections_total",
        "counter",
        "Upstream connections established, by cluster.",
    );
    for (n, t) in &clusters {
        o.sample(
            "ringmesh_upstream_connections_total",
            &[("cluster", n)],
            t.connections,
        );
    }
    o.header(
        "ringmesh_upstream_connections_active",
        "gauge",
        "Upstream connections open now, by cluster.",
    );
    for (n, t) in &clusters {
        o.sample(
            "ringmesh_upstream_connections_active",
            &[("cluster", n)],
            t.active,
        );
    }
    o.header(
        "ringmesh_upstream_connect_failures_total",
        "counter",
        "Upstream connect attempts refused or failed (timeouts excluded), by cluster.",
    );
    for (n, t) in &clusters {
        o.sample(
            "ringmesh_upstream_connect_failures_total",
            &[("cluster", n)],
            t.connect_failures,
        );
    }
    o.header(
        "ringmesh_upstream_connect_timeouts_total",
        "counter",
        "Upstream connect attempts that exceeded connect_timeout, by cluster.",
    );
    for (n, t) in &clusters {
        o.sample(
            "ringmesh_upstream_connect_timeouts_total",
            &[("cluster", n)],
            t.connect_timeouts,
        );
    }
    o.header(
        "ringmesh_upstream_unavailable_total",
        "counter",
        "Downstream connections closed because every connect attempt failed, by cluster.",
    );
    for (n, t) in &clusters {
        o.sample(
            "ringmesh_upstream_unavailable_total",
            &[("cluster", n)],
            t.unavailable,
        );
    }
    o.header(
        "ringmesh_upstream_overflow_total",
        "counter",
        "Connections refused at once because the cluster's circuit breaker (max_connections) was open, by cluster.",
    );
    for (n, t) in &clusters {
        o.sample(
            "ringmesh_upstream_overflow_total",
            &[("cluster", n)],
            t.overflow,
        );
    }
    o.header(
        "ringmesh_upstream_pending_overflow_total",
        "counter",
        "Connections refused at once because max_pending_requests upstream connects were already in progress, by cluster.",
    );
    for (n, t) in &clusters {
        o.sample(
            "ringmesh_upstream_pending_overflow_total",
            &[("cluster", n)],
            t.pending_overflow,
        );
    }
    o.header(
        "ringmesh_upstream_request_overflow_total",
        "counter",
        "HTTP requests answered 503 (flag UO) at once because max_requests were in flight, by cluster.",
    );
    for (n, t) in &clusters {
        o.sample(
            "ringmesh_upstream_request_overflow_total",
            &[("cluster", n)],
            t.request_overflow,
        );
    }
    o.header(
        "ringmesh_upstream_requests_active",
        "gauge",
        "HTTP requests in flight to the cluster now (the max_requests breaker's count), by cluster.",
    );
    for (n, t) in &clusters {
        o.sample(
            "ringmesh_upstream_requests_active",
            &[("cluster", n)],
            t.active_requests,
        );
    }
    o.header(
        "ringmesh_upstream_retries_active",
        "gauge",
        "HTTP retries in progress to the cluster now (the max_retries breaker's count), by cluster.",
    );
    for (n, t) in &clusters {
        o.sample(
            "ringmesh_upstream_retries_active",
            &[("cluster", n)],
            t.active_retries,
        );
    }
    o.header(
        "ringmesh_upstream_tls_failures_total",
        "counter",
        "TLS handshakes with upstream endpoints that failed (unknown CA, wrong identity, protocol error, timeout), by cluster.",
    );
    for (n, t) in &clusters {
        o.sample(
            "ringmesh_upstream_tls_failures_total",
            &[("cluster", n)],
            t.tls_failures,
        );
    }
    o.header(
        "ringmesh_upstream_bytes_total",
        "counter",
        "Bytes moved with upstream endpoints, by cluster; direction=sent is proxy to upstream, received is upstream to proxy.",
    );
    for (n, t) in &clusters {
        o.sample(
            "ringmesh_upstream_bytes_total",
            &[("cluster", n), ("direction", "sent")],
            t.bytes_sent,
        );
        o.sample(
            "ringmesh_upstream_bytes_total",
            &[("cluster", n), ("direction", "received")],
            t.bytes_received,
        );
    }
    o.header(
        "ringmesh_upstream_connect_duration_seconds",
        "histogram",
        "Time to establish an upstream TCP connection, by cluster.",
    );
    for (n, t) in &clusters {
        o.histogram(
            "ringmesh_upstream_connect_duration_seconds",
            &[("cluster", n)],
            &t.connect_latency,
        );
    }

    o.header(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
    );
    o.sample("process_resident_memory_bytes", &[], process.resident_bytes);
    o.header(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
    );
    o.sample("process_virtual_memory_bytes", &[], process.virtual_bytes);
    o.header(
        "process_cpu_seconds_total",
        "counter",
        "User and system CPU time spent, in seconds.",
    );
    o.sample("process_cpu_seconds_total", &[], process.cpu_seconds);
    render_health(&mut o, health);
    render_http(&mut o, http);
    if let Some(node) = &info.node {
        render_mesh(&mut o, node, &http.mesh());
        render_mesh_tcp(&mut o, node, &http.mesh());
    }
    o.header(
        "ringmesh_discovery_updates_total",
        "counter",
        "Endpoint lists found by discovery (DNS, file, admin API) that changed a cluster, by cluster.",
    );
    for (c, updates, _) in &info.discovery {
        o.sample(
            "ringmesh_discovery_updates_total",
            &[("cluster", c)],
            updates,
        );
    }
    o.header(
        "ringmesh_discovery_errors_total",
        "counter",
        "Discovery attempts that failed (DNS errors, unreadable or invalid endpoints files); the last good endpoints stay, by cluster.",
    );
    for (c, _, errors) in &info.discovery {
        o.sample("ringmesh_discovery_errors_total", &[("cluster", c)], errors);
    }
    o.header(
        "ringmesh_admin_connections_rejected_total",
        "counter",
        "Admin API connections closed at once because the connection cap was reached.",
    );
    o.sample(
        "ringmesh_admin_connections_rejected_total",
        &[],
        info.admin_connections_rejected,
    );
    o.header(
        "ringmesh_admin_requests_refused_total",
        "counter",
        "Admin API requests refused before they ran, by reason (host, origin, content_type, unauthorized, timeout, too_large).",
    );
    for (reason, count) in &info.admin_refused {
        o.sample(
            "ringmesh_admin_requests_refused_total",
            &[("reason", reason)],
            count,
        );
    }
    o.header("process_open_fds", "gauge", "Open file descriptors.");
    o.sample("process_open_fds", &[], process.open_fds);
    if let Some(share) = info.fd_share {
        o.header(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors (the soft RLIMIT_NOFILE).",
        );
        o.sample("process_max_fds", &[], share.limit);
        o.header(
            "ringmesh_data_plane_fd_ceiling",
            "gauge",
            "Descriptors numbered at or above this are refused by the data plane; the rest of the limit is kept for the admin API and reloads.",
        );
        o.sample("ringmesh_data_plane_fd_ceiling", &[], share.ceiling);
    }
    o.header(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since the Unix epoch, in seconds.",
    );
    o.sample(
        "process_start_time_seconds",
        &[],
        process.start_time_seconds,
    );
    o.0
}

fn reason_label(r: CloseReason) -> &'static str {
    r.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn every_metric_has_help_and_type() {
        let stats = StatsRegistry::new(2);
        stats.listener("db");
        stats.cluster("pg");
        let info = ProxyInfo {
            version: "0.1.0",
            io_engine: "epoll",
            workers: 2,
            config_version: 3,
            reloads_applied: 3,
            reloads_rejected: 1,
            draining: false,
            certificates: vec![("listener/db".into(), 86400)],
            ktls_available: false,
            tls_paths: vec![("db".into(), "userspace")],
            node: Some(crate::model::NodeDoc {
                service: Some("reviews".into()),
                ..Default::default()
            }),
            discovery: vec![("pg".into(), 2, 1)],
            admin_connections_rejected: 1,
            admin_refused: vec![("origin", 2)],
            fd_share: Some(ringmesh_core::fd_share::FdShare {
                limit: 1024,
                ceiling: 896,
            }),
            control_plane: Some((true, 3, 1)),
        };
        let health = HealthRegistry::new(2);
        health.cluster("pg");
        let http = HttpStatsRegistry::new(2);
        http.route("web", "default", "app");
        http.listener("web");
        http.upstream("app");
        let text = render(&info, &stats, &health, &http, &ProcessStats::default());
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            let base = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(
                text.contains(&format!("# TYPE {base} "))
                    || text.contains(&format!("# TYPE {name} ")),
                "{name} has no TYPE line"
            );
        }
        assert!(text.contains("ringmesh_info{version=\"0.1.0\",io_engine=\"epoll\"} 1"));
        // A route that has taken no request has no series yet.
        assert!(text.contains("# TYPE ringmesh_http_requests_total counter"));
        assert!(!text.contains("ringmesh_http_requests_total{listener=\"web\",route=\"default\""));
        assert!(
            text.contains("ringmesh_http_rejected_total{listener=\"web\",reason=\"bare_lf\"} 0")
        );
        assert!(text.contains(
            "ringmesh_downstream_connection_duration_seconds_bucket{listener=\"db\",le=\"+Inf\"} 0"
        ));
    }
}
