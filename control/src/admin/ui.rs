//! The built-in dashboard: `GET /ui` serves one page (HTML, CSS and
//! JavaScript embedded in the binary, no CDN), which polls `GET /ui/data`
//! every two seconds and draws the service graph this proxy sees, golden
//! metrics per route and cluster with sparklines, endpoint health, the
//! proxy's resources and the live tap (`GET /tap`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::proxy::Proxy;

/// The page.
const PAGE: &str = include_str!("ui.html");

/// `GET /ui`.
pub(super) async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            // Everything is inline; nothing may be loaded from elsewhere.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; connect-src 'self'",
            ),
        ],
        PAGE,
    )
        .into_response()
}

/// Buckets of a histogram as `[[upper bound, cumulative count], ...]`
/// (the last bound is `null`: +Inf).
fn buckets(h: &ringmesh_core::metrics::HistogramSnapshot) -> serde_json::Value {
    json!(
        h.buckets
            .iter()
            .map(|(b, c)| json!([if b.is_finite() { json!(b) } else { json!(null) }, c]))
            .collect::<Vec<_>>()
    )
}

/// `GET /ui/data`: counters (not rates: the page keeps the previous poll
/// and derives rates and quantiles from the differences).
pub(super) async fn data(State(proxy): State<Arc<Proxy>>) -> Response {
    let applied = proxy.applied();
    let doc = &applied.document;
    let process = crate::process::read();
    let routes: Vec<_> = proxy
        .http
        .routes()
        .into_iter()
        .filter(|(_, r)| r.codes().iter().any(|&n| n > 0))
        .map(|((listener, route, cluster), r)| {
            let d = r.duration();
            json!({
                "listener": listener,
                "route": route,
                "cluster": cluster,
                "codes": r.codes(),
                "buckets": buckets(&d),
            })
        })
        .collect();
    let upstreams: std::collections::HashMap<String, _> =
        proxy.http.upstreams().into_iter().collect();
    let clusters: Vec<_> = applied
        .snapshot
        .clusters
        .iter()
        .map(|c| {
            let t = c.stats.totals();
            let u = upstreams.get(&*c.name);
            json!({
                "name": &*c.name,
                "codes": u.map(|u| u.codes()),
                "retries": u.map(|u| u.retries()),
                "active_requests": t.active_requests,
                "active_connections": t.active,
                "active_by_worker": c.stats.active_by_core(),
                "endpoints": c.endpoints.iter().map(|e| {
                    let h = e.health.view();
                    json!({
                        "address": e.addr.to_string(),
                        "healthy": e.health.is_available(),
                        "ejected": h.ejected,
                        "check": h.check,
                        "active_connections": h.active_connections,
                    })
                }).collect::<Vec<_>>(),
            })
        })
        .collect();
    let listeners: Vec<_> = proxy
        .stats
        .listeners()
        .into_iter()
        .map(|(name, l)| {
            let t = l.totals();
            json!({
                "name": name,
                "active_connections": t.active,
                "active_by_worker": l.active_by_core(),
                "accepted": t.accepted,
                "bytes_received": t.bytes_received,
                "bytes_sent": t.bytes_sent,
            })
        })
        .collect();
    // Who calls this proxy, by workload (with a `node`: Istio's series).
    let mut sources: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    if doc.node != crate::model::NodeDoc::default() {
        for s in proxy.http.mesh().series() {
            let principal: &str = &s.source;
            let name = match principal {
                "unknown" | "overflow" => principal.to_owned(),
                p => ringmesh_l7::mesh::spiffe_workload(p).0.to_owned(),
            };
            let e = sources.entry(name).or_default();
            e.0 += s.requests;
            if s.code >= 500 || s.code == 0 {
                e.1 += s.requests;
            }
        }
    }
    let body = json!({
        "node": {
            "name": doc.node.service.as_deref().or(doc.node.workload.as_deref()).unwrap_or("ringmesh"),
            "namespace": doc.node.namespace,
            "version": doc.node.version,
        },
        "config_version": applied.version,
        "workers": proxy.workers,
        "io_engine": proxy.io_engine.as_str(),
        "process": {
            "cpu_seconds": process.cpu_seconds,
            "resident_bytes": process.resident_bytes,
            "open_fds": process.open_fds,
            "max_fds": proxy.fd_share.map(|f| f.limit),
            "start_time_seconds": process.start_time_seconds,
        },
        "listeners": listeners,
        "routes": routes,
        "clusters": clusters,
        "sources": sources.into_iter().map(|(name, (requests, errors))| json!({
            "name": name, "requests": requests, "errors": errors,
        })).collect::<Vec<_>>(),
        "tracing": {
            "exported": proxy.http.spans().exported.load(std::sync::atomic::Ordering::Relaxed),
            "dropped": proxy.http.spans().dropped.load(std::sync::atomic::Ordering::Relaxed),
        },
    });
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
}
