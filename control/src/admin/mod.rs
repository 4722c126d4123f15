//! The admin API: HTTP/1.1 + JSON on the control thread, loopback by default.
//!
//! | method and path  | what it does |
//! |------------------|--------------|
//! | `GET /live`      | 200 while the process runs |
//! | `GET /ready`     | 200 when serving, 503 while draining (or, joined to a mesh, before its first config) |
//! | `GET /config`    | the running config (defaults filled in) and its version |
//! | `PUT /config`    | validate a YAML body and apply it; 400 with every error otherwise |
//! | `GET /listeners` | listeners, their bound addresses and counters |
//! | `GET /clusters`  | clusters, endpoints with their health, counters |
//! | `PUT /clusters/{name}/endpoints` | replace an `api`-discovery cluster's endpoints |
//! | `GET /metrics`   | Prometheus text format |
//! | `POST /drain`    | stop accepting, let connections finish, exit |

//!
//! Every request passes [`guard`] first (Host allowlist, no cross-site
//! mutation, optional bearer token); [`server`] caps connections and times
//! out slow request heads; [`body`] bounds bodies. Parsing and compiling a
//! new config run off this thread (see `Proxy::reload`), so `/live` and
//! `/ready` keep answering during a large reload.

pub mod body;
pub mod guard;
pub mod server;
mod ui;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRef, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::prometheus::{ProxyInfo, render};
use crate::proxy::{EndpointsError, Proxy, ReloadError};
use guard::{AdminPolicy, Refusal};

/// What the admin API counts about itself.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections closed at once because [`server::MAX_CONNECTIONS`] were open.
    pub connections_rejected: AtomicU64,
    /// Requests refused by the guard, by [`Refusal`].
    pub refused: [AtomicU64; Refusal::ALL.len()],
    /// Requests whose body was too large.
    pub too_large: AtomicU64,
    /// Requests whose body did not arrive in time.
    pub timeout: AtomicU64,
}

impl Counters {
    fn refused(&self) -> Vec<(&'static str, u64)> {
        let mut out: Vec<(&'static str, u64)> = Refusal::ALL
            .iter()
            .map(|r| {
                (
                    r.as_str(),
                    self.refused[*r as usize].load(Ordering::Relaxed),
                )
            })
            .collect();
        out.push(("too_large", self.too_large.load(Ordering::Relaxed)));
        out.push(("timeout", self.timeout.load(Ordering::Relaxed)));
        out
    }

    fn body_error(&self, e: &body::BodyError) {
        match e {
            body::BodyError::TooLarge => self.too_large.fetch_add(1, Ordering::Relaxed),
            body::BodyError::Timeout => self.timeout.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
    }
}

/// The handlers' shared state.
#[derive(Clone)]
struct AdminState {
    proxy: Arc<Proxy>,
    counters: Arc<Counters>,
    policy: Arc<AdminPolicy>,
}

impl FromRef<AdminState> for Arc<Proxy> {
    fn from_ref(s: &AdminState) -> Self {
        s.proxy.clone()
    }
}

impl FromRef<AdminState> for Arc<Counters> {
    fn from_ref(s: &AdminState) -> Self {
        s.counters.clone()
    }
}

/// Serves the admin API on `listener` until the process exits.
pub async fn serve(listener: tokio::net::TcpListener, proxy: Arc<Proxy>, policy: AdminPolicy) {
    let counters = Arc::new(Counters::default());
    let state = AdminState {
        proxy,
        counters: counters.clone(),
        policy: Arc::new(policy),
    };
    server::serve(listener, router(state), counters).await
}

fn router(state: AdminState) -> Router {
    Router::new()
        .route("/live", get(live))
        .route("/ready", get(ready))
        .route("/config", get(get_config).put(put_config))
        .route("/listeners", get(listeners))
        .route("/routes", get(routes))
        .route("/clusters", get(clusters))
        .route(
            "/clusters/{name}/endpoints",
            axum::routing::put(put_endpoints),
        )
        .route("/metrics", get(metrics))
        .route("/tap", get(tap))
        .route("/ui", get(ui::page))
        .route("/ui/data", get(ui::data))
        .route("/drain", post(drain))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// Runs [`AdminPolicy::check`] before any handler.
async fn guard(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    match state
        .policy
        .check(request.method(), request.uri().path(), request.headers())
    {
        Ok(()) => next.run(request).await,
        Err(refusal) => {
            state.counters.refused[refusal as usize].fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                method = %request.method(),
                path = request.uri().path(),
                reason = refusal.as_str(),
                "admin request refused"
            );
            let status = match refusal {
                Refusal::Unauthorized => StatusCode::UNAUTHORIZED,
                Refusal::ContentType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Refusal::Host | Refusal::Origin => StatusCode::FORBIDDEN,
            };
            let mut response = json_response(status, json!({"error": refusal.message()}));
            if refusal == Refusal::Unauthorized {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
            }
            response
        }
    }
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// A refused reload or endpoint list, with every error when there are some.
fn reload_error(e: ReloadError) -> Response {
    match e {
        ReloadError::Invalid(errors) => json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": errors.to_string(), "errors": errors.0}),
        ),
        ReloadError::Body(e) => json_response(e.status(), json!({"error": e.to_string()})),
        e @ ReloadError::Draining => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": e.to_string()}),
        ),
        e @ ReloadError::Internal(_) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": e.to_string()}),
        ),
        e @ ReloadError::Managed => {
            json_response(StatusCode::CONFLICT, json!({"error": e.to_string()}))
        }
    }
}

