#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The receiving side end to end over loopback: T1, T4, T6, STARTTLS
//! command injection, SMTP smuggling, limits.

mod rx_support;

use rx_support::*;
use tlsgate::server::{Gate, ServerLimits, SessionConfig};
use tlsgate::tools::client::Client;

/// Registered: `example.com` (no enforcement), `corp.test` whose outbound
/// server 127.0.0.5 must use TLS (T4), `open.test` whose outbound server
/// 127.0.0.6 has no enforcement.
fn test_policy() -> policy::Policy {
    policy(
        1,
        vec![
            domain("example.com", &[], false),
            domain("corp.test", &["127.0.0.5/32"], true),
            domain("open.test", &["127.0.0.6/32"], false),
        ],
    )
}

#[tokio::test]
async fn t1_starttls_offered_and_clear_text_mail_accepted() {
    // rule T1
    let s = start(test_policy()).await;
    let (mut c, ehlo) = connect(s.addr, None).await;
    for ext in [
        "PIPELINING",
        "SIZE",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "STARTTLS",
    ] {
        assert!(ehlo.contains(ext), "{ext} missing from {ehlo}");
    }
    let r = c
        .send_mail("a@sender.test", &["rcpt@example.com"], BODY)
        .await
        .unwrap();
    assert_eq!(r.code, 250, "{r:?}");
    let m = s.sink.messages();
    assert_eq!(m.len(), 1);
    assert!(!m[0].envelope.received_over_tls);
    assert_eq!(m[0].envelope.rcpt_to, vec!["rcpt@example.com".to_string()]);
    let text = String::from_utf8(m[0].data.clone()).unwrap();
    assert!(
        text.starts_with(
            "Received: from client.test ([127.0.0.1])\r\n\tby gw.test (tlsgate) with ESMTP"
        ),
        "{text}"
    );
    assert!(text.ends_with("\r\n\r\nhello\r\n"), "{text}");

    // ...and over TLS, when the client wants it.
    let (c2, _) = connect(s.addr, None).await;
    let (mut c2, ehlo) = starttls(c2).await;
    assert!(!ehlo.contains("STARTTLS"), "STARTTLS offered again: {ehlo}");
    let r = c2
        .send_mail("a@sender.test", &["rcpt@example.com"], BODY)
        .await
        .unwrap();
    assert_eq!(r.code, 250);
    let m = s.sink.messages();
    assert!(m[1].envelope.received_over_tls);
    assert!(String::from_utf8_lossy(&m[1].data).contains("with ESMTPS"));
}

#[tokio::test]
async fn t4_enforced_outbound_server_must_use_tls() {
    // rule T4
    let s = start(test_policy()).await;
    let (mut c, _) = connect(s.addr, Some("127.0.0.5")).await;
    let r = c.command("MAIL FROM:<a@corp.test>").await.unwrap();
    assert_eq!(r.code, 530, "{r:?}");
    assert!(r.text.starts_with("5.7.0"));
    // Nothing can be queued in clear text.
    let r = c
        .send_mail("a@corp.test", &["x@example.com"], BODY)
        .await
        .unwrap();
    assert_eq!(r.code, 530);
    assert!(s.sink.messages().is_empty());

    // After STARTTLS the same client relays anywhere.
    let (c, _) = starttls(c).await;
    let mut c = c;
    let r = c
        .send_mail("a@corp.test", &["x@anywhere.example"], BODY)
        .await
        .unwrap();
    assert_eq!(r.code, 250, "{r:?}");
    assert_eq!(s.sink.messages().len(), 1);

    // Another client address is not concerned.
    let (mut other, _) = connect(s.addr, Some("127.0.0.7")).await;
    assert_eq!(
        other.command("MAIL FROM:<a@b.test>").await.unwrap().code,
        250
    );
}

#[tokio::test]
async fn t4_failed_handshake_closes_session_and_queues_nothing() {
    // rule T4
    let s = start(test_policy()).await;
    let (mut c, _) = connect(s.addr, Some("127.0.0.5")).await;
    assert_eq!(c.command("STARTTLS").await.unwrap().code, 220);
    // Not a TLS ClientHello.
    c.send(b"MAIL FROM:<a@corp.test>\r\nRCPT TO:<x@example.com>\r\nDATA\r\n")
        .await
        .unwrap();
    assert!(
        closed(&mut c).await,
        "session not closed after a failed handshake"
    );
    assert!(s.sink.messages().is_empty());
}

