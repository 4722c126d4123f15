//! The proxies the control plane knows: their registrations (the mesh's
//! endpoints), leases, what was derived for each and what each ACKed.
//!
//! Every change (desired state, an instance joining, leaving or expiring)
//! re-derives every live proxy's config; a proxy whose config changed gets
//! a new version and nonce, and the held watches are woken to send it. The
//! control plane is not a data path: one mutex, held for microseconds per
//! proxy, is simpler than anything finer and fast enough for thousands.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ringmesh_control::mesh::desired::MeshDoc;
use ringmesh_control::mesh::protocol::{ProxyStatus, Push, Registration, SyncState, WatchRequest};
use thiserror::Error;

use crate::derive::derive;
use crate::store::fingerprint;
use crate::tokens::nonce;

/// A row not heard from for this long is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// The desired state in force.
pub struct Desired {
    /// Its stored version.
    pub version: u64,
    /// The document.
    pub mesh: MeshDoc,
}

/// A config derived for one proxy.
#[derive(Debug)]
pub struct Pushed {
    /// `<mesh version>-<content hash>`.
    pub version: String,
    /// The nonce naming this push.
    pub nonce: String,
    /// The config, JSON text.
    pub config: String,
}

struct NodeState {
    registration: Registration,
    last_seen: Instant,
    live: bool,
    acked: Option<String>,
    nack: Option<(String, String)>,
    latest: Option<Arc<Pushed>>,
    certificate_expiry: Option<i64>,
}

struct Inner {
    desired: Arc<Desired>,
    nodes: BTreeMap<String, NodeState>,
}

/// Why a poll was refused.
#[derive(Debug, Error)]
pub enum PollError {
    /// The caller's identity is not the registration's.
    #[error(
        "the caller is {caller} but registers as {namespace}/{workload}: a proxy gets configuration for its own identity only"
    )]
    NotOwnIdentity {
        /// Authenticated identity.
        caller: String,
        /// Claimed namespace.
        namespace: String,
        /// Claimed workload.
        workload: String,
    },
    /// A live node of another identity has this name.
    #[error("node `{0}` is registered by another workload")]
    NodeTaken(String),
}

/// What to answer a poll with.
pub enum PollAnswer {
    /// The proxy has not seen this push yet.
    Push(Arc<Pushed>),
    /// Nothing new: hold the request until something changes.
    Wait,
}

/// The proxies and their sync state.
pub struct Registry {
    inner: Mutex<Inner>,
    changed: tokio::sync::watch::Sender<u64>,
}