async fn not_found() -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        json!({"error": "no such endpoint; see GET /live /ready /config /listeners /routes /clusters /metrics, PUT /config, PUT /clusters/{name}/endpoints, POST /drain"}),
    )
}

async fn live() -> Response {
    json_response(StatusCode::OK, json!({"status": "live"}))
}

async fn ready(State(proxy): State<Arc<Proxy>>) -> Response {
    if proxy.is_draining() {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "draining"}),
        )
    } else if !proxy.is_configured() {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "waiting for its configuration from the control plane"}),
        )
    } else {
        json_response(StatusCode::OK, json!({"status": "ready"}))
    }
}

async fn get_config(State(proxy): State<Arc<Proxy>>) -> Response {
    let applied = proxy.applied();
    json_response(
        StatusCode::OK,
        json!({"version": applied.version, "source": applied.source, "config": applied.document}),
    )
}

async fn put_config(
    State(proxy): State<Arc<Proxy>>,
    State(counters): State<Arc<Counters>>,
    body: Body,
) -> Response {
    const SOURCE: &str = "<PUT /config>";
    let text = match body::read_text(body).await {
        Ok(text) => text,
        Err(e) => {
            counters.body_error(&e);
            return reload_error(proxy.reject(SOURCE, ReloadError::Body(e)));
        }
    };
    match proxy.reload(SOURCE, text).await {
        Ok(version) => json_response(StatusCode::OK, json!({"version": version})),
        Err(e) => reload_error(e),
    }
}

async fn put_endpoints(
    State(proxy): State<Arc<Proxy>>,
    State(counters): State<Arc<Counters>>,
    axum::extract::Path(name): axum::extract::Path<String>,
    body: Body,
) -> Response {
    let text = body::read_text(body)
        .await
        .inspect_err(|e| counters.body_error(e));
    match proxy.set_endpoints(&name, text).await {
        Ok(version) => {
            let count = proxy
                .applied()
                .snapshot
                .clusters
                .iter()
                .find(|c| *c.name == *name)
                .map(|c| c.endpoints.len());
            json_response(
                StatusCode::OK,
                json!({"version": version, "cluster": name, "endpoints": count}),
            )
        }
        Err(e @ EndpointsError::UnknownCluster(_)) => {
            json_response(StatusCode::NOT_FOUND, json!({"error": e.to_string()}))
        }
        Err(e @ EndpointsError::NotApi { .. }) => {
            json_response(StatusCode::CONFLICT, json!({"error": e.to_string()}))
        }
        Err(EndpointsError::Reload(e)) => reload_error(e),
    }
}

