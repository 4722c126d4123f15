//! Checks that span resources: unique names and addresses, and listeners
//! that name clusters which exist. Field-level checks happen while decoding
//! (see `model/`), so one pass reports everything.

use std::collections::HashMap;

use crate::decode::Decoder;
use crate::model::Document;

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
