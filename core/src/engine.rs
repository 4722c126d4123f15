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

use crate::bind::{BindError, ListenKey, bind_group};
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

/// The running data plane.
pub struct Engine {
    workers: Vec<WorkerHandle>,
    io_engine: IoEngine,
    fallback_reason: Option<String>,
    stats: Arc<StatsRegistry>,
    health: Arc<HealthRegistry>,
    health_service: HealthService,
    bound: HashMap<ListenKey, BoundListener>,
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

    /// Publishes `snapshot` to every worker and waits until all run it.
    /// On error nothing has changed, except in the (unexpected) case of a
    /// worker failing to register a socket it was given.
    pub async fn apply(&mut self, snapshot: Arc<Snapshot>) -> Result<(), EngineError> {
        if self.draining {
            return Err(EngineError::Draining);
        }
        let n = self.workers.len();
        // 1. Bind every new address before touching a worker.
        let mut per_worker: Vec<HashMap<ListenKey, std::net::TcpListener>> =
            (0..n).map(|_| HashMap::new()).collect();
        let mut next_bound = HashMap::with_capacity(snapshot.listeners.len());
        for l in &snapshot.listeners {
            let key = ListenKey::of(l);
            if let Some(existing) = self.bound.get(&key) {
                let mut b = existing.clone();
                b.name = l.name.clone();
                next_bound.insert(key, b);
                continue;
            }
            let (sockets, bound) = bind_group(&l.name, l.listen, n)?;
            for (i, s) in sockets.into_iter().enumerate() {
                per_worker[i].insert(key.clone(), s);
            }
            next_bound.insert(
                key,
                BoundListener {
                    name: l.name.clone(),
                    configured: l.listen,
                    bound,
                },
            );
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
    }

    /// Downstream connections open on every worker.
    pub fn active_connections(&self) -> u64 {
        self.stats.active_connections()
    }
}
