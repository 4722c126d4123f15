//! An HTTPS/1.1 connection to the control plane: the control plane's
//! certificate is checked against the mesh CA; the proxy presents its mesh
//! certificate once it has one. One keep-alive connection, reopened when it
//! breaks or when the proxy's certificate changes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

/// Largest answer accepted (a pushed config is at most the config limit).
const MAX_ANSWER_BYTES: usize = crate::limits::MAX_FILE_BYTES + 64 * 1024;

/// Why a call to the control plane failed.
#[derive(Debug, Error)]
pub enum ChannelError {
    /// The URL is not `https://host:port`.
    #[error("invalid control-plane URL `{0}`: write https://HOST:PORT")]
    Url(String),
    /// A file could not be read or is not usable.
    #[error("{0}")]
    Material(String),
    /// Connecting, the handshake or the exchange failed.
    #[error("control plane {addr}: {message}")]
    Io {
        /// Where.
        addr: String,
        /// What.
        message: String,
    },
    /// The control plane answered with an error status.
    #[error("control plane refused {path}: {status} {message}")]
    Refused {
        /// Path called.
        path: String,
        /// HTTP status.
        status: u16,
        /// Its error message.
        message: String,
    },
}

/// Where the control plane is and how to trust it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `host:port` to connect to.
    pub authority: String,
    /// Host, as checked against the control plane's certificate.
    pub host: String,
}

impl Endpoint {
    /// Parses `https://host:port` (a path is not allowed).
    pub fn parse(url: &str) -> Result<Endpoint, ChannelError> {
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| ChannelError::Url(url.to_owned()))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() || rest.contains('/') {
            return Err(ChannelError::Url(url.to_owned()));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() && !h.ends_with(':') => (h, p),
            _ => return Err(ChannelError::Url(url.to_owned())),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(ChannelError::Url(url.to_owned()));
        }
        Ok(Endpoint {
            authority: format!(
                "{}:{port}",
                if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host.to_owned()
                }
            ),
            host: host.to_owned(),
        })
    }
}

/// A connection to the control plane, reopened as needed.
pub struct Channel {
    endpoint: Endpoint,
    /// The mesh CA bundle the control plane's certificate must chain to.
    trust: PathBuf,
    /// The proxy's identity file (key + certificate), once it has one.
    identity: Option<PathBuf>,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Channel {
    /// A channel that connects on first use.
    pub fn new(endpoint: Endpoint, trust: PathBuf, identity: Option<PathBuf>) -> Channel {
        Channel {
            endpoint,
            trust,
            identity,
            sender: None,
        }
    }

    /// Drops the connection: the next call reconnects (with the identity
    /// file as it is then).
    pub fn reset(&mut self) {
        self.sender = None;
    }

    /// Sets the identity file presented from the next connection on.
    pub fn set_identity(&mut self, identity: Option<PathBuf>) {
        self.identity = identity;
        self.reset();
    }

    fn tls(&self) -> Result<rustls::ClientConfig, ChannelError> {
        let material = |e: String| ChannelError::Material(e);
        let pem = std::fs::read(&self.trust)
            .map_err(|e| material(format!("mesh CA `{}`: {e}", self.trust.display())))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in ringmesh_core::tls::parse_certs(&pem)
            .map_err(|e| material(format!("mesh CA `{}`: {e}", self.trust.display())))?
        {
            roots
                .add(c)
                .map_err(|e| material(format!("mesh CA `{}`: {e}", self.trust.display())))?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| material(e.to_string()))?
        .with_root_certificates(roots);
        let identity = match &self.identity {
            Some(path) => match std::fs::read(path) {
                Ok(pem) => Some((path, pem)),
                // No identity yet: connect without one (bootstrap).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(material(format!("`{}`: {e}", path.display()))),
            },
            None => None,
        };
        match identity {
            Some((path, pem)) => {
                let chain: Vec<CertificateDer<'static>> = ringmesh_core::tls::parse_certs(&pem)
                    .map_err(|e| material(format!("`{}`: {e}", path.display())))?;
                let key = PrivateKeyDer::from_pem_slice(&pem)
                    .map_err(|e| material(format!("`{}`: {e}", path.display())))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| material(format!("`{}`: {e}", path.display())))
            }
            None => Ok(builder.with_no_client_auth()),
        }
    }

