#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Hostile SMTP clients against the receiving side, over loopback:
//! smuggling with every bare CR/LF end-of-data variant, oversized
//! addresses, early talkers, improper pipelining, unknown parameters,
//! control bytes, non-ASCII and invalid UTF-8, relay tricks (T6) and the
//! domain-less `postmaster` recipient. Every case checks the reply code
//! and that nothing was stored that should not be.

mod rx_support;

use std::time::Duration;

use rx_support::*;
use tlsgate::policy_store::PolicyHandle;
use tlsgate::server::{Gate, ServerLimits, SessionConfig};
use tlsgate::tools::client::Client;

/// Registered: `example.com` and `zz.test` (sorted: `example.com` first).
fn test_policy() -> policy::Policy {
    policy(
        1,
        vec![
            domain("zz.test", &[], false),
            domain("example.com", &[], false),
        ],
    )
}

/// Reads replies until the server closes; returns their codes.
async fn codes_until_close(c: &mut Client) -> Vec<u16> {
    let mut v = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), c.read_reply()).await {
            Ok(Ok(r)) => v.push(r.code),
            Ok(Err(_)) => return v,
            Err(_) => panic!("server neither replied nor closed; got {v:?}"),
        }
    }
}

#[tokio::test]
async fn smuggling_every_bare_end_of_data_variant_is_refused() {
    // rule T6 (a smuggled transaction would bypass the recipient check)
    let s = start(test_policy()).await;
    let mut ends: Vec<String> = Vec::new();
    for pre in ["\r\n", "\n", "\r", ""] {
        for suf in ["\r\n", "\n", "\r", "\r\r\n", "\n\r", ""] {
            let end = format!("{pre}.{suf}");
            let real_end_or_stuffing = pre == "\r\n" && (suf == "\r\n" || suf.is_empty());
            if !pre.is_empty() && !real_end_or_stuffing {
                ends.push(end);
            }
        }
    }
    ends.extend(["\n..\n".into(), "\r\n..\n".into(), "\r\n\r.\r\n".into()]);
    let smuggled =
        "MAIL FROM:<admin@example.com>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\nForged\r\n";
    for end in &ends {
        let (mut c, _) = connect(s.addr, None).await;
        for (line, want) in [
            ("MAIL FROM:<a@sender.test>", 250),
            ("RCPT TO:<x@example.com>", 250),
            ("DATA", 354),
        ] {
            assert_eq!(c.command(line).await.unwrap().code, want, "{end:?}");
        }
        let data = format!("Subject: a\r\n\r\nfirst{end}{smuggled}.\r\n");
        c.send(data.as_bytes()).await.unwrap();
        // Exactly one reply to the whole DATA section: a refusal. Had the
        // text after the bare end been run as commands, 250/250/354/250
        // would follow before the reply to QUIT.
        assert_eq!(c.read_reply().await.unwrap().code, 550, "{end:?}");
        c.send(b"QUIT\r\n").await.unwrap();
        assert_eq!(codes_until_close(&mut c).await, vec![221], "{end:?}");
    }
    assert!(
        s.sink.messages().is_empty(),
        "stored: {:?}",
        s.sink.messages().len()
    );
}

#[tokio::test]
async fn oversized_addresses_are_refused() {
    let s = start(test_policy()).await;
    let (mut c, _) = connect(s.addr, None).await;
    let local64 = "l".repeat(64);
    let local65 = "l".repeat(65);
    let long_domain = format!("{}.example.com", vec!["a".repeat(63); 4].join("."));
    let cases: Vec<(String, u16)> = vec![
        (format!("MAIL FROM:<{local65}@sender.test>"), 501),
        (format!("MAIL FROM:<a@{long_domain}>"), 501),
        (format!("MAIL FROM:<{}@sender.test>", "x".repeat(250)), 501),
        ("MAIL FROM:<a@sender.test>".into(), 250),
        (format!("RCPT TO:<{local65}@example.com>"), 501),
        (format!("RCPT TO:<x@{long_domain}>"), 501),
        (format!("RCPT TO:<{local64}@example.com>"), 250),
    ];
    for (line, want) in &cases {
        let r = c.command(line).await.unwrap();
        assert_eq!(r.code, *want, "{}: {r:?}", &line[..line.len().min(40)]);
    }
    // An oversized command line is dropped whole; the session goes on.
    c.send(format!("RCPT TO:<{}@example.com>\r\n", "y".repeat(3000)).as_bytes())
        .await
        .unwrap();
    assert_eq!(c.read_reply().await.unwrap().code, 500);
    assert_eq!(c.command("NOOP").await.unwrap().code, 250);
    assert!(s.sink.messages().is_empty());
}

