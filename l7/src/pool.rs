//! Per-core pools of idle keep-alive upstream connections, one list per
//! (cluster, endpoint). A worker only ever touches its own pools: no lock,
//! no atomic (Envoy's and nginx's model, not Pingora's shared pool).
//!
//! A connection enters the pool after a response that left it reusable
//! (framed body read to its end, no `Connection: close`, HTTP/1.1) and
//! leaves it for the next request to the same endpoint. Before reuse it is
//! checked with a non-blocking peek: a server that closed it while idle
//! (EOF) or sent something unasked is detected then, and the connection is
//! dropped. Idle connections older than the pool's `idle_timeout` are
//! closed by a per-worker sweep. Each pooled connection keeps its slot of
//! the cluster's `max_connections` breaker and active gauge. Clusters that
//! send PROXY protocol headers are not pooled: a header names one client.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringmesh_core::upstream::{ConnectionSlot, UpstreamConnection};

/// A cluster's pool settings.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    /// Idle connections kept per endpoint on each worker.
    pub max_idle_per_endpoint: usize,
    /// An idle connection older than this is closed.
    pub idle_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_idle_per_endpoint: 256,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// An upstream connection with its breaker slot.
#[derive(Debug)]
pub struct PooledConnection {
    /// The connection.
    pub conn: UpstreamConnection,
    /// Its slot of the cluster's `max_connections`.
    pub _slot: ConnectionSlot,
}

/// Identifies a pool: the cluster (by its long-lived stats object, the same
/// across reloads) and the endpoint address.
type Key = (usize, SocketAddr);

struct Idle {
    conn: PooledConnection,
    expires: Instant,
}

/// A cheap hasher for pool keys (a pointer and an address, not chosen by
/// clients): SipHash cost showed in the per-request profile.
#[derive(Default, Clone, Copy)]
struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.0 = (self.0.rotate_left(5) ^ n as u64).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn write_u16(&mut self, n: u16) {
        self.write_usize(usize::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.write_usize(n as usize);
    }
}

type KeyMap<V> = HashMap<Key, V, std::hash::BuildHasherDefault<KeyHasher>>;

#[derive(Default)]
struct Pools {
    lists: KeyMap<VecDeque<Idle>>,
    /// The sweep task is running.
    sweeping: bool,
}

thread_local! {
    static POOLS: RefCell<Pools> = RefCell::new(Pools::default());
}

fn key(cluster: &ringmesh_core::Cluster, addr: SocketAddr) -> Key {
    (Arc::as_ptr(&cluster.stats) as usize, addr)
}

/// An idle connection to `addr` of `cluster` that is still open, newest
/// first (the one most likely alive); stale ones found on the way are
/// closed.
pub fn take(cluster: &ringmesh_core::Cluster, addr: SocketAddr) -> Option<PooledConnection> {
    if cluster.send_proxy_protocol.is_some() {
        return None;
    }
    POOLS.with(|p| {
        let mut p = p.borrow_mut();
        let list = p.lists.get_mut(&key(cluster, addr))?;
        while let Some(idle) = list.pop_back() {
            if idle.expires > Instant::now() && idle.conn.conn.stream.is_idle_and_open() {
                return Some(idle.conn);
            }
        }
        None
    })
}

/// Returns a reusable connection to its pool (or closes it when the pool
/// is full).
pub fn put(cluster: &ringmesh_core::Cluster, conn: PooledConnection, settings: &PoolSettings) {
    // A connection that opened with a PROXY protocol header names its
    // client for good: reused for another client's request it would
    // misattribute it (HAProxy keeps such connections private the same
    // way). Closed after its request instead.
    if settings.max_idle_per_endpoint == 0 || cluster.send_proxy_protocol.is_some() {
        return;
    }
    let start_sweep = POOLS.with(|p| {
        let mut p = p.borrow_mut();
        let list = p.lists.entry(key(cluster, conn.conn.addr)).or_default();
        if list.len() >= settings.max_idle_per_endpoint {
            // Keep the newest: close the oldest.
            list.pop_front();
        }
        list.push_back(Idle {
            conn,
            expires: Instant::now() + settings.idle_timeout,
        });
        !std::mem::replace(&mut p.sweeping, true)
    });
    if start_sweep {
        ringmesh_core::rt::spawn(sweep()).detach();
    }
}

/// How often the sweep looks for expired idle connections.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Closes idle connections past their pool's timeout; runs while any pool
/// of this worker holds a connection.
async fn sweep() {
    loop {
        ringmesh_core::rt::sleep(SWEEP_EVERY).await;
        let more = POOLS.with(|p| {
            let mut p = p.borrow_mut();
            let now = Instant::now();
            p.lists.retain(|_, list| {
                // Oldest first: stop at the first one still fresh.
                while list.front().is_some_and(|i| i.expires <= now) {
                    list.pop_front();
                }
                !list.is_empty()
            });
            let more = !p.lists.is_empty();
            p.sweeping = more;
            more
        });
        if !more {
            return;
        }
    }
}
