#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Blob mutation loop against one running relay (the real binary): every
//! byte of a good signed policy flipped, every truncation, extensions, an
//! unknown key, an older serial, the same serial with another body. Each
//! is written over the policy file and a reload triggered by SIGHUP; each
//! must be refused (the relay logs the refusal with the running serial)
//! while the original policy stays in force — afterwards mail to its
//! domain is still accepted and delivered by its route, mail to a domain
//! only the rogue blobs name is refused, and the process never restarted.
//! Rules T19 (only trusted, intact blobs), T20 (no roll-back, no serial
//! reuse), T21 (reload without a restart).

mod load_support;
mod rx_support;
mod tx_support;

use std::time::{Duration, Instant};

use load_support::*;
use rx_support::{connect, write_file, Signer};
use tx_support::smtp::{self as peer, Behaviour};

const REFUSED: &str = "policy reload refused; keeping the running policy";

/// Every mutation of `good` (serial 5) that must be refused.
fn mutations(
    good: &[u8],
    signer: &Signer,
    older: &policy::Policy,
    rogue: &policy::Policy,
    rogue_newer: &policy::Policy,
) -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    for i in 0..good.len() {
        for mask in [0x01u8, 0xff] {
            let mut b = good.to_vec();
            b[i] ^= mask;
            v.push((format!("byte {i} ^ {mask:#04x}"), b));
        }
    }
    for n in 0..good.len() {
        v.push((format!("truncated to {n} bytes"), good[..n].to_vec()));
    }
    for (what, tail) in [
        ("one zero byte", vec![0u8]),
        ("a newline", b"\n".to_vec()),
        ("64 bytes", vec![0xa5; 64]),
        ("a second copy", good.to_vec()),
    ] {
        let mut b = good.to_vec();
        b.extend_from_slice(&tail);
        v.push((format!("extended by {what}"), b));
    }
    let stranger = Signer::new();
    v.push((
        "signed by an unknown key".into(),
        stranger.sign(rogue_newer),
    ));
    v.push((
        "same body, unknown key".into(),
        stranger.sign(&decode(good, signer)),
    ));
    v.push(("older serial".into(), signer.sign(older)));
    v.push(("same serial, other body".into(), signer.sign(rogue)));
    v.push(("empty file".into(), Vec::new()));
    v
}

fn decode(blob: &[u8], signer: &Signer) -> policy::Policy {
    policy::blob::verify_and_decode(blob, std::slice::from_ref(&signer.public))
        .unwrap()
        .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t19_t20_t21_every_mutation_refused_running_policy_stays() {
    // rule T19, rule T20, rule T21
    let dir = tempfile::tempdir().unwrap();
    let good_hop = peer::start("127.0.0.1:0", Behaviour::default()).await;
    let rogue_hop = peer::start("127.0.0.1:0", Behaviour::default()).await;
    let signer = Signer::new();
    let original = routed_policy(dir.path(), 5, good_hop.addr.port(), &[]);
    let older = routed_policy(dir.path(), 4, good_hop.addr.port(), &[]);
    let rogue = routed_policy(dir.path(), 5, rogue_hop.addr.port(), &["other.test"]);
    let rogue_newer = routed_policy(dir.path(), 6, rogue_hop.addr.port(), &["other.test"]);
    let good = signer.sign(&original);

    // The file poll is effectively off: every reload is one SIGHUP.
    let relay = start_child(dir.path(), &signer, &good, "policy_poll_millis = 3600000\n");
    let cases = mutations(&good, &signer, &older, &rogue, &rogue_newer);
    let total = cases.len();
    let blob_len = good.len();
    let started = Instant::now();
    let mut relay = tokio::task::spawn_blocking(move || {
        for (i, (what, bytes)) in cases.iter().enumerate() {
            assert_ne!(bytes, &good, "{what}: not a mutation");
            write_file(&relay.policy_path, bytes);
            relay.hangup();
            let seen = relay.log.wait_until(Duration::from_secs(30), |s| {
                s.counts.get(REFUSED).copied().unwrap_or(0) > i
                    || s.counts.contains_key("policy replaced")
            });
            assert!(seen, "{what}: no reload answer within 30 s");
            assert_eq!(
                relay.log.count("policy replaced"),
                0,
                "{what}: a bad blob was put in force"
            );
            let last = relay.log.lines_of(REFUSED).pop().unwrap();
            assert_eq!(last["running_serial"], 5, "{what}: {last}");
            let why = match what.as_str() {
                "older serial" => "roll-back protection",
                "same serial, other body" => "already accepted with different content",
                "signed by an unknown key" | "same body, unknown key" => {
                    "not among the trusted keys"
                }
                _ => "",
            };
            let error = last["error"].as_str().unwrap_or("");
            assert!(error.contains(why), "{what}: {error}");
        }
        relay
    })
    .await
    .unwrap();
    let elapsed = started.elapsed();
    eprintln!(
        "{total} bad blobs ({} bytes each flipped twice, every truncation, extensions, keys, serials) refused in {:.2}s ({:.1} ms per reload)",
        blob_len,
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e3 / total as f64
    );
    // Each refusal named a reason; tally them for the report.
    let mut reasons: std::collections::BTreeMap<String, usize> = Default::default();
    for l in relay.log.lines_of(REFUSED) {
        let e = l["error"].as_str().unwrap_or("").to_string();
        let mut key = e.rsplit(": ").next().unwrap_or("").to_string();
        if key.contains("not among the trusted keys") {
            key = "signed by a key that is not trusted".into();
        }
        *reasons.entry(key).or_default() += 1;
    }
    eprintln!("refusal reasons: {reasons:#?}");
    assert_eq!(relay.log.count(REFUSED), total);

    // The original policy is still in force: its domain is accepted and
    // delivered by its route; the rogue blobs' domain is refused.
    let (mut c, _) = connect(relay.addr, None).await;
    assert_eq!(
        c.command("MAIL FROM:<a@sender.test>").await.unwrap().code,
        250
    );
    assert_eq!(c.command("RCPT TO:<x@other.test>").await.unwrap().code, 550);
    c.command("RSET").await.unwrap();
    let body = b"From: <a@sender.test>\r\nMessage-ID: <after-mutations@test>\r\nSubject: t19\r\n\r\nstill here\r\n";
    let r = c
        .send_mail("a@sender.test", &["user@example.test"], body)
        .await
        .unwrap();
    assert_eq!(r.code, 250, "{r:?}");
    let _ = c.command("QUIT").await;
    let mut delivered = false;
    for _ in 0..1200 {
        if message_ids(&good_hop.messages()).contains(&"<after-mutations@test>".to_string()) {
            delivered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(delivered, "the message never reached the original route");
    assert!(rogue_hop.messages().is_empty());
    assert_eq!(rogue_hop.connections(), 0);

    // One process all along: loaded once, listening once, still running.
    assert!(relay.running(), "the relay exited");
    assert_eq!(relay.log.count("policy loaded"), 1);
    assert_eq!(relay.log.count("SMTP listening"), 1);
    // The running policy is still the one on disk if it comes back.
    write_file(&relay.policy_path, &signer.sign(&original));
    assert!(relay.stop(Duration::from_secs(20)), "no clean exit");
}
