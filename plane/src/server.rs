//! The control plane's connections: TLS with the control plane's own
//! certificate from the mesh CA; a client certificate is asked for but not
//! required (a proxy without one yet bootstraps with its token, operators
//! use the admin token). A connection cap and a head timeout bound what
//! idle or hostile clients can hold.

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use tokio::sync::Semaphore;

use crate::Plane;

/// Connections served at once (each joined proxy holds one or two).
pub const MAX_CONNECTIONS: usize = 16_384;
/// Of those, connections without a mesh certificate (operators, proxies
/// bootstrapping): one request each, so that clients with no credentials
/// cannot hold the slots joined proxies need.
pub const MAX_ANONYMOUS: usize = 256;
/// Time to complete a TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a connection has to send a request head (idle keep-alive included).
const HEADER_TIMEOUT: Duration = Duration::from_secs(120);

/// The server's TLS: its certificate (one year, re-issued at each start)
/// and optional client certificates chained to the mesh CA.
pub fn tls_config(plane: &Plane, names: &[String]) -> Result<Arc<rustls::ServerConfig>, String> {
    let (identity_pem, _) = plane
        .ca
        .server_identity(
            names,
            &format!(
                "spiffe://{}/ns/ringmesh/sa/control",
                plane.registry.desired().mesh.mesh.trust_domain
            ),
            Duration::from_secs(365 * 24 * 3600),
        )
        .map_err(|e| e.to_string())?;
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let chain = ringmesh_core::tls::parse_certs(identity_pem.as_bytes())?;
    let key = PrivateKeyDer::from_pem_slice(identity_pem.as_bytes()).map_err(|e| e.to_string())?;
    let mut roots = RootCertStore::empty();
    for c in ringmesh_core::tls::parse_certs(plane.ca.root_pem.as_bytes())? {
        roots.add(c).map_err(|e| e.to_string())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| e.to_string())?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(config))
}

/// Serves the API on `listener` until the process exits.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    plane: Arc<Plane>,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let anonymous = Arc::new(Semaphore::new(MAX_ANONYMOUS));
    let mut last_warning: Option<std::time::Instant> = None;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "control API: accept failed; backing off");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                last_warning = Some(std::time::Instant::now());
                tracing::warn!(limit = MAX_CONNECTIONS, "control API: too many connections");
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (acceptor, plane, anonymous) = (acceptor.clone(), plane.clone(), anonymous.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "control API: TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            // The identity is fixed for the connection: read it once.
            let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
            let identity = leaf.and_then(|c| ringmesh_core::tls::spiffe_id(c));
            let not_after = leaf.and_then(|c| ringmesh_core::tls::not_after(c));
            let anonymous_permit = match identity {
                Some(_) => None,
                None => match anonymous.try_acquire_owned() {
                    Ok(p) => Some(p),
                    Err(_) => {
                        tracing::debug!(%peer, "control API: too many connections without a certificate");
                        return;
                    }
                },
            };
            let keep_alive = identity.is_some();
            let caller = Arc::new(crate::api::Caller {
                peer,
                identity,
                not_after,
            });
            let service = service_fn(move |req| {
                let (plane, caller) = (plane.clone(), caller.clone());
                async move {
                    Ok::<_, std::convert::Infallible>(crate::api::handle(plane, caller, req).await)
                }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(if keep_alive {
                    HEADER_TIMEOUT
                } else {
                    Duration::from_secs(10)
                })
                .keep_alive(keep_alive)
                .max_buf_size(64 * 1024);
            if let Err(e) = http.serve_connection(TokioIo::new(tls), service).await {
                tracing::debug!(%peer, error = %e, "control connection ended with an error");
            }
            drop(anonymous_permit);
            drop(permit);
        });
    }
}
