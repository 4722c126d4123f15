//! Checks that span resources: unique names and addresses, listeners
//! that name clusters which exist, and `original_destination` clusters used
//! only by listeners that recover original destinations. Field-level checks
//! happen while decoding (see `model/`), so one pass reports everything.

use std::collections::{HashMap, HashSet};

use crate::decode::Decoder;
use crate::model::Document;
use ringmesh_l7::route::matcher::{HostPattern, PathMatch, RequestMatch};

/// Records every duplicate and dangling reference in `doc`.
pub(crate) fn cross_references(d: &mut Decoder, doc: &Document) {
    let mut listener_names = HashMap::new();
    let mut addresses = HashMap::new();
    for l in &doc.listeners {
        // Empty names and references below are placeholders for fields
        // that failed to decode: their own error is already reported.
        if l.name.is_empty() {
            // Placeholder: the missing or invalid name is already reported.
        } else if let Some(first) = listener_names.insert(l.name.as_str(), &l.origin) {
            d.error(
                l.origin.mark,
                &format!("{}.name", l.origin.path),
                format!(
                    "duplicate listener name `{}` (first defined at line {})",
                    l.name, first.mark.line
                ),
            );
        }
        if l.listen.port() != 0 {
            if let Some(first) = addresses.insert(l.listen, &l.listen_origin) {
                d.error(
                    l.listen_origin.mark,
                    &l.listen_origin.path,
                    format!(
                        "address {} is already used by the listener at line {}",
                        l.listen, first.mark.line
                    ),
                );
            }
        }
        if l.listen.port() != 0 && l.listen == doc.admin.listen {
            d.error(
                l.listen_origin.mark,
                &l.listen_origin.path,
                format!("address {} is the admin API's address", l.listen),
            );
        }
    }
    let mut cluster_names = HashMap::new();
    for c in &doc.clusters {
        if c.name.is_empty() {
            continue;
        }
        if let Some(first) = cluster_names.insert(c.name.as_str(), &c.name_origin) {
            d.error(
                c.name_origin.mark,
                &c.name_origin.path,
                format!(
                    "duplicate cluster name `{}` (first defined at line {})",
                    c.name, first.mark.line
                ),
            );
        }
    }
    original_destinations(d, doc);
    for l in &doc.listeners {
        for r in &l.sni_routes {
            if !cluster_names.contains_key(r.cluster.as_str()) {
                d.error(
                    r.cluster_origin.mark,
                    &r.cluster_origin.path,
                    format!(
                        "SNI route of listener `{}` references unknown cluster `{}`",
                        l.name, r.cluster
                    ),
                );
            }
        }
        if let Some(http) = &l.http {
            routes(d, l, http, &cluster_names);
        }
        if l.cluster.is_empty() {
            continue;
        }
        if !cluster_names.contains_key(l.cluster.as_str()) {
            let known: Vec<&str> = doc.clusters.iter().map(|c| c.name.as_str()).collect();
            d.error(
                l.cluster_origin.mark,
                &l.cluster_origin.path,
                format!(
                    "listener `{}` references unknown cluster `{}` (defined clusters: {})",
                    l.name,
                    l.cluster,
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            );
        }
    }
}

/// An `original_destination` cluster forwards each connection to where it
/// was going before iptables redirected it; only a listener with
/// `original_destination: true` knows that, so every other listener's
/// reference to such a cluster (its `cluster`, SNI routes, HTTP routes,
/// splits and mirrors) is an error at the reference.
fn original_destinations(d: &mut Decoder, doc: &Document) {
    let by_original: HashSet<&str> = doc
        .clusters
        .iter()
        .filter(|c| c.discovery == crate::model::DiscoveryDoc::OriginalDestination)
        .map(|c| c.name.as_str())
        .collect();
    if by_original.is_empty() {
        return;
    }
    for l in doc.listeners.iter().filter(|l| !l.original_destination) {
        let mut uses: Vec<(&str, &crate::model::Origin)> = Vec::new();
        uses.push((l.cluster.as_str(), &l.cluster_origin));
        uses.extend(
            l.sni_routes
                .iter()
                .map(|r| (r.cluster.as_str(), &r.cluster_origin)),
        );
        if let Some(http) = &l.http {
            uses.extend(http.routes.iter().flat_map(|r| r.clusters()));
        }
        for (cluster, origin) in uses {
            if by_original.contains(cluster) {
                d.error(
                    origin.mark,
                    &origin.path,
                    format!(
                        "cluster `{cluster}` forwards to each connection's original destination, and listener `{}` does not recover it: set `original_destination: true` on the listener (with iptables REDIRECT rules sending traffic to it)",
                        l.name
                    ),
                );
            }
        }
    }
}

/// An HTTP listener's routes: clusters exist, names are unique, and no
/// route is shadowed by an earlier one that matches every request it would.
fn routes(
    d: &mut Decoder,
    l: &crate::model::ListenerDoc,
    http: &crate::model::HttpDoc,
    cluster_names: &HashMap<&str, &crate::model::Origin>,
) {
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut compiled = Vec::with_capacity(http.routes.len());
    for (i, r) in http.routes.iter().enumerate() {
        for (cluster, origin) in r.clusters() {
            if !cluster_names.contains_key(cluster) {
                d.error(
                    origin.mark,
                    &origin.path,
                    format!(
                        "route {i} of listener `{}` references unknown cluster `{cluster}`",
                        l.name
                    ),
                );
            }
        }
        if let Some(name) = &r.name {
            if let Some(first) = names.insert(name.clone(), i) {
                d.error(
                    r.name_origin.mark,
                    &r.name_origin.path,
                    format!(
                        "duplicate route name `{name}` (route {first}, line {}, has it)",
                        http.routes[first].origin.mark.line
                    ),
                );
            }
        }
        compiled.push(r.request_match());
    }
    // Unnamed routes are named by their index: a name that is another
    // route's index would mix their metrics.
    for (i, r) in http.routes.iter().enumerate() {
        if let Some(name) = &r.name {
            if let Ok(n) = name.parse::<usize>() {
                if n != i && n < http.routes.len() && http.routes[n].name.is_none() {
                    d.error(
                        r.name_origin.mark,
                        &r.name_origin.path,
                        format!("route name `{name}` is the default name of unnamed route {n}"),
                    );
                }
            }
        }
    }
    // Earlier routes are filed by host and path the way the route index
    // files them, so each route is compared only with the earlier ones
    // that could cover it (not quadratic for host, path and prefix tables).
    let mut earlier = Shadows::default();
    let mut candidates = Vec::new();
    for (j, later) in compiled.iter().enumerate() {
        let Some(later) = later else { continue };
        candidates.clear();
        earlier.candidates(later, &mut candidates);
        let shadow = candidates
            .iter()
            .copied()
            .filter(|&i| compiled[i].as_ref().is_some_and(|e| later.shadowed_by(e)))
            .min();
        earlier.file(j, later);
        if let Some(i) = shadow {
            let (a, b) = (&http.routes[i], &http.routes[j]);
            d.error(
                b.origin.mark,
                &b.origin.path,
                format!(
                    "route {j} can never match: route {i} (line {}, column {}) matches every request it would; reorder them or narrow route {i}",
                    a.origin.mark.line, a.origin.mark.col
                ),
            );
        }
    }
}

/// Earlier routes by path: exact paths and prefixes by value, the rest listed.
#[derive(Default)]
struct ByPath<'a> {
    exact: HashMap<&'a [u8], Vec<usize>>,
    prefixes: HashMap<&'a [u8], Vec<usize>>,
    others: Vec<usize>,
}

