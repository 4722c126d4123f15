//! The data plane as the control side sees it: start the workers, publish
//! snapshots to them, stop accepting, and read merged statistics.
//!
//! [`Engine::apply`] binds new listening sockets first (so a port conflict
//! rejects the config with nothing changed), then hands every worker the
//! snapshot and its sockets and waits until each has switched. When it
//! returns, every new connection uses the new snapshot.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;

use futures_channel::{mpsc, oneshot};
use thiserror::Error;

use crate::bind::{BindError, ListenKey, bind_group, join_group};
use crate::health::HealthRegistry;
use crate::health::service::HealthService;
use crate::metrics::StatsRegistry;
use crate::runtime::{IoEngine, IoEngineChoice};
use crate::snapshot::Snapshot;
use crate::worker::{self, Command};

/// How to start the engine.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Worker threads; `None` means one per CPU this process may use.
    pub workers: Option<usize>,
    /// Which I/O driver to use.
    pub io_engine: IoEngineChoice,
    /// Pin each worker to its own CPU.
    pub pin_workers: bool,
}

/// Engine failures.
#[derive(Debug, Error)]
pub enum EngineError {
    /// A worker's runtime could not be built (e.g. `--io-engine uring` where
    /// io_uring is blocked).
    #[error("worker {core}: cannot start the I/O engine (--io-engine {choice}): {source}")]
    Runtime {
        /// Worker index.
        core: usize,
        /// What was asked for.
        choice: IoEngineChoice,
        /// The error.
        source: std::io::Error,
    },
    /// A worker thread could not be spawned or died.
    #[error("worker {core}: {message}")]
    Worker {
        /// Worker index.
        core: usize,
        /// What happened.
        message: String,
    },
    /// A listening socket could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The engine is draining and takes no new config.
    #[error("the proxy is draining; configuration changes are refused")]
    Draining,
}

struct WorkerHandle {
    commands: mpsc::UnboundedSender<Command>,
    _thread: thread::JoinHandle<()>,
}

/// A bound listener, as reported by [`Engine::listeners`].
#[derive(Debug, Clone)]
pub struct BoundListener {
    /// Listener name.
    pub name: Arc<str>,
    /// Configured address.
    pub configured: SocketAddr,
    /// Address actually bound (differs when the configured port is 0).
    pub bound: SocketAddr,
}

/// A listening socket group taken over from the process this one upgraded.
#[derive(Debug)]
pub struct InheritedListener {
    /// The listener's name in the old process's config.
    pub name: Arc<str>,
    /// Its configured address there (port 0 for an ephemeral port).
    pub configured: SocketAddr,
    /// The sockets of its SO_REUSEPORT group, one per old worker.
    pub sockets: Vec<std::net::TcpListener>,
}

/// A listener's sockets, duplicated for the next process (see
/// [`Engine::handover`]).
#[derive(Debug)]
pub struct HandoverListener {
    /// Name, configured and bound address.
    pub listener: BoundListener,
    /// Duplicates of every socket of its group.
    pub sockets: Vec<std::net::TcpListener>,
}

/// The running data plane.
pub struct Engine {
    workers: Vec<WorkerHandle>,
    io_engine: IoEngine,
    fallback_reason: Option<String>,
    stats: Arc<StatsRegistry>,
    health: Arc<HealthRegistry>,
    health_service: HealthService,
    bound: HashMap<ListenKey, BoundListener>,
    /// A duplicate of every socket the workers serve, per listener: what a
    /// binary upgrade hands over. Closed with the workers' on drain.
    held: HashMap<ListenKey, Vec<std::net::TcpListener>>,
    /// Sockets from the previous process not yet claimed by a config.
    inherited: HashMap<ListenKey, (SocketAddr, Vec<std::net::TcpListener>)>,
    draining: bool,
}

impl Engine {
    /// Starts the workers and waits until each runtime is up. No listener
    /// is open until the first [`Engine::apply`].
    pub fn start(options: &EngineOptions) -> Result<Engine, EngineError> {
        let cpus = worker::allowed_cpus();
        let count = options.workers.unwrap_or(cpus.len().max(1)).max(1);
        let mut workers = Vec::with_capacity(count);
        let mut engines = Vec::with_capacity(count);
        for core in 0..count {
            let cpu = (options.pin_workers && !cpus.is_empty()).then(|| cpus[core % cpus.len()]);
            let (tx, rx) = mpsc::unbounded();
            let (started_tx, started_rx) = std::sync::mpsc::channel();
            let choice = options.io_engine;
            let thread = thread::Builder::new()
                .name(format!("ringmesh-w{core}"))
                .spawn(move || worker::run(core, cpu, choice, rx, started_tx))
                .map_err(|e| EngineError::Worker {
                    core,
                    message: format!("cannot spawn thread: {e}"),
                })?;
            match started_rx.recv() {
                Ok(Ok(started)) => engines.push(started),
                Ok(Err(source)) => {
                    return Err(EngineError::Runtime {
                        core,
                        choice,
                        source,
                    });
                }
                Err(_) => {
                    return Err(EngineError::Worker {
                        core,
                        message: "exited during startup".into(),
                    });
                }
            }
            workers.push(WorkerHandle {
                commands: tx,
                _thread: thread,
            });
        }
        let health_service =
            HealthService::start(options.io_engine).map_err(|e| EngineError::Worker {
                core: count,
                message: format!("health thread: {e}"),
            })?;
        let first = &engines[0];
        Ok(Engine {
            health: Arc::new(HealthRegistry::new(count)),
            health_service,
            io_engine: first.engine,
            fallback_reason: first.fallback_reason.clone(),
            stats: Arc::new(StatsRegistry::new(count)),
            workers,
            bound: HashMap::new(),
            held: HashMap::new(),
            inherited: HashMap::new(),
            draining: false,
        })
    }

