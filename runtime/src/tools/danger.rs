//! A TLS client configuration that accepts any server certificate.
//!
//! For the load generator and tests, which measure or probe a server whose
//! certificate is self-signed. It uses the delivery side's
//! [`NoCertificateCheck`] (the one verifier that skips certificate checks),
//! so handshake signatures are still verified: the session is encrypted,
//! but the server is not authenticated.

use std::sync::Arc;

use crate::delivery::danger::NoCertificateCheck;

/// A client configuration that does not authenticate the server.
pub fn accept_any_certificate() -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoCertificateCheck::new(provider, None)))
        .with_no_client_auth();
    Ok(Arc::new(config))
}