async fn listeners(State(proxy): State<Arc<Proxy>>) -> Response {
    let applied = proxy.applied();
    let bound = proxy.listeners().await;
    let list: Vec<_> = applied
        .snapshot
        .listeners
        .iter()
        .map(|l| {
            let t = l.stats.totals();
            let addr = bound
                .iter()
                .find(|b| b.name == l.name)
                .map(|b| b.bound.to_string());
            json!({
                "name": &*l.name,
                "listen": l.listen.to_string(),
                "bound": addr,
                "cluster": &*l.cluster.name,
                "max_connections": l.max_connections,
                "stats": {
                    "connections_total": t.accepted,
                    "connections_active": t.active,
                    "rejected_max_connections": t.rejected_max_connections,
                    "bytes_received": t.bytes_received,
                    "bytes_sent": t.bytes_sent,
                },
            })
        })
        .collect();
    json_response(
        StatusCode::OK,
        json!({"version": applied.version, "listeners": list}),
    )
}

/// The compiled route table of every HTTP listener, in order, with the
/// config of each route and its hits (requests it took, by cluster).
async fn routes(State(proxy): State<Arc<Proxy>>) -> Response {
    let applied = proxy.applied();
    let list: Vec<_> = applied
        .snapshot
        .listeners
        .iter()
        .filter_map(|l| {
            let handler = l
                .protocol
                .as_ref()?
                .as_any()
                .downcast_ref::<ringmesh_l7::HttpHandler>()?;
            let http = &handler.config;
            let doc = applied
                .document
                .listeners
                .iter()
                .find(|d| d.name == *l.name)
                .and_then(|d| d.http.as_ref());
            let routes: Vec<_> = http
                .routes
                .routes()
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let hits = |s: &ringmesh_l7::metrics::RouteStats| s.codes().iter().sum::<u64>();
                    let by_cluster: serde_json::Map<_, _> = match &r.action {
                        ringmesh_l7::route::Action::Forward(f) => f
                            .targets
                            .iter()
                            .map(|t| (t.target.cluster.name.to_string(), json!(hits(&t.stats))))
                            .collect(),
                        _ => serde_json::Map::new(),
                    };
                    let config = doc
                        .and_then(|d| d.routes.get(i))
                        .map(|d| serde_json::to_value(d).unwrap_or_default())
                        .unwrap_or_else(|| json!({"cluster": &*l.cluster.name}));
                    json!({
                        "index": i,
                        "name": &*r.name,
                        "hits": r.all_stats().map(|s| hits(s)).sum::<u64>(),
                        "clusters": by_cluster,
                        "config": config,
                    })
                })
                .collect();
            let unmatched: u64 = http.unrouted.codes().iter().sum();
            Some(json!({"name": &*l.name, "routes": routes, "unmatched": unmatched}))
        })
        .collect();
    json_response(
        StatusCode::OK,
        json!({"version": applied.version, "listeners": list}),
    )
}

async fn clusters(State(proxy): State<Arc<Proxy>>) -> Response {
    let applied = proxy.applied();
    let list: Vec<_> = applied
        .snapshot
        .clusters
        .iter()
        .map(|c| {
            let t = c.stats.totals();
            let endpoints: Vec<_> = c.endpoints.iter().map(endpoint_json).collect();
            let (available, total) = c.health.membership();
            let outlier = &c.health.outlier;
            let by_detector = |counters: &[std::sync::atomic::AtomicU64]| {
                ringmesh_core::health::Detector::ALL
                    .iter()
                    .map(|d| (d.as_str().to_owned(), json!(counters[*d as usize].load(Ordering::Relaxed))))
                    .collect::<serde_json::Map<_, _>>()
            };
            json!({
                "name": &*c.name,
                "lb": c.balancer.policy().as_str(),
                "connect_timeout": crate::decode::format_duration(c.connect_timeout),
                "connect_attempts": c.connect_attempts,
                "circuit_breakers": {"max_connections": c.max_connections, "max_pending_requests": c.max_pending, "max_requests": c.max_requests, "max_retries": c.max_retries},
                "discovery": discovery_json(&proxy, &applied.document, &c.name),
                "panic_threshold": c.panic_threshold,
                "membership": {"available": available, "total": total, "panic": c.health.in_panic(c.panic_threshold)},
                "outlier_detection": c.outlier.is_some(),
                "health_check": c.health_check.is_some(),
                "endpoints": endpoints,
                "ejections": {
                    "active": c.health.ejected_count(),
                    "enforced": by_detector(&outlier.enforced),
                    "detected": by_detector(&outlier.detected),
                    "overflow": outlier.overflow.load(Ordering::Relaxed),
                },
                "stats": {
                    "connections_total": t.connections,
                    "connections_active": t.active,
                    "connect_failures": t.connect_failures,
                    "connect_timeouts": t.connect_timeouts,
                    "unavailable": t.unavailable,
                    "overflow": t.overflow,
                    "pending_overflow": t.pending_overflow,
                    "panic_picks": c.health.panic_picks(),
                    "bytes_sent": t.bytes_sent,
                    "bytes_received": t.bytes_received,
                },
            })
        })
        .collect();
    json_response(
        StatusCode::OK,
        json!({"version": applied.version, "clusters": list}),
    )
}

