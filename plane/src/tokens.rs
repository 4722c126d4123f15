//! Who may call the control plane: operators with the admin token, and
//! proxies with a bootstrap token bound to one identity (until they hold a
//! mesh certificate). Both secrets live in the state directory, made on
//! first start.
//!
//! A bootstrap token is `rmb1:<namespace>:<workload>:<hmac>`, an HMAC-SHA256
//! of the identity under the control plane's key: it proves which identity
//! its holder may get a certificate for, and needs no stored list.

use std::path::Path;

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use ringmesh_control::mesh::durable::write_atomically;

const PREFIX: &str = "rmb1";

/// The control plane's secrets.
pub struct Secrets {
    key: hmac::Key,
    admin: Vec<u8>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_hex(n: usize) -> Result<String, String> {
    let mut buf = vec![0u8; n];
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| "the system random generator failed".to_owned())?;
    Ok(hex(&buf))
}

/// A random nonce (16 hex digits).
pub fn nonce() -> String {
    random_hex(8).unwrap_or_else(|_| {
        format!(
            "{:016x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
        )
    })
}

/// Reads a secret file, or writes a new random one (mode 0600).
fn load_or_make(path: &Path) -> Result<String, String> {
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_owned()),
        Ok(_) => Err(format!("`{}` is empty", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret = random_hex(32)?;
            write_atomically(path, format!("{secret}\n").as_bytes(), 0o600)
                .map_err(|e| format!("`{}`: {e}", path.display()))?;
            Ok(secret)
        }
        Err(e) => Err(format!("`{}`: {e}", path.display())),
    }
}

/// Compares in time independent of where the inputs differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Secrets {
    /// Loads (or makes) `dir/token.key`, and the admin token from
    /// `admin_token_file` or `dir/admin.token`.
    pub fn load_or_create(dir: &Path, admin_token_file: Option<&Path>) -> Result<Secrets, String> {
        let key = load_or_make(&dir.join("token.key"))?;
        let admin = match admin_token_file {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("admin token `{}`: {e}", path.display()))?
                .trim()
                .to_owned(),
            None => load_or_make(&dir.join("admin.token"))?,
        };
        if admin.len() < 16 {
            return Err("the admin token must be at least 16 characters".into());
        }
        Ok(Secrets {
            key: hmac::Key::new(hmac::HMAC_SHA256, key.as_bytes()),
            admin: admin.into_bytes(),
        })
    }

    /// The bootstrap token of `namespace/workload`.
    pub fn bootstrap_token(&self, namespace: &str, workload: &str) -> String {
        let tag = hmac::sign(&self.key, format!("{namespace}:{workload}").as_bytes());
        format!("{PREFIX}:{namespace}:{workload}:{}", hex(tag.as_ref()))
    }

    /// The identity a bootstrap token was made for, when it is genuine.
    pub fn verify_bootstrap(&self, token: &str) -> Option<(String, String)> {
        let mut parts = token.split(':');
        let (prefix, ns, workload, tag) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if prefix != PREFIX || parts.next().is_some() || tag.len() != 64 {
            return None;
        }
        let tag: Option<Vec<u8>> = (0..32)
            .map(|i| u8::from_str_radix(tag.get(i * 2..i * 2 + 2)?, 16).ok())
            .collect();
        hmac::verify(&self.key, format!("{ns}:{workload}").as_bytes(), &tag?).ok()?;
        Some((ns.to_owned(), workload.to_owned()))
    }

    /// Whether `token` is the admin token.
    pub fn is_admin(&self, token: &str) -> bool {
        same(token.as_bytes(), &self.admin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_tokens_are_bound_to_their_identity() {
        let dir = std::env::temp_dir().join(format!("ringmesh-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let s = Secrets::load_or_create(&dir, None).expect("secrets");
        let t = s.bootstrap_token("default", "product");
        assert_eq!(
            s.verify_bootstrap(&t),
            Some(("default".into(), "product".into()))
        );
        // Another identity with the same tag, a flipped digit, garbage.
        let forged = t.replace(":product:", ":review:");
        assert_eq!(s.verify_bootstrap(&forged), None);
        let mut flipped = t.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
        assert_eq!(
            s.verify_bootstrap(&String::from_utf8(flipped).expect("utf8")),
            None
        );
        for bad in ["", "rmb1", "rmb1:a:b:zz", "x:a:b:c:d"] {
            assert_eq!(s.verify_bootstrap(bad), None, "{bad}");
        }
        // The same state directory gives the same secrets.
        let again = Secrets::load_or_create(&dir, None).expect("secrets");
        assert_eq!(
            again.verify_bootstrap(&t).map(|x| x.1),
            Some("product".into())
        );
        let admin = std::fs::read_to_string(dir.join("admin.token")).expect("admin");
        assert!(again.is_admin(admin.trim()));
        assert!(!again.is_admin(&t));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
