//! Certificate verifiers that skip certificate checks.
//!
//! Everything here weakens security on purpose and lives in this module so
//! a reader can find every such place at once. Two uses:
//! - relaxed validation (T15): TLS is required, but the certificate is not
//!   checked (the compiler warns about it);
//! - opportunistic TLS (T2): TLS when offered, the certificate is not
//!   checked because a failure would only lead to clear text anyway.
//!
//! The handshake signatures are still verified with the crypto provider's
//! algorithms, so the session keys belong to whoever holds the key of the
//! presented certificate.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::tls::ChainRecorder;

/// Accepts any certificate; verifies handshake signatures.
#[derive(Debug)]
pub struct NoCertificateCheck {
    provider: Arc<CryptoProvider>,
    recorder: Option<ChainRecorder>,
}

impl NoCertificateCheck {
    pub fn new(provider: Arc<CryptoProvider>, recorder: Option<ChainRecorder>) -> Self {
        NoCertificateCheck { provider, recorder }
    }
}

impl ServerCertVerifier for NoCertificateCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(r) = &self.recorder {
            r.record(end_entity, intermediates);
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
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
        rustls::crypto::verify_tls13_signature(
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