/// Where a cluster's endpoints come from, and how that is going.
fn discovery_json(proxy: &Proxy, doc: &crate::Document, name: &str) -> serde_json::Value {
    let kind = doc
        .clusters
        .iter()
        .find(|c| c.name == name)
        .map(|c| c.discovery.kind())
        .unwrap_or("static");
    let state = proxy.discovered.state(name);
    let unix = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .ok()
    };
    json!({
        "type": kind,
        "updated_unix": state.as_ref().and_then(|s| s.updated).and_then(unix),
        "last_error": state.as_ref().and_then(|s| s.last_error.clone()),
        "updates": state.as_ref().map(|s| s.updates).unwrap_or(0),
        "errors": state.as_ref().map(|s| s.errors).unwrap_or(0),
    })
}

/// One endpoint in GET /clusters: identity, weight, labels, health.
fn endpoint_json(e: &ringmesh_core::Endpoint) -> serde_json::Value {
    let h = e.health.view();
    let metadata: serde_json::Map<_, _> = e
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    json!({
        "address": e.addr.to_string(),
        "hostname": e.hostname.as_deref(),
        "weight": e.weight,
        "metadata": metadata,
        "health": if e.health.is_available() { "healthy" } else { "unhealthy" },
        "check": h.check,
        "ejected": h.ejected,
        "ejection": h.ejected.then(|| json!({
            "reason": h.ejected_by.map(|d| d.as_str()),
            "remaining_ms": h.ejection_remaining.map(|r| r.as_millis() as u64),
        })),
        "times_ejected": h.times_ejected,
        "ejection_multiplier": h.ejection_multiplier,
        "active_connections": h.active_connections,
        "successes": h.successes,
        "failures": h.failures,
        "checks_passed": h.checks_passed,
        "checks_failed": h.checks_failed,
    })
}

