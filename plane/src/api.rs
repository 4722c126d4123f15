//! The control API, one handler per route. Operators authenticate with the
//! admin token (`Authorization: Bearer`); proxies with their mesh
//! certificate, or with their bootstrap token for a first certificate.
//!
//! | route | who | what |
//! |---|---|---|
//! | `GET /ready` | anyone | 200 when serving |
//! | `GET /mesh` | admin | the desired state as written (`x-ringmesh-mesh-version`) |
//! | `PUT /mesh` | admin | replace it (validated; 400 with every error) |
//! | `PUT /mesh/services/{name}` | admin | add or replace one service |
//! | `DELETE /mesh/services/{name}` | admin | remove one service |
//! | `GET /mesh/history` | admin | stored versions |
//! | `POST /mesh/rollback/{version}` | admin | make an old version current (as a new one) |
//! | `GET /proxies` | admin | every proxy's sync state |
//! | `GET /metrics` | admin | Prometheus text: proxies by state, pushes, ACK/NACK, certificates, updates |
//! | `GET /proxies/{node}/config` | admin | what it was sent |
//! | `POST /tokens` | admin | a bootstrap token for `{namespace, workload}` |
//! | `POST /v1/certificate` | proxy | CSR -> workload certificate |
//! | `POST /v1/watch` | proxy (certificate) | register, ACK/NACK, receive config |
//! | `POST /v1/leave` | proxy (certificate) | leave the mesh |

// Handlers return `Result<_, Answer>`: the error is the response to send,
// built once per refused request, so its size does not matter.
#![allow(clippy::result_large_err)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use ringmesh_control::mesh::protocol::{
    CERTIFICATE_PATH, CertificateRequest, CertificateResponse, LEAVE_PATH, LeaveRequest,
    WATCH_PATH, WatchRequest,
};
use ringmesh_control::yaml::{Node, Value};
use serde_json::json;

use crate::registry::PollAnswer;
use crate::{Plane, UpdateError};

/// Largest desired-state document.
const MAX_BODY: usize = 4 << 20;
/// Largest protocol call (a CSR, a registration, a NACK's error).
const MAX_CALL_BODY: usize = 64 << 10;
/// Time to send a body.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a watch is held without news.
const MAX_HOLD: Duration = Duration::from_secs(20);

/// Who is calling, as the connection proved it.
pub struct Caller {
    /// Remote address.
    pub peer: SocketAddr,
    /// SPIFFE ID of its client certificate, if it presented one.
    pub identity: Option<String>,
    /// When that certificate expires (Unix seconds): checked per request,
    /// as a keep-alive connection outlives it.
    pub not_after: Option<i64>,
}

impl Caller {
    /// The SPIFFE ID, while the certificate is still valid.
    fn valid_identity(&self) -> Option<&str> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        self.identity
            .as_deref()
            .filter(|_| self.not_after.is_some_and(|t| t > now))
    }
}

type Answer = Response<Full<Bytes>>;

fn answer(status: StatusCode, body: serde_json::Value) -> Answer {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Answer {
    answer(status, json!({ "error": message.to_string() }))
}

fn bearer(req: &Request<Incoming>) -> Option<&str> {
    req.headers()
        .get(hyper::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

async fn body_text(req: Request<Incoming>) -> Result<String, Answer> {
    body_limited(req, MAX_BODY).await
}

async fn body_limited(req: Request<Incoming>, limit: usize) -> Result<String, Answer> {
    let collected =
        tokio::time::timeout(BODY_TIMEOUT, Limited::new(req.into_body(), limit).collect())
            .await
            .map_err(|_| {
                error(
                    StatusCode::REQUEST_TIMEOUT,
                    "the body did not arrive in time",
                )
            })?
            .map_err(|e| {
                error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("reading the body: {e}"),
                )
            })?;
    String::from_utf8(collected.to_bytes().to_vec())
        .map_err(|_| error(StatusCode::BAD_REQUEST, "the body must be UTF-8"))
}

async fn body_json<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, Answer> {
    let text = body_limited(req, MAX_CALL_BODY).await?;
    serde_json::from_str(&text)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("invalid request: {e}")))
}

/// `(namespace, workload)` of a mesh SPIFFE ID of this trust domain.
fn workload_of(plane: &Plane, id: &str) -> Option<(String, String)> {
    let td = plane.registry.desired().mesh.mesh.trust_domain.clone();
    let rest = id.strip_prefix("spiffe://")?.strip_prefix(td.as_str())?;
    let mut parts = rest.strip_prefix('/')?.split('/');
    match (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next(),
    ) {
        ("ns", ns, "sa", w, None) => Some((ns.to_owned(), w.to_owned())),
        _ => None,
    }
}

