//! `trust anchor "file.pem"`: PEM certificates read at compile time and
//! embedded as DER.

use std::sync::Arc;

use policy::limits::*;
use policy::TrustAnchor;

use crate::check::{values::limit, Sink};
use crate::diagnostic::Diagnostic;
use crate::source::{SourceFile, Span};

/// Warns about an anchor that will not do what its author most likely
/// wants: a certificate that is not a CA (it validates only itself, so the
/// next renewal of that server breaks delivery) or one outside its
/// validity dates (every chain to it fails strong validation).
fn warn_unusual(
    sink: &mut Sink,
    file: &Arc<SourceFile>,
    span: Span,
    which: &str,
    cert: &x509_parser::certificate::X509Certificate<'_>,
) {
    let is_ca = matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
    if !is_ca {
        sink.warn(
            Diagnostic::warning(
                "tlspol::anchor-not-ca",
                format!("{which} is not a CA certificate"),
            )
            .at(file, span, "no `CA:TRUE` basic constraint")
            .with_help("a trust anchor should be the private CA that issues the servers' certificates; a server certificate here is trusted only for itself, and its renewal breaks strong validation"),
        );
    }
    let validity = cert.validity();
    let now = x509_parser::time::ASN1Time::now();
    if validity.not_after < now {
        sink.warn(
            Diagnostic::warning(
                "tlspol::anchor-expired",
                format!("{which} expired on {}", validity.not_after),
            )
            .at(file, span, "expired certificate")
            .with_help("certificates that chain only to an expired anchor fail strong validation; replace it with the CA's current certificate"),
        );
    } else if validity.not_before > now {
        sink.warn(
            Diagnostic::warning(
                "tlspol::anchor-expired",
                format!("{which} is not valid before {}", validity.not_before),
            )
            .at(file, span, "certificate not yet valid")
            .with_help(
                "chains to an anchor that is not yet valid fail strong validation until that date",
            ),
        );
    }
}

/// Reads every certificate of the PEM file `written` (relative to `file`)
/// and returns them as anchors labelled with the path as written.
pub(crate) fn read(
    sink: &mut Sink,
    file: &Arc<SourceFile>,
    written: &str,
    span: Span,
) -> Vec<TrustAnchor> {
    let path = file.base_dir.join(written);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => {
            sink.error(
                Diagnostic::error(
                    "tlspol::io",
                    format!("cannot read `{}`: {e}", path.display()),
                )
                .at(file, span, "this file")
                .with_help("paths are relative to the file that names them"),
            );
            return Vec::new();
        }
    };
    let not_cert = |why: String| {
        Diagnostic::error(
            "tlspol::pem-not-certificate",
            format!("`{written}` is not a PEM certificate file"),
        )
        .at(file, span, why)
        .with_help("a trust anchor file holds one or more `-----BEGIN CERTIFICATE-----` blocks and nothing else")
    };
    let mut ders = Vec::new();
    for item in rustls_pemfile::read_all(&mut bytes.as_slice()) {
        match item {
            Ok(rustls_pemfile::Item::X509Certificate(der)) => ders.push(der),
            Ok(rustls_pemfile::Item::Pkcs1Key(_))
            | Ok(rustls_pemfile::Item::Pkcs8Key(_))
            | Ok(rustls_pemfile::Item::Sec1Key(_)) => {
                sink.error(not_cert(
                    "this file holds a private key; never put keys in a policy".to_string(),
                ));
                return Vec::new();
            }
            Ok(_) => {
                sink.error(not_cert(
                    "this file holds a PEM block that is not a certificate".to_string(),
                ));
                return Vec::new();
            }
            Err(e) => {
                sink.error(not_cert(format!("unreadable PEM: {e}")));
                return Vec::new();
            }
        }
    }
    if ders.is_empty() {
        sink.error(not_cert("no certificate found in this file".to_string()));
        return Vec::new();
    }
    let mut out = Vec::new();
    let count = ders.len();
    for (i, der) in ders.iter().enumerate() {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            sink.error(not_cert(format!(
                "certificate {} is not valid X.509",
                i + 1
            )));
            continue;
        };
        let which = if count == 1 {
            format!("`{written}`")
        } else {
            format!("certificate {} of `{written}`", i + 1)
        };
        warn_unusual(sink, file, span, &which, &cert);
        if der.len() > MAX_ANCHOR_DER {
            sink.error(limit(
                file,
                span,
                "certificate size in bytes",
                der.len(),
                "MAX_ANCHOR_DER",
                MAX_ANCHOR_DER,
            ));
            continue;
        }
        let label = if count == 1 {
            written.to_string()
        } else {
            format!("{written}#{}", i + 1)
        };
        let Ok(label_h) = heapless::String::try_from(label.as_str()) else {
            sink.error(limit(
                file,
                span,
                "trust anchor label length",
                label.len(),
                "MAX_LABEL_LEN",
                MAX_LABEL_LEN,
            ));
            continue;
        };
        let Ok(der_h) = heapless::Vec::from_slice(der) else {
            continue;
        };
        out.push(TrustAnchor {
            label: label_h,
            der: der_h,
        });
    }
    out
}
