//! Raw bytes straight into the blob reader (header, framing, key lookup,
//! signature check), the unauthenticated header reader and the unverified
//! decoder used by `tlspolc inspect`. None may panic; only a blob signed
//! by the trusted test key may verify.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use policy::blob::{self, PublicKey};

fn trusted() -> &'static [PublicKey; 2] {
    static KEYS: OnceLock<[PublicKey; 2]> = OnceLock::new();
    KEYS.get_or_init(|| {
        let pair = tlsgate_fuzz::test_key().expect("the golden test key loads");
        [PublicKey([7u8; 32]), tlsgate_fuzz::public_key(&pair)]
    })
}

fuzz_target!(|bytes: &[u8]| {
    if let Ok(h) = blob::read_header(bytes) {
        let _ = h.key_id_hex();
    }
    let _ = blob::danger::decode_unverified(bytes);
    if let Ok((_, policy)) = blob::verify_and_decode(bytes, trusted()) {
        tlsgate_fuzz::exercise(policy);
    }
    let _ = blob::verify_and_decode(bytes, &[]);
    if let Ok(text) = std::str::from_utf8(bytes) {
        if let Ok(k) = PublicKey::from_text(text) {
            assert_eq!(PublicKey::from_text(&k.to_text()), Ok(k));
        }
    }
});
