//! A joined proxy's watch: pushes received, applied through the snapshot
//! swap and ACKed, or refused and NACKed with the last good config kept;
//! reconnects with jittered backoff while the control plane is away.

use std::sync::Arc;
use std::time::Duration;

use super::backoff::Backoff;
use super::channel::ChannelError;
use super::client::{CachedConfig, MeshClient};
use super::protocol::{Push, WATCH_PATH, WatchRequest};

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

impl MeshClient {
    /// Receives pushes until the proxy drains: each is applied (or
    /// refused) and answered on the next poll. Errors reaching the control
    /// plane keep the running config and are retried with jittered backoff.
    /// `started_with` is the kept config the proxy started from, if it
    /// did (not merely one on disk: it may have been unusable).
    pub async fn watch_forever(
        self,
        proxy: Arc<crate::proxy::Proxy>,
        started_with: Option<CachedConfig>,
        admin: std::net::SocketAddr,
    ) {
        let mut channel = self.channel();
        let cached = started_with;
        let mut request = WatchRequest {
            registration: super::protocol::Registration {
                admin: Some(admin),
                ..self.options.registration.clone()
            },
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
}