#[tokio::test]
async fn early_talker_is_refused_with_554() {
    let limits = ServerLimits {
        greeting_delay: Duration::from_millis(300),
        ..ServerLimits::default()
    };
    let s = start_with(
        Gate::Policy(PolicyHandle::fixed(test_policy())),
        session_config(),
        limits,
    )
    .await;
    let mut c = Client::connect(s.addr, None).await.unwrap();
    c.send(b"EHLO early.test\r\nMAIL FROM:<a@sender.test>\r\n")
        .await
        .unwrap();
    let codes = codes_until_close(&mut c).await;
    assert_eq!(codes, vec![554], "no greeting, one refusal, closed");
    // A client that waits is greeted and served.
    let (mut ok, _) = connect(s.addr, None).await;
    let r = ok
        .send_mail("a@sender.test", &["x@example.com"], BODY)
        .await
        .unwrap();
    assert_eq!(r.code, 250);
    assert_eq!(s.sink.messages().len(), 1);
}

#[tokio::test]
async fn improper_pipelining_closes_without_running_the_batch() {
    let s = start(test_policy()).await;
    // Commands after EHLO in the same batch.
    let mut c = Client::connect(s.addr, None).await.unwrap();
    assert_eq!(c.read_reply().await.unwrap().code, 220);
    c.send(b"EHLO x.test\r\nMAIL FROM:<a@sender.test>\r\nRCPT TO:<x@example.com>\r\n")
        .await
        .unwrap();
    assert_eq!(codes_until_close(&mut c).await, vec![554]);
    // Message text sent with DATA, before the 354.
    let (mut c, _) = connect(s.addr, None).await;
    c.send(
        b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<x@example.com>\r\nDATA\r\nSubject: x\r\n\r\nbody\r\n.\r\n",
    )
    .await
    .unwrap();
    assert_eq!(codes_until_close(&mut c).await, vec![250, 250, 554]);
    // ...and when every recipient was refused, text after DATA must not
    // run as commands either.
    let (mut c, _) = connect(s.addr, None).await;
    c.send(
        b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<x@foreign.example>\r\nDATA\r\nMAIL FROM:<b@sender.test>\r\n",
    )
    .await
    .unwrap();
    assert_eq!(codes_until_close(&mut c).await, vec![250, 550, 554]);
    assert!(s.sink.messages().is_empty());
}

#[tokio::test]
async fn unknown_parameters_control_bytes_and_non_ascii() {
    let session = SessionConfig {
        max_errors: 100,
        ..session_config()
    };
    let s = start_with(
        Gate::Policy(PolicyHandle::fixed(test_policy())),
        session,
        ServerLimits::default(),
    )
    .await;
    let (mut c, _) = connect(s.addr, None).await;
    let cases: &[(&[u8], u16, &str)] = &[
        (b"MAIL FROM:<a@sender.test> SMTPUTF8", 555, "5.5.4"),
        (b"MAIL FROM:<a@sender.test> AUTH=<>", 555, "5.5.4"),
        (b"MAIL FROM:<a@sender.test> BODY=BINARYMIME", 555, "5.5.4"),
        (b"NOOP \x00", 501, "5.5.4"),
        (b"\x00EHLO x", 501, "5.5.4"),
        (b"EHLO a\x00b", 501, "5.5.4"),
        (b"MAIL FROM:<a\x00b@sender.test>", 501, "5.5.4"),
        (b"MAIL FROM:<a\x1b[0m@sender.test>", 501, "5.5.4"),
        (b"MAIL FROM:<a\x7f@sender.test>", 501, "5.5.4"),
        (b"MAIL FROM:<j\xc3\xb6e@sender.test>", 553, "5.6.7"),
        (b"MAIL FROM:<\xff\xfe@sender.test>", 501, "5.5.4"),
        (b"MAIL FROM:<a@sender.test>", 250, "2.1.0"),
        (b"RCPT TO:<x@example.com> NOTIFY=NEVER", 555, "5.5.4"),
        (
            b"RCPT TO:<x@example.com> ORCPT=rfc822;x@example.com",
            555,
            "5.5.4",
        ),
        (b"RCPT TO:<x\x00@example.com>", 501, "5.5.4"),
        (b"RCPT TO:<m\xc3\xbcller@example.com>", 553, "5.6.7"),
        (b"RCPT TO:<x@ex\xc3\xa4mple.com>", 553, "5.6.7"),
        (b"RCPT TO:<x@example.com\r>", 501, "5.5.4"),
        (b"DATA", 554, "5.5.1"),
    ];
    for (line, code, enhanced) in cases {
        let mut wire = line.to_vec();
        wire.extend_from_slice(b"\r\n");
        c.send(&wire).await.unwrap();
        let r = c.read_reply().await.unwrap();
        assert_eq!(
            (r.code, &r.text[..5]),
            (*code, *enhanced),
            "{:?}: {r:?}",
            String::from_utf8_lossy(line)
        );
    }
    assert!(s.sink.messages().is_empty());
}

