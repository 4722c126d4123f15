//! A joined proxy's identity: a key made here, a certificate from the mesh
//! CA by CSR (the key never leaves the proxy), renewed at half of its
//! lifetime, the current one kept serving while renewal fails.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use rcgen::{CertificateParams, KeyPair};

use super::backoff::Backoff;
use super::channel::ChannelError;
use super::client::{JoinError, MeshClient, now_unix};
use super::durable::write_atomically;
use super::protocol::{CERTIFICATE_PATH, CertificateRequest, CertificateResponse};

impl MeshClient {
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
}
