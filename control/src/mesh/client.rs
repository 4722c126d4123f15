//! A proxy that joins a mesh (`ringmesh run --control URL --node NAME`):
//! its identity (key made here, certificate from the mesh CA by CSR,
//! renewed at half its lifetime), and the watch that receives its derived
//! config, applies it through the usual snapshot swap and ACKs or NACKs.
//!
//! Static stability: the last good config and certificate are kept in the
//! state directory and served from; while the control plane is away the
//! proxy keeps serving and reconnects with jittered backoff.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{CertificateParams, KeyPair};
use thiserror::Error;

use super::channel::{Channel, ChannelError, Endpoint};
use super::durable::write_atomically;
use super::protocol::{
    CERTIFICATE_PATH, CertificateRequest, CertificateResponse, IDENTITY_FILE, LEAVE_PATH,
    LeaveRequest, Push, Registration, TRUST_FILE, WATCH_PATH, WatchRequest,
};
use crate::model::Document;

/// How a proxy joins (from the command line).
#[derive(Debug, Clone)]
pub struct JoinOptions {
    /// `https://host:port` of the control plane.
    pub control: String,
    /// The mesh CA bundle, to trust the control plane.
    pub ca_file: PathBuf,
    /// A file holding the bootstrap token (first certificate only).
    pub token_file: PathBuf,
    /// Where the identity, trust bundle and last good config are kept.
    pub state_dir: PathBuf,
    /// Who the proxy is.
    pub registration: Registration,
}

/// Why joining failed for good.
#[derive(Debug, Error)]
pub enum JoinError {
    /// The options are unusable.
    #[error("{0}")]
    Options(String),
    /// The state directory cannot be used.
    #[error("state directory `{path}`: {source}")]
    State {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The control plane refused the proxy's identity or token: retrying
    /// would not help.
    #[error("{0}")]
    Refused(ChannelError),
}

/// The proxy's files in the state directory.
#[derive(Debug, Clone)]
pub struct StateFiles {
    /// Key and certificate chain, PEM, one file (renewal replaces both in
    /// one rename, so a reader never sees a key with the wrong certificate).
    pub identity: PathBuf,
    /// The mesh's trust bundle, PEM.
    pub trust: PathBuf,
    /// The last config applied, with its version.
    pub config: PathBuf,
}

impl StateFiles {
    fn in_dir(dir: &Path) -> StateFiles {
        StateFiles {
            identity: dir.join("identity.pem"),
            trust: dir.join("ca.pem"),
            config: dir.join("config.json"),
        }
    }
}

/// The last push applied, as kept on disk.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CachedConfig {
    /// Its version.
    pub version: String,
    /// The config text.
    pub config: String,
}

/// What the watch reports for `/metrics`.
#[derive(Debug, Default)]
pub struct WatchStatus {
    connected: std::sync::atomic::AtomicBool,
    applied: std::sync::atomic::AtomicU64,
    refused: std::sync::atomic::AtomicU64,
}

impl WatchStatus {
    /// (connected, pushes applied, pushes refused).
    pub fn read(&self) -> (bool, u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.connected.load(Relaxed),
            self.applied.load(Relaxed),
            self.refused.load(Relaxed),
        )
    }
}