#[tokio::test]
async fn t6_relay_tricks_never_route_to_a_foreign_domain() {
    // rule T6
    let session = SessionConfig {
        max_errors: 100,
        ..session_config()
    };
    let s = start_with(
        Gate::Policy(PolicyHandle::fixed(test_policy())),
        session,
        ServerLimits::default(),
    )
    .await;
    let (mut c, _) = connect(s.addr, None).await;
    assert_eq!(
        c.command("MAIL FROM:<a@sender.test>").await.unwrap().code,
        250
    );
    // (recipient, reply, stored as) — accepted ones go to a registered
    // domain as a local part; nothing is re-routed.
    let cases: &[(&str, u16, Option<&str>)] = &[
        ("<@example.com:user@foreign.example>", 550, None),
        (
            "<@foreign.example:u1@example.com>",
            250,
            Some("u1@example.com"),
        ),
        ("<@a.example,@b.example:u2@foreign.example>", 550, None),
        (
            "<u3%foreign.example@example.com>",
            250,
            Some("u3%foreign.example@example.com"),
        ),
        ("<user@foreign.example%example.com>", 501, None),
        (
            "<foreign.example!u4@example.com>",
            250,
            Some("foreign.example!u4@example.com"),
        ),
        ("<example.com!user>", 501, None),
        ("<user@example.com!foreign.example>", 501, None),
        (
            "<\"u5@foreign.example\"@example.com>",
            250,
            Some("\"u5@foreign.example\"@example.com"),
        ),
        ("<\"user@example.com\"@foreign.example>", 550, None),
        ("<user@example.com@foreign.example>", 550, None),
        ("<user@foreign.example.>", 550, None),
        ("<u6@example.com.>", 250, Some("u6@example.com.")),
        ("<user@example.com..>", 501, None),
        ("<user@[192.0.2.1]>", 501, None),
        ("<user@[127.0.0.1]>", 501, None),
        ("<user@[IPv6:::1]>", 501, None),
        (
            "<user@foreign.example\\@example.com>",
            250,
            Some("user@foreign.example\\@example.com"),
        ),
    ];
    for (rcpt, want, _) in cases {
        let r = c.command(&format!("RCPT TO:{rcpt}")).await.unwrap();
        assert_eq!(r.code, *want, "{rcpt}: {r:?}");
    }
    assert_eq!(c.command("DATA").await.unwrap().code, 354);
    c.send(b"Subject: x\r\n\r\nhi\r\n.\r\n").await.unwrap();
    assert_eq!(c.read_reply().await.unwrap().code, 250);
    let stored = s.sink.messages();
    assert_eq!(stored.len(), 1);
    let want: Vec<&str> = cases.iter().filter_map(|c| c.2).collect();
    assert_eq!(stored[0].envelope.rcpt_to, want);
    // The policy puts every accepted one on a registered domain.
    let handle = PolicyHandle::fixed(test_policy());
    for rcpt in &stored[0].envelope.rcpt_to {
        let ctx = policy::MessageContext {
            sender: "a@sender.test",
            recipient: rcpt,
            client_ip: ip("127.0.0.1"),
            received_over_tls: false,
        };
        let active = handle.current();
        let d = active.compiled.decide(&ctx).unwrap();
        assert!(!d.is_refused(), "{rcpt}");
    }
}

#[tokio::test]
async fn postmaster_without_domain_is_accepted() {
    // RFC 5321 §4.5.1; docs/decisions.md "postmaster without a domain".
    let s = start(test_policy()).await;
    let (mut c, _) = connect(s.addr, None).await;
    let r = c
        .send_mail("a@sender.test", &["postmaster", "PostMaster"], BODY)
        .await
        .unwrap();
    assert_eq!(r.code, 250);
    let m = s.sink.messages();
    assert_eq!(m[0].envelope.rcpt_to, vec!["postmaster@example.com"]);

    // A configured postmaster address wins; it is still checked (T6).
    let session = SessionConfig {
        postmaster: Some("hostmaster@zz.test".into()),
        ..session_config()
    };
    let s = start_with(
        Gate::Policy(PolicyHandle::fixed(test_policy())),
        session,
        ServerLimits::default(),
    )
    .await;
    let (mut c, _) = connect(s.addr, None).await;
    let r = c
        .send_mail("a@sender.test", &["postmaster"], BODY)
        .await
        .unwrap();
    assert_eq!(r.code, 250);
    assert_eq!(
        s.sink.messages()[0].envelope.rcpt_to,
        vec!["hostmaster@zz.test"]
    );
    // Other domain-less recipients stay refused.
    let (mut c, _) = connect(s.addr, None).await;
    c.command("MAIL FROM:<a@sender.test>").await.unwrap();
    assert_eq!(c.command("RCPT TO:<root>").await.unwrap().code, 501);
    // With no registered domain there is nowhere to deliver it.
    let s = start(policy(1, vec![])).await;
    let (mut c, _) = connect(s.addr, None).await;
    c.command("MAIL FROM:<a@sender.test>").await.unwrap();
    assert_eq!(c.command("RCPT TO:<postmaster>").await.unwrap().code, 550);
}
