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

use thiserror::Error;

use super::channel::{Channel, ChannelError, Endpoint};
use super::durable::write_atomically;
use super::protocol::{IDENTITY_FILE, LEAVE_PATH, LeaveRequest, Push, Registration, TRUST_FILE};
use super::watch::WatchStatus;
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

/// A joined proxy's client side: state files and the channel settings.
#[derive(Clone)]
pub struct MeshClient {
    pub(super) options: Arc<JoinOptions>,
    pub(super) endpoint: Endpoint,
    /// Files in the state directory.
    pub files: StateFiles,
    /// The watch's state, for `/metrics`.
    pub status: Arc<WatchStatus>,
}

pub(super) fn now_unix() -> i64 {
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

    pub(super) fn channel(&self) -> Channel {
        Channel::new(
            self.endpoint.clone(),
            self.options.ca_file.clone(),
            Some(self.files.identity.clone()),
        )
    }

    /// The last config applied, when one is kept.
    pub fn cached_config(&self) -> Option<CachedConfig> {
        let text = std::fs::read(&self.files.config).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Keeps `push` as the last good config.
    pub(super) fn cache(&self, push: &Push) {
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
