//! A test PKI generated in code with rcgen: roots, intermediates, leaves
//! that are valid, expired, not yet valid, for the wrong name, named only
//! in the CN, wildcard, self-signed.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A certificate authority.
pub struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pub der: CertificateDer<'static>,
    /// The chain above this CA up to (not including) the root.
    above: Vec<CertificateDer<'static>>,
}

/// A server certificate with its key.
pub struct Leaf {
    /// End entity first, then the intermediates to send.
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Leaf {
    fn clone(&self) -> Self {
        Leaf {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

/// What a leaf looks like.
#[derive(Clone, Default)]
pub struct LeafSpec<'a> {
    pub sans: &'a [&'a str],
    pub cn: Option<&'a str>,
    pub expired: bool,
    pub not_yet_valid: bool,
    /// Leave the intermediates out of the chain sent.
    pub omit_intermediates: bool,
}

impl Ca {
    pub fn root(cn: &str) -> Ca {
        let params = ca_params(cn);
        let key = KeyPair::generate().unwrap();
        let der = params.self_signed(&key).unwrap().der().clone();
        Ca {
            params,
            key,
            der,
            above: Vec::new(),
        }
    }

    pub fn intermediate(&self, cn: &str) -> Ca {
        let params = ca_params(cn);
        let key = KeyPair::generate().unwrap();
        let issuer = Issuer::from_params(&self.params, &self.key);
        let der = params.signed_by(&key, &issuer).unwrap().der().clone();
        let mut above = vec![der.clone()];
        above.extend(self.above.iter().cloned());
        Ca {
            params,
            key,
            der: der.clone(),
            above,
        }
    }

    pub fn leaf(&self, spec: LeafSpec<'_>) -> Leaf {
        let (params, key) = leaf_params(&spec);
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        let mut chain = vec![cert.der().clone()];
        if !spec.omit_intermediates {
            chain.extend(self.above.iter().cloned());
        }
        Leaf {
            chain,
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }

    /// A valid leaf for these DNS names.
    pub fn leaf_for(&self, sans: &[&str]) -> Leaf {
        self.leaf(LeafSpec {
            sans,
            ..LeafSpec::default()
        })
    }

    pub fn pem(&self) -> String {
        let b64 = base64_encode(self.der.as_ref());
        let mut s = String::from("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            s.push_str(std::str::from_utf8(line).unwrap());
            s.push('\n');
        }
        s.push_str("-----END CERTIFICATE-----\n");
        s
    }
}

fn leaf_params(spec: &LeafSpec<'_>) -> (CertificateParams, KeyPair) {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.subject_alt_names = spec
        .sans
        .iter()
        .map(|s| match s.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName((*s).try_into().unwrap()),
        })
        .collect();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, spec.cn.unwrap_or("test server"));
    p.distinguished_name = dn;
    if spec.expired {
        p.not_before = rcgen::date_time_ymd(2000, 1, 1);
        p.not_after = rcgen::date_time_ymd(2001, 1, 1);
    }
    if spec.not_yet_valid {
        p.not_before = rcgen::date_time_ymd(2090, 1, 1);
        p.not_after = rcgen::date_time_ymd(2091, 1, 1);
    }
    (p, KeyPair::generate().unwrap())
}

/// A self-signed leaf for these names.
pub fn self_signed(sans: &[&str]) -> Leaf {
    let (params, key) = leaf_params(&LeafSpec {
        sans,
        ..LeafSpec::default()
    });
    let cert = params.self_signed(&key).unwrap();
    Leaf {
        chain: vec![cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    }
}

fn base64_encode(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if c.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}