    /// The number of workers.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// The I/O driver the workers run.
    pub fn io_engine(&self) -> IoEngine {
        self.io_engine
    }

    /// Why `auto` fell back to epoll, if it did.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback_reason.as_deref()
    }

    /// Statistics of every listener and cluster; snapshots must take their
    /// stats objects from here so counters survive reloads.
    pub fn stats(&self) -> &Arc<StatsRegistry> {
        &self.stats
    }

    /// Endpoint health of every cluster; snapshots must take their
    /// [`ClusterHealth`](crate::health::ClusterHealth) from here so
    /// ejections and check verdicts survive reloads.
    pub fn health(&self) -> &Arc<HealthRegistry> {
        &self.health
    }

    /// Listeners currently open, with their bound addresses.
    pub fn listeners(&self) -> Vec<BoundListener> {
        let mut v: Vec<_> = self.bound.values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Takes over listening sockets from the process this one upgraded.
    /// The next [`Engine::apply`] serves each on the listener configured
    /// with the same address (or, for port 0, the same name and address);
    /// sockets it does not claim are closed after it. A socket that is not
    /// a listening TCP socket is closed now and reported.
    pub fn inherit(&mut self, listeners: Vec<InheritedListener>) -> Vec<String> {
        let mut refused = Vec::new();
        for l in listeners {
            let mut bound = None;
            let mut sockets = Vec::with_capacity(l.sockets.len());
            for s in l.sockets {
                match listening_addr(&s) {
                    Ok(addr) if bound.is_none_or(|b| b == addr) => {
                        bound = Some(addr);
                        sockets.push(s);
                    }
                    Ok(addr) => refused.push(format!(
                        "listener `{}`: a socket bound to {addr}, not {}",
                        l.name,
                        bound.unwrap_or(addr)
                    )),
                    Err(e) => refused.push(format!("listener `{}`: {e}", l.name)),
                }
            }
            if let Some(bound) = bound {
                self.inherited
                    .insert(ListenKey::new(&l.name, l.configured), (bound, sockets));
            }
        }
        refused
    }

    /// Duplicates of every listening socket, per listener, for the next
    /// process of a binary upgrade. Empty once draining.
    pub fn handover(&self) -> std::io::Result<Vec<HandoverListener>> {
        let mut out = Vec::with_capacity(self.held.len());
        for (key, sockets) in &self.held {
            let Some(listener) = self.bound.get(key) else {
                continue;
            };
            out.push(HandoverListener {
                listener: listener.clone(),
                sockets: sockets
                    .iter()
                    .map(std::net::TcpListener::try_clone)
                    .collect::<std::io::Result<_>>()?,
            });
        }
        out.sort_by(|a, b| a.listener.name.cmp(&b.listener.name));
        Ok(out)
    }

    /// Publishes `snapshot` to every worker and waits until all run it.
    /// On error nothing has changed, except in the (unexpected) case of a
    /// worker failing to register a socket it was given.
    pub async fn apply(&mut self, snapshot: Arc<Snapshot>) -> Result<(), EngineError> {
        if self.draining {
            return Err(EngineError::Draining);
        }
        let n = self.workers.len();
        // 1. Bind every new address (or take the inherited sockets) before
        // touching a worker.
        let mut per_worker: Vec<HashMap<ListenKey, Vec<std::net::TcpListener>>> =
            (0..n).map(|_| HashMap::new()).collect();
        let mut next_bound = HashMap::with_capacity(snapshot.listeners.len());
        let mut next_held = HashMap::with_capacity(snapshot.listeners.len());
        let mut kept = Vec::new();
        let mut inherited = Vec::new();
        for l in &snapshot.listeners {
            let key = ListenKey::of(l);
            if let Some(existing) = self.bound.get(&key) {
                let mut b = existing.clone();
                b.name = l.name.clone();
                next_bound.insert(key.clone(), b);
                // Its duplicates move over only once nothing can fail.
                kept.push(key);
                continue;
            }
            if let Some((bound, sockets)) = self.inherited.get(&key) {
                let sockets = duplicate(&l.name, *bound, sockets)?;
                inherited.push((l, key, *bound, sockets));
                continue;
            }
            let (sockets, bound) = bind_group(&l.name, l.listen, n)?;
            place(
                l,
                key,
                bound,
                sockets,
                &mut per_worker,
                &mut next_bound,
                &mut next_held,
            )?;
        }
        // Inherited groups grow (this process runs more workers than the
        // old one) only once every new address is bound: a socket that
        // joins a group takes connections at once, and dropping it on a
        // later failure would reset them.
        for (l, key, bound, mut sockets) in inherited {
            sockets.extend(join_group(&l.name, bound, n.saturating_sub(sockets.len()))?);
            place(
                l,
                key,
                bound,
                sockets,
                &mut per_worker,
                &mut next_bound,
                &mut next_held,
            )?;
        }
        // 2. Hand each worker the snapshot and its sockets; 3. wait for all.
        let mut acks = Vec::with_capacity(n);
        for (core, (worker, sockets)) in self.workers.iter().zip(per_worker).enumerate() {
            let (done, ack) = oneshot::channel();
            let command = Command::Apply {
                snapshot: snapshot.clone(),
                sockets,
                done,
            };
            worker
                .commands
                .unbounded_send(command)
                .map_err(|_| EngineError::Worker {
                    core,
                    message: "is gone".into(),
                })?;
            acks.push(ack);
        }
        let mut failure = None;
        for (core, ack) in acks.into_iter().enumerate() {
            match ack.await {
                Ok(Ok(())) => {}
                Ok(Err(message)) => failure = Some(EngineError::Worker { core, message }),
                Err(_) => {
                    failure = Some(EngineError::Worker {
                        core,
                        message: "is gone".into(),
                    })
                }
            }
        }
        self.bound = next_bound;
        for key in kept {
            if let Some(held) = self.held.remove(&key) {
                next_held.insert(key, held);
            }
        }
        self.held = next_held;
        // Inherited sockets are claimed by the first config or never: the
        // old process's listeners this config dropped close now.
        for (key, (bound, _)) in self.inherited.drain() {
            if !self.bound.contains_key(&key) {
                tracing::warn!(addr = %bound, "a listener taken over from the previous process is not in this config: closed");
            }
        }
        // The snapshot runs now: its endpoints are the clusters' members.
        for cluster in &snapshot.clusters {
            let members: Vec<_> = cluster.endpoints.iter().map(|e| e.health.clone()).collect();
            cluster.health.commit(&members);
        }
        self.health_service.apply(snapshot);
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Closes every listening socket on every worker and waits until they
    /// are closed. Established connections continue. Config changes are
    /// refused from now on.
    pub async fn stop_accepting(&mut self) {
        self.draining = true;
        let mut acks = Vec::with_capacity(self.workers.len());
        for worker in &self.workers {
            let (done, ack) = oneshot::channel();
            if worker
                .commands
                .unbounded_send(Command::StopAccepting { done })
                .is_ok()
            {
                acks.push(ack);
            }
        }
        for ack in acks {
            let _ = ack.await;
        }
        self.bound.clear();
        // The last descriptors: the kernel stops queueing connections here
        // (unless a new process took the sockets over).
        self.held.clear();
        self.inherited.clear();
    }

    /// Downstream connections open on every worker.
    pub fn active_connections(&self) -> u64 {
        self.stats.active_connections()
    }
}

/// Records a listener's new socket group: a duplicate of each kept for a
/// later hand-over, the sockets spread over the workers (some accept from
/// several when the group is larger than the worker count), its address.
fn place(
    l: &crate::snapshot::ListenerConfig,
    key: ListenKey,
    bound: SocketAddr,
    sockets: Vec<std::net::TcpListener>,
    per_worker: &mut [HashMap<ListenKey, Vec<std::net::TcpListener>>],
    next_bound: &mut HashMap<ListenKey, BoundListener>,
    next_held: &mut HashMap<ListenKey, Vec<std::net::TcpListener>>,
) -> Result<(), BindError> {
    next_held.insert(key.clone(), duplicate(&l.name, bound, &sockets)?);
    let n = per_worker.len().max(1);
    for (i, s) in sockets.into_iter().enumerate() {
        per_worker[i % n].entry(key.clone()).or_default().push(s);
    }
    next_bound.insert(
        key,
        BoundListener {
            name: l.name.clone(),
            configured: l.listen,
            bound,
        },
    );
    Ok(())
}

/// Duplicates of listener `name`'s `sockets` (bound to `addr`).
fn duplicate(
    name: &Arc<str>,
    addr: SocketAddr,
    sockets: &[std::net::TcpListener],
) -> Result<Vec<std::net::TcpListener>, BindError> {
    sockets
        .iter()
        .map(std::net::TcpListener::try_clone)
        .collect::<std::io::Result<_>>()
        .map_err(|source| BindError::Io {
            name: name.clone(),
            addr,
            source,
        })
}

/// The address `socket` listens on; an error unless it is a listening TCP
/// socket (what a hand-over must carry).
fn listening_addr(socket: &std::net::TcpListener) -> std::io::Result<SocketAddr> {
    use std::os::fd::AsRawFd;
    let mut listening: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `listening`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut listening as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if listening == 0 {
        return Err(std::io::Error::other("not a listening socket"));
    }
    socket.local_addr()
}
