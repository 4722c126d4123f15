//! Workload identity and who may call whom.
//!
//! A peer's identity is the SPIFFE ID in its certificate's URI SAN
//! (`spiffe://<trust-domain>/<path>`). An [`AuthzPolicy`] on a listener
//! matches identities against patterns where `*` stands for exactly one
//! path segment (or the trust domain): deny rules win, then allow rules;
//! with a policy present, anything not allowed is denied.

use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// The SPIFFE ID of a DER certificate: its first `spiffe://` URI SAN.
pub fn spiffe_id(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(cert_der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some((*uri).to_owned()),
        _ => None,
    })
}

/// The DNS SANs of a DER certificate, lower-cased (wildcards kept as `*.x`).
pub fn dns_names(cert_der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = X509Certificate::from_der(cert_der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

/// Whether `name` is covered by DNS SAN `san` (RFC 6125: a leading `*`
/// stands for exactly one label).
pub fn dns_name_matches(san: &str, name: &str) -> bool {
    match san.strip_prefix("*.") {
        Some(suffix) => name
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest.eq_ignore_ascii_case(suffix)),
        None => san.eq_ignore_ascii_case(name),
    }
}

/// The end of a DER certificate's validity, in seconds since the epoch.
pub fn not_after(cert_der: &[u8]) -> Option<i64> {
    let (_, cert) = X509Certificate::from_der(cert_der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// One identity pattern, e.g. `spiffe://mesh.local/ns/shop/sa/*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityPattern {
    text: String,
    segments: Vec<String>,
}

impl IdentityPattern {
    /// Parses a pattern; `*` matches one whole segment.
    pub fn parse(text: &str) -> Result<Self, String> {
        let rest = text.strip_prefix("spiffe://").ok_or_else(|| {
            format!("`{text}` is not a SPIFFE ID pattern (must start with spiffe://)")
        })?;
        let segments: Vec<String> = rest.split('/').map(str::to_owned).collect();
        if segments.iter().any(|s| s.is_empty()) {
            return Err(format!("`{text}` has an empty segment"));
        }
        if segments.iter().any(|s| s.contains('*') && s != "*") {
            return Err(format!(
                "`{text}`: `*` must be a whole segment (e.g. .../sa/*)"
            ));
        }
        Ok(IdentityPattern {
            text: text.to_owned(),
            segments,
        })
    }

    /// Whether `id` (a full SPIFFE ID) matches.
    pub fn matches(&self, id: &str) -> bool {
        let Some(rest) = id.strip_prefix("spiffe://") else {
            return false;
        };
        let mut parts = rest.split('/');
        for seg in &self.segments {
            match parts.next() {
                Some(p) if !p.is_empty() && (seg == "*" || seg == p) => {}
                _ => return false,
            }
        }
        parts.next().is_none()
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// A listener's authorization policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthzPolicy {
    /// Identities allowed (unless denied).
    pub allow: Vec<IdentityPattern>,
    /// Identities always denied.
    pub deny: Vec<IdentityPattern>,
}

impl AuthzPolicy {
    /// Whether a peer with `identity` (None: no SPIFFE ID) may connect.
    pub fn allows(&self, identity: Option<&str>) -> bool {
        let Some(id) = identity else {
            return false;
        };
        if self.deny.iter().any(|p| p.matches(id)) {
            return false;
        }
        self.allow.iter().any(|p| p.matches(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str], deny: &[&str]) -> AuthzPolicy {
        AuthzPolicy {
            allow: allow
                .iter()
                .map(|p| IdentityPattern::parse(p).unwrap())
                .collect(),
            deny: deny
                .iter()
                .map(|p| IdentityPattern::parse(p).unwrap())
                .collect(),
        }
    }

    #[test]
    fn star_matches_exactly_one_segment() {
        let p = IdentityPattern::parse("spiffe://mesh.local/ns/shop/sa/*").unwrap();
        assert!(p.matches("spiffe://mesh.local/ns/shop/sa/product"));
        assert!(!p.matches("spiffe://mesh.local/ns/shop/sa"));
        assert!(!p.matches("spiffe://mesh.local/ns/shop/sa/product/extra"));
        assert!(!p.matches("spiffe://other.local/ns/shop/sa/product"));
        let any_domain = IdentityPattern::parse("spiffe://*/ns/shop/sa/product").unwrap();
        assert!(any_domain.matches("spiffe://a.b/ns/shop/sa/product"));
    }

    #[test]
    fn deny_wins_and_the_default_is_deny() {
        let p = policy(
            &["spiffe://mesh.local/ns/shop/sa/*"],
            &["spiffe://mesh.local/ns/shop/sa/legacy"],
        );
        assert!(p.allows(Some("spiffe://mesh.local/ns/shop/sa/product")));
        assert!(!p.allows(Some("spiffe://mesh.local/ns/shop/sa/legacy")));
        assert!(!p.allows(Some("spiffe://mesh.local/ns/other/sa/product")));
        assert!(!p.allows(None));
        assert!(!AuthzPolicy::default().allows(Some("spiffe://mesh.local/x")));
    }

    #[test]
    fn dns_wildcards_cover_exactly_one_label() {
        assert!(dns_name_matches("*.b.example", "x.b.example"));
        assert!(!dns_name_matches("*.b.example", "y.x.b.example"));
        assert!(!dns_name_matches("*.b.example", "b.example"));
        assert!(dns_name_matches("A.Example", "a.example"));
    }

    #[test]
    fn malformed_patterns_are_rejected() {
        for bad in [
            "mesh.local/ns",
            "spiffe://",
            "spiffe://a//b",
            "spiffe://a/b*",
        ] {
            assert!(IdentityPattern::parse(bad).is_err(), "{bad}");
        }
    }
}
