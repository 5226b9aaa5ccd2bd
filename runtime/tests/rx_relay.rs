#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The whole relay on loopback: SMTP in → spool → queue → delivery → a
//! sink, using a static route (rules T1, T16).

mod rx_support;

use std::time::Duration;

use policy::{Delivery, RouteHost, Target};
use rx_support::*;
use tlsgate::config::Config;
use tlsgate::relay::Relay;
use tlsgate::server::{Gate, ServerLimits};

#[tokio::test]
async fn t1_relay_receives_queues_and_delivers_to_the_next_hop() {
    // rule T1, rule T16
    let sink = start_with(Gate::AcceptAll, session_config(), ServerLimits::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let signer = Signer::new();
    let mut d = domain("example.com", &[], false);
    d.details = Some(Box::new(policy::DomainDetails {
        delivery: Delivery::Static(Target {
            host: RouteHost::Ip(ip("127.0.0.1")),
            port: sink.addr.port(),
        }),
        ..Default::default()
    }));
    let p = policy(1, vec![d]);
    let text = format!(
        "hostname = \"gw.test\"\nlisten = [\"127.0.0.1:0\"]\nspool_dir = \"{d}/spool\"\nstate_dir = \"{d}/state\"\npolicy = \"{d}/policy.blob\"\ntrusted_keys = [\"{k}\"]\n[limits]\nshutdown_grace_secs = 2\n",
        d = dir.path().display(),
        k = signer.public.to_text().trim()
    );
    let cfg = Config::parse(&text).unwrap();
    write_file(&cfg.policy, &signer.sign(&p));
    let relay = Relay::start(&cfg).await.unwrap();

    let (c, ehlo) = connect(relay.local_addrs()[0], None).await;
    assert!(ehlo.contains("STARTTLS"));
    let (mut c, _) = starttls(c).await;
    let r = c
        .send_mail("a@sender.test", &["rcpt@example.com"], BODY)
        .await
        .unwrap();
    assert_eq!(r.code, 250, "{r:?}");

    let mut delivered = Vec::new();
    for _ in 0..600 {
        delivered = sink.sink.messages();
        if !delivered.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(delivered.len(), 1, "message never reached the next hop");
    let m = &delivered[0];
    assert_eq!(m.envelope.rcpt_to, vec!["rcpt@example.com".to_string()]);
    assert_eq!(m.envelope.mail_from, "a@sender.test");
    let text = String::from_utf8_lossy(&m.data);
    assert!(text.contains("by gw.test (tlsgate) with ESMTPS"), "{text}");
    assert!(text.ends_with("\r\n\r\nhello\r\n"), "{text}");
    relay.shutdown().await;
}
