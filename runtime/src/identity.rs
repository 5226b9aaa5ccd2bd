//! The gateway's own TLS identity for STARTTLS on the receiving side.
//!
//! Either a PEM certificate chain and key from the configuration, or — when
//! none is configured — a self-signed certificate generated with rcgen at
//! first start and kept in the state directory, so it stays the same across
//! restarts.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why the TLS identity could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read `{path}`: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write `{path}`: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no certificate found in `{0}`")]
    NoCertificate(String),
    #[error("no private key found in `{0}`")]
    NoKey(String),
    #[error("bad PEM in `{0}`: {1}")]
    Pem(String, String),
    #[error("certificate generation failed: {0}")]
    Generate(String),
    #[error("TLS setup failed: {0}")]
    Tls(String),
}

/// File names of the generated identity inside the state directory.
pub const GENERATED_CERT: &str = "tls-self-signed.crt";
pub const GENERATED_KEY: &str = "tls-self-signed.key";

/// A self-signed certificate for `hostname`: (certificate PEM, key PEM).
pub fn self_signed(hostname: &str) -> Result<(String, String), IdentityError> {
    let ck = rcgen::generate_simple_self_signed(vec![hostname.to_string()])
        .map_err(|e| IdentityError::Generate(e.to_string()))?;
    Ok((ck.cert.pem(), ck.signing_key.serialize_pem()))
}

/// A rustls server configuration from PEM bytes (`what` names them in
/// errors).
pub fn server_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    what: &str,
) -> Result<Arc<rustls::ServerConfig>, IdentityError> {
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| IdentityError::Pem(what.to_string(), e.to_string()))?;
    if certs.is_empty() {
        return Err(IdentityError::NoCertificate(what.to_string()));
    }
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| IdentityError::Pem(what.to_string(), e.to_string()))?
        .ok_or_else(|| IdentityError::NoKey(what.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| IdentityError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| IdentityError::Tls(e.to_string()))?;
    Ok(Arc::new(config))
}

fn read(path: &Path) -> Result<Vec<u8>, IdentityError> {
    std::fs::read(path).map_err(|source| IdentityError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Loads the configured identity, or the generated one in `state_dir`
/// (generating it first if needed).
pub fn load_or_generate(
    cert: Option<&Path>,
    key: Option<&Path>,
    state_dir: &Path,
    hostname: &str,
) -> Result<Arc<rustls::ServerConfig>, IdentityError> {
    if let (Some(cert), Some(key)) = (cert, key) {
        let what = cert.display().to_string();
        return server_config(&read(cert)?, &read(key)?, &what);
    }
    let cert_path = state_dir.join(GENERATED_CERT);
    let key_path = state_dir.join(GENERATED_KEY);
    if !cert_path.exists() || !key_path.exists() {
        let (cert_pem, key_pem) = self_signed(hostname)?;
        std::fs::create_dir_all(state_dir).map_err(|source| IdentityError::Write {
            path: state_dir.to_path_buf(),
            source,
        })?;
        write_private(&key_path, key_pem.as_bytes())?;
        crate::policy_store::write_atomic(&cert_path, cert_pem.as_bytes()).map_err(|source| {
            IdentityError::Write {
                path: cert_path.clone(),
                source,
            }
        })?;
        tracing::info!(path = %cert_path.display(), "generated a self-signed TLS certificate");
    }
    let what = cert_path.display().to_string();
    server_config(&read(&cert_path)?, &read(&key_path)?, &what)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), IdentityError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|source| IdentityError::Write {
        path: path.to_path_buf(),
        source,
    })
}
