//! Arbitrary bytes as the postcard body of a correctly framed blob, signed
//! with the test key: the decoder runs on authentic input it did not write.
//! `verify_and_decode` must answer Ok or a clean error; a policy it accepts
//! must survive `CompiledPolicy::new` and `decide`.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use policy::blob::{self, BlobError, PublicKey};
use ring::signature::Ed25519KeyPair;

fn key() -> &'static (Ed25519KeyPair, PublicKey) {
    static KEY: OnceLock<(Ed25519KeyPair, PublicKey)> = OnceLock::new();
    KEY.get_or_init(|| {
        let pair = tlsgate_fuzz::test_key().expect("the golden test key loads");
        let public = tlsgate_fuzz::public_key(&pair);
        (pair, public)
    })
}

fuzz_target!(|body: &[u8]| {
    let (pair, public) = key();
    // Usually the header serial is the body's own (to get past the serial
    // check); the low bit of the first byte sometimes picks another one.
    let serial = match tlsgate_fuzz::leading_varint(body) {
        Some(s) if body.len() % 7 != 3 => s,
        Some(s) => s.wrapping_add(1),
        None => 0,
    };
    let Some(bytes) = tlsgate_fuzz::frame(body, serial, 1_700_000_000, pair) else {
        return;
    };
    match blob::verify_and_decode(&bytes, std::slice::from_ref(public)) {
        Ok((header, policy)) => {
            assert_eq!(header.serial, policy.serial);
            assert_eq!(header.body_len as usize, body.len());
            // Re-encoding an accepted policy reproduces a verifiable blob.
            let again = policy::blob::danger::decode_unverified(&bytes)
                .expect("verified blob decodes unverified");
            assert_eq!(again.1, policy);
            tlsgate_fuzz::exercise(policy);
        }
        Err(BlobError::Decode(_) | BlobError::SerialMismatch { .. } | BlobError::Limit(_)) => {}
        Err(e) => panic!("a well-framed, correctly signed blob failed with: {e}"),
    }
});
