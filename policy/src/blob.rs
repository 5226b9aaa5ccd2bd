//! The signed binary form of a [`Policy`]: what `tlspolc build` writes and
//! what `tlsgate` loads.
//!
//! # Layout (format version 1, all integers big-endian)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0  | 8  | magic `TLSGPOL\0` |
//! | 8  | 2  | format version (`1`) |
//! | 10 | 8  | key id: first 8 bytes of SHA-256 of the Ed25519 public key |
//! | 18 | 8  | serial (equal to the body's `serial`) |
//! | 26 | 8  | creation time, unix seconds |
//! | 34 | 4  | body length `n` |
//! | 38 | n  | postcard encoding of [`Policy`] |
//! | 38+n | 64 | Ed25519 signature over bytes `0 .. 38+n` |
//!
//! # Verify, then decode
//!
//! [`verify_and_decode`] reads only the fixed-size header fields it needs
//! to find the signature (magic, version, key id, body length), checks the
//! signature with the trusted key named by the key id, and only then hands
//! the body to postcard. Postcard decoding of the `heapless` fields enforces
//! the model's size bounds; the few unbounded collections are checked
//! against [`crate::limits`] right after.
//!
//! # Reproducibility
//!
//! Postcard and Ed25519 are both deterministic, so the same policy, key and
//! creation time always give the same bytes.

use core::fmt;

use ring::signature::{self, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::Serialize;

use crate::limits::{MAX_DOMAINS, MAX_PARTNERS, MAX_TRUST_ANCHORS};
use crate::model::Policy;

/// The first 8 bytes of every blob.
pub const MAGIC: [u8; 8] = *b"TLSGPOL\0";
/// The only format version this build reads and writes.
pub const FORMAT_VERSION: u16 = 1;
/// Size of the fixed header in bytes.
pub const HEADER_LEN: usize = 8 + 2 + 8 + 8 + 8 + 4;
/// Size of the trailing Ed25519 signature in bytes.
pub const SIGNATURE_LEN: usize = 64;
/// Prefix of a public key file (`tlsgate-ed25519 <64 hex digits>`).
pub const PUBLIC_KEY_PREFIX: &str = "tlsgate-ed25519";

/// Why a blob or a key was refused. Each message is one line.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum BlobError {
    #[error("not a tlsgate policy blob (bad magic)")]
    BadMagic,
    #[error("unknown blob format version {0} (this build reads version {FORMAT_VERSION})")]
    UnknownVersion(u16),
    #[error("blob is truncated")]
    Truncated,
    #[error("blob has trailing bytes after its signature")]
    TrailingBytes,
    #[error("blob is signed by key `{}`, which is not among the trusted keys", hex(.0))]
    UnknownKey([u8; 8]),
    #[error("blob signature does not verify (the blob was altered or signed by another key)")]
    BadSignature,
    #[error("signed blob body does not decode: {0}")]
    Decode(String),
    #[error("header serial {header} differs from body serial {body}")]
    SerialMismatch { header: u64, body: u64 },
    #[error("signed policy exceeds a limit: {0}")]
    Limit(String),
    #[error("bad key: {0}")]
    BadKey(String),
    #[error("policy does not encode: {0}")]
    Encode(String),
    #[error("policy body is {0} bytes, more than a blob can hold")]
    TooLarge(usize),
}

/// An Ed25519 signing key (the private half), read from PKCS#8.
pub struct SigningKey {
    pair: Ed25519KeyPair,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("SigningKey")
            .field("public", &self.public_key())
            .finish()
    }
}

impl SigningKey {
    /// A fresh key as PKCS#8 v2 DER (contains the public key too).
    pub fn generate_pkcs8() -> Result<Vec<u8>, BlobError> {
        let rng = ring::rand::SystemRandom::new();
        Ed25519KeyPair::generate_pkcs8(&rng)
            .map(|doc| doc.as_ref().to_vec())
            .map_err(|_| BlobError::BadKey("the system random source failed".into()))
    }

