//! `max_connections_per_client`: open connections per source address, so
//! that one client (or a few that never send a byte) cannot hold every slot
//! of a listener or of its cluster's circuit breaker.
//!
//! Counts live with the listener's stats, so they survive reloads: a
//! connection admitted under an older snapshot still holds its slot. The
//! map is split into shards by address hash, each behind its own lock,
//! touched once when a connection opens and once when it closes, and only
//! on listeners that set the limit.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::Mutex;

use crossbeam_utils::CachePadded;

const SHARDS: usize = 16;

/// Open connections per client address.
#[derive(Debug, Default)]
pub struct ClientCounts {
    hasher: RandomState,
    shards: [CachePadded<Mutex<HashMap<IpAddr, u32>>>; SHARDS],
}

impl ClientCounts {
    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, u32>> {
        &self.shards[self.hasher.hash_one(ip) as usize % SHARDS]
    }

    /// Takes a slot for `ip` unless it already holds `limit`.
    pub(crate) fn try_acquire(&self, ip: IpAddr, limit: u32) -> bool {
        let mut map = self.shard(&ip).lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= limit {
            return false;
        }
        *n += 1;
        true
    }

    /// Gives back a slot taken by [`Self::try_acquire`].
    pub(crate) fn release(&self, ip: IpAddr) {
        let mut map = self.shard(&ip).lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&ip);
            }
        }
    }

    /// Connections `ip` holds now.
    pub fn open(&self, ip: IpAddr) -> u32 {
        let map = self.shard(&ip).lock().unwrap_or_else(|p| p.into_inner());
        map.get(&ip).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_its_limit_and_no_more_and_others_are_unaffected() {
        let counts = ClientCounts::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(counts.try_acquire(a, 2));
        assert!(counts.try_acquire(a, 2));
        assert!(!counts.try_acquire(a, 2));
        assert!(counts.try_acquire(b, 2));
        counts.release(a);
        assert!(counts.try_acquire(a, 2));
        assert_eq!(counts.open(a), 2);
    }

    #[test]
    fn released_clients_leave_no_entry_behind() {
        let counts = ClientCounts::default();
        for i in 0..1000u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            assert!(counts.try_acquire(ip, 1));
            counts.release(ip);
        }
        let left: usize = counts.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert_eq!(left, 0);
    }
}
