//! The signed blob format: round trips, tampering, truncation, wrong keys,
//! unknown versions, reproducibility and the frozen format version 1
//! (golden files under `tests/golden/`). Rule T19 at the format level.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;

use policy::blob::{self, BlobError, PublicKey, SigningKey, FORMAT_VERSION, HEADER_LEN};
use policy::Policy;
use proptest::prelude::*;

fn golden(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(file)
}

/// The committed test-only key (never used for anything real).
fn test_key() -> SigningKey {
    SigningKey::from_pkcs8(&std::fs::read(golden("TEST-ONLY-signing-key.pk8")).unwrap()).unwrap()
}

fn fresh_key() -> SigningKey {
    SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().unwrap()).unwrap()
}

fn sample_blob(key: &SigningKey) -> Vec<u8> {
    blob::sign(&common::sample_policy(), 1_700_000_000, key).unwrap()
}

#[test]
fn t19_round_trip_sample() {
    let key = fresh_key();
    let bytes = sample_blob(&key);
    let (header, policy) = blob::verify_and_decode(&bytes, &[key.public_key()]).unwrap();
    assert_eq!(policy, common::sample_policy());
    assert_eq!(header.version, FORMAT_VERSION);
    assert_eq!(header.serial, 42);
    assert_eq!(header.created, 1_700_000_000);
    assert_eq!(header.key_id, key.public_key().key_id());
    assert_eq!(
        header.body_len as usize,
        bytes.len() - HEADER_LEN - blob::SIGNATURE_LEN
    );
    assert_eq!(blob::read_header(&bytes).unwrap(), header);
    assert_eq!(&bytes[..8], b"TLSGPOL\0");
}

#[test]
fn reproducible_bytes() {
    let key = test_key();
    assert_eq!(sample_blob(&key), sample_blob(&key));
    let other = blob::sign(&common::sample_policy(), 1_700_000_001, &key).unwrap();
    assert_ne!(sample_blob(&key), other);
}

#[test]
fn t19_every_flipped_byte_is_refused() {
    let key = fresh_key();
    let trusted = [key.public_key()];
    let bytes = sample_blob(&key);
    for i in 0..bytes.len() {
        for mask in [0x01u8, 0x80] {
            let mut t = bytes.clone();
            t[i] ^= mask;
            assert!(
                blob::verify_and_decode(&t, &trusted).is_err(),
                "flipping bit {mask:#x} of byte {i} was accepted"
            );
        }
    }
}

#[test]
fn t19_truncation_and_extension_are_refused() {
    let key = fresh_key();
    let trusted = [key.public_key()];
    let bytes = sample_blob(&key);
    for len in 0..bytes.len() {
        let err = blob::verify_and_decode(&bytes[..len], &trusted).unwrap_err();
        assert_eq!(err, BlobError::Truncated, "at length {len}");
    }
    for extra in [&[0u8][..], &[0, 0, 0, 0], &bytes[..10]] {
        let mut t = bytes.clone();
        t.extend_from_slice(extra);
        assert_eq!(
            blob::verify_and_decode(&t, &trusted).unwrap_err(),
            BlobError::TrailingBytes
        );
    }
}

#[test]
fn t19_bad_magic_is_refused() {
    let key = fresh_key();
    let mut bytes = sample_blob(&key);
    bytes[0] = b'X';
    assert_eq!(
        blob::verify_and_decode(&bytes, &[key.public_key()]).unwrap_err(),
        BlobError::BadMagic
    );
    assert_eq!(
        blob::verify_and_decode(b"hello", &[key.public_key()]).unwrap_err(),
        BlobError::BadMagic
    );
}

#[test]
fn t19_wrong_key_is_refused() {
    let signer = fresh_key();
    let other = fresh_key();
    let bytes = sample_blob(&signer);
    let err = blob::verify_and_decode(&bytes, &[other.public_key()]).unwrap_err();
    assert_eq!(err, BlobError::UnknownKey(signer.public_key().key_id()));
    assert!(err
        .to_string()
        .contains(&blob::hex(&signer.public_key().key_id())));
    assert!(blob::verify_and_decode(&bytes, &[]).is_err());
    // Several trusted keys: the one named by the key id is used.
    blob::verify_and_decode(&bytes, &[other.public_key(), signer.public_key()]).unwrap();

    // A key with the signer's id but other bytes cannot happen in practice;
    // a signature by another key under the signer's id is a bad signature.
    let mut forged = blob::sign(&common::sample_policy(), 0, &other).unwrap();
    forged[10..18].copy_from_slice(&signer.public_key().key_id());
    assert_eq!(
        blob::verify_and_decode(&forged, &[signer.public_key()]).unwrap_err(),
        BlobError::BadSignature
    );
}

/// Re-signs `bytes` (header and body as given) with the raw ring key.
fn resign(bytes: &mut Vec<u8>, pkcs8: &[u8]) {
    use ring::signature::Ed25519KeyPair;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8).unwrap();
    let n = bytes.len() - blob::SIGNATURE_LEN;
    bytes.truncate(n);
    let sig = pair.sign(bytes);
    bytes.extend_from_slice(sig.as_ref());
}

#[test]
fn t19_unknown_version_is_refused_even_when_validly_signed() {
    let pkcs8 = SigningKey::generate_pkcs8().unwrap();
    let key = SigningKey::from_pkcs8(&pkcs8).unwrap();
    let mut bytes = sample_blob(&key);
    bytes[8..10].copy_from_slice(&2u16.to_be_bytes());
    resign(&mut bytes, &pkcs8);
    let err = blob::verify_and_decode(&bytes, &[key.public_key()]).unwrap_err();
    assert_eq!(err, BlobError::UnknownVersion(2));
    assert_eq!(
        err.to_string(),
        "unknown blob format version 2 (this build reads version 1)"
    );
}