    /// Reads a PKCS#8 (v1 or v2) Ed25519 private key.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, BlobError> {
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map(|pair| SigningKey { pair })
            .map_err(|e| BlobError::BadKey(format!("not a PKCS#8 Ed25519 private key ({e})")))
    }

    pub fn public_key(&self) -> PublicKey {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey(out)
    }
}

/// An Ed25519 public key, as trusted by the relay.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// First 8 bytes of SHA-256 of the 32 key bytes.
    pub fn key_id(&self) -> [u8; 8] {
        let digest = ring::digest::digest(&ring::digest::SHA256, &self.0);
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest.as_ref()[..8]);
        id
    }

    /// `tlsgate-ed25519 <64 lowercase hex digits>\n`.
    pub fn to_text(&self) -> String {
        format!("{PUBLIC_KEY_PREFIX} {}\n", hex(&self.0))
    }

    /// Reads the form written by [`PublicKey::to_text`] (surrounding
    /// whitespace and upper-case hex are accepted).
    pub fn from_text(s: &str) -> Result<Self, BlobError> {
        let mut words = s.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some(PUBLIC_KEY_PREFIX), Some(h), None) => {
                let bytes = unhex(h).ok_or_else(|| {
                    BlobError::BadKey("the key is not 64 hexadecimal digits".into())
                })?;
                let mut out = [0u8; 32];
                if bytes.len() != out.len() {
                    return Err(BlobError::BadKey(
                        "the key is not 64 hexadecimal digits".into(),
                    ));
                }
                out.copy_from_slice(&bytes);
                Ok(PublicKey(out))
            }
            _ => Err(BlobError::BadKey(format!(
                "expected `{PUBLIC_KEY_PREFIX} <64 hex digits>`"
            ))),
        }
    }
}

/// The fixed-size header of a blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Header {
    pub version: u16,
    pub key_id: [u8; 8],
    pub serial: u64,
    /// Creation time, unix seconds.
    pub created: u64,
    pub body_len: u32,
}

impl Header {
    /// The key id as 16 lowercase hex digits.
    pub fn key_id_hex(&self) -> String {
        hex(&self.key_id)
    }

    fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..8].copy_from_slice(&MAGIC);
        out[8..10].copy_from_slice(&self.version.to_be_bytes());
        out[10..18].copy_from_slice(&self.key_id);
        out[18..26].copy_from_slice(&self.serial.to_be_bytes());
        out[26..34].copy_from_slice(&self.created.to_be_bytes());
        out[34..38].copy_from_slice(&self.body_len.to_be_bytes());
        out
    }
}

/// Encodes and signs `policy`. Deterministic in all three inputs.
pub fn sign(policy: &Policy, created: u64, key: &SigningKey) -> Result<Vec<u8>, BlobError> {
    let body = postcard::to_stdvec(policy).map_err(|e| BlobError::Encode(e.to_string()))?;
    let body_len = u32::try_from(body.len()).map_err(|_| BlobError::TooLarge(body.len()))?;
    let header = Header {
        version: FORMAT_VERSION,
        key_id: key.public_key().key_id(),
        serial: policy.serial,
        created,
        body_len,
    };
    let mut out = Vec::with_capacity(HEADER_LEN + body.len() + SIGNATURE_LEN);
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(&body);
    let sig = key.pair.sign(&out);
    out.extend_from_slice(sig.as_ref());
    Ok(out)
}

/// Reads the header without checking anything but its shape. For
/// `tlspolc inspect` and diagnostics only: nothing read here is
/// authenticated.
pub fn read_header(bytes: &[u8]) -> Result<Header, BlobError> {
    let magic_len = bytes.len().min(MAGIC.len());
    if bytes[..magic_len] != MAGIC[..magic_len] {
        return Err(BlobError::BadMagic);
    }
    if bytes.len() < HEADER_LEN {
        return Err(BlobError::Truncated);
    }
    let u16_at = |at: usize| u16::from_be_bytes([bytes[at], bytes[at + 1]]);
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        u64::from_be_bytes(b)
    };
    let mut key_id = [0u8; 8];
    key_id.copy_from_slice(&bytes[10..18]);
    Ok(Header {
        version: u16_at(8),
        key_id,
        serial: u64_at(18),
        created: u64_at(26),
        body_len: u32::from_be_bytes([bytes[34], bytes[35], bytes[36], bytes[37]]),
    })
}

