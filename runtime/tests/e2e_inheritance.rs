#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Inheritance and scope, end to end: `.tlspol` text compiled by the real
//! compiler, signed, loaded by the real relay, mail sent to it over SMTP,
//! and the next hop watched to see whether each copy arrived over TLS.
//! Rules T10 (domains on the defaults follow them), T11 (sub-domains
//! inherit their parent's enforcement) and T12 (excluded sub-domains fall
//! back to the mirror rules).

mod rx_support;
mod tx_support;

use std::path::Path;
use std::time::Duration;

use rx_support::{connect, write_file, Signer, BODY};
use tlsgate::config::Config;
use tlsgate::relay::Relay;
use tx_support::pki::Ca;
use tx_support::smtp::{self as peer, Behaviour};

/// Compiles `src` (relative files next to it in `dir`), or fails the test
/// with the compiler's diagnostics.
fn compile(dir: &Path, src: &str) -> policy::Policy {
    std::fs::write(dir.join("policy.tlspol"), src).unwrap();
    match tlspolc::compile_str("policy.tlspol", src, dir) {
        Ok(c) => {
            assert!(c.warnings.is_empty(), "unexpected warnings");
            c.policy
        }
        Err(f) => panic!(
            "policy does not compile: {:?}",
            f.errors.iter().map(|d| d.to_string()).collect::<Vec<_>>()
        ),
    }
}

/// A policy whose defaults carry `inbound` (T10); `example.com` uses the
/// defaults, excludes `legacy.example.com`, and is routed to the next hop,
/// whose certificate names `mx.example.com` and is issued by a private CA.
fn policy_text(serial: u64, inbound: &str, port: u16) -> String {
    format!(
        "policy serial {serial}\n\
         defaults {{\n    inbound tls {inbound}\n    trusted names mx.example.com\n}}\n\
         domain example.com {{\n    exclude legacy.example.com\n    deliver static 127.0.0.1:{port}\n}}\n\
         trust anchor \"ca.pem\"\n"
    )
}

async fn start_relay(dir: &Path, signer: &Signer, p: &policy::Policy) -> Relay {
    let text = format!(
        "hostname = \"gw.test\"\nlisten = [\"127.0.0.1:0\"]\nspool_dir = \"{d}/spool\"\nstate_dir = \"{d}/state\"\npolicy = \"{d}/policy.blob\"\ntrusted_keys = [\"{k}\"]\n[limits]\nshutdown_grace_secs = 2\n",
        d = dir.display(),
        k = signer.public.to_text().trim()
    );
    let cfg = Config::parse(&text).unwrap();
    write_file(&cfg.policy, &signer.sign(p));
    Relay::start(&cfg).await.unwrap()
}

/// Sends one message in clear text (no STARTTLS on the receiving leg) and
/// waits until the next hop has `count` messages; returns whether the last
/// one arrived over TLS.
async fn relay_one(relay: &Relay, next_hop: &peer::Server, rcpt: &str, count: usize) -> bool {
    let (mut c, _) = connect(relay.local_addrs()[0], None).await;
    let r = c.send_mail("a@sender.test", &[rcpt], BODY).await.unwrap();
    assert_eq!(r.code, 250, "{r:?}");
    for _ in 0..600 {
        let arrived = {
            let seen = next_hop.seen.lock().unwrap();
            (seen.messages.len() >= count).then(|| seen.message_over_tls[count - 1])
        };
        if let Some(over_tls) = arrived {
            return over_tls;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the message to {rcpt} never reached the next hop");
}

#[tokio::test]
async fn t10_t11_t12_defaults_subdomains_and_exclusions_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::root("tlsgate test private CA");
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    let next_hop = peer::start(
        "127.0.0.1:0",
        Behaviour {
            tls: Some(ca.leaf_for(&["mx.example.com"])),
            ..Behaviour::default()
        },
    )
    .await;
    let port = next_hop.addr.port();
    let signer = Signer::new();

    // Serial 1: the defaults require inbound TLS.
    let p1 = compile(dir.path(), &policy_text(1, "required", port));
    let relay = start_relay(dir.path(), &signer, &p1).await;

    // rule T11 + rule T10: a sub-domain of a domain on the defaults gets
    // the defaults' enforcement: TLS to the next hop although the message
    // arrived in clear (where the mirror rule T3 would not even try).
    assert!(
        relay_one(&relay, &next_hop, "user@sales.example.com", 1).await,
        "T10/T11: mail to a sub-domain of a domain on enforcing defaults went out in clear"
    );
    // rule T12: the excluded sub-domain (and its own sub-domains) fall back
    // to the mirror rule: received in clear → delivered in clear, no
    // STARTTLS attempted, by the parent's route.
    assert!(
        !relay_one(&relay, &next_hop, "user@legacy.example.com", 2).await,
        "T12: an excluded sub-domain was held to its parent's enforcement"
    );
    assert!(
        !relay_one(&relay, &next_hop, "user@old.legacy.example.com", 3).await,
        "T12: a sub-domain of an excluded sub-domain was held to the enforcement"
    );
    relay.shutdown().await;

    // Serial 2: only the defaults change (opportunistic); the domain's own
    // entry is untouched. rule T10: the domain follows the defaults, so the
    // same mail received in clear now goes out in clear (T3).
    let p2 = compile(dir.path(), &policy_text(2, "opportunistic", port));
    assert_eq!(
        p1.domains, p2.domains,
        "the domain entry itself must not change"
    );
    let relay = start_relay(dir.path(), &signer, &p2).await;
    assert!(
        !relay_one(&relay, &next_hop, "user@sales.example.com", 4).await,
        "T10: a domain on the defaults did not follow the defaults' change"
    );
    relay.shutdown().await;
}