#[tokio::test]
async fn t6_not_an_open_relay() {
    // rule T6
    let s = start(test_policy()).await;
    let (mut c, _) = connect(s.addr, Some("127.0.0.9")).await;
    assert_eq!(
        c.command("MAIL FROM:<a@sender.test>").await.unwrap().code,
        250
    );
    let r = c
        .command("RCPT TO:<victim@elsewhere.example>")
        .await
        .unwrap();
    assert_eq!(r.code, 550);
    assert!(r.text.starts_with("5.7.1"), "{r:?}");
    // A registered domain (and its sub-domains) are fine.
    assert_eq!(
        c.command("RCPT TO:<a@example.com>").await.unwrap().code,
        250
    );
    assert_eq!(
        c.command("RCPT TO:<a@mx.example.com>").await.unwrap().code,
        250
    );
    // Refused before DATA even when pipelined: only accepted recipients.
    let r = c.command("DATA").await.unwrap();
    assert_eq!(r.code, 354);
    c.send(b"hi\r\n.\r\n").await.unwrap();
    assert_eq!(c.read_reply().await.unwrap().code, 250);
    let m = s.sink.messages();
    assert_eq!(
        m[0].envelope.rcpt_to,
        vec!["a@example.com", "a@mx.example.com"]
    );

    // The registered outbound server of open.test relays anywhere.
    let (mut c, _) = connect(s.addr, Some("127.0.0.6")).await;
    let r = c
        .send_mail("a@open.test", &["someone@elsewhere.example"], BODY)
        .await
        .unwrap();
    assert_eq!(r.code, 250, "{r:?}");
}

#[tokio::test]
async fn starttls_command_injection_is_not_executed() {
    let s = start(test_policy()).await;
    let (mut c, _) = connect(s.addr, None).await;
    // Everything after STARTTLS in the same packet is clear text an
    // attacker may have added; it must not run inside TLS.
    c.send(b"STARTTLS\r\nMAIL FROM:<evil@attacker.test>\r\nRCPT TO:<x@example.com>\r\n")
        .await
        .unwrap();
    assert_eq!(c.read_reply().await.unwrap().code, 220);
    let mut c = c.tls("gw.test", tls_client_config()).await.unwrap();
    // Had the injected MAIL run, this would be a nested MAIL (503) or the
    // RCPT reply would come first.
    let r = c.command("EHLO client.test").await.unwrap();
    assert_eq!(r.code, 250, "{r:?}");
    let r = c.command("RCPT TO:<x@example.com>").await.unwrap();
    assert_eq!(r.code, 503, "injected MAIL survived STARTTLS: {r:?}");
    let r = c
        .send_mail("ok@sender.test", &["x@example.com"], BODY)
        .await
        .unwrap();
    assert_eq!(r.code, 250);
    let m = s.sink.messages();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].envelope.mail_from, "ok@sender.test");
}

#[tokio::test]
async fn starttls_requires_new_ehlo() {
    let s = start(test_policy()).await;
    let (c, _) = connect(s.addr, None).await;
    let mut c = c.starttls("gw.test", tls_client_config()).await.unwrap();
    assert_eq!(c.command("MAIL FROM:<a@b.test>").await.unwrap().code, 503);
    assert_eq!(c.command("STARTTLS").await.unwrap().code, 503);
}

