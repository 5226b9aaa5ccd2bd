#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Signed policy in the running relay: T19 (only trusted, intact blobs),
//! T20 (roll-back protection across restarts), T21 (reload without
//! dropping sessions), through `relay::Relay` on loopback.

mod rx_support;

use std::path::Path;
use std::time::Duration;

use rx_support::*;
use tlsgate::config::Config;
use tlsgate::policy_store::{LoadError, Reloaded};
use tlsgate::relay::{Relay, RelayError};

fn config(dir: &Path, keys: &[&Signer], poll_ms: u64) -> Config {
    let keys: Vec<String> = keys
        .iter()
        .map(|k| format!("\"{}\"", k.public.to_text().trim()))
        .collect();
    let text = format!(
        "hostname = \"gw.test\"\nlisten = [\"127.0.0.1:0\"]\nspool_dir = \"{d}/spool\"\nstate_dir = \"{d}/state\"\npolicy = \"{d}/policy.blob\"\ntrusted_keys = [{k}]\n[limits]\npolicy_poll_millis = {poll_ms}\nshutdown_grace_secs = 2\n",
        d = dir.display(),
        k = keys.join(", ")
    );
    Config::parse(&text).unwrap()
}

fn base(serial: u64) -> policy::Policy {
    policy(serial, vec![domain("example.com", &[], false)])
}

/// Every way a blob must be refused (T19), made from a good one.
fn bad_blobs(good: &[u8], p: &policy::Policy) -> Vec<(&'static str, Vec<u8>)> {
    let mut tampered = good.to_vec();
    let mid = tampered.len() / 2;
    tampered[mid] ^= 0x01;
    let mut unknown_version = good.to_vec();
    unknown_version[9] = 99;
    let mut unsigned = good.to_vec();
    let n = unsigned.len();
    unsigned[n - 64..].fill(0);
    vec![
        ("unsigned", unsigned),
        ("signature missing", good[..good.len() - 64].to_vec()),
        ("tampered", tampered),
        ("truncated", good[..good.len() / 3].to_vec()),
        ("wrong key", Signer::new().sign(p)),
        ("unknown version", unknown_version),
        ("not a blob", b"serial = 7\n".to_vec()),
    ]
}

