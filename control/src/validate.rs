//! Checks that span resources: unique names and addresses, and listeners
//! that name clusters which exist. Field-level checks happen while decoding
//! (see `model/`), so one pass reports everything.

use std::collections::HashMap;

use crate::decode::Decoder;
use crate::model::Document;
use ringmesh_l7::route::matcher::PathMatch;

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
    // An earlier route with an exact path can only shadow a later one with
    // the same exact path: those are looked up by path, the rest compared
    // one by one (quadratic only in the routes without an exact path).
    let mut exact: HashMap<&[u8], Vec<usize>> = HashMap::new();
    let mut others: Vec<usize> = Vec::new();
    for (j, later) in compiled.iter().enumerate() {
        let Some(later) = later else { continue };
        let same_path = match &later.path {
            Some(PathMatch::Exact(p)) => exact.get(&p[..]).map(|v| &v[..]).unwrap_or_default(),
            _ => &[],
        };
        let shadow = same_path
            .iter()
            .chain(&others)
            .copied()
            .filter(|&i| compiled[i].as_ref().is_some_and(|e| later.shadowed_by(e)))
            .min();
        match &later.path {
            Some(PathMatch::Exact(p)) => exact.entry(&p[..]).or_default().push(j),
            _ => others.push(j),
        }
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
