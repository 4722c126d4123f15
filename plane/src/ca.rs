//! The mesh CA: a key and self-signed root kept in the state directory,
//! made on first start. It signs workload certificates from CSRs (the
//! SPIFFE ID is the caller's authenticated identity, never what the CSR
//! asks for) and the control plane's own server certificate.

use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use ringmesh_control::mesh::durable::write_atomically;
use thiserror::Error;
use time::OffsetDateTime;

/// Why the CA could not load or sign.
#[derive(Debug, Error)]
pub enum CaError {
    /// Reading or writing its files.
    #[error("mesh CA `{path}`: {message}")]
    File {
        /// The file.
        path: String,
        /// What.
        message: String,
    },
    /// Certificate generation or signing.
    #[error("mesh CA: {0}")]
    Sign(String),
    /// The CSR is unusable.
    #[error("{0}")]
    Csr(String),
    /// The CSR asks for another identity than the caller's.
    #[error("{0}")]
    OtherIdentity(String),
}

/// The mesh CA.
pub struct MeshCa {
    issuer: Issuer<'static, KeyPair>,
    /// The root certificate, PEM (the mesh's trust bundle).
    pub root_pem: String,
}

/// A certificate issued by the CA.
pub struct Issued {
    /// Leaf, PEM.
    pub pem: String,
    /// Start of validity, Unix seconds.
    pub not_before: i64,
    /// End of validity, Unix seconds.
    pub not_after: i64,
}

fn sign_err(e: impl std::fmt::Display) -> CaError {
    CaError::Sign(e.to_string())
}

impl MeshCa {
    /// Loads `dir/ca.pem` and `dir/ca.key`, or makes them (10 years).
    pub fn load_or_create(dir: &Path, trust_domain: &str) -> Result<MeshCa, CaError> {
        let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
        let file_err = |p: &Path, e: &dyn std::fmt::Display| CaError::File {
            path: p.display().to_string(),
            message: e.to_string(),
        };
        if cert_path.exists() {
            let root_pem =
                std::fs::read_to_string(&cert_path).map_err(|e| file_err(&cert_path, &e))?;
            let key_pem =
                std::fs::read_to_string(&key_path).map_err(|e| file_err(&key_path, &e))?;
            let key = KeyPair::from_pem(&key_pem).map_err(|e| file_err(&key_path, &e))?;
            let issuer =
                Issuer::from_ca_cert_pem(&root_pem, key).map_err(|e| file_err(&cert_path, &e))?;
            return Ok(MeshCa { issuer, root_pem });
        }
        let key = KeyPair::generate().map_err(sign_err)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(sign_err)?;
        params.distinguished_name.push(
            DnType::CommonName,
            format!("ringmesh mesh CA ({trust_domain})"),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc() - time::Duration::minutes(5);
        params.not_before = now;
        params.not_after = now + time::Duration::days(3650);
        let cert = params.self_signed(&key).map_err(sign_err)?;
        let root_pem = cert.pem();
        write_atomically(&key_path, key.serialize_pem().as_bytes(), 0o600)
            .map_err(|e| file_err(&key_path, &e))?;
        write_atomically(&cert_path, root_pem.as_bytes(), 0o644)
            .map_err(|e| file_err(&cert_path, &e))?;
        tracing::info!(path = %cert_path.display(), "mesh CA created");
        let issuer = Issuer::new(params, key);
        Ok(MeshCa { issuer, root_pem })
    }

    fn leaf(
        &self,
        mut params: CertificateParams,
        lifetime: Duration,
        public_key: &impl rcgen::PublicKeyData,
    ) -> Result<Issued, CaError> {
        // Backdated a minute so that clocks a little apart agree.
        let start = OffsetDateTime::now_utc() - time::Duration::minutes(1);
        let end = start + time::Duration::minutes(1) + lifetime;
        params.not_before = start;
        params.not_after = end;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(sign_err)?;
        Ok(Issued {
            pem: cert.pem(),
            not_before: start.unix_timestamp(),
            not_after: end.unix_timestamp(),
        })
    }

    /// Signs `csr_pem` as `spiffe_id` for `lifetime`. Whatever names the
    /// CSR asks for are dropped; a CSR naming another SPIFFE ID is refused.
    pub fn sign_workload(
        &self,
        csr_pem: &str,
        spiffe_id: &str,
        lifetime: Duration,
    ) -> Result<Issued, CaError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::Csr(format!("invalid CSR: {e}")))?;
        for san in &csr.params.subject_alt_names {
            if let SanType::URI(uri) = san
                && uri.as_str() != spiffe_id
            {
                return Err(CaError::OtherIdentity(format!(
                    "the CSR asks for `{}` but the caller is `{spiffe_id}`: a proxy gets certificates for its own identity only",
                    uri.as_str()
                )));
            }
        }
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(sign_err)?;
        params
            .distinguished_name
            .push(DnType::CommonName, spiffe_id.to_owned());
        params.subject_alt_names = vec![SanType::URI(
            spiffe_id
                .to_owned()
                .try_into()
                .map_err(|e| CaError::Csr(format!("`{spiffe_id}`: {e}")))?,
        )];
        self.leaf(params, lifetime, &csr.public_key)
    }

    /// A server certificate for the control plane itself: its DNS names
    /// and IPs, plus its SPIFFE ID. Returns (key + chain PEM, issued).
    pub fn server_identity(
        &self,
        names: &[String],
        spiffe_id: &str,
        lifetime: Duration,
    ) -> Result<(String, Issued), CaError> {
        let key = KeyPair::generate().map_err(sign_err)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(sign_err)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "ringmesh control plane");
        for n in names {
            let san = match n.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(n.clone().try_into().map_err(sign_err)?),
            };
            params.subject_alt_names.push(san);
        }
        params.subject_alt_names.push(SanType::URI(
            spiffe_id.to_owned().try_into().map_err(sign_err)?,
        ));
        let issued = self.leaf(params, lifetime, &key)?;
        Ok((format!("{}{}", key.serialize_pem(), issued.pem), issued))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr(san: Option<&str>) -> String {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        if let Some(s) = san {
            p.subject_alt_names = vec![SanType::URI(s.to_owned().try_into().expect("uri"))];
        }
        p.serialize_request(&key).expect("csr").pem().expect("pem")
    }

    #[test]
    fn workload_certificates_carry_the_callers_identity_only() {
        let dir = std::env::temp_dir().join(format!("ringmesh-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let ca = MeshCa::load_or_create(&dir, "t.local").expect("ca");
        let id = "spiffe://t.local/ns/default/sa/product";
        let issued = ca
            .sign_workload(&csr(None), id, Duration::from_secs(3600))
            .expect("signed");
        let der = ringmesh_core::tls::parse_certs(issued.pem.as_bytes()).expect("pem");
        assert_eq!(ringmesh_core::tls::spiffe_id(&der[0]).as_deref(), Some(id));
        assert!((issued.not_after - issued.not_before - 3660).abs() <= 1);
        let err = ca
            .sign_workload(
                &csr(Some("spiffe://t.local/ns/default/sa/review")),
                id,
                Duration::from_secs(60),
            )
            .err()
            .expect("refused");
        assert!(err.to_string().contains("own identity only"), "{err}");
        assert!(
            ca.sign_workload("garbage", id, Duration::from_secs(60))
                .is_err()
        );
        // A restart loads the same CA.
        let again = MeshCa::load_or_create(&dir, "t.local").expect("ca");
        assert_eq!(again.root_pem, ca.root_pem);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