/// A joined proxy's client side: state files and the channel settings.
#[derive(Clone)]
pub struct MeshClient {
    options: Arc<JoinOptions>,
    endpoint: Endpoint,
    /// Files in the state directory.
    pub files: StateFiles,
    /// The watch's state, for `/metrics`.
    pub status: Arc<WatchStatus>,
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl MeshClient {
    /// Checks the options and prepares the state directory.
    pub fn new(options: JoinOptions) -> Result<MeshClient, JoinError> {
        let endpoint =
            Endpoint::parse(&options.control).map_err(|e| JoinError::Options(e.to_string()))?;
        std::fs::create_dir_all(&options.state_dir).map_err(|source| JoinError::State {
            path: options.state_dir.clone(),
            source,
        })?;
        let files = StateFiles::in_dir(&options.state_dir);
        Ok(MeshClient {
            options: Arc::new(options),
            endpoint,
            files,
            status: Arc::default(),
        })
    }

    /// Who the proxy registers as.
    pub fn registration(&self) -> &Registration {
        &self.options.registration
    }

    fn channel(&self) -> Channel {
        Channel::new(
            self.endpoint.clone(),
            self.options.ca_file.clone(),
            Some(self.files.identity.clone()),
        )
    }

    /// Expiry (Unix seconds) and issue time of the identity on disk, when
    /// there is one.
    pub fn identity_validity(&self) -> Option<(i64, i64)> {
        let pem = std::fs::read(&self.files.identity).ok()?;
        let chain = ringmesh_core::tls::parse_certs(&pem).ok()?;
        let leaf = chain.first()?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
        Some((
            cert.validity().not_before.timestamp(),
            cert.validity().not_after.timestamp(),
        ))
    }

    /// The last config applied, when one is kept.
    pub fn cached_config(&self) -> Option<CachedConfig> {
        let text = std::fs::read(&self.files.config).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Keeps `push` as the last good config.
    fn cache(&self, push: &Push) {
        let cached = CachedConfig {
            version: push.version.clone(),
            config: push.config.clone(),
        };
        let written = serde_json::to_vec(&cached)
            .map_err(std::io::Error::other)
            .and_then(|json| write_atomically(&self.files.config, &json, 0o600));
        if let Err(e) = written {
            tracing::warn!(error = %e, path = %self.files.config.display(), "cannot keep the config for a restart without the control plane");
        }
    }

    /// Asks the mesh CA for a certificate: a new key is made here and only
    /// its CSR is sent. With `bootstrap`, the call is authenticated by the
    /// bootstrap token, else by the current certificate. Writes the
    /// identity and trust files; returns (issue, expiry) Unix seconds.
    pub async fn request_certificate(&self, bootstrap: bool) -> Result<(i64, i64), ChannelError> {
        let material = |e: String| ChannelError::Material(e);
        let key = KeyPair::generate().map_err(|e| material(format!("key generation: {e}")))?;
        let csr = CertificateParams::new(Vec::<String>::new())
            .and_then(|p| p.serialize_request(&key))
            .and_then(|r| r.pem())
            .map_err(|e| material(format!("CSR: {e}")))?;
        let token = if bootstrap {
            let text = std::fs::read_to_string(&self.options.token_file).map_err(|e| {
                material(format!(
                    "bootstrap token `{}`: {e}",
                    self.options.token_file.display()
                ))
            })?;
            Some(text.trim().to_owned())
        } else {
            None
        };
        let mut channel = self.channel();
        if bootstrap {
            channel.set_identity(None);
        }
        let reg = &self.options.registration;
        let request = CertificateRequest {
            namespace: reg.namespace.clone(),
            workload: reg.workload.clone(),
            csr,
        };
        let issued: CertificateResponse = channel
            .post(
                CERTIFICATE_PATH,
                &request,
                token.as_deref(),
                Duration::from_secs(15),
            )
            .await?
            .ok_or_else(|| material("empty answer to the certificate request".into()))?;
        let state = |e: std::io::Error| material(format!("writing the identity: {e}"));
        write_atomically(&self.files.trust, issued.ca.as_bytes(), 0o644).map_err(state)?;
        let identity = format!("{}{}", key.serialize_pem(), issued.certificate);
        write_atomically(&self.files.identity, identity.as_bytes(), 0o600).map_err(state)?;
        tracing::info!(
            spiffe_id = %issued.spiffe_id,
            expires_in_s = issued.not_after - now_unix(),
            "workload certificate issued by the mesh CA"
        );
        Ok((issued.not_before, issued.not_after))
    }

    /// Makes sure a valid identity exists before the data plane starts:
    /// a kept one still valid is used as it is (a restart while the
    /// control plane is away), else one is requested, retrying with
    /// backoff until the control plane answers. A refusal is final.
    pub async fn ensure_identity(&self) -> Result<(), JoinError> {
        if let Some((_, not_after)) = self.identity_validity()
            && not_after > now_unix() + 5
            && self.files.trust.exists()
        {
            return Ok(());
        }
        let mut backoff = Backoff::new();
        loop {
            match self.request_certificate(true).await {
                Ok(_) => return Ok(()),
                Err(
                    e @ ChannelError::Refused {
                        status: 400 | 401 | 403,
                        ..
                    },
                ) => {
                    return Err(JoinError::Refused(e));
                }
                Err(e) => {
                    let wait = backoff.next();
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "cannot get a certificate from the control plane yet");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Renews the certificate at half of its lifetime, for as long as the
    /// proxy runs. A failed renewal keeps the current certificate in use
    /// and is retried with backoff; an expired certificate is replaced
    /// through the bootstrap token.
    pub async fn renew_forever(self, proxy: Arc<crate::proxy::Proxy>) {
        let mut backoff = Backoff::new();
        loop {
            // Half of the lifetime left when it arrived (the file's time):
            // the CA backdates `not_before` for clock skew, which must not
            // bring renewal forward.
            let received = std::fs::metadata(&self.files.identity)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs() as i64);
            let due = match (self.identity_validity(), received) {
                (Some((from, until)), Some(at)) => {
                    let start = at.clamp(from, until);
                    start + (until - start) / 2
                }
                (Some((from, until)), None) => from + (until - from) / 2,
                (None, _) => now_unix(),
            };
            let wait = (due - now_unix()).max(0) as u64;
            tokio::time::sleep(Duration::from_secs(wait)).await;
            if proxy.is_draining() {
                return;
            }
            let expired = self
                .identity_validity()
                .is_none_or(|(_, until)| until <= now_unix());
            match self.request_certificate(expired).await {
                Ok(_) => {
                    backoff = Backoff::new();
                    let _ = proxy.rotate_certificates().await;
                }
                Err(e) => {
                    let wait = backoff.next();
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "certificate renewal failed; serving with the current certificate");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Replaces the placeholders of a pushed config's file names with this
    /// proxy's state files.
    pub fn localize(&self, doc: &mut Document) {
        let identity = self.files.identity.display().to_string();
        let trust = self.files.trust.display().to_string();
        let local = |s: &mut String| {
            if s == IDENTITY_FILE {
                *s = identity.clone();
            } else if s == TRUST_FILE {
                *s = trust.clone();
            }
        };
        for l in &mut doc.listeners {
            if let Some(t) = &mut l.tls {
                local(&mut t.cert);
                local(&mut t.key);
                if let Some(ca) = &mut t.client_ca {
                    local(ca);
                }
            }
        }
        for c in &mut doc.clusters {
            if let Some(t) = &mut c.tls {
                local(&mut t.ca);
                if let Some(cert) = &mut t.cert {
                    local(cert);
                }
                if let Some(key) = &mut t.key {
                    local(key);
                }
            }
        }
    }

    /// Receives pushes until the proxy drains: each is applied (or
    /// refused) and answered on the next poll. Errors reaching the control
    /// plane keep the running config and are retried with jittered backoff.
    /// `started_with` is the kept config the proxy started from, if it
    /// did (not merely one on disk: it may have been unusable).
    pub async fn watch_forever(
        self,
        proxy: Arc<crate::proxy::Proxy>,
        started_with: Option<CachedConfig>,
    ) {
        let mut channel = self.channel();
        let cached = started_with;
        let mut request = WatchRequest {
            registration: self.options.registration.clone(),
            applied: cached.as_ref().map(|c| c.version.clone()),
            nonce: None,
            error: None,
            certificate_expiry: None,
        };
        let mut running_text = cached.map(|c| c.config);
        let mut backoff = Backoff::new();
        let mut failing = false;
        while !proxy.is_draining() {
            request.certificate_expiry = self.identity_validity().map(|(_, until)| until);
            let answer: Result<Option<Push>, _> = channel
                .post(WATCH_PATH, &request, None, Duration::from_secs(90))
                .await;
            match answer {
                Ok(push) => {
                    self.status
                        .connected
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    if failing {
                        tracing::info!("control plane reachable again");
                        failing = false;
                    }
                    backoff = Backoff::new();
                    let Some(push) = push else { continue };
                    if proxy.is_draining() {
                        return;
                    }
                    let same = running_text.as_deref() == Some(push.config.as_str());
                    let outcome = if same {
                        Ok(())
                    } else {
                        proxy
                            .apply_pushed(&push.version, push.config.clone(), |doc| {
                                self.localize(doc)
                            })
                            .await
                            .map(drop)
                    };
                    match outcome {
                        Ok(()) => {
                            self.status
                                .applied
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if !same {
                                tracing::info!(version = %push.version, "configuration from the control plane applied");
                                self.cache(&push);
                                running_text = Some(push.config.clone());
                            }
                            request.applied = Some(push.version.clone());
                            request.error = None;
                        }
                        Err(e) => {
                            let first = match &e {
                                crate::proxy::ReloadError::Invalid(errs) => errs
                                    .0
                                    .first()
                                    .map(|e| e.to_string())
                                    .unwrap_or_else(|| e.to_string()),
                                other => other.to_string(),
                            };
                            self.status
                                .refused
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tracing::warn!(version = %push.version, error = %first, "configuration from the control plane refused (NACK); the running one is kept");
                            request.error = Some(first);
                        }
                    }
                    request.nonce = Some(push.nonce);
                }
                Err(e @ ChannelError::Refused { .. }) => {
                    self.status
                        .connected
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                    // Refused, not unreachable: say so every time, and
                    // keep trying (an operator may fix it).
                    let wait = backoff.next();
                    tracing::error!(error = %e, retry_in_ms = wait.as_millis() as u64, "the control plane refuses this proxy's watch; serving the last configuration");
                    failing = true;
                    tokio::time::sleep(wait).await;
                }
                Err(e) => {
                    self.status
                        .connected
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                    let wait = backoff.next();
                    if !failing {
                        tracing::warn!(error = %e, "control plane unreachable; serving the last configuration, reconnecting");
                        failing = true;
                    } else {
                        tracing::debug!(error = %e, retry_in_ms = wait.as_millis() as u64, "control plane still unreachable");
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Tells the control plane this instance leaves (at shutdown); best
    /// effort, bounded to a second.
    pub async fn leave(&self) {
        let mut channel = self.channel();
        let request = LeaveRequest {
            node: self.options.registration.node.clone(),
        };
        let result: Result<Option<serde_json::Value>, _> = channel
            .post(LEAVE_PATH, &request, None, Duration::from_secs(1))
            .await;
        match result {
            Ok(_) => tracing::info!("left the mesh"),
            Err(e) => {
                tracing::warn!(error = %e, "could not tell the control plane this instance leaves; its lease will expire")
            }
        }
    }
}

/// Fully jittered exponential backoff, 100 ms doubling to 5 s.
struct Backoff {
    ceiling: Duration,
}

impl Backoff {
    const BASE: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    fn new() -> Backoff {
        Backoff {
            ceiling: Self::BASE,
        }
    }

    fn next(&mut self) -> Duration {
        let ceiling = self.ceiling;
        self.ceiling = (self.ceiling * 2).min(Self::MAX);
        // At least a tenth of the ceiling, so a loop never spins.
        let ms = ceiling.as_millis() as u64;
        Duration::from_millis(ms / 10 + ringmesh_l7::random::below(ms - ms / 10 + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_and_capped() {
        let mut b = Backoff::new();
        for _ in 0..20 {
            let d = b.next();
            assert!(d >= Duration::from_millis(10) && d <= Backoff::MAX, "{d:?}");
        }
        assert_eq!(b.ceiling, Backoff::MAX);
    }
}
