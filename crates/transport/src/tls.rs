//! go-plugin's AutoMTLS: each side makes a throwaway self-signed certificate, the host passes
//! its own to the plugin in `PLUGIN_CLIENT_CERT` (PEM), the plugin answers with its own in
//! field 6 of the handshake line (base64 of the DER, standard alphabet, no padding), and
//! every connection between them, brokered ones included and in both directions, is TLS with
//! a certificate required from both ends.
//!
//! The certificates are made as go-plugin makes them: ECDSA P-521 keys signed with SHA-512,
//! marked as CA certificates, `localhost` as common name and DNS name, usable for client and
//! server authentication, valid from 30 seconds ago for 30 years. A CA certificate used as
//! a leaf is refused by ordinary path building, so [`MutualTls`] does not build paths: it
//! pins the peer's exact certificate and checks that the handshake was signed with its key.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, aws_lc_rs};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig,
    SignatureScheme,
};

/// The name both sides' certificates carry and clients ask for, as in go-plugin.
pub const SERVER_NAME: &str = "localhost";

/// How long the certificates are valid: go-plugin's 262,980 hours, about 30 years.
const VALIDITY: Duration = Duration::from_secs(262_980 * 3600);

/// How far back a certificate's validity starts, for clocks slightly apart.
const BACKDATE: Duration = Duration::from_secs(30);

/// Why a certificate could not be made, read, or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Making the key or the certificate failed.
    #[error("could not make a certificate for AutoMTLS: {0}")]
    Generate(#[from] rcgen::Error),
    /// `PLUGIN_CLIENT_CERT` holds no PEM certificate.
    #[error(
        "the host's certificate (PLUGIN_CLIENT_CERT) is not a PEM certificate: {reason}; \
         AutoMTLS needs the PEM a go-plugin or tether host writes there"
    )]
    NotPem {
        /// What is wrong with it.
        reason: String,
    },
    /// Field 6 of the handshake line is not base64 of a certificate.
    #[error(
        "the plugin's certificate (handshake field 6) is not base64 (standard alphabet, no \
         padding) of a DER certificate: {reason}"
    )]
    NotBase64 {
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("could not set up TLS with these certificates: {0}")]
    Config(#[from] rustls::Error),
}

/// One side's throwaway certificate and key, made as go-plugin makes them.
pub struct Identity {
    certificate: CertificateDer<'static>,
    pem: String,
    key: PrivatePkcs8KeyDer<'static>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("Identity")
            .field("certificate_bytes", &self.certificate.len())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// A new key (ECDSA P-521) and a self-signed certificate for it.
    pub fn generate() -> Result<Self, TlsError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P521_SHA512)?;
        let mut params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_owned()])?;
        let mut name = rcgen::DistinguishedName::new();
        name.push(rcgen::DnType::CommonName, SERVER_NAME);
        name.push(rcgen::DnType::OrganizationName, "tether");
        params.distinguished_name = name;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::KeyEncipherment,
            rcgen::KeyUsagePurpose::KeyAgreement,
            rcgen::KeyUsagePurpose::KeyCertSign,
        ];
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = SystemTime::now();
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + VALIDITY).into();
        let certificate = params.self_signed(&key)?;
        Ok(Identity {
            pem: certificate.pem(),
            certificate: certificate.der().clone(),
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
        })
    }

    /// The certificate in PEM, as a host passes it in `PLUGIN_CLIENT_CERT`.
    pub fn certificate_pem(&self) -> &str {
        &self.pem
    }

    /// The certificate as a plugin writes it in field 6 of its handshake line.
    pub fn handshake_field(&self) -> String {
        STANDARD_NO_PAD.encode(self.certificate.as_ref())
    }

    /// The certificate, DER.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.certificate
    }
}

/// The certificate a host passed in `PLUGIN_CLIENT_CERT`.
pub fn certificate_from_pem(pem: &str) -> Result<CertificateDer<'static>, TlsError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|err| TlsError::NotPem {
        reason: err.to_string(),
    })
}

/// The certificate a plugin wrote in field 6 of its handshake line. go-plugin writes it
/// without padding; padded base64 is taken too.
pub fn certificate_from_handshake(field: &str) -> Result<CertificateDer<'static>, TlsError> {
    let der = STANDARD_NO_PAD
        .decode(field.trim_end_matches('='))
        .map_err(|err| TlsError::NotBase64 {
            reason: err.to_string(),
        })?;
    // A DER certificate is a SEQUENCE; catch text that merely decodes.
    if der.first() != Some(&0x30) {
        return Err(TlsError::NotBase64 {
            reason: "it decodes, but not to a DER certificate".to_owned(),
        });
    }
    Ok(CertificateDer::from(der))
}