/// Checks the signature with the trusted key named by the blob's key id,
/// then (and only then) decodes the body.
pub fn verify_and_decode(
    bytes: &[u8],
    trusted: &[PublicKey],
) -> Result<(Header, Policy), BlobError> {
    let header = read_header(bytes)?;
    if header.version != FORMAT_VERSION {
        return Err(BlobError::UnknownVersion(header.version));
    }
    let signed_len = HEADER_LEN
        .checked_add(header.body_len as usize)
        .ok_or(BlobError::Truncated)?;
    let total = signed_len
        .checked_add(SIGNATURE_LEN)
        .ok_or(BlobError::Truncated)?;
    if bytes.len() < total {
        return Err(BlobError::Truncated);
    }
    if bytes.len() > total {
        return Err(BlobError::TrailingBytes);
    }
    let key = trusted
        .iter()
        .find(|k| k.key_id() == header.key_id)
        .ok_or(BlobError::UnknownKey(header.key_id))?;
    let (signed, sig) = bytes.split_at(signed_len);
    UnparsedPublicKey::new(&signature::ED25519, &key.0)
        .verify(signed, sig)
        .map_err(|_| BlobError::BadSignature)?;

    // Authentic from here on.
    let body = &signed[HEADER_LEN..];
    let (policy, rest): (Policy, &[u8]) =
        postcard::take_from_bytes(body).map_err(|e| BlobError::Decode(e.to_string()))?;
    if !rest.is_empty() {
        return Err(BlobError::Decode(format!(
            "{} unread bytes after the policy",
            rest.len()
        )));
    }
    if policy.serial != header.serial {
        return Err(BlobError::SerialMismatch {
            header: header.serial,
            body: policy.serial,
        });
    }
    check_limits(&policy)?;
    Ok((header, policy))
}

/// The bounds of the collections that are not `heapless` (too large to
/// hold inline).
fn check_limits(policy: &Policy) -> Result<(), BlobError> {
    let over = |what: &str, n: usize, max: usize, name: &str| {
        if n > max {
            Err(BlobError::Limit(format!(
                "{n} {what}, more than {name} ({max})"
            )))
        } else {
            Ok(())
        }
    };
    over("domains", policy.domains.len(), MAX_DOMAINS, "MAX_DOMAINS")?;
    over(
        "partners",
        policy.partners.len(),
        MAX_PARTNERS,
        "MAX_PARTNERS",
    )?;
    over(
        "trust anchors",
        policy.trust_anchors.len(),
        MAX_TRUST_ANCHORS,
        "MAX_TRUST_ANCHORS",
    )
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.as_bytes()
        .chunks(2)
        .map(|pair| {
            let hi = char::from(pair[0]).to_digit(16)?;
            let lo = char::from(pair[1]).to_digit(16)?;
            u8::try_from(hi * 16 + lo).ok()
        })
        .collect()
}

/// Reading a blob *without* checking its signature. For `tlspolc inspect`
/// and `tlspolc explain` when no public key is at hand, which say so in
/// their output. The relay never calls this.
pub mod danger {
    use super::{read_header, BlobError, Header, HEADER_LEN, SIGNATURE_LEN};
    use crate::model::Policy;

    /// Decodes header and body of a well-formed blob, trusting nothing and
    /// verifying nothing.
    pub fn decode_unverified(bytes: &[u8]) -> Result<(Header, Policy), BlobError> {
        let header = read_header(bytes)?;
        if header.version != super::FORMAT_VERSION {
            return Err(BlobError::UnknownVersion(header.version));
        }
        let end = HEADER_LEN + header.body_len as usize;
        if bytes.len() < end + SIGNATURE_LEN {
            return Err(BlobError::Truncated);
        }
        if bytes.len() > end + SIGNATURE_LEN {
            return Err(BlobError::TrailingBytes);
        }
        let policy = postcard::from_bytes(&bytes[HEADER_LEN..end])
            .map_err(|e| BlobError::Decode(e.to_string()))?;
        Ok((header, policy))
    }
}
