//! Helpers shared by the fuzz targets: the fixed test signing key, blob
//! framing built byte by byte from the documented layout, and a workout of
//! a decoded policy through the decision function.
//!
//! The key is the committed `TEST-ONLY` fixture of `policy/tests/golden/`:
//! it signs nothing but test data.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use policy::blob::{self, PublicKey, FORMAT_VERSION, HEADER_LEN, MAGIC};
use policy::{CompiledPolicy, MessageContext, Policy};
use ring::signature::{Ed25519KeyPair, KeyPair};

/// PKCS#8 of the golden test key.
pub const TEST_KEY_PK8: &[u8] =
    include_bytes!("../../policy/tests/golden/TEST-ONLY-signing-key.pk8");

/// The golden test key pair.
pub fn test_key() -> Option<Ed25519KeyPair> {
    Ed25519KeyPair::from_pkcs8_maybe_unchecked(TEST_KEY_PK8).ok()
}

/// The public half of `pair`, as the relay trusts it.
pub fn public_key(pair: &Ed25519KeyPair) -> PublicKey {
    let mut out = [0u8; 32];
    out.copy_from_slice(pair.public_key().as_ref());
    PublicKey(out)
}

/// The leading postcard varint of `body` (the policy's `serial`, its first
/// field), so that the header can carry the same serial and decoding gets
/// past the serial comparison.
pub fn leading_varint(body: &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    for (i, &b) in body.iter().take(10).enumerate() {
        v |= u64::from(b & 0x7f).checked_shl(7 * i as u32)?;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// A version 1 blob around `body`, built from the layout in
/// `policy/src/blob.rs` (not through `blob::sign`), signed with `pair`.
pub fn frame(body: &[u8], serial: u64, created: u64, pair: &Ed25519KeyPair) -> Option<Vec<u8>> {
    let body_len = u32::try_from(body.len()).ok()?;
    let key_id = public_key(pair).key_id();
    let mut out = Vec::with_capacity(HEADER_LEN + body.len() + blob::SIGNATURE_LEN);
    out.extend_from_slice(&MAGIC); // 0..8
    out.extend_from_slice(&FORMAT_VERSION.to_be_bytes()); // 8..10
    out.extend_from_slice(&key_id); // 10..18
    out.extend_from_slice(&serial.to_be_bytes()); // 18..26
    out.extend_from_slice(&created.to_be_bytes()); // 26..34
    out.extend_from_slice(&body_len.to_be_bytes()); // 34..38
    debug_assert_eq!(out.len(), HEADER_LEN);
    out.extend_from_slice(body);
    let sig = pair.sign(&out);
    out.extend_from_slice(sig.as_ref());
    Some(out)
}

/// Builds the decision indexes of `policy` and asks a few questions: the
/// registered names themselves, sub-domains, exclusions, partners, from
/// outbound servers and from strangers, over TLS and not.
pub fn exercise(policy: Policy) {
    let mut recipients: Vec<String> = vec![
        "someone@example.com".into(),
        "x@UPPER.Example.Org.".into(),
        "postmaster".into(),
        "bad@@".into(),
        "a@-.-".into(),
    ];
    let mut ips: Vec<IpAddr> = vec![
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9)),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
        IpAddr::V6(Ipv4Addr::new(192, 0, 2, 10).to_ipv6_mapped()),
    ];
    for d in policy.domains.iter().take(8) {
        let name = d.name.as_str();
        recipients.push(format!("u@{name}"));
        recipients.push(format!("u@sub.{}", name.to_ascii_uppercase()));
        if let Some(details) = &d.details {
            for e in details.excluded.iter().take(2) {
                recipients.push(format!("u@deep.{}", e.as_str()));
            }
            for net in details.outbound_servers.iter().take(2) {
                ips.push(net.addr);
                if let IpAddr::V4(v4) = net.addr {
                    ips.push(IpAddr::V6(v4.to_ipv6_mapped()));
                }
            }
        }
    }
    for p in policy.partners.iter().take(4) {
        recipients.push(format!("u@{}", p.name.as_str()));
        recipients.push(format!("u@a.b.{}", p.name.as_str()));
    }
    let retry = &policy.retry;
    for attempt in [0, 1, 2, u32::MAX] {
        let _ = retry.delay_after_attempt(attempt);
    }

    let compiled = CompiledPolicy::new(policy);
    for ip in &ips {
        let class = compiled.client(*ip);
        assert_eq!(class.may_relay(), compiled.may_relay(*ip));
    }
    for (i, rcpt) in recipients.iter().enumerate() {
        let ip = ips[i % ips.len()];
        for tls in [false, true] {
            let ctx = MessageContext {
                sender: "",
                recipient: rcpt,
                client_ip: ip,
                received_over_tls: tls,
            };
            if let Ok(decision) = compiled.decide(&ctx) {
                let _ = decision.is_refused();
                let _ = decision.rule.to_string();
                if let Some(plan) = decision.plan {
                    // A validation is given exactly when TLS is required.
                    assert_eq!(
                        plan.validation.is_some(),
                        plan.tls == policy::TlsRequirement::Required,
                        "{rcpt}: {plan:?}"
                    );
                }
            }
        }
    }
}