impl Registry {
    /// A registry serving `desired`.
    pub fn new(desired: Desired) -> Registry {
        Registry {
            inner: Mutex::new(Inner {
                desired: Arc::new(desired),
                nodes: BTreeMap::new(),
            }),
            changed: tokio::sync::watch::Sender::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere while holding it leaves consistent data (every
        // update is a whole assignment): keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The desired state in force.
    pub fn desired(&self) -> Arc<Desired> {
        self.lock().desired.clone()
    }

    /// The lease of registered instances.
    pub fn lease(&self) -> Duration {
        self.lock().desired.mesh.mesh.lease
    }

    /// A receiver woken at every change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Makes `desired` the state in force and re-derives every proxy.
    pub fn set_desired(&self, desired: Desired) {
        let mut inner = self.lock();
        inner.desired = Arc::new(desired);
        self.rederive(&mut inner);
    }

    fn rederive(&self, inner: &mut Inner) {
        let desired = inner.desired.clone();
        let instances: Vec<Registration> = inner
            .nodes
            .values()
            .filter(|n| n.live)
            .map(|n| n.registration.clone())
            .collect();
        let refs: Vec<&Registration> = instances.iter().collect();
        for node in inner.nodes.values_mut().filter(|n| n.live) {
            let config = derive(&desired.mesh, &refs, &node.registration).to_string();
            if node.latest.as_ref().is_some_and(|p| p.config == config) {
                continue;
            }
            let hash = fingerprint(&config);
            node.latest = Some(Arc::new(Pushed {
                version: format!("{}-{}", desired.version, &hash[..8]),
                nonce: nonce(),
                config,
            }));
        }
        self.changed.send_modify(|g| *g += 1);
    }

    /// Records a poll from `caller` (namespace, workload of its
    /// certificate): registration and lease, ACK or NACK of the push it
    /// names. Returns what to answer now.
    pub fn poll(
        &self,
        caller: (&str, &str),
        request: &WatchRequest,
    ) -> Result<PollAnswer, PollError> {
        let reg = &request.registration;
        if (reg.namespace.as_str(), reg.workload.as_str()) != caller {
            return Err(PollError::NotOwnIdentity {
                caller: format!("{}/{}", caller.0, caller.1),
                namespace: reg.namespace.clone(),
                workload: reg.workload.clone(),
            });
        }
        let mut inner = self.lock();
        let now = Instant::now();
        let mut membership_changed = false;
        match inner.nodes.get_mut(&reg.node) {
            Some(n) => {
                let same_identity = n.registration.namespace == reg.namespace
                    && n.registration.workload == reg.workload;
                if n.live && !same_identity {
                    return Err(PollError::NodeTaken(reg.node.clone()));
                }
                if !n.live || n.registration != *reg {
                    membership_changed = true;
                    n.registration = reg.clone();
                    n.live = true;
                }
                n.last_seen = now;
            }
            None => {
                membership_changed = true;
                inner.nodes.insert(
                    reg.node.clone(),
                    NodeState {
                        registration: reg.clone(),
                        last_seen: now,
                        live: true,
                        acked: None,
                        nack: None,
                        latest: None,
                        certificate_expiry: None,
                    },
                );
            }
        }
        if let Some(n) = inner.nodes.get_mut(&reg.node) {
            n.certificate_expiry = request.certificate_expiry;
            // After a restart of either side the proxy reports the version
            // it runs: take it as acknowledged.
            if n.acked.is_none() {
                n.acked = request.applied.clone();
            }
            let answered = n
                .latest
                .as_ref()
                .filter(|p| request.nonce.as_deref() == Some(p.nonce.as_str()));
            if let Some(p) = answered {
                match &request.error {
                    None => {
                        n.acked = Some(p.version.clone());
                        n.nack = None;
                    }
                    Some(e) => n.nack = Some((p.version.clone(), e.clone())),
                }
            }
        }
        if membership_changed {
            tracing::info!(node = %reg.node, workload = %reg.workload, address = %reg.address, "instance registered");
            self.rederive(&mut inner);
        }
        let Some(n) = inner.nodes.get(&reg.node) else {
            return Ok(PollAnswer::Wait);
        };
        Ok(match &n.latest {
            Some(p) if request.nonce.as_deref() != Some(p.nonce.as_str()) => {
                PollAnswer::Push(p.clone())
            }
            _ => PollAnswer::Wait,
        })
    }

    /// The push to answer a held poll with, once something changed.
    pub fn pending(&self, node: &str, nonce: Option<&str>) -> Option<Arc<Pushed>> {
        let inner = self.lock();
        let n = inner.nodes.get(node)?;
        n.latest
            .as_ref()
            .filter(|p| nonce != Some(p.nonce.as_str()))
            .cloned()
    }

    /// The instance `node` of `caller` leaves.
    pub fn leave(&self, caller: (&str, &str), node: &str) -> Result<(), PollError> {
        let mut inner = self.lock();
        let Some(n) = inner.nodes.get(node) else {
            return Ok(());
        };
        if (
            n.registration.namespace.as_str(),
            n.registration.workload.as_str(),
        ) != caller
        {
            return Err(PollError::NodeTaken(node.to_owned()));
        }
        inner.nodes.remove(node);
        tracing::info!(node, "instance left");
        self.rederive(&mut inner);
        Ok(())
    }

    /// Expires leases: instances not heard from within the lease leave the
    /// endpoints (their row stays, NOT CONNECTED, for an hour).
    pub fn expire(&self) {
        let mut inner = self.lock();
        let lease = inner.desired.mesh.mesh.lease;
        let now = Instant::now();
        let mut expired = false;
        for (name, n) in inner.nodes.iter_mut() {
            if n.live && now.duration_since(n.last_seen) > lease {
                n.live = false;
                expired = true;
                tracing::warn!(node = %name, "lease expired: instance removed from the mesh's endpoints");
            }
        }
        inner
            .nodes
            .retain(|_, n| n.live || now.duration_since(n.last_seen) < FORGET_AFTER);
        if expired {
            self.rederive(&mut inner);
        }
    }

    /// Every proxy's status, by node name.
    pub fn status(&self) -> Vec<ProxyStatus> {
        let inner = self.lock();
        let now = Instant::now();
        inner
            .nodes
            .iter()
            .map(|(name, n)| {
                let latest = n.latest.as_ref().map(|p| p.version.clone());
                let nack = n.nack.as_ref().filter(|(v, _)| Some(v) == latest.as_ref());
                let state = if !n.live {
                    SyncState::NotConnected
                } else if nack.is_some() {
                    SyncState::Nack
                } else if latest.is_some() && n.acked == latest {
                    SyncState::Synced
                } else {
                    SyncState::Stale
                };
                ProxyStatus {
                    node: name.clone(),
                    namespace: n.registration.namespace.clone(),
                    workload: n.registration.workload.clone(),
                    version: n.registration.version.clone(),
                    address: n.registration.address,
                    state,
                    acked: n.acked.clone(),
                    latest,
                    error: nack.map(|(_, e)| e.clone()),
                    certificate_expiry: n.certificate_expiry,
                    last_seen_ms: now.duration_since(n.last_seen).as_millis() as u64,
                }
            })
            .collect()
    }

    /// What was last derived for `node`.
    pub fn config_of(&self, node: &str) -> Option<Arc<Pushed>> {
        self.lock().nodes.get(node)?.latest.clone()
    }

    /// The push as the wire carries it.
    pub fn wire(&self, p: &Pushed) -> Push {
        Push {
            version: p.version.clone(),
            nonce: p.nonce.clone(),
            config: p.config.clone(),
            lease_ms: self.lease().as_millis() as u64,
        }
    }
}
