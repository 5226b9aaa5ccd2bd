//! TLS for the onward connection: rustls client configurations and the
//! strong certificate verifier (T13, T14).
//!
//! Strong validation delegates chain building, validity dates and
//! RFC 6125 name matching to rustls' webpki verifier, once per acceptable
//! name: the host name connected to (the MX target or route host name),
//! then each of the policy's trusted certificate names. With
//! `match_common_name` the subject CN is compared too (read with
//! x509-parser), but only after the chain and dates have passed. A route by
//! IP address has no host name: only the trusted names can match.
//!
//! Verifiers that skip certificate checks live in [`super::danger`].

use std::sync::{Arc, Mutex, MutexGuard};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use super::danger::NoCertificateCheck;

/// How the presented certificate is checked on one connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CertCheck {
    /// T13/T14: chain, dates, and one of `names` (host name first, then
    /// trusted names) in the SAN — or the CN with `match_cn`.
    Strong { names: Vec<String>, match_cn: bool },
    /// T15: no certificate checks.
    Relaxed,
    /// Opportunistic TLS: no checks, recorded as `unverified`.
    Unverified,
}

/// What the verifier concluded, read after the handshake.
#[derive(Debug, Default)]
pub struct VerifyOutcome {
    /// The name (or `CN x`) that matched under strong validation.
    pub matched: Mutex<Option<String>>,
    /// Why strong validation failed, when it did.
    pub failure: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl VerifyOutcome {
    pub fn failure(&self) -> Option<String> {
        lock(&self.failure).clone()
    }
    pub fn matched(&self) -> Option<String> {
        lock(&self.matched).clone()
    }
}

/// Keeps the certificate chain the server presented (for `check-tls`).
#[derive(Clone, Debug, Default)]
pub struct ChainRecorder(Arc<Mutex<Vec<CertificateDer<'static>>>>);

impl ChainRecorder {
    pub fn record(&self, end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) {
        let mut v = lock(&self.0);
        v.clear();
        v.push(end_entity.clone().into_owned());
        v.extend(intermediates.iter().map(|c| c.clone().into_owned()));
    }

    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        lock(&self.0).clone()
    }
}

/// The crypto provider used for every onward connection.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration for one connection, with the outcome slot its
/// verifier fills in.
pub fn client_config(
    check: &CertCheck,
    roots: Arc<RootCertStore>,
    send_sni: bool,
    recorder: Option<ChainRecorder>,
) -> Result<(Arc<ClientConfig>, Arc<VerifyOutcome>), String> {
    let provider = provider();
    let outcome = Arc::new(VerifyOutcome::default());
    let verifier: Arc<dyn ServerCertVerifier> = match check {
        CertCheck::Strong { names, match_cn } => {
            let inner = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| format!("cannot build certificate verifier: {e}"))?;
            Arc::new(StrongVerifier {
                inner,
                names: names.clone(),
                match_cn: *match_cn,
                outcome: outcome.clone(),
                recorder,
            })
        }
        CertCheck::Relaxed | CertCheck::Unverified => {
            Arc::new(NoCertificateCheck::new(provider.clone(), recorder))
        }
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.enable_sni = send_sni;
    Ok((Arc::new(config), outcome))
}

/// Strong validation (T13, T14).
#[derive(Debug)]
struct StrongVerifier {
    inner: Arc<WebPkiServerVerifier>,
    names: Vec<String>,
    match_cn: bool,
    outcome: Arc<VerifyOutcome>,
    recorder: Option<ChainRecorder>,
}

impl StrongVerifier {
    fn fail(&self, why: String) -> rustls::Error {
        *lock(&self.outcome.failure) = Some(why.clone());
        rustls::Error::General(why)
    }

    fn pass(&self, matched: String) -> Result<ServerCertVerified, rustls::Error> {
        *lock(&self.outcome.matched) = Some(matched);
        Ok(ServerCertVerified::assertion())
    }
}

fn is_name_error(e: &rustls::Error) -> bool {
    matches!(
        e,
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
        )
    )
}

