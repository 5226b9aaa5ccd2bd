#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Retry and bounce (rule T9) through the real queue runner and spool,
//! with a compressed schedule (seconds) and a scripted transport.

mod queue_support;

use std::sync::Arc;

use policy::{Enforcement, Rule, TlsRequirement};
use queue_support::*;
use tlsgate::policy_store::PolicyHandle;
use tlsgate::queue::control::{self, Request, Response, RetryTarget};
use tlsgate::spool::Spool;
use tlsgate::transport::RecipientOutcome;

const TLS_REASON: &str = "TLS required but not offered by mx1.example.com";

/// Checks that `dsn` is an RFC 3464 report naming `failed` with `reason`.
fn check_dsn(dsn: &[u8], sender: &str, failed: &[&str], action: &str, status: &str, reason: &str) {
    let text = std::str::from_utf8(dsn).expect("notification is utf-8");
    assert!(
        !text.contains("\n") || text.split('\n').all(|l| l.is_empty() || l.ends_with('\r')),
        "CRLF lines only"
    );
    let top = Entity::parse(text);
    assert_eq!(top.header("to"), Some(format!("<{sender}>").as_str()));
    assert_eq!(top.header("auto-submitted"), Some("auto-replied"));
    let ct = top.header("content-type").unwrap();
    assert!(ct.starts_with("multipart/report;"), "{ct}");
    assert!(ct.contains("report-type=delivery-status"), "{ct}");
    let parts = top.parts();
    assert_eq!(parts.len(), 3, "text, delivery-status, headers");
    // Human-readable part says why.
    assert!(parts[0]
        .header("content-type")
        .unwrap()
        .starts_with("text/plain"));
    assert!(
        parts[0].body.contains(reason),
        "human part lacks the reason: {}",
        parts[0].body
    );
    // Machine-readable part.
    assert_eq!(
        parts[1].header("content-type"),
        Some("message/delivery-status")
    );
    let groups = status_groups(&parts[1].body);
    assert!(groups[0]
        .iter()
        .any(|(k, v)| k == "reporting-mta" && v == "dns; gw.test"));
    assert_eq!(groups.len(), 1 + failed.len(), "{groups:?}");
    for (g, rcpt) in groups[1..].iter().zip(failed) {
        let field = |name: &str| g.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        assert_eq!(
            field("final-recipient"),
            Some(format!("rfc822; {rcpt}").as_str())
        );
        assert_eq!(field("action"), Some(action));
        assert_eq!(field("status"), Some(status));
        assert_eq!(field("remote-mta"), Some("dns; mx1.example.com"));
        assert!(field("diagnostic-code").unwrap().contains(reason), "{g:?}");
    }
    // The original headers come back.
    assert_eq!(parts[2].header("content-type"), Some("text/rfc822-headers"));
    assert!(parts[2].body.contains("Subject: t9"), "{}", parts[2].body);
}

/// Rule T9: a message that keeps failing temporarily (TLS required but not
/// offered) is retried on the schedule, then bounced to its envelope sender
/// with an RFC 3464 report that gives the reason; the bounce goes out
/// through the same queue from `<>`.
#[tokio::test]
async fn t9_bounce_after_retry_period_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).await.unwrap();
    let policy = PolicyHandle::fixed(policy(1, Enforcement::Required, retry(&[1], 3, None)));
    let transport = Scripted::new(|s| {
        if s.mail_from.is_empty() {
            (
                RecipientOutcome::Delivered,
                Some("mx.sender.test:25 [127.0.0.3]".into()),
            )
        } else {
            (
                temporary(TLS_REASON),
                Some("mx1.example.com:25 [127.0.0.2]".into()),
            )
        }
    });
    let id = enqueue(
        &spool,
        envelope(
            "sender@sender.test",
            &["a@example.com", "b@example.com"],
            "203.0.113.5",
            false,
        ),
        &message("t9"),
    )
    .await;
    let q = Running::start(&spool, &policy, transport.clone());

    let dsn = transport
        .wait_for("the bounce", |s| s.mail_from.is_empty())
        .await;
    assert_eq!(dsn.recipients, vec!["sender@sender.test".to_string()]);
    wait_empty(&spool).await;
    q.shutdown().await;

    let seen = transport.seen();
    let tries: Vec<_> = seen
        .iter()
        .filter(|s| s.message_id == id.to_string())
        .collect();
    assert!(tries.len() >= 2, "retried on a schedule: {tries:?}");
    for t in &tries {
        // One job for both recipients: same domain, same plan.
        assert_eq!(
            t.recipients,
            vec!["a@example.com".to_string(), "b@example.com".to_string()]
        );
        assert_eq!(t.tls, TlsRequirement::Required);
        assert_eq!(t.rule, Rule::T7);
        assert!(t.body.starts_with(b"From: <sender@sender.test>\r\n"));
        assert!(t.body.ends_with(b"\r\n.leading dot stays unstuffed\r\n"));
    }
    assert_eq!(
        seen.iter().filter(|s| s.mail_from.is_empty()).count(),
        1,
        "one bounce per message"
    );
    check_dsn(
        &dsn.body,
        "sender@sender.test",
        &["a@example.com", "b@example.com"],
        "failed",
        "5.7.10",
        TLS_REASON,
    );
}