fn update_error(e: UpdateError) -> Answer {
    match e {
        UpdateError::Invalid(errors) => answer(
            StatusCode::BAD_REQUEST,
            json!({
                "error": "the desired state is invalid; the current one is kept",
                "errors": errors.0.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            }),
        ),
        UpdateError::Store(m) => error(StatusCode::INTERNAL_SERVER_ERROR, m),
        UpdateError::NotFound(m) => error(StatusCode::NOT_FOUND, m),
    }
}

/// Serves one request.
pub async fn handle(plane: Arc<Plane>, caller: Arc<Caller>, req: Request<Incoming>) -> Answer {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    match (method, path.as_str()) {
        (Method::GET, "/ready") => answer(StatusCode::OK, json!({ "ready": true })),
        (Method::POST, CERTIFICATE_PATH) => certificate(&plane, &caller, req).await,
        (Method::POST, WATCH_PATH) => watch(&plane, &caller, req).await,
        (Method::POST, LEAVE_PATH) => leave(&plane, &caller, req).await,
        (method, _) => {
            if !bearer(&req).is_some_and(|t| plane.secrets.is_admin(t)) {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "this API needs the admin token (Authorization: Bearer)",
                );
            }
            admin(&plane, method, &path, req).await
        }
    }
}

async fn certificate(plane: &Plane, caller: &Caller, req: Request<Incoming>) -> Answer {
    // The certificate proves the identity when there is one; else the
    // bootstrap token must.
    let proven = match caller.valid_identity() {
        Some(id) => workload_of(plane, id),
        None => bearer(&req).and_then(|t| plane.secrets.verify_bootstrap(t)),
    };
    let refused = || {
        plane
            .counters
            .certificates_refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    };
    let Some((ns, workload)) = proven else {
        refused();
        return error(
            StatusCode::UNAUTHORIZED,
            "a certificate needs a valid bootstrap token or the current mesh certificate",
        );
    };
    let request: CertificateRequest = match body_json(req).await {
        Ok(r) => r,
        Err(a) => return a,
    };
    if (request.namespace.as_str(), request.workload.as_str()) != (ns.as_str(), workload.as_str()) {
        refused();
        tracing::warn!(peer = %caller.peer, caller = %format!("{ns}/{workload}"), asked = %format!("{}/{}", request.namespace, request.workload), "certificate for another identity refused");
        return error(
            StatusCode::FORBIDDEN,
            format!(
                "the caller is {ns}/{workload} but asks for {}/{}: a proxy gets certificates for its own identity only",
                request.namespace, request.workload
            ),
        );
    }
    let desired = plane.registry.desired();
    let spiffe_id = desired.mesh.spiffe_id(&ns, &workload);
    match plane.ca.sign_workload(
        &request.csr,
        &spiffe_id,
        desired.mesh.mesh.certificate_lifetime,
    ) {
        Ok(issued) => {
            plane
                .counters
                .certificates_issued
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(%spiffe_id, peer = %caller.peer, "workload certificate issued");
            answer(
                StatusCode::OK,
                serde_json::to_value(CertificateResponse {
                    certificate: issued.pem,
                    ca: plane.ca.root_pem.clone(),
                    spiffe_id,
                    not_after: issued.not_after,
                    not_before: issued.not_before,
                })
                .unwrap_or_default(),
            )
        }
        Err(e @ crate::ca::CaError::OtherIdentity(_)) => {
            refused();
            error(StatusCode::FORBIDDEN, e)
        }
        Err(e @ crate::ca::CaError::Csr(_)) => {
            refused();
            error(StatusCode::BAD_REQUEST, e)
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

fn proxy_identity(plane: &Plane, caller: &Caller) -> Result<(String, String), Answer> {
    caller
        .valid_identity()
        .and_then(|id| workload_of(plane, id))
        .ok_or_else(|| {
            error(
                StatusCode::UNAUTHORIZED,
                "the watch needs the proxy's mesh certificate (get one from /v1/certificate first)",
            )
        })
}

async fn watch(plane: &Plane, caller: &Caller, req: Request<Incoming>) -> Answer {
    let (ns, workload) = match proxy_identity(plane, caller) {
        Ok(x) => x,
        Err(a) => return a,
    };
    let request: WatchRequest = match body_json(req).await {
        Ok(r) => r,
        Err(a) => return a,
    };
    // Subscribed before polling: a change between the two still wakes us.
    let mut changes = plane.registry.subscribe();
    let push = |p: &crate::registry::Pushed| {
        answer(
            StatusCode::OK,
            serde_json::to_value(plane.registry.wire(p)).unwrap_or_default(),
        )
    };
    match plane.registry.poll((&ns, &workload), &request) {
        Err(e) => {
            plane
                .counters
                .watches_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(peer = %caller.peer, error = %e, "watch refused");
            error(StatusCode::FORBIDDEN, e)
        }
        Ok(PollAnswer::Push(p)) => push(&p),
        Ok(PollAnswer::Wait) => {
            let hold = (plane.registry.lease() / 3).min(MAX_HOLD);
            let deadline = tokio::time::Instant::now() + hold;
            loop {
                tokio::select! {
                    changed = changes.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        if let Some(p) = plane.registry.pending((&ns, &workload), &request.registration.node, request.nonce.as_deref()) {
                            return push(&p);
                        }
                    }
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::NO_CONTENT;
            r
        }
    }
}

async fn leave(plane: &Plane, caller: &Caller, req: Request<Incoming>) -> Answer {
    let (ns, workload) = match proxy_identity(plane, caller) {
        Ok(x) => x,
        Err(a) => return a,
    };
    let request: LeaveRequest = match body_json(req).await {
        Ok(r) => r,
        Err(a) => return a,
    };
    plane.registry.leave((&ns, &workload), &request.node);
    answer(StatusCode::OK, json!({ "left": request.node }))
}

/// A YAML node as JSON: plain scalars that read as numbers, booleans or
/// null keep that type (the decoders read them from text either way).
fn node_to_json(node: &Node) -> serde_json::Value {
    match &node.value {
        Value::Null => serde_json::Value::Null,
        Value::Scalar { text, plain } => {
            if *plain {
                if let Ok(n) = text.parse::<i64>() {
                    return json!(n);
                }
                if let Ok(f) = text.parse::<f64>()
                    && f.is_finite()
                {
                    return json!(f);
                }
                match text.as_str() {
                    "true" => return json!(true),
                    "false" => return json!(false),
                    "null" | "~" => return serde_json::Value::Null,
                    _ => {}
                }
            }
            json!(text)
        }
        Value::Seq(items) => serde_json::Value::Array(items.iter().map(node_to_json).collect()),
        Value::Map(entries) => serde_json::Value::Object(
            entries
                .iter()
                .map(|(k, v)| {
                    let key = match &k.value {
                        Value::Scalar { text, .. } => text.clone(),
                        _ => String::new(),
                    };
                    (key, node_to_json(v))
                })
                .collect(),
        ),
    }
}

async fn admin(plane: &Plane, method: Method, path: &str, req: Request<Incoming>) -> Answer {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (Method::GET, ["mesh"]) => match plane.store.current() {
            Ok(Some(v)) => {
                let mut r = Response::new(Full::new(Bytes::from(v.text)));
                r.headers_mut().insert(
                    "x-ringmesh-mesh-version",
                    hyper::header::HeaderValue::from(v.version),
                );
                r.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("application/yaml"),
                );
                r
            }
            Ok(None) => error(StatusCode::NOT_FOUND, "no desired state"),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        },
        (Method::PUT, ["mesh"]) => {
            let text = match body_text(req).await {
                Ok(t) => t,
                Err(a) => return a,
            };
            match plane.update("<PUT /mesh>", &text).await {
                Ok(v) => answer(StatusCode::OK, json!({ "version": v.version })),
                Err(e) => update_error(e),
            }
        }
        (Method::GET, ["mesh", "history"]) => match plane.store.history() {
            Ok(h) => answer(
                StatusCode::OK,
                json!(
                    h.iter()
                        .map(|v| json!({
                            "version": v.version, "time": v.time, "source": v.source,
                        }))
                        .collect::<Vec<_>>()
                ),
            ),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        },
        (Method::POST, ["mesh", "rollback", version]) => {
            let Ok(version) = version.parse::<u64>() else {
                return error(StatusCode::BAD_REQUEST, "the version is a number");
            };
            match plane.rollback(version).await {
                Ok(Some(v)) => answer(
                    StatusCode::OK,
                    json!({ "version": v.version, "from": version }),
                ),
                Ok(None) => error(
                    StatusCode::NOT_FOUND,
                    format!("version {version} is not in the history"),
                ),
                Err(e) => update_error(e),
            }
        }
        (method @ (Method::PUT | Method::DELETE), ["mesh", "services", name]) => {
            service_update(plane, method == Method::PUT, name, req).await
        }
        (Method::GET, ["metrics"]) => {
            let mut r = Response::new(Full::new(Bytes::from(crate::metrics::render(plane))));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        (Method::GET, ["proxies"]) => answer(StatusCode::OK, json!(plane.registry.status())),
        (Method::GET, ["proxies", node, "config"]) => match plane.registry.config_of(node) {
            Some(p) => answer(
                StatusCode::OK,
                json!({
                    "version": p.version,
                    "nonce": p.nonce,
                    "config": serde_json::from_str::<serde_json::Value>(&p.config).unwrap_or_default(),
                }),
            ),
            None => error(StatusCode::NOT_FOUND, format!("no proxy `{node}`")),
        },
        (Method::POST, ["tokens"]) => {
            #[derive(serde::Deserialize)]
            struct TokenRequest {
                namespace: Option<String>,
                workload: String,
            }
            let r: TokenRequest = match body_json(req).await {
                Ok(r) => r,
                Err(a) => return a,
            };
            let ns = r.namespace.unwrap_or_else(|| "default".into());
            let ok = |s: &str| {
                !s.is_empty()
                    && s.len() <= 64
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
            };
            if !ok(&ns) || !ok(&r.workload) {
                return error(
                    StatusCode::BAD_REQUEST,
                    "namespace and workload are 1-64 of [A-Za-z0-9_.-]",
                );
            }
            answer(
                StatusCode::OK,
                json!({ "token": plane.secrets.bootstrap_token(&ns, &r.workload) }),
            )
        }
        _ => error(StatusCode::NOT_FOUND, format!("no route {path}")),
    }
}

/// `PUT|DELETE /mesh/services/{name}[?namespace=NS]`: the current document
/// with one service replaced, added or removed, validated and stored as a
/// new version (JSON, which is YAML).
async fn service_update(plane: &Plane, put: bool, name: &str, req: Request<Incoming>) -> Answer {
    let namespace = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("namespace=")))
        .unwrap_or("default")
        .to_owned();
    let replacement = if put {
        let text = match body_text(req).await {
            Ok(t) => t,
            Err(a) => return a,
        };
        let node = match ringmesh_control::yaml::parse(&text) {
            Ok(Some(n)) => n,
            Ok(None) => return error(StatusCode::BAD_REQUEST, "the body is empty"),
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "{}:{}: YAML syntax error: {}",
                        e.mark.line, e.mark.col, e.message
                    ),
                );
            }
        };
        let mut value = node_to_json(&node);
        match value.as_object_mut() {
            Some(map) => {
                map.insert("name".into(), json!(name));
                map.insert("namespace".into(), json!(namespace));
            }
            None => return error(StatusCode::BAD_REQUEST, "a service is a mapping"),
        }
        Some(value)
    } else {
        None
    };
    // The merge reads the current state under the update lock: two
    // updates at once both land.
    let merge = |current: &ringmesh_control::mesh::MeshDoc| -> Result<String, UpdateError> {
        let mut doc =
            serde_json::to_value(current).map_err(|e| UpdateError::Store(e.to_string()))?;
        let services = doc
            .get_mut("services")
            .and_then(|s| s.as_array_mut())
            .ok_or_else(|| UpdateError::Store("no services in the document".into()))?;
        let at = services.iter().position(|s| {
            s.get("name").and_then(|n| n.as_str()) == Some(name)
                && s.get("namespace").and_then(|n| n.as_str()) == Some(namespace.as_str())
        });
        match (replacement, at) {
            (Some(v), Some(i)) => services[i] = v,
            (Some(v), None) => services.push(v),
            (None, Some(i)) => {
                services.remove(i);
            }
            (None, None) => {
                return Err(UpdateError::NotFound(format!(
                    "no service `{name}` in namespace `{namespace}`"
                )));
            }
        }
        serde_json::to_string_pretty(&doc).map_err(|e| UpdateError::Store(e.to_string()))
    };
    let verb = if put { "PUT" } else { "DELETE" };
    match plane
        .update_with(&format!("<{verb} /mesh/services/{name}>"), merge)
        .await
    {
        Ok(v) => answer(StatusCode::OK, json!({ "version": v.version })),
        Err(e) => update_error(e),
    }
}
