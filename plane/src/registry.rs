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

use crate::derive::{Instances, derive_indexed};
use crate::store::fingerprint;
use crate::tokens::nonce;

/// A row not heard from for this long is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(3600);
/// Nodes one workload may register (a bound on what one identity can make
/// the control plane hold and derive).
pub const MAX_NODES_PER_WORKLOAD: usize = 4096;

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
    /// Workloads whose instances its latest config lists.
    depends_on: Vec<(String, String)>,
}

impl NodeState {
    /// A live instance first heard from `now`, with nothing pushed yet.
    fn new(registration: Registration, now: Instant) -> NodeState {
        NodeState {
            registration,
            last_seen: now,
            live: true,
            acked: None,
            nack: None,
            latest: None,
            certificate_expiry: None,
            depends_on: Vec::new(),
        }
    }
}

/// Whose configs a change can touch.
enum Scope {
    /// Every proxy's (the desired state changed).
    All,
    /// Those listing this workload's instances, and the proxy itself.
    Membership {
        namespace: String,
        workload: String,
        node: String,
    },
}

/// (namespace, workload, node).
type NodeKey = (String, String, String);

fn key(namespace: &str, workload: &str, node: &str) -> NodeKey {
    (namespace.to_owned(), workload.to_owned(), node.to_owned())
}

struct Inner {
    desired: Arc<Desired>,
    nodes: BTreeMap<NodeKey, NodeState>,
    /// Registrations changed since they were last written.
    dirty: bool,
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
    /// The caller registers more nodes than allowed.
    #[error("{0}")]
    TooMany(String),
    /// The version is not one the service declares.
    #[error("{0}")]
    UnknownVersion(String),
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
    /// Counters for `GET /metrics` (shared with the rest of the plane).
    pub counters: Arc<crate::metrics::Counters>,
}

