//! Originating TLS towards a cluster's endpoints: verify the upstream's
//! chain against the cluster's trust bundle and its identity against the
//! expected SAN (a DNS name, or an exact SPIFFE ID), send SNI, and present
//! the proxy's own workload certificate when configured (sidecar to
//! sidecar).

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use super::identity::spiffe_id;
use super::server::{TlsError, parse_certs, provider};

/// What the upstream's certificate must prove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpectedPeer {
    /// A DNS SAN matching this name.
    Dns(String),
    /// This exact SPIFFE ID as URI SAN.
    Spiffe(String),
}

impl ExpectedPeer {
    /// `spiffe://...` is a SPIFFE ID, anything else a DNS name.
    pub fn parse(san: &str) -> ExpectedPeer {
        if san.starts_with("spiffe://") {
            ExpectedPeer::Spiffe(san.to_owned())
        } else {
            ExpectedPeer::Dns(san.to_owned())
        }
    }
}

/// PEM material and names for a cluster's TLS.
#[derive(Debug, Clone)]
pub struct ClientTlsMaterial {
    /// Trust bundle for the upstream.
    pub ca_pem: Vec<u8>,
    /// Client certificate chain and key to present, if any.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// A cluster's TLS settings, ready for handshakes.
#[derive(Debug)]
pub struct ClientTls {
    pub(crate) config: Arc<ClientConfig>,
    /// Name sent as SNI; `None` sends none (the endpoint's IP is used as
    /// the session's name).
    pub(crate) server_name: Option<ServerName<'static>>,
    /// Time allowed for the handshake.
    pub handshake_timeout: Duration,
    /// When the presented client certificate expires, if there is one.
    pub not_after: Option<i64>,
}

impl ClientTls {
    /// Builds a cluster's TLS: verify against `material.ca_pem` and
    /// `expected`, send `sni` (if any), offer `alpn`.
    pub fn new(
        material: &ClientTlsMaterial,
        expected: ExpectedPeer,
        sni: Option<&str>,
        alpn: &[String],
        handshake_timeout: Duration,
    ) -> Result<ClientTls, TlsError> {
        let mut roots = RootCertStore::empty();
        for c in parse_certs(&material.ca_pem).map_err(TlsError::Bundle)? {
            roots.add(c).map_err(|e| TlsError::Bundle(e.to_string()))?;
        }
        if let ExpectedPeer::Dns(name) = &expected {
            ServerName::try_from(name.clone())
                .map_err(|e| TlsError::Config(format!("san `{name}`: {e}")))?;
        }
        let server_name = match sni {
            Some(sni) => Some(
                ServerName::try_from(sni.to_owned())
                    .map_err(|e| TlsError::Config(format!("sni `{sni}`: {e}")))?,
            ),
            None => None,
        };
        let provider = provider();
        let verifier = Arc::new(UpstreamVerifier {
            roots,
            expected,
            provider: provider.clone(),
        });
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut not_after = None;
        let mut config = match &material.identity {
            Some((cert, key)) => {
                let chain = parse_certs(cert).map_err(TlsError::Cert)?;
                not_after = chain.first().and_then(|c| super::identity::not_after(c));
                let key = PrivateKeyDer::from_pem_slice(key)
                    .map_err(|e| TlsError::Key(format!("invalid PEM key: {e}")))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| TlsError::Config(format!("client certificate and key: {e}")))?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Ok(ClientTls {
            config: Arc::new(config),
            server_name,
            handshake_timeout,
            not_after,
        })
    }
}

/// Chain verification against the cluster's bundle, then the expected SAN,
/// independent of the SNI sent.
#[derive(Debug)]
struct UpstreamVerifier {
    roots: RootCertStore,
    expected: ExpectedPeer,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for UpstreamVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        match &self.expected {
            ExpectedPeer::Dns(name) => {
                let name = ServerName::try_from(name.as_str()).map_err(|_| {
                    rustls::Error::InvalidCertificate(CertificateError::NotValidForName)
                })?;
                rustls::client::verify_server_name(&cert, &name)?;
            }
            ExpectedPeer::Spiffe(id) => {
                if spiffe_id(end_entity).as_deref() != Some(id.as_str()) {
                    return Err(rustls::Error::InvalidCertificate(
                        CertificateError::NotValidForName,
                    ));
                }
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