async fn metrics(
    State(proxy): State<Arc<Proxy>>,
    State(counters): State<Arc<Counters>>,
) -> Response {
    let (applied_count, rejected) = proxy.reload_counts();
    let applied = proxy.applied();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut certificates = Vec::new();
    for l in &applied.snapshot.listeners {
        if let Some(at) = l.tls.as_ref().and_then(|t| t.not_after) {
            certificates.push((format!("listener/{}", l.name), at - now));
        }
    }
    for c in &applied.snapshot.clusters {
        if let Some(at) = c.tls.as_ref().and_then(|t| t.not_after) {
            certificates.push((format!("cluster/{}", c.name), at - now));
        }
    }
    let info = ProxyInfo {
        version: env!("CARGO_PKG_VERSION"),
        io_engine: proxy.io_engine.as_str(),
        workers: proxy.workers,
        config_version: applied.version,
        reloads_applied: applied_count,
        reloads_rejected: rejected,
        draining: proxy.is_draining(),
        certificates,
        ktls_available: proxy.ktls_available,
        tls_paths: applied
            .snapshot
            .listeners
            .iter()
            .filter_map(|l| {
                let tls = l.tls.as_ref()?;
                Some((
                    l.name.to_string(),
                    if tls.ktls { "ktls" } else { "userspace" },
                ))
            })
            .collect(),
        node: (applied.document.node != crate::model::NodeDoc::default())
            .then(|| applied.document.node.clone()),
        discovery: proxy
            .discovered
            .states()
            .into_iter()
            .map(|(name, s)| (name, s.updates, s.errors))
            .collect(),
        admin_connections_rejected: counters.connections_rejected.load(Ordering::Relaxed),
        admin_refused: counters.refused(),
        fd_share: proxy.fd_share,
        control_plane: proxy.mesh_status.as_ref().map(|m| m.read()),
    };
    let body = render(
        &info,
        &proxy.stats,
        &proxy.health,
        &proxy.http,
        &crate::process::read(),
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn drain(State(proxy): State<Arc<Proxy>>) -> Response {
    proxy.request_drain();
    json_response(StatusCode::ACCEPTED, json!({"status": "draining"}))
}

/// `GET /tap?listener=&route=&cluster=&method=&path_prefix=&status=&limit=`:
/// live request records as newline-delimited JSON, until the client goes
/// away or `limit` records were sent. Each tap has a queue of 1,024
/// records; a slow reader loses records, never slows the data plane (a
/// line `{"dropped": N}` says how many, when it happens).
async fn tap(
    State(proxy): State<Arc<Proxy>>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    let mut filter = ringmesh_l7::tap::TapFilter::default();
    let mut limit = u64::MAX;
    for pair in query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value);
        let slot = match key {
            "listener" => &mut filter.listener,
            "route" => &mut filter.route,
            "cluster" => &mut filter.cluster,
            "method" => &mut filter.method,
            "path_prefix" => &mut filter.path_prefix,
            "status" => {
                match ringmesh_l7::tap::StatusFilter::parse(&value) {
                    Some(s) => filter.status = Some(s),
                    None => {
                        return json_response(
                            StatusCode::BAD_REQUEST,
                            json!({"error": "status: a code (503) or a class (5xx)"}),
                        );
                    }
                }
                continue;
            }
            "limit" => {
                match value.parse::<u64>() {
                    Ok(n) if n > 0 => limit = n,
                    _ => {
                        return json_response(
                            StatusCode::BAD_REQUEST,
                            json!({"error": "limit: a positive number"}),
                        );
                    }
                }
                continue;
            }
            other => {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    json!({"error": format!("unknown tap filter `{other}` (listener, route, cluster, method, path_prefix, status, limit)")}),
                );
            }
        };
        *slot = Some(value);
    }
    let subscription = proxy.http.taps().subscribe(filter);
    let stream = futures_util::stream::unfold(
        (subscription, limit, 0u64),
        |(mut sub, left, reported)| async move {
            if left == 0 {
                return None;
            }
            let event = sub.events.recv().await?;
            let dropped = sub.tap.dropped.load(Ordering::Relaxed);
            let mut line = String::new();
            if dropped > reported {
                line.push_str(&json!({ "dropped": dropped - reported }).to_string());
                line.push('\n');
            }
            line.push_str(&tap_json(&event).to_string());
            line.push('\n');
            Some((
                Ok::<_, std::convert::Infallible>(line),
                (sub, left - 1, dropped),
            ))
        },
    );
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| {
            json_response(StatusCode::INTERNAL_SERVER_ERROR, json!({"error": "tap"}))
        })
}

/// A tap record as JSON.
fn tap_json(e: &ringmesh_l7::tap::TapEvent) -> serde_json::Value {
    json!({
        "unix_ms": e.unix_ms,
        "listener": e.listener,
        "route": e.route,
        "cluster": e.cluster,
        "method": e.method,
        "authority": e.authority,
        "path": e.path,
        "status": e.status,
        "duration_ms": e.duration_ms,
        "flags": e.flags,
        "upstream": e.upstream,
        "attempts": e.attempts,
        "peer": e.peer,
        "identity": e.identity,
        "request_id": e.request_id,
        "trace_id": e.trace_id,
    })
}

/// Decodes `%XX` escapes and `+` (a query value).
fn percent_decode(v: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
            (b'+', _, _) => out.push(b' '),
            (c, _, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