#[test]
fn t19_header_serial_must_match_body() {
    let pkcs8 = SigningKey::generate_pkcs8().unwrap();
    let key = SigningKey::from_pkcs8(&pkcs8).unwrap();
    let mut bytes = sample_blob(&key);
    bytes[18..26].copy_from_slice(&43u64.to_be_bytes());
    resign(&mut bytes, &pkcs8);
    assert_eq!(
        blob::verify_and_decode(&bytes, &[key.public_key()]).unwrap_err(),
        BlobError::SerialMismatch {
            header: 43,
            body: 42
        }
    );
}

#[test]
fn signed_but_malformed_body_is_refused() {
    let pkcs8 = SigningKey::generate_pkcs8().unwrap();
    let key = SigningKey::from_pkcs8(&pkcs8).unwrap();
    // A body with an extra byte inside the signed part.
    let mut bytes = sample_blob(&key);
    let body_len = u32::from_be_bytes(bytes[34..38].try_into().unwrap());
    bytes[34..38].copy_from_slice(&(body_len + 1).to_be_bytes());
    bytes.insert(HEADER_LEN + body_len as usize, 0);
    resign(&mut bytes, &pkcs8);
    assert!(matches!(
        blob::verify_and_decode(&bytes, &[key.public_key()]),
        Err(BlobError::Decode(_))
    ));

    // An upper-case domain name is not canonical and is refused on decode.
    let mut p = Policy::empty(1);
    p.domains.push(policy::Domain {
        name: common::name("abc.example"),
        settings: None,
        details: None,
    });
    let mut bytes = blob::sign(&p, 0, &key).unwrap();
    let at = bytes.windows(3).position(|w| w == b"abc").unwrap();
    bytes[at] = b'A';
    resign(&mut bytes, &pkcs8);
    assert!(matches!(
        blob::verify_and_decode(&bytes, &[key.public_key()]),
        Err(BlobError::Decode(_))
    ));
}

#[test]
fn public_key_text_round_trip() {
    let key = test_key().public_key();
    let text = key.to_text();
    assert!(text.starts_with("tlsgate-ed25519 "));
    assert!(text.ends_with('\n'));
    assert_eq!(text.len(), "tlsgate-ed25519 ".len() + 64 + 1);
    assert_eq!(PublicKey::from_text(&text).unwrap(), key);
    assert_eq!(
        PublicKey::from_text(
            &text
                .to_uppercase()
                .replace("TLSGATE-ED25519", "tlsgate-ed25519")
        )
        .unwrap(),
        key
    );
    for bad in [
        "",
        "tlsgate-ed25519",
        "ssh-ed25519 00",
        "tlsgate-ed25519 zz",
        "tlsgate-ed25519 00 00",
    ] {
        assert!(
            matches!(PublicKey::from_text(bad), Err(BlobError::BadKey(_))),
            "{bad:?}"
        );
    }
    assert!(SigningKey::from_pkcs8(b"not a key").is_err());
}

/// Format version 1 is frozen: the committed policy, signed with the
/// committed test key at the committed time, gives the committed bytes, and
/// the committed bytes decode to the committed policy. Regenerate (only when
/// deliberately changing the format, together with a version bump) with
/// `UPDATE_GOLDEN=1 cargo test -p tlsgate-policy --test blob golden`.
#[test]
fn golden_v1() {
    let created = 1_700_000_000;
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        if !golden("TEST-ONLY-signing-key.pk8").exists() {
            std::fs::write(
                golden("TEST-ONLY-signing-key.pk8"),
                SigningKey::generate_pkcs8().unwrap(),
            )
            .unwrap();
        }
        let json = serde_json::to_string_pretty(&common::sample_policy()).unwrap();
        std::fs::write(golden("v1-sample.json"), json + "\n").unwrap();
        std::fs::write(
            golden("v1-sample.blob"),
            blob::sign(&common::sample_policy(), created, &test_key()).unwrap(),
        )
        .unwrap();
        std::fs::write(
            golden("TEST-ONLY-signing-key.pub"),
            test_key().public_key().to_text(),
        )
        .unwrap();
    }
    let key = test_key();
    let source: Policy =
        serde_json::from_slice(&std::fs::read(golden("v1-sample.json")).unwrap()).unwrap();
    assert_eq!(source, common::sample_policy(), "the JSON fixture drifted");
    let committed = std::fs::read(golden("v1-sample.blob")).unwrap();
    assert_eq!(
        blob::sign(&source, created, &key).unwrap(),
        committed,
        "format version 1 changed: bump FORMAT_VERSION instead"
    );
    let pubkey = PublicKey::from_text(
        &std::fs::read_to_string(golden("TEST-ONLY-signing-key.pub")).unwrap(),
    )
    .unwrap();
    assert_eq!(pubkey, key.public_key());
    let (header, decoded) = blob::verify_and_decode(&committed, &[pubkey]).unwrap();
    assert_eq!(decoded, source);
    assert_eq!(header.created, created);
    assert_eq!(header.version, 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn round_trip_any_policy(p in common::policy(), created in any::<u64>()) {
        let key = SigningKey::from_pkcs8(&std::fs::read(golden("TEST-ONLY-signing-key.pk8")).unwrap()).unwrap();
        let bytes = blob::sign(&p, created, &key).unwrap();
        let (header, back) = blob::verify_and_decode(&bytes, &[key.public_key()]).unwrap();
        prop_assert_eq!(back, p.clone());
        prop_assert_eq!(header.created, created);
        prop_assert_eq!(header.serial, p.serial);
        prop_assert_eq!(blob::sign(&p, created, &key).unwrap(), bytes);
    }
}