/// A short description of a certificate error, for reasons and reports.
pub fn describe_cert_error(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "certificate has expired".into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "certificate is not valid yet".into()
            }
            CertificateError::UnknownIssuer => {
                "certificate does not chain to a trusted root (unknown issuer)".into()
            }
            CertificateError::BadSignature => "certificate has a bad signature".into(),
            other => format!("invalid certificate: {other:?}"),
        },
        other => other.to_string(),
    }
}

impl ServerCertVerifier for StrongVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(r) = &self.recorder {
            r.record(end_entity, intermediates);
        }
        // Chain and dates are checked before the name by webpki, so a name
        // error means the chain and the dates passed.
        let candidates: Vec<&str> = if self.names.is_empty() {
            // Checks the chain only; no name can match.
            vec!["name.invalid"]
        } else {
            self.names.iter().map(String::as_str).collect()
        };
        for name in &candidates {
            let Ok(sn) = ServerName::try_from(name.to_string()) else {
                continue;
            };
            match self
                .inner
                .verify_server_cert(end_entity, intermediates, &sn, ocsp_response, now)
            {
                Ok(_) if !self.names.is_empty() => return self.pass((*name).to_string()),
                Ok(_) => {}
                Err(e) if is_name_error(&e) => {}
                Err(e) => return Err(self.fail(describe_cert_error(&e))),
            }
        }
        let (sans, cns) = cert_names(end_entity);
        if self.match_cn {
            for cn in &cns {
                if let Some(n) = self.names.iter().find(|n| name_matches(cn, n)) {
                    return self.pass(format!("CN {n}"));
                }
            }
        }
        let wanted = if self.names.is_empty() {
            "no host name to match (route by IP address) and no trusted certificate names"
                .to_string()
        } else {
            format!("expected {}", self.names.join(" or "))
        };
        let presented = if self.match_cn {
            format!("SAN [{}], CN [{}]", sans.join(", "), cns.join(", "))
        } else {
            format!("SAN [{}]", sans.join(", "))
        };
        Err(self.fail(format!(
            "certificate name mismatch: {wanted}; certificate has {presented}"
        )))
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

/// The DNS names in the SAN and the subject CNs of a certificate.
pub fn cert_names(der: &CertificateDer<'_>) -> (Vec<String>, Vec<String>) {
    let mut sans = Vec::new();
    let mut cns = Vec::new();
    if let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) {
        if let Ok(Some(ext)) = cert.subject_alternative_name() {
            for n in &ext.value.general_names {
                match n {
                    x509_parser::extensions::GeneralName::DNSName(s) => sans.push(s.to_string()),
                    x509_parser::extensions::GeneralName::IPAddress(b) => {
                        sans.push(format!("ip:{}", ip_from_bytes(b)));
                    }
                    _ => {}
                }
            }
        }
        for cn in cert.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                cns.push(s.to_string());
            }
        }
    }
    (sans, cns)
}

fn ip_from_bytes(b: &[u8]) -> String {
    match b.len() {
        4 => std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string(),
        16 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(b);
            std::net::Ipv6Addr::from(a).to_string()
        }
        _ => "?".into(),
    }
}

/// RFC 6125 matching of a presented name (possibly `*.example.com`, the
/// wildcard standing for exactly one whole left-most label) against a
/// reference name, case-insensitively.
pub fn name_matches(presented: &str, reference: &str) -> bool {
    let p = presented.trim_end_matches('.').to_ascii_lowercase();
    let r = reference.trim_end_matches('.').to_ascii_lowercase();
    if let Some(rest) = p.strip_prefix("*.") {
        if !rest.contains('.') {
            return false;
        }
        match r.split_once('.') {
            Some((label, parent)) => !label.is_empty() && parent == rest,
            None => false,
        }
    } else {
        p == r
    }
}

#[cfg(test)]
mod tests {
    use super::name_matches;

    #[test]
    fn wildcard_rules() {
        assert!(name_matches("mx.example.com", "MX.example.com"));
        assert!(name_matches("*.example.com", "mx.example.com"));
        assert!(!name_matches("*.example.com", "a.mx.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("*.com", "example.com"));
        assert!(!name_matches("mx.example.com", "mx2.example.com"));
    }
}