/// TLS between two sides that each know the other's exact certificate: the configuration
/// for serving (client certificate required) and for dialing (server certificate pinned,
/// our certificate presented). Cheap to clone.
#[derive(Clone)]
pub struct MutualTls {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl fmt::Debug for MutualTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MutualTls").finish_non_exhaustive()
    }
}

impl MutualTls {
    /// Serves and dials as `identity`, admitting only a peer that holds `peer`'s key and
    /// presents exactly that certificate.
    pub fn new(identity: &Identity, peer: CertificateDer<'static>) -> Result<Self, TlsError> {
        let provider = Arc::new(aws_lc_rs::default_provider());
        let verifier = Arc::new(Pinned {
            certificate: peer,
            algorithms: provider.signature_verification_algorithms,
        });
        let chain = vec![identity.certificate.clone()];
        let key = || PrivateKeyDer::Pkcs8(identity.key.clone_key());
        let alpn = vec![b"h2".to_vec()];

        let mut server = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier.clone())
            .with_single_cert(chain.clone(), key())?;
        server.alpn_protocols = alpn.clone();

        let mut client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(chain, key())?;
        client.alpn_protocols = alpn;
        Ok(MutualTls {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }

    /// The acceptor for connections this side serves.
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(Arc::clone(&self.server))
    }

    /// The connector for connections this side dials.
    pub(crate) fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(Arc::clone(&self.client))
    }

    /// The name a dialer asks for.
    pub(crate) fn server_name() -> ServerName<'static> {
        ServerName::DnsName(
            rustls::pki_types::DnsName::try_from(SERVER_NAME)
                .unwrap_or_else(|_| unreachable!("`localhost` is a DNS name")),
        )
    }
}

/// Admits exactly one certificate, and a handshake signed with its key.
#[derive(Debug)]
struct Pinned {
    certificate: CertificateDer<'static>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl Pinned {
    fn check(&self, presented: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        if presented.as_ref() == self.certificate.as_ref() {
            Ok(())
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(NotThePinnedCertificate)),
            )))
        }
    }
}

/// The peer presented a certificate other than the one it announced.
#[derive(Debug, thiserror::Error)]
#[error("the peer presented a certificate other than the one announced at the handshake")]
struct NotThePinnedCertificate;

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for Pinned {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hint: a Go client with one certificate then always presents it.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// What a failed TLS handshake means, in words: the usual causes of an AutoMTLS failure
/// (a peer that does not speak TLS, or holds another certificate) named as such.
pub(crate) fn explain(err: &std::io::Error) -> String {
    let rustls_error = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(rustls::Error::InvalidMessage(_)) => format!(
            "the peer does not speak TLS, though AutoMTLS is on for this connection ({err})"
        ),
        Some(rustls::Error::InvalidCertificate(_)) => {
            format!("the peer's certificate is not the one it announced ({err})")
        }
        Some(rustls::Error::NoCertificatesPresented) => {
            format!("the peer presented no certificate; AutoMTLS requires one ({err})")
        }
        Some(rustls::Error::AlertReceived(alert)) => format!(
            "the peer ended the TLS handshake with alert {alert:?}: it refused our certificate, \
             or expected no TLS"
        ),
        _ if err.kind() == std::io::ErrorKind::UnexpectedEof => format!(
            "the peer closed the connection during the TLS handshake: it refused our \
             certificate, or does not speak TLS ({err})"
        ),
        _ => format!("TLS handshake failed: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_survives_pem_and_the_handshake_field() {
        let identity = Identity::generate().unwrap();
        let from_pem = certificate_from_pem(identity.certificate_pem()).unwrap();
        assert_eq!(from_pem.as_ref(), identity.certificate().as_ref());
        let field = identity.handshake_field();
        assert!(!field.ends_with('='), "go-plugin writes no padding");
        assert!(
            field.len() > 50,
            "Go hosts read field 6 only beyond 50 characters"
        );
        let from_field = certificate_from_handshake(&field).unwrap();
        assert_eq!(from_field.as_ref(), identity.certificate().as_ref());
    }

    #[test]
    fn malformed_certificates_are_typed_errors() {
        assert!(matches!(
            certificate_from_pem("not a certificate"),
            Err(TlsError::NotPem { .. })
        ));
        assert!(matches!(
            certificate_from_handshake("***"),
            Err(TlsError::NotBase64 { .. })
        ));
        assert!(matches!(
            certificate_from_handshake("aGVsbG8gd29ybGQ"),
            Err(TlsError::NotBase64 { .. })
        ));
    }
}