/// Rule T9: mail from the null sender is never bounced, whether it fails
/// permanently or runs out of retries.
#[tokio::test]
async fn t9_null_sender_is_never_bounced() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).await.unwrap();
    let policy = PolicyHandle::fixed(policy(1, Enforcement::Required, retry(&[1], 2, Some(1))));
    let transport = Scripted::new(|s| {
        if s.recipients[0].starts_with("perm") {
            (
                permanent("550 5.1.1 no such user"),
                Some("mx1.example.com:25".into()),
            )
        } else {
            (temporary(TLS_REASON), Some("mx1.example.com:25".into()))
        }
    });
    enqueue(
        &spool,
        envelope("", &["perm@example.com"], "203.0.113.5", true),
        &message("t9"),
    )
    .await;
    enqueue(
        &spool,
        envelope("", &["temp@example.com"], "203.0.113.5", true),
        &message("t9"),
    )
    .await;
    let q = Running::start(&spool, &policy, transport.clone());
    wait_empty(&spool).await;
    q.shutdown().await;
    let seen = transport.seen();
    assert!(seen.iter().any(|s| s.recipients[0].starts_with("perm")));
    assert!(
        seen.iter()
            .filter(|s| s.recipients[0].starts_with("temp"))
            .count()
            >= 2
    );
    assert!(
        seen.iter().all(|s| s.domain == "example.com"),
        "nothing may go anywhere but the original destination: {seen:?}"
    );
}

/// Rule T9: a permanent answer bounces at once (no waiting for the retry
/// period), naming only the failed recipient; recipients elsewhere that
/// were delivered are not named and not sent again.
#[tokio::test]
async fn t9_permanent_failure_bounces_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).await.unwrap();
    let policy = PolicyHandle::fixed(policy(
        1,
        Enforcement::Opportunistic,
        retry(&[3600], 86_400, None),
    ));
    let transport = Scripted::new(|s| match s.domain.as_str() {
        "example.com" => (
            permanent("550 5.1.1 <gone@example.com>: no such user"),
            Some("mx1.example.com:25 [127.0.0.2]".into()),
        ),
        _ => (
            RecipientOutcome::Delivered,
            Some("mx.elsewhere.test:25".into()),
        ),
    });
    // From a registered outbound server (10/8), so relaying is allowed.
    enqueue(
        &spool,
        envelope(
            "sender@sender.test",
            &["gone@example.com", "ok@elsewhere.test"],
            "10.1.2.3",
            true,
        ),
        &message("t9"),
    )
    .await;
    let q = Running::start(&spool, &policy, transport.clone());
    let dsn = transport
        .wait_for("the bounce", |s| s.mail_from.is_empty())
        .await;
    wait_empty(&spool).await;
    q.shutdown().await;
    check_dsn(
        &dsn.body,
        "sender@sender.test",
        &["gone@example.com"],
        "failed",
        "5.1.1",
        "no such user",
    );
    let seen = transport.seen();
    assert_eq!(
        seen.iter()
            .filter(|s| s.domain == "elsewhere.test" && !s.mail_from.is_empty())
            .count(),
        1
    );
}

/// Rule T9 (optional part): a delay notice goes out after
/// `delay_notice_after`, then the bounce when the period ends.
#[tokio::test]
async fn t9_delay_notice_then_bounce() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).await.unwrap();
    let policy = PolicyHandle::fixed(policy(1, Enforcement::Required, retry(&[1], 4, Some(1))));
    let transport = Scripted::new(|s| {
        if s.mail_from.is_empty() {
            (RecipientOutcome::Delivered, None)
        } else {
            (
                temporary(TLS_REASON),
                Some("mx1.example.com:25 [127.0.0.2]".into()),
            )
        }
    });
    enqueue(
        &spool,
        envelope(
            "sender@sender.test",
            &["a@example.com"],
            "203.0.113.5",
            false,
        ),
        &message("t9"),
    )
    .await;
    let q = Running::start(&spool, &policy, transport.clone());
    let delayed = transport
        .wait_for("the delay notice", |s| {
            s.mail_from.is_empty() && String::from_utf8_lossy(&s.body).contains("Action: delayed")
        })
        .await;
    check_dsn(
        &delayed.body,
        "sender@sender.test",
        &["a@example.com"],
        "delayed",
        "4.7.10",
        TLS_REASON,
    );
    let failed = transport
        .wait_for("the bounce", |s| {
            s.mail_from.is_empty() && String::from_utf8_lossy(&s.body).contains("Action: failed")
        })
        .await;
    check_dsn(
        &failed.body,
        "sender@sender.test",
        &["a@example.com"],
        "failed",
        "5.7.10",
        TLS_REASON,
    );
    wait_empty(&spool).await;
    q.shutdown().await;
    let notices = transport
        .seen()
        .into_iter()
        .filter(|s| s.mail_from.is_empty())
        .count();
    assert_eq!(notices, 2);
}