    async fn connect(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, ChannelError> {
        if self.sender.as_ref().is_some_and(|s| s.is_closed()) {
            self.sender = None;
        }
        if self.sender.is_none() {
            let sender = self.open().await?;
            self.sender = Some(sender);
        }
        self.sender.as_mut().ok_or_else(|| ChannelError::Io {
            addr: self.endpoint.authority.clone(),
            message: "no connection".into(),
        })
    }

    async fn open(&self) -> Result<SendRequest<Full<Bytes>>, ChannelError> {
        let io = |message: String| ChannelError::Io {
            addr: self.endpoint.authority.clone(),
            message,
        };
        let config = self.tls()?;
        let name = ServerName::try_from(self.endpoint.host.clone())
            .map_err(|e| io(format!("server name: {e}")))?;
        let tcp = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect(&self.endpoint.authority),
        )
        .await
        .map_err(|_| io("connect timed out".into()))?
        .map_err(|e| io(format!("connect: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let tls = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
        )
        .await
        .map_err(|_| io("TLS handshake timed out".into()))?
        .map_err(|e| io(format!("TLS: {e}")))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| io(format!("HTTP: {e}")))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// Sends one request and reads the whole answer: (status, body).
    pub async fn call(
        &mut self,
        method: hyper::Method,
        path: &str,
        body: Vec<u8>,
        bearer: Option<&str>,
        timeout: Duration,
    ) -> Result<(u16, Bytes), ChannelError> {
        let authority = self.endpoint.authority.clone();
        let io = |message: String| ChannelError::Io {
            addr: authority.clone(),
            message,
        };
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.endpoint.authority)
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(token) = bearer {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| io(e.to_string()))?;
        let exchange = async {
            let sender = self.connect().await?;
            sender.ready().await.map_err(|e| io(e.to_string()))?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| io(e.to_string()))?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| io(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, ChannelError>((status, body))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => {
                self.reset();
                Err(e)
            }
            Err(_) => {
                self.reset();
                Err(io(format!("no answer within {timeout:?}")))
            }
        }
    }

    /// POSTs `body` as JSON to `path`; `Ok(None)` for `204 No Content`.
    /// `bearer` authenticates the call when the proxy has no certificate yet.
    pub async fn post<B: Serialize, R: DeserializeOwned>(
        &mut self,
        path: &str,
        body: &B,
        bearer: Option<&str>,
        timeout: Duration,
    ) -> Result<Option<R>, ChannelError> {
        let json = serde_json::to_vec(body).map_err(|e| ChannelError::Material(e.to_string()))?;
        let (status, body) = self
            .call(hyper::Method::POST, path, json, bearer, timeout)
            .await?;
        if status == 204 {
            return Ok(None);
        }
        if !(200..300).contains(&status) {
            return Err(ChannelError::Refused {
                path: path.to_owned(),
                status,
                message: error_message(&body),
            });
        }
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| ChannelError::Io {
                addr: self.endpoint.authority.clone(),
                message: format!("invalid answer to {path}: {e}"),
            })
    }
}

/// The `error` of a JSON error answer (and its `errors`), else the text.
pub fn error_message(body: &[u8]) -> String {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => {
            let mut m = v
                .get("error")
                .and_then(|e| e.as_str())
                .unwrap_or_default()
                .to_owned();
            if let Some(list) = v.get("errors").and_then(|e| e.as_array()) {
                for e in list.iter().filter_map(|e| e.as_str()) {
                    m.push('\n');
                    m.push_str(e);
                }
            }
            m
        }
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_https_host_port() {
        let e = Endpoint::parse("https://localhost:15010").expect("valid");
        assert_eq!(
            (e.authority.as_str(), e.host.as_str()),
            ("localhost:15010", "localhost")
        );
        let e = Endpoint::parse("https://[::1]:15010/").expect("valid");
        assert_eq!(
            (e.authority.as_str(), e.host.as_str()),
            ("[::1]:15010", "::1")
        );
        for bad in [
            "http://localhost:15010",
            "https://localhost",
            "https://:1",
            "https://h:1/path",
            "https://h:99999",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }
}