/// Sends a raw DATA section and returns the final reply code.
async fn raw_data(s: &TestServer, data: &[u8]) -> (u16, Client) {
    let (mut c, _) = connect(s.addr, None).await;
    c.send(b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<x@example.com>\r\nDATA\r\n")
        .await
        .unwrap();
    for want in [250, 250, 354] {
        assert_eq!(c.read_reply().await.unwrap().code, want);
    }
    c.send(data).await.unwrap();
    let r = c.read_reply().await.unwrap();
    (r.code, c)
}

#[tokio::test]
async fn smtp_smuggling_variants_are_refused() {
    let s = start(test_policy()).await;
    let smuggled = "MAIL FROM:<admin@example.com>\r\nRCPT TO:<x@example.com>\r\nDATA\r\nForged\r\n";
    for end in ["\n.\n", "\r\n.\n", "\n.\r\n", "\r.\r\n", "\r\n.\r"] {
        let data = format!("Subject: a\r\n\r\nfirst{end}{smuggled}.\r\n");
        let (code, mut c) = raw_data(&s, data.as_bytes()).await;
        assert_eq!(code, 550, "{end:?}");
        // The smuggled commands were message text: the session is in a
        // clean state, nothing was queued.
        assert_eq!(c.command("NOOP").await.unwrap().code, 250, "{end:?}");
    }
    assert!(s.sink.messages().is_empty());
    // Dot-stuffing still works.
    let (code, _) = raw_data(&s, b"..leading dot\r\n.\r\n").await;
    assert_eq!(code, 250);
    assert!(s.sink.messages()[0].data.ends_with(b"\r\n.leading dot\r\n"));
}

#[tokio::test]
async fn size_and_recipient_limits() {
    let session = SessionConfig {
        max_message_size: 2000,
        max_recipients: 3,
        ..session_config()
    };
    let s = start_with(
        Gate::Policy(tlsgate::policy_store::PolicyHandle::fixed(test_policy())),
        session,
        ServerLimits::default(),
    )
    .await;
    let (mut c, ehlo) = connect(s.addr, None).await;
    assert!(ehlo.contains("SIZE 2000"));
    let r = c
        .command("MAIL FROM:<a@sender.test> SIZE=5000")
        .await
        .unwrap();
    assert_eq!((r.code, &r.text[..5]), (552, "5.3.4"));
    assert_eq!(
        c.command("MAIL FROM:<a@sender.test>").await.unwrap().code,
        250
    );
    for i in 0..3 {
        assert_eq!(
            c.command(&format!("RCPT TO:<r{i}@example.com>"))
                .await
                .unwrap()
                .code,
            250
        );
    }
    let r = c.command("RCPT TO:<r3@example.com>").await.unwrap();
    assert_eq!((r.code, &r.text[..5]), (452, "4.5.3"));
    assert_eq!(c.command("RSET").await.unwrap().code, 250);
    // Too big while streaming, without SIZE.
    let big = vec![b'x'; 70]
        .into_iter()
        .chain(*b"\r\n")
        .cycle()
        .take(72 * 100)
        .collect::<Vec<u8>>();
    let r = c
        .send_mail("a@sender.test", &["x@example.com"], &big)
        .await
        .unwrap();
    assert_eq!((r.code, &r.text[..5]), (552, "5.3.4"));
    assert!(s.sink.messages().is_empty());
    // Command lines that are too long.
    let long = format!("NOOP {}\r\n", "x".repeat(5000));
    c.send(long.as_bytes()).await.unwrap();
    let r = c.read_reply().await.unwrap();
    assert_eq!(r.code, 500, "{r:?}");
    assert_eq!(c.command("NOOP").await.unwrap().code, 250);
}

#[tokio::test]
async fn connection_limit_per_address() {
    let limits = ServerLimits {
        max_connections_per_ip: 2,
        ..ServerLimits::default()
    };
    let s = start_with(
        Gate::Policy(tlsgate::policy_store::PolicyHandle::fixed(test_policy())),
        session_config(),
        limits,
    )
    .await;
    let a = connect(s.addr, Some("127.0.0.11")).await;
    let b = connect(s.addr, Some("127.0.0.11")).await;
    let mut third = Client::connect(s.addr, Some(ip("127.0.0.11")))
        .await
        .unwrap();
    let r = third.read_reply().await.unwrap();
    assert_eq!((r.code, &r.text[..5]), (421, "4.7.0"));
    // Another address is still served.
    let _ = connect(s.addr, Some("127.0.0.12")).await;
    drop((a, b));
}

#[tokio::test]
async fn too_many_errors_closes() {
    let s = start(test_policy()).await;
    let (mut c, _) = connect(s.addr, None).await;
    let mut last = 0;
    for _ in 0..10 {
        last = c.command("BOGUS").await.unwrap().code;
    }
    assert_eq!(last, 421);
    assert!(closed(&mut c).await);
}

#[tokio::test]
async fn pipelined_transaction() {
    let s = start(test_policy()).await;
    let (mut c, _) = connect(s.addr, None).await;
    c.send(b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<x@example.com>\r\nRCPT TO:<y@nowhere.example>\r\nDATA\r\n").await.unwrap();
    let codes: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(c.read_reply().await.unwrap().code);
        }
        v
    };
    assert_eq!(codes, vec![250, 250, 550, 354]);
    c.send(b"body\r\n.\r\nQUIT\r\n").await.unwrap();
    assert_eq!(c.read_reply().await.unwrap().code, 250);
    assert_eq!(c.read_reply().await.unwrap().code, 221);
}
