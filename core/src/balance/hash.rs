//! Consistent hashing: the same key (for TCP, the client's source IP) keeps
//! going to the same endpoint, and when an endpoint is added or removed
//! only the keys that must move do. Two table shapes, as in Envoy:
//! `ring_hash` (a sorted ring of virtual nodes, Ketama-style) and `maglev`
//! (a 65,537-entry lookup table: faster picks, slightly more movement).
//!
//! Endpoints are hashed by their address, so a reload that keeps an
//! endpoint keeps its keys.

use std::net::{IpAddr, SocketAddr};

/// 64-bit FNV-1a, then a SplitMix64 finaliser: stable across builds and
/// platforms (std's hasher is not), and well mixed.
pub(crate) fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix(h)
}

fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The hash key of a TCP client: its IP address (not the port, so all of a
/// client's connections go to the same endpoint).
pub fn client_key(peer: SocketAddr) -> u64 {
    match peer.ip() {
        IpAddr::V4(ip) => hash_bytes(&ip.octets()),
        IpAddr::V6(ip) => hash_bytes(&ip.octets()),
    }
}

fn endpoint_hash(id: &str, salt: u64) -> u64 {
    mix(hash_bytes(id.as_bytes()) ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// Ketama-style ring: each endpoint gets 160 virtual nodes per unit of
/// weight. The count does not depend on the other endpoints (unlike a
/// minimum ring size split among them), so removing an endpoint moves only
/// its own keys. A ring is at most [`MAX_RING`] nodes (16 MiB): past that
/// (more than 6,553 units of weight in all) every endpoint's count is
/// scaled down alike, at least one node each, so a large cluster cannot
/// make a reload allocate without bound.
#[derive(Debug)]
pub(crate) struct RingHash {
    ring: Vec<(u64, u32)>,
}

const NODES_PER_WEIGHT: u64 = 160;

/// Most virtual nodes in one ring.
pub(crate) const MAX_RING: u64 = 1 << 20;

impl RingHash {
    pub(crate) fn new(ids: &[String], weights: &[u32]) -> Self {
        let weight = |i: usize| u64::from(weights.get(i).copied().unwrap_or(1).max(1));
        let wanted: u64 = (0..ids.len()).map(|i| NODES_PER_WEIGHT * weight(i)).sum();
        let mut ring = Vec::with_capacity(wanted.min(MAX_RING + ids.len() as u64) as usize);
        for (i, id) in ids.iter().enumerate() {
            let replicas = if wanted <= MAX_RING {
                NODES_PER_WEIGHT * weight(i)
            } else {
                (NODES_PER_WEIGHT * weight(i) * MAX_RING / wanted).max(1)
            };
            for r in 0..replicas {
                ring.push((endpoint_hash(id, r), i as u32));
            }
        }
        ring.sort_unstable();
        RingHash { ring }
    }

    /// The endpoint owning `key`: the first virtual node at or after it.
    pub(crate) fn pick(&self, key: u64) -> usize {
        if self.ring.is_empty() {
            return 0;
        }
        let i = self.ring.partition_point(|(h, _)| *h < key);
        self.ring[i % self.ring.len()].1 as usize
    }
}

/// Maglev lookup table (Eisenbud et al., 2016), weighted by giving heavier
/// endpoints more turns while the table fills.
#[derive(Debug)]
pub(crate) struct Maglev {
    table: Vec<u32>,
}

/// Table size: a prime, Envoy's default.
pub(crate) const MAGLEV_SIZE: usize = 65_537;

impl Maglev {
    pub(crate) fn new(ids: &[String], weights: &[u32]) -> Self {
        Self::with_size(ids, weights, MAGLEV_SIZE)
    }

    fn with_size(ids: &[String], weights: &[u32], m: usize) -> Self {
        let n = ids.len();
        if n == 0 {
            return Maglev { table: Vec::new() };
        }
        let m64 = m as u64;
        let offsets: Vec<u64> = ids.iter().map(|id| endpoint_hash(id, 1) % m64).collect();
        let skips: Vec<u64> = ids
            .iter()
            .map(|id| endpoint_hash(id, 2) % (m64 - 1) + 1)
            .collect();
        let max_w = weights.iter().copied().max().unwrap_or(1).max(1) as f64;
        let mut next = vec![0u64; n];
        let mut credit = vec![0f64; n];
        let mut table = vec![u32::MAX; m];
        let mut filled = 0;
        while filled < m {
            for i in 0..n {
                // A turn for every `max_w / w` rounds: weight-proportional fill.
                credit[i] += f64::from(weights.get(i).copied().unwrap_or(1).max(1)) / max_w;
                if credit[i] < 1.0 {
                    continue;
                }
                credit[i] -= 1.0;
                loop {
                    let slot = ((offsets[i] + next[i] * skips[i]) % m64) as usize;
                    next[i] += 1;
                    if table[slot] == u32::MAX {
                        table[slot] = i as u32;
                        filled += 1;
                        break;
                    }
                }
                if filled == m {
                    break;
                }
            }
        }
        Maglev { table }
    }

    pub(crate) fn pick(&self, key: u64) -> usize {
        if self.table.is_empty() {
            return 0;
        }
        self.table[(key % self.table.len() as u64) as usize] as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{}:8080", i + 1)).collect()
    }

    #[test]
    fn a_huge_cluster_gets_a_bounded_ring_that_still_covers_every_endpoint() {
        let ids: Vec<String> = (0..20_000)
            .map(|i| format!("10.{}.{}.1:80", i / 256, i % 256))
            .collect();
        let weights = vec![1000; ids.len()];
        let ring = RingHash::new(&ids, &weights);
        assert!(
            ring.ring.len() as u64 <= MAX_RING + ids.len() as u64,
            "{}",
            ring.ring.len()
        );
        let mut seen = vec![false; ids.len()];
        for (_, i) in &ring.ring {
            seen[*i as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }

    fn keys() -> Vec<u64> {
        (0..20_000u32)
            .map(|i| hash_bytes(&i.to_be_bytes()))
            .collect()
    }

    fn shares(pick: impl Fn(u64) -> usize, n: usize) -> Vec<f64> {
        let mut c = vec![0usize; n];
        let k = keys();
        for key in &k {
            c[pick(*key)] += 1;
        }
        c.iter().map(|x| *x as f64 / k.len() as f64).collect()
    }

    /// Fraction of keys not owned by `removed` that changed endpoint when it left.
    fn moved(before: impl Fn(u64) -> usize, after: impl Fn(u64) -> usize, removed: usize) -> f64 {
        let k = keys();
        let mut stayed_candidates = 0;
        let mut moved = 0;
        for key in &k {
            let b = before(*key);
            if b == removed {
                continue;
            }
            stayed_candidates += 1;
            // Indices above `removed` shift down by one in the new list.
            let expected = if b > removed { b - 1 } else { b };
            if after(*key) != expected {
                moved += 1;
            }
        }
        moved as f64 / stayed_candidates as f64
    }

    #[test]
    fn ring_hash_spreads_keys_by_weight() {
        let r = RingHash::new(&ids(4), &[1, 1, 1, 1]);
        for s in shares(|k| r.pick(k), 4) {
            assert!((0.17..=0.33).contains(&s), "{s}");
        }
        let w = RingHash::new(&ids(2), &[1, 3]);
        let s = shares(|k| w.pick(k), 2);
        assert!((0.65..=0.85).contains(&s[1]), "{s:?}");
    }

    #[test]
    fn ring_hash_moves_only_the_removed_endpoints_keys() {
        let all = ids(5);
        let before = RingHash::new(&all, &[1; 5]);
        let mut fewer = all.clone();
        fewer.remove(2);
        let after = RingHash::new(&fewer, &[1; 4]);
        assert_eq!(moved(|k| before.pick(k), |k| after.pick(k), 2), 0.0);
    }

    #[test]
    fn maglev_spreads_keys_evenly_and_by_weight() {
        let m = Maglev::new(&ids(4), &[1, 1, 1, 1]);
        for s in shares(|k| m.pick(k), 4) {
            assert!((0.23..=0.27).contains(&s), "{s}");
        }
        let w = Maglev::new(&ids(2), &[1, 3]);
        let s = shares(|k| w.pick(k), 2);
        assert!((0.72..=0.78).contains(&s[1]), "{s:?}");
    }

    #[test]
    fn maglev_moves_few_other_keys_when_an_endpoint_leaves() {
        let all = ids(5);
        let before = Maglev::new(&all, &[1; 5]);
        let mut fewer = all.clone();
        fewer.remove(2);
        let after = Maglev::new(&fewer, &[1; 4]);
        let m = moved(|k| before.pick(k), |k| after.pick(k), 2);
        assert!(m < 0.05, "{m}");
    }

    #[test]
    fn a_client_keeps_its_key_whatever_its_port() {
        let a: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        let b: SocketAddr = "192.0.2.7:40001".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
    }
}