impl Registry {
    /// A registry serving `desired`.
    pub fn new(desired: Desired) -> Registry {
        Registry {
            inner: Mutex::new(Inner {
                dirty: false,
                desired: Arc::new(desired),
                nodes: BTreeMap::new(),
            }),
            changed: tokio::sync::watch::Sender::new(0),
            counters: Arc::default(),
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
        self.rederive(&mut inner, Scope::All);
    }

    /// Restores registrations kept before a restart, live for one lease
    /// from now (those that do not poll again expire then).
    pub fn restore(&self, registrations: Vec<Registration>) {
        let mut inner = self.lock();
        let now = Instant::now();
        for reg in registrations {
            let k = key(&reg.namespace, &reg.workload, &reg.node);
            inner.nodes.insert(k, NodeState::new(reg, now));
        }
        self.rederive(&mut inner, Scope::All);
    }

    /// The live registrations, when they changed since the last call.
    pub fn take_dirty(&self) -> Option<Vec<Registration>> {
        let mut inner = self.lock();
        if !inner.dirty {
            return None;
        }
        inner.dirty = false;
        Some(
            inner
                .nodes
                .values()
                .filter(|n| n.live)
                .map(|n| n.registration.clone())
                .collect(),
        )
    }

    fn rederive(&self, inner: &mut Inner, scope: Scope) {
        inner.dirty = true;
        let desired = inner.desired.clone();
        let instances: Vec<Registration> = inner
            .nodes
            .values()
            .filter(|n| n.live)
            .map(|n| n.registration.clone())
            .collect();
        let refs: Vec<&Registration> = instances.iter().collect();
        let index = Instances::new(&refs);
        for node in inner.nodes.values_mut().filter(|n| n.live) {
            let touched = match &scope {
                Scope::All => true,
                Scope::Membership {
                    namespace,
                    workload,
                    node: name,
                } => {
                    node.latest.is_none()
                        || node.registration.node == *name
                        || node
                            .depends_on
                            .iter()
                            .any(|(ns, w)| ns == namespace && w == workload)
                }
            };
            if !touched {
                continue;
            }
            let derived = derive_indexed(&desired.mesh, &index, &node.registration);
            node.depends_on = derived.depends_on;
            let config = derived.config.to_string();
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
        if let Some(s) = inner.desired.mesh.service_of(&reg.namespace, &reg.workload)
            && !s.versions.is_empty()
            && !reg.version.as_ref().is_some_and(|v| s.versions.contains(v))
        {
            return Err(PollError::UnknownVersion(format!(
                "service `{}` declares versions [{}]; this instance registers {}",
                s.name,
                s.versions.join(", "),
                reg.version
                    .as_deref()
                    .map(|v| format!("version `{v}`"))
                    .unwrap_or_else(|| "no version".into())
            )));
        }
        let now = Instant::now();
        let k = key(&reg.namespace, &reg.workload, &reg.node);
        let mut membership_changed = false;
        match inner.nodes.get_mut(&k) {
            Some(n) => {
                if !n.live || n.registration != *reg {
                    membership_changed = true;
                    n.registration = reg.clone();
                    n.live = true;
                }
                n.last_seen = now;
            }
            None => {
                let of_caller = inner
                    .nodes
                    .keys()
                    .filter(|(ns, w, _)| ns == caller.0 && w == caller.1)
                    .count();
                if of_caller >= MAX_NODES_PER_WORKLOAD {
                    return Err(PollError::TooMany(format!(
                        "workload {}/{} has {MAX_NODES_PER_WORKLOAD} nodes registered already",
                        caller.0, caller.1
                    )));
                }
                membership_changed = true;
                inner
                    .nodes
                    .insert(k.clone(), NodeState::new(reg.clone(), now));
            }
        }
        if let Some(n) = inner.nodes.get_mut(&k) {
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
                use std::sync::atomic::Ordering::Relaxed;
                match &request.error {
                    None => {
                        n.acked = Some(p.version.clone());
                        n.nack = None;
                        self.counters.acks.fetch_add(1, Relaxed);
                    }
                    Some(e) => {
                        n.nack = Some((p.version.clone(), e.clone()));
                        self.counters.nacks.fetch_add(1, Relaxed);
                    }
                }
            }
        }
        if membership_changed {
            tracing::info!(node = %reg.node, workload = %reg.workload, address = %reg.address, "instance registered");
            self.rederive(
                &mut inner,
                Scope::Membership {
                    namespace: reg.namespace.clone(),
                    workload: reg.workload.clone(),
                    node: reg.node.clone(),
                },
            );
        }
        let Some(n) = inner.nodes.get(&k) else {
            return Ok(PollAnswer::Wait);
        };
        Ok(match &n.latest {
            Some(p) if request.nonce.as_deref() != Some(p.nonce.as_str()) => {
                PollAnswer::Push(p.clone())
            }
            _ => PollAnswer::Wait,
        })
    }

    /// The push to answer `caller`'s held poll for `node` with, once
    /// something changed.
    pub fn pending(
        &self,
        caller: (&str, &str),
        node: &str,
        nonce: Option<&str>,
    ) -> Option<Arc<Pushed>> {
        let inner = self.lock();
        let n = inner.nodes.get(&key(caller.0, caller.1, node))?;
        n.latest
            .as_ref()
            .filter(|p| nonce != Some(p.nonce.as_str()))
            .cloned()
    }

    /// The instance `node` of `caller` leaves.
    pub fn leave(&self, caller: (&str, &str), node: &str) {
        let mut inner = self.lock();
        if inner.nodes.remove(&key(caller.0, caller.1, node)).is_some() {
            tracing::info!(node, "instance left");
            self.rederive(
                &mut inner,
                Scope::Membership {
                    namespace: caller.0.to_owned(),
                    workload: caller.1.to_owned(),
                    node: node.to_owned(),
                },
            );
        }
    }

    /// Expires leases: instances not heard from within the lease leave the
    /// endpoints (their row stays, NOT CONNECTED, for an hour).
    pub fn expire(&self) {
        let mut inner = self.lock();
        let lease = inner.desired.mesh.mesh.lease;
        let now = Instant::now();
        let mut expired = false;
        for ((_, _, name), n) in inner.nodes.iter_mut() {
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
            self.rederive(&mut inner, Scope::All);
        }
    }

    /// Every proxy's status, by node name.
    pub fn status(&self) -> Vec<ProxyStatus> {
        let inner = self.lock();
        let now = Instant::now();
        let mut rows: Vec<ProxyStatus> = inner
            .nodes
            .iter()
            .map(|((_, _, name), n)| {
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
            .collect();
        rows.sort_by(|a, b| a.node.cmp(&b.node));
        rows
    }

    /// (node, admin address) of every live proxy that reported one.
    pub fn admin_addresses(&self) -> Vec<(String, std::net::SocketAddr)> {
        let inner = self.lock();
        inner
            .nodes
            .values()
            .filter(|n| n.live)
            .filter_map(|n| Some((n.registration.node.clone(), n.registration.admin?)))
            .collect()
    }

    /// What was last derived for `node` (the live row of that name first).
    pub fn config_of(&self, node: &str) -> Option<Arc<Pushed>> {
        let inner = self.lock();
        let mut rows: Vec<&NodeState> = inner
            .nodes
            .iter()
            .filter(|((_, _, n), _)| n == node)
            .map(|(_, s)| s)
            .collect();
        rows.sort_by_key(|s| !s.live);
        rows.first()?.latest.clone()
    }

    /// The push as the wire carries it (counted as sent).
    pub fn wire(&self, p: &Pushed) -> Push {
        self.counters
            .pushes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Push {
            version: p.version.clone(),
            nonce: p.nonce.clone(),
            config: p.config.clone(),
            lease_ms: self.lease().as_millis() as u64,
        }
    }
}