impl<'a> ByPath<'a> {
    fn file(&mut self, i: usize, m: &'a RequestMatch) {
        match &m.path {
            Some(PathMatch::Exact(p)) => self.exact.entry(&p[..]).or_default().push(i),
            Some(PathMatch::Prefix(p) | PathMatch::StartsWith(p)) => {
                self.prefixes.entry(&p[..]).or_default().push(i)
            }
            _ => self.others.push(i),
        }
    }

    /// Routes whose path condition could cover `m`'s.
    fn candidates(&self, m: &RequestMatch, out: &mut Vec<usize>) {
        let mut prefixes_of = |p: &[u8]| {
            for len in 1..=p.len() {
                if let Some(v) = self.prefixes.get(&p[..len]) {
                    out.extend(v);
                }
            }
        };
        match &m.path {
            Some(PathMatch::Exact(p)) => {
                prefixes_of(p);
                if let Some(v) = self.exact.get(&p[..]) {
                    out.extend(v);
                }
            }
            Some(PathMatch::Prefix(p) | PathMatch::StartsWith(p)) => prefixes_of(p),
            _ => {}
        }
        out.extend(&self.others);
    }
}

/// Earlier routes by host, then path.
#[derive(Default)]
struct Shadows<'a> {
    any: ByPath<'a>,
    exact: HashMap<&'a [u8], ByPath<'a>>,
    suffix: HashMap<&'a [u8], ByPath<'a>>,
}

impl<'a> Shadows<'a> {
    fn file(&mut self, i: usize, m: &'a RequestMatch) {
        if m.hosts.is_empty() || m.hosts.contains(&HostPattern::Any) {
            return self.any.file(i, m);
        }
        for h in &m.hosts {
            match h {
                HostPattern::Exact { name, .. } => {
                    self.exact.entry(&name[..]).or_default().file(i, m)
                }
                HostPattern::Suffix { suffix, .. } => {
                    self.suffix.entry(&suffix[..]).or_default().file(i, m)
                }
                HostPattern::Any => {}
            }
        }
    }

    /// Routes that could cover `m`: those for any host, and those whose
    /// hosts could cover `m`'s first host (a cover must cover them all).
    fn candidates(&self, m: &RequestMatch, out: &mut Vec<usize>) {
        self.any.candidates(m, out);
        let (name, from) = match m.hosts.first() {
            Some(HostPattern::Exact { name, .. }) if !m.hosts.contains(&HostPattern::Any) => {
                if let Some(b) = self.exact.get(&name[..]) {
                    b.candidates(m, out);
                }
                (&name[..], 1)
            }
            Some(HostPattern::Suffix { suffix, .. }) if !m.hosts.contains(&HostPattern::Any) => {
                (&suffix[..], 0)
            }
            _ => return,
        };
        for (at, _) in name.iter().enumerate().filter(|(_, b)| **b == b'.') {
            if at >= from {
                if let Some(b) = self.suffix.get(&name[at..]) {
                    b.candidates(m, out);
                }
            }
        }
    }
}
