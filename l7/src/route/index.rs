//! Which routes a request could match, found without trying every route:
//! routes are filed by host (exact names and `*.suffix` by hash map, the
//! rest in an any-host bucket), then by path (exact paths and prefixes by
//! hash map, one map lookup per distinct prefix length; regex and
//! path-less routes in a list). A lookup tries only the lists filed under
//! the request's host and path, each in route order, and keeps the lowest
//! route index whose whole match holds: first match wins, as if every
//! route were tried in order.
//!
//! The maps hash with a cheap non-keyed hash: their keys come from
//! config, so a client can make lookups miss but cannot make them collide.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::matcher::{HostKey, HostPattern, PathMatch, RequestMatch, RequestView};

/// FxHash-style hasher over 8-byte words.
#[derive(Default, Clone, Copy)]
pub(crate) struct WordHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl Hasher for WordHasher {
    /// Folds the state's high bits into the low ones: hashbrown picks
    /// buckets from the low bits, which barely differ for keys like
    /// `/svc/17/items` after the word-wise rotate-xor-multiply (10,000 such
    /// keys started in 106 of 16,384 buckets without this).
    #[inline]
    fn finish(&self) -> u64 {
        let x = u128::from(self.0) * u128::from(SEED);
        ((x >> 64) as u64) ^ (x as u64)
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
}

impl WordHasher {
    #[inline]
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(SEED);
    }
}

type Map<V> = HashMap<Box<[u8]>, V, BuildHasherDefault<WordHasher>>;

/// Route indices filed under one host key, by path.
#[derive(Debug, Default)]
struct PathIndex {
    exact: Map<Vec<u32>>,
    prefixes: Map<Vec<u32>>,
    /// Distinct lengths of the keys of `prefixes`, ascending.
    prefix_lens: Vec<usize>,
    /// Routes that must be tried whatever the path (regex, no path).
    scan: Vec<u32>,
}

impl PathIndex {
    fn file(&mut self, route: u32, path: Option<&PathMatch>) {
        let list = match path {
            Some(PathMatch::Exact(p)) => self.exact.entry(p.clone()).or_default(),
            Some(PathMatch::Prefix(p) | PathMatch::StartsWith(p)) => {
                if let Err(at) = self.prefix_lens.binary_search(&p.len()) {
                    self.prefix_lens.insert(at, p.len());
                }
                self.prefixes.entry(p.clone()).or_default()
            }
            Some(PathMatch::Regex(_)) | None => &mut self.scan,
        };
        // A route with two host patterns under one key is filed once.
        if list.last() != Some(&route) {
            list.push(route);
        }
    }

    #[inline]
    fn search(&self, path: &[u8], best: &mut u32, matches: &impl Fn(u32) -> bool) {
        if !self.exact.is_empty() {
            if let Some(list) = self.exact.get(path) {
                first_match(list, best, matches);
            }
        }
        for &len in &self.prefix_lens {
            if len > path.len() {
                break;
            }
            if let Some(list) = self.prefixes.get(&path[..len]) {
                first_match(list, best, matches);
            }
        }
        first_match(&self.scan, best, matches);
    }
}

/// Lowers `best` to the first route of `list` (ascending) that matches.
#[inline]
fn first_match(list: &[u32], best: &mut u32, matches: &impl Fn(u32) -> bool) {
    for &r in list {
        if r >= *best {
            return;
        }
        if matches(r) {
            *best = r;
            return;
        }
    }
}

/// The compiled index of a route table.
#[derive(Debug, Default)]
pub(crate) struct Index {
    exact_hosts: Map<PathIndex>,
    /// Keyed by the suffix with its leading dot (`.example.com`).
    suffix_hosts: Map<PathIndex>,
    any_host: PathIndex,
}

impl Index {
    /// Files every route's match.
    pub(crate) fn build<'m>(matches: impl Iterator<Item = &'m RequestMatch>) -> Index {
        let mut index = Index::default();
        for (i, m) in matches.enumerate() {
            let i = i as u32;
            let path = m.path.as_ref();
            if m.hosts.is_empty() || m.hosts.contains(&HostPattern::Any) {
                index.any_host.file(i, path);
                continue;
            }
            for h in &m.hosts {
                match h {
                    HostPattern::Exact { name, .. } => index
                        .exact_hosts
                        .entry(name.clone())
                        .or_default()
                        .file(i, path),
                    HostPattern::Suffix { suffix, .. } => index
                        .suffix_hosts
                        .entry(suffix.clone())
                        .or_default()
                        .file(i, path),
                    HostPattern::Any => {}
                }
            }
        }
        index
    }

    /// Whether any route has a host condition (then lookups need the
    /// request's host key).
    pub(crate) fn has_hosts(&self) -> bool {
        !self.exact_hosts.is_empty() || !self.suffix_hosts.is_empty()
    }

    /// The first route (by index) whose match holds for `req`, given its
    /// host key (see [`super::matcher::host_key`]; needed when
    /// [`Index::has_hosts`]) and `matches(i)`, the full check of route `i`.
    #[inline]
    pub(crate) fn find(
        &self,
        req: &RequestView<'_>,
        host: Option<HostKey<'_>>,
        matches: impl Fn(u32) -> bool,
    ) -> Option<u32> {
        let mut best = u32::MAX;
        if self.has_hosts() {
            if let Some((name, _)) = host {
                if let Some(bucket) = self.exact_hosts.get(name) {
                    bucket.search(req.path, &mut best, &matches);
                }
                if !self.suffix_hosts.is_empty() {
                    // `a.b.example.com` tries `.b.example.com`, `.example.com`, `.com`.
                    for (at, _) in name.iter().enumerate().filter(|(_, b)| **b == b'.') {
                        if at == 0 {
                            continue;
                        }
                        if let Some(bucket) = self.suffix_hosts.get(&name[at..]) {
                            bucket.search(req.path, &mut best, &matches);
                        }
                    }
                }
            }
        }
        self.any_host.search(req.path, &mut best, &matches);
        (best != u32::MAX).then_some(best)
    }
}