async fn wait_for_serial(relay: &Relay, serial: u64) {
    for _ in 0..600 {
        if relay.policy.current().serial == serial {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("policy serial {serial} never came into force");
}

#[tokio::test]
async fn t19_relay_does_not_start_without_a_trusted_intact_blob() {
    // rule T19
    let dir = tempfile::tempdir().unwrap();
    let signer = Signer::new();
    let cfg = config(dir.path(), &[&signer], 100);
    // No blob at all.
    assert!(matches!(
        Relay::start(&cfg).await,
        Err(RelayError::Policy(LoadError::Read { .. }))
    ));
    let p = base(1);
    let good = signer.sign(&p);
    for (what, bytes) in bad_blobs(&good, &p) {
        write_file(&cfg.policy, &bytes);
        match Relay::start(&cfg).await {
            Err(RelayError::Policy(LoadError::Blob { .. })) => {}
            Err(e) => panic!("{what}: unexpected error {e}"),
            Ok(_) => panic!("{what}: relay started"),
        }
    }
    // Any of several trusted keys will do (rotation).
    let next = Signer::new();
    let cfg = config(dir.path(), &[&signer, &next], 100);
    write_file(&cfg.policy, &next.sign(&p));
    let relay = Relay::start(&cfg).await.unwrap();
    assert_eq!(relay.policy.current().serial, 1);
    relay.shutdown().await;
}

#[tokio::test]
async fn t19_binary_refuses_to_start_with_one_clear_line() {
    // rule T19
    let dir = tempfile::tempdir().unwrap();
    let signer = Signer::new();
    let cfg_path = dir.path().join("tlsgate.toml");
    let keys = format!("\"{}\"", signer.public.to_text().trim());
    std::fs::write(
        &cfg_path,
        format!(
            "hostname = \"gw.test\"\nlisten = [\"127.0.0.1:0\"]\nspool_dir = \"{d}/spool\"\nstate_dir = \"{d}/state\"\npolicy = \"{d}/policy.blob\"\ntrusted_keys = [{keys}]\nallow_root = true\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let mut blob = signer.sign(&base(1));
    let n = blob.len();
    blob[n - 70] ^= 0xff;
    std::fs::write(dir.path().join("policy.blob"), &blob).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tlsgate"))
        .args(["run", "--config"])
        .arg(&cfg_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("refused")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("signature does not verify"), "{stderr}");
}

#[tokio::test]
async fn t19_bad_blob_on_reload_keeps_running_policy() {
    // rule T19
    let dir = tempfile::tempdir().unwrap();
    let signer = Signer::new();
    let cfg = config(dir.path(), &[&signer], 50);
    let p1 = base(1);
    write_file(&cfg.policy, &signer.sign(&p1));
    let relay = Relay::start(&cfg).await.unwrap();
    let addr = relay.local_addrs()[0];
    let p2 = policy(
        2,
        vec![
            domain("example.com", &[], false),
            domain("new.test", &[], false),
        ],
    );
    let good2 = signer.sign(&p2);
    for (what, bytes) in bad_blobs(&good2, &p2) {
        write_file(&cfg.policy, &bytes);
        let e = relay.source.reload(&relay.policy).unwrap_err();
        assert!(matches!(e, LoadError::Blob { .. }), "{what}: {e}");
        assert_eq!(relay.policy.current().serial, 1, "{what}");
    }
    // Still serving under serial 1.
    let (mut c, _) = connect(addr, None).await;
    assert_eq!(c.command("MAIL FROM:<a@b.test>").await.unwrap().code, 250);
    assert_eq!(c.command("RCPT TO:<x@new.test>").await.unwrap().code, 550);
    // The watcher survived the bad files and takes the good one.
    write_file(&cfg.policy, &good2);
    wait_for_serial(&relay, 2).await;
    relay.shutdown().await;
}

#[tokio::test]
async fn t20_lower_serial_refused_and_protection_survives_restart() {
    // rule T20
    let dir = tempfile::tempdir().unwrap();
    let signer = Signer::new();
    let cfg = config(dir.path(), &[&signer], 3_600_000);
    let p5 = base(5);
    let blob5 = signer.sign(&p5);
    write_file(&cfg.policy, &blob5);
    let relay = Relay::start(&cfg).await.unwrap();
    // Lower serial: refused, running policy kept.
    write_file(&cfg.policy, &signer.sign(&base(3)));
    let e = relay.source.reload(&relay.policy).unwrap_err();
    assert!(
        matches!(
            e,
            LoadError::Rollback {
                serial: 3,
                highest: 5,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(relay.policy.current().serial, 5);
    // Equal serial: the identical blob is fine, a different one is not.
    write_file(&cfg.policy, &blob5);
    assert_eq!(
        relay.source.reload(&relay.policy).unwrap(),
        Reloaded::Unchanged { serial: 5 }
    );
    let other5 = policy(
        5,
        vec![
            domain("example.com", &[], false),
            domain("x.test", &[], false),
        ],
    );
    write_file(&cfg.policy, &signer.sign(&other5));
    assert!(matches!(
        relay.source.reload(&relay.policy).unwrap_err(),
        LoadError::SerialReused { serial: 5, .. }
    ));
    relay.shutdown().await;

    // After a restart the highest accepted serial still counts.
    write_file(&cfg.policy, &signer.sign(&base(4)));
    match Relay::start(&cfg).await {
        Err(RelayError::Policy(LoadError::Rollback {
            serial: 4,
            highest: 5,
            ..
        })) => {}
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("relay started with a rolled-back policy"),
    }
    write_file(&cfg.policy, &blob5);
    let relay = Relay::start(&cfg).await.unwrap();
    assert_eq!(relay.policy.current().serial, 5);
    relay.shutdown().await;
}

#[tokio::test]
async fn t21_new_blob_on_file_change_session_continues() {
    // rule T21
    let dir = tempfile::tempdir().unwrap();
    let signer = Signer::new();
    let cfg = config(dir.path(), &[&signer], 50);
    write_file(&cfg.policy, &signer.sign(&base(1)));
    let relay = Relay::start(&cfg).await.unwrap();
    let (mut c, _) = connect(relay.local_addrs()[0], None).await;
    assert_eq!(c.command("MAIL FROM:<a@b.test>").await.unwrap().code, 250);
    assert_eq!(
        c.command("RCPT TO:<x@example.com>").await.unwrap().code,
        250
    );
    assert_eq!(c.command("RCPT TO:<x@new.test>").await.unwrap().code, 550);

    let p2 = policy(
        2,
        vec![
            domain("example.com", &[], false),
            domain("new.test", &[], false),
        ],
    );
    write_file(&cfg.policy, &signer.sign(&p2));
    wait_for_serial(&relay, 2).await;

    // Same session, same transaction: the new policy answers.
    assert_eq!(c.command("RCPT TO:<x@new.test>").await.unwrap().code, 250);
    assert_eq!(c.command("DATA").await.unwrap().code, 354);
    c.send(b"Subject: t21\r\n\r\nhi\r\n.\r\n").await.unwrap();
    let r = c.read_reply().await.unwrap();
    assert_eq!(r.code, 250, "{r:?}");
    relay.shutdown().await;
}

#[tokio::test]
async fn t21_new_blob_on_sighup() {
    // rule T21
    let dir = tempfile::tempdir().unwrap();
    let signer = Signer::new();
    // The file poll is effectively off: only SIGHUP can trigger the reload.
    let cfg = config(dir.path(), &[&signer], 3_600_000);
    write_file(&cfg.policy, &signer.sign(&base(1)));
    let relay = Relay::start(&cfg).await.unwrap();
    let (mut c, _) = connect(relay.local_addrs()[0], None).await;
    write_file(&cfg.policy, &signer.sign(&base(2)));
    nix::sys::signal::raise(nix::sys::signal::Signal::SIGHUP).unwrap();
    wait_for_serial(&relay, 2).await;
    assert_eq!(c.command("NOOP").await.unwrap().code, 250);
    relay.shutdown().await;
}