/// Per-destination back-off: after a temporary failure to a domain, a new
/// message for it waits for the domain's next slot instead of opening a
/// connection of its own; `retry --domain` overrides the wait.
#[tokio::test]
async fn destination_backoff_and_operator_retry() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).await.unwrap();
    let policy = PolicyHandle::fixed(policy(
        1,
        Enforcement::Opportunistic,
        retry(&[3600], 86_400, None),
    ));
    let transport = Scripted::new(|_| {
        (
            temporary("421 4.4.2 dead.test busy"),
            Some("mx.dead.test:25".into()),
        )
    });
    let a = enqueue(
        &spool,
        envelope("s@sender.test", &["x@dead.test"], "10.1.2.3", true),
        &message("a"),
    )
    .await;
    let q = Running::start(&spool, &policy, transport.clone());
    transport
        .wait_for("the first attempt", |s| s.message_id == a.to_string())
        .await;
    // The attempt has ended (and the runner knows dead.test is backing
    // off) once the runner shows it finished.
    let mut ended = false;
    for _ in 0..600 {
        if let Ok(Response::Message { message }) =
            control::request(dir.path(), &Request::Show { id: a }).await
        {
            if !message.in_flight && message.summary.attempts == 1 {
                ended = true;
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(ended, "the first attempt ended");

    let b = enqueue(
        &spool,
        envelope("s@sender.test", &["y@dead.test"], "10.1.2.3", true),
        &message("b"),
    )
    .await;
    // Wait until the runner knows b, then look at its schedule.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut shown = None;
    for _ in 0..600 {
        if let Ok(Response::Message { message }) =
            control::request(dir.path(), &Request::Show { id: b }).await
        {
            shown = Some(message);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let shown = shown.expect("runner lists b");
    assert_eq!(shown.summary.attempts, 0);
    let next = shown.summary.next_attempt_ms.expect("b has a slot");
    assert!(
        next > now_ms + 1_000_000,
        "b waits for dead.test's slot (an hour away), next={next} now={now_ms}"
    );
    assert_eq!(transport.seen().len(), 1, "no connection of its own for b");

    // The listing shows both, with the reason.
    match control::request(dir.path(), &Request::List).await.unwrap() {
        Response::Messages { messages } => {
            assert_eq!(messages.len(), 2);
            let ma = messages.iter().find(|m| m.id == a).unwrap();
            assert_eq!(ma.last_reason.as_deref(), Some("421 4.4.2 dead.test busy"));
            assert_eq!(ma.recipients, vec!["x@dead.test".to_string()]);
        }
        other => panic!("{other:?}"),
    }

    let r = control::request(
        dir.path(),
        &Request::Retry {
            target: RetryTarget::Domain("dead.test".into()),
        },
    )
    .await
    .unwrap();
    assert!(matches!(r, Response::Done { affected: 2, .. }), "{r:?}");
    transport
        .wait_for("b's attempt", |s| s.message_id == b.to_string())
        .await;
    transport
        .wait_for("a's second attempt", |_| {
            transport_count(&transport, &a.to_string()) >= 2
        })
        .await;

    // Delete and bounce through the socket.
    let r = when_idle(dir.path(), Request::Delete { id: a }).await;
    assert!(matches!(r, Response::Done { .. }), "{r:?}");
    let r = when_idle(dir.path(), Request::Bounce { id: b }).await;
    assert!(matches!(r, Response::Done { .. }), "{r:?}");
    transport
        .wait_for("b's bounce", |s| s.mail_from.is_empty())
        .await;
    q.shutdown().await;
}

/// Sends a control request, again while the message's attempt (which
/// ends with writing its state) is still running.
async fn when_idle(dir: &std::path::Path, req: Request) -> Response {
    for _ in 0..50 {
        match control::request(dir, &req).await.unwrap() {
            Response::Error { message } if message.contains("being delivered") => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            r => return r,
        }
    }
    panic!("the message stayed in flight");
}

fn transport_count(t: &Arc<Scripted>, id: &str) -> usize {
    t.seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.message_id == id)
        .count()
}
