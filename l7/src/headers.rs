//! Header operations of routes and listeners (`request_headers`,
//! `response_headers`: `remove`, `set`, `add`). The layers (listener, then
//! route) and the steps within a layer (remove, set, add) are folded at
//! compile time into one [`HeaderOps`]: the names whose received fields
//! are dropped, and the fields appended after the rest. Applying it while
//! a head is written costs a name comparison per field, and nothing when
//! a route has no operations.

/// One layer of operations as configured.
#[derive(Debug, Clone, Default)]
pub struct HeaderOpsSpec {
    /// Replace every field of the name with this one.
    pub set: Vec<(String, String)>,
    /// Append a field, keeping existing ones.
    pub add: Vec<(String, String)>,
    /// Remove every field of the name.
    pub remove: Vec<String>,
}

/// Names header operations may not touch: framing and hop-by-hop fields
/// the proxy writes itself, and `host` (routes rewrite it with
/// `rewrite.host`).
pub const PROTECTED: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "proxy-connection",
    "host",
];

/// A field an operation appends: (name, value).
type AppendedField = (Box<[u8]>, Box<[u8]>);

/// Operations folded for one route and one direction.
#[derive(Debug, Clone, Default)]
pub struct HeaderOps {
    /// Lowercase names whose received (or proxy-made) fields are dropped.
    drop: Vec<Box<[u8]>>,
    /// Fields appended after the others.
    append: Vec<AppendedField>,
}

impl HeaderOps {
    /// No operation.
    pub const EMPTY: HeaderOps = HeaderOps {
        drop: Vec::new(),
        append: Vec::new(),
    };

    /// Folds `layers`, applied in order (listener first, then route), each
    /// as remove, then set, then add.
    pub fn fold(layers: &[&HeaderOpsSpec]) -> HeaderOps {
        let mut ops = HeaderOps::default();
        for layer in layers {
            let removed = layer
                .remove
                .iter()
                .chain(layer.set.iter().map(|(n, _)| n))
                .map(|n| n.to_ascii_lowercase());
            for name in removed {
                let name: Box<[u8]> = name.into_bytes().into();
                ops.append.retain(|(n, _)| !n.eq_ignore_ascii_case(&name));
                if !ops.drop.contains(&name) {
                    ops.drop.push(name);
                }
            }
            for (n, v) in layer.set.iter().chain(&layer.add) {
                ops.append.push((n.as_bytes().into(), v.as_bytes().into()));
            }
        }
        ops
    }

    /// No operation at all.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.drop.is_empty() && self.append.is_empty()
    }

    /// Whether fields named `name` are dropped.
    #[inline]
    pub fn drops(&self, name: &[u8]) -> bool {
        self.drop.iter().any(|d| d.eq_ignore_ascii_case(name))
    }

    /// Applies the operations to an HTTP/2 message's fields: the dropped
    /// names removed, the appended fields added (names lowercased, as
    /// HTTP/2 requires; a field HTTP/2 cannot carry is skipped).
    pub fn apply(&self, map: &mut http::HeaderMap) {
        if self.is_empty() {
            return;
        }
        for name in &self.drop {
            if let Ok(n) = http::HeaderName::from_bytes(name) {
                map.remove(n);
            }
        }
        for (n, v) in &self.append {
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(n),
                http::HeaderValue::from_bytes(v),
            ) {
                map.append(n, v);
            }
        }
    }

    /// Writes the appended fields.
    pub fn write_appended(&self, out: &mut Vec<u8>) {
        for (n, v) in &self.append {
            out.extend_from_slice(n);
            out.extend_from_slice(b": ");
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(set: &[(&str, &str)], add: &[(&str, &str)], remove: &[&str]) -> HeaderOpsSpec {
        let pairs = |p: &[(&str, &str)]| {
            p.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        HeaderOpsSpec {
            set: pairs(set),
            add: pairs(add),
            remove: remove.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn appended(ops: &HeaderOps) -> String {
        let mut out = Vec::new();
        ops.write_appended(&mut out);
        String::from_utf8(out).expect("ascii")
    }

    #[test]
    fn a_route_set_replaces_the_listener_set_of_the_same_name() {
        let listener = spec(&[("x-env", "prod"), ("x-team", "a")], &[], &[]);
        let route = spec(&[("X-Env", "canary")], &[("x-extra", "1")], &[]);
        let ops = HeaderOps::fold(&[&listener, &route]);
        assert_eq!(
            appended(&ops),
            "x-team: a\r\nX-Env: canary\r\nx-extra: 1\r\n"
        );
        assert!(ops.drops(b"X-ENV") && ops.drops(b"x-team") && !ops.drops(b"x-extra"));
    }

    #[test]
    fn a_route_remove_also_removes_what_the_listener_added() {
        let listener = spec(&[], &[("x-debug", "1")], &[]);
        let route = spec(&[], &[], &["x-debug"]);
        let ops = HeaderOps::fold(&[&listener, &route]);
        assert_eq!(appended(&ops), "");
        assert!(ops.drops(b"x-debug"));
    }

    #[test]
    fn add_keeps_received_fields() {
        let ops = HeaderOps::fold(&[&spec(&[], &[("via", "ringmesh")], &[])]);
        assert!(!ops.drops(b"via"));
        assert!(!ops.is_empty());
        assert!(HeaderOps::fold(&[]).is_empty());
    }
}
