//! Terminating TLS on a listener: the rustls server config built from PEM
//! material, optional client-certificate verification against a trust
//! bundle (mTLS), and authorization decided inside the handshake so that a
//! denied peer gets a TLS `access_denied` alert and never reaches upstream.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use thiserror::Error;

use super::identity::{AuthzPolicy, spiffe_id};

/// Invalid TLS material or settings.
#[derive(Debug, Error)]
pub enum TlsError {
    /// The certificate chain could not be read.
    #[error("certificate chain: {0}")]
    Cert(String),
    /// The private key could not be read.
    #[error("private key: {0}")]
    Key(String),
    /// The trust bundle could not be read.
    #[error("trust bundle: {0}")]
    Bundle(String),
    /// rustls refused the combination.
    #[error("{0}")]
    Config(String),
}

/// PEM material for a TLS listener.
#[derive(Debug, Clone)]
pub struct ServerTlsMaterial {
    /// Certificate chain, leaf first.
    pub cert_chain_pem: Vec<u8>,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key_pem: Vec<u8>,
    /// Trust bundle for client certificates; present = mTLS required.
    pub client_ca_pem: Option<Vec<u8>>,
    /// More `(chain, key)` pairs, each served to clients whose SNI its DNS
    /// SANs cover; the main chain serves everyone else.
    pub sni_certificates: Vec<(Vec<u8>, Vec<u8>)>,
    /// Hand sessions to kernel TLS where the kernel offers it.
    pub ktls: bool,
}

/// A listener's TLS settings, ready for handshakes.
#[derive(Debug)]
pub struct ServerTls {
    pub(crate) config: Arc<ServerConfig>,
    /// Time allowed for the handshake.
    pub handshake_timeout: Duration,
    /// Whether clients must present a certificate.
    pub mutual: bool,
    /// When the listener's certificate expires (seconds since the epoch).
    pub not_after: Option<i64>,
    /// Whether sessions are handed to kernel TLS after the handshake
    /// (asked for, and the kernel offers it).
    pub ktls: bool,
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses a PEM certificate list.
pub fn parse_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem).collect();
    let certs = certs.map_err(|e| format!("invalid PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block found".into());
    }
    Ok(certs)
}

impl ServerTls {
    /// Builds the listener's TLS: TLS 1.3 and 1.2 with rustls' safe suites
    /// only, `alpn` offered in order, mTLS when a client bundle is given,
    /// and `authz` (requires mTLS) enforced in the handshake, counting
    /// denials in `denied`.
    pub fn new(
        material: &ServerTlsMaterial,
        alpn: &[String],
        handshake_timeout: Duration,
        authz: Option<AuthzPolicy>,
        denied: Arc<AtomicU64>,
    ) -> Result<ServerTls, TlsError> {
        let chain = parse_certs(&material.cert_chain_pem).map_err(TlsError::Cert)?;
        let not_after = chain.first().and_then(|c| super::identity::not_after(c));
        let key = PrivateKeyDer::from_pem_slice(&material.key_pem)
            .map_err(|e| TlsError::Key(format!("invalid PEM key: {e}")))?;
        let provider = provider();
        let provider_for_keys = provider.clone();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let mutual = material.client_ca_pem.is_some();
        let builder = match &material.client_ca_pem {
            Some(pem) => {
                let mut roots = RootCertStore::empty();
                for c in parse_certs(pem).map_err(TlsError::Bundle)? {
                    roots.add(c).map_err(|e| TlsError::Bundle(e.to_string()))?;
                }
                let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| TlsError::Bundle(e.to_string()))?;
                builder.with_client_cert_verifier(Arc::new(AuthorizingVerifier {
                    inner,
                    authz,
                    denied,
                }))
            }
            None => {
                if authz.is_some() {
                    return Err(TlsError::Config(
                        "authorization needs client certificates (tls.client_ca)".into(),
                    ));
                }
                builder.with_no_client_auth()
            }
        };
        let certified = |chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>| {
            CertifiedKey::from_der(chain, key, &provider_for_keys)
                .map(Arc::new)
                .map_err(|e| TlsError::Config(format!("certificate and key: {e}")))
        };
        let default = certified(chain, key)?;
        let mut by_name = Vec::new();
        for (i, (cert_pem, key_pem)) in material.sni_certificates.iter().enumerate() {
            let chain = parse_certs(cert_pem)
                .map_err(|e| TlsError::Cert(format!("certificates[{i}]: {e}")))?;
            let names = chain
                .first()
                .map(|c| super::identity::dns_names(c))
                .unwrap_or_default();
            if names.is_empty() {
                return Err(TlsError::Cert(format!(
                    "certificates[{i}] has no DNS name to be selected by"
                )));
            }
            let key = PrivateKeyDer::from_pem_slice(key_pem)
                .map_err(|e| TlsError::Key(format!("certificates[{i}]: invalid PEM key: {e}")))?;
            let ck = certified(chain, key)?;
            by_name.extend(names.into_iter().map(|n| (n, ck.clone())));
        }
        let mut config = builder.with_cert_resolver(Arc::new(SniCertificates { default, by_name }));
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        // Our suite order (strongest first) wins over the client's.
        config.ignore_client_order = true;
        let ktls = material.ktls && super::ktls::available();
        // Needed to hand the keys to the kernel; off otherwise.
        config.enable_secret_extraction = ktls;
        Ok(ServerTls {
            config: Arc::new(config),
            handshake_timeout,
            mutual,
            not_after,
            ktls,
        })
    }
}

/// Picks the certificate for a ClientHello: the first whose DNS SANs cover
/// its SNI, else the listener's main certificate.
#[derive(Debug)]
struct SniCertificates {
    default: Arc<CertifiedKey>,
    by_name: Vec<(String, Arc<CertifiedKey>)>,
}

impl ResolvesServerCert for SniCertificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chosen = hello.server_name().and_then(|sni| {
            self.by_name
                .iter()
                .find(|(san, _)| super::identity::dns_name_matches(san, sni))
                .map(|(_, k)| k.clone())
        });
        Some(chosen.unwrap_or_else(|| self.default.clone()))
    }
}

/// Verifies the client chain with webpki, then applies the listener's
/// authorization policy to the leaf's SPIFFE ID.
#[derive(Debug)]
struct AuthorizingVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    authz: Option<AuthzPolicy>,
    /// Shared by every core; touched only when a peer is denied.
    denied: Arc<AtomicU64>,
}

impl ClientCertVerifier for AuthorizingVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if let Some(policy) = &self.authz {
            let id = spiffe_id(end_entity);
            if !policy.allows(id.as_deref()) {
                self.denied.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    identity = id.as_deref().unwrap_or("-"),
                    "authorization denied"
                );
                return Err(rustls::Error::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure,
                ));
            }
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
