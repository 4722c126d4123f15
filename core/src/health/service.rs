//! The health thread: one per process, off the data-plane cores. It runs
//! every active checker (one per endpoint) and the outlier sweeps, and
//! follows config snapshots: checkers start for new endpoints, stop for
//! removed ones, and restart when their settings change.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use futures_channel::mpsc;
use futures_util::StreamExt;

use crate::runtime::{self, IoEngineChoice, Runtime, Task};
use crate::snapshot::{Cluster, Snapshot};

use super::check::run_checker;
use super::now_ms;
use super::outlier::{sweep, uneject, uneject_due};

/// How often ejection times are checked: an ejected endpoint returns at
/// most this late.
const TICK: Duration = Duration::from_millis(100);

/// A handle to the health thread; dropping it stops the thread.
pub(crate) struct HealthService {
    snapshots: mpsc::UnboundedSender<Arc<Snapshot>>,
}

impl HealthService {
    /// Starts the thread with the same I/O driver choice as the workers.
    pub(crate) fn start(choice: IoEngineChoice) -> std::io::Result<HealthService> {
        let (tx, rx) = mpsc::unbounded();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        thread::Builder::new()
            .name("ringmesh-health".into())
            .spawn(move || {
                let built = match Runtime::build(choice) {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                        return;
                    }
                };
                let _ = started_tx.send(Ok(()));
                built.runtime.block_on(serve(rx));
            })?;
        started_rx
            .recv()
            .map_err(|_| std::io::Error::other("health thread exited during startup"))??;
        Ok(HealthService { snapshots: tx })
    }

    /// Follows `snapshot` from now on.
    pub(crate) fn apply(&self, snapshot: Arc<Snapshot>) {
        let _ = self.snapshots.unbounded_send(snapshot);
    }
}

/// A running checker and what it was started with.
struct Checker {
    cluster: Arc<Cluster>,
    _task: Task<()>,
}

impl Checker {
    /// Whether a checker started for `old` still does the right thing for
    /// `new`: same check, outlier settings and TLS material.
    fn still_valid(old: &Cluster, new: &Cluster) -> bool {
        old.health_check == new.health_check
            && old.outlier == new.outlier
            && match (&old.tls, &new.tls) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }
}

type Clusters = Rc<RefCell<Vec<Arc<Cluster>>>>;

async fn serve(mut snapshots: mpsc::UnboundedReceiver<Arc<Snapshot>>) {
    let clusters: Clusters = Rc::new(RefCell::new(Vec::new()));
    let _sweeper = runtime::spawn(sweep_loop(clusters.clone()));
    let mut checkers: HashMap<(Arc<str>, SocketAddr), Checker> = HashMap::new();
    while let Some(snapshot) = snapshots.next().await {
        let mut next = HashMap::new();
        for cluster in &snapshot.clusters {
            let Some(check) = &cluster.health_check else {
                // Checks removed by a reload: their verdicts go with them.
                for e in &cluster.endpoints {
                    cluster.health.set_check_failed(&e.health, false);
                }
                continue;
            };
            for (i, endpoint) in cluster.endpoints.iter().enumerate() {
                let key = (cluster.name.clone(), endpoint.addr);
                if let Some(old) = checkers.remove(&key)
                    && Checker::still_valid(&old.cluster, cluster)
                {
                    next.insert(key, old);
                    continue;
                }
                let task = runtime::spawn(run_checker(
                    cluster.health.clone(),
                    cluster.endpoints[i].health.clone(),
                    check.clone(),
                    cluster.tls.clone(),
                    cluster.outlier.clone(),
                ));
                next.insert(
                    key,
                    Checker {
                        cluster: cluster.clone(),
                        _task: task,
                    },
                );
            }
        }
        // Checkers left in the old map belong to removed endpoints or
        // clusters: dropping their tasks stops them.
        checkers = next;
        *clusters.borrow_mut() = snapshot.clusters.clone();
    }
}

/// Returns ejected endpoints on time and runs each cluster's interval
/// analysis.
async fn sweep_loop(clusters: Clusters) {
    let mut next_sweep: HashMap<Arc<str>, u64> = HashMap::new();
    loop {
        runtime::sleep(TICK).await;
        let now = now_ms();
        let current = clusters.borrow().clone();
        for cluster in &current {
            let Some(config) = &cluster.outlier else {
                // Detection removed by a reload: nobody stays ejected.
                for e in cluster.health.members() {
                    if e.is_ejected() {
                        uneject(&cluster.health, &e, "outlier detection removed");
                    }
                }
                continue;
            };
            uneject_due(&cluster.health);
            let interval = config.interval.as_millis() as u64;
            let due = next_sweep
                .entry(cluster.name.clone())
                .or_insert(now + interval);
            if now >= *due {
                sweep(&cluster.health, config);
                *due = now + interval;
            }
        }
        next_sweep.retain(|name, _| current.iter().any(|c| c.name == *name));
    }
}
