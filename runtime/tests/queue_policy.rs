#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Queued mail is re-evaluated under the policy in force at each attempt
//! (rule T21), including a policy that no longer allows the relay (T6).

mod queue_support;

use policy::{Enforcement, Rule, TlsRequirement};
use queue_support::*;
use tlsgate::policy_store::{ActivePolicy, PolicyHandle};
use tlsgate::spool::Spool;
use tlsgate::transport::RecipientOutcome;

fn active(p: policy::Policy) -> ActivePolicy {
    ActivePolicy {
        serial: p.serial,
        compiled: policy::CompiledPolicy::new(p),
        key_id: [0; 8],
    }
}

/// Rule T21: a message queued under a policy with opportunistic inbound
/// delivery (received in clear: T3, no STARTTLS) is attempted under the new
/// policy after `PolicyHandle::replace` (inbound TLS required: T7).
#[tokio::test]
async fn t21_queued_message_follows_the_new_policy() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).await.unwrap();
    let handle = PolicyHandle::fixed(policy(
        1,
        Enforcement::Opportunistic,
        retry(&[1], 3600, None),
    ));
    let transport = Scripted::new(|s| {
        if s.policy_serial >= 2 {
            (
                RecipientOutcome::Delivered,
                Some("mx1.example.com:25".into()),
            )
        } else {
            (
                temporary("451 4.3.0 try again later"),
                Some("mx1.example.com:25".into()),
            )
        }
    });
    let id = enqueue(
        &spool,
        envelope("s@sender.test", &["a@example.com"], "203.0.113.5", false),
        &message("t21"),
    )
    .await;
    let q = Running::start(&spool, &handle, transport.clone());
    let first = transport
        .wait_for("the first attempt", |s| s.message_id == id.to_string())
        .await;
    assert_eq!(
        (first.policy_serial, first.tls, first.rule),
        (1, TlsRequirement::None, Rule::T3)
    );

    handle.replace(active(policy(
        2,
        Enforcement::Required,
        retry(&[1], 3600, None),
    )));
    let second = transport
        .wait_for("an attempt under serial 2", |s| {
            s.message_id == id.to_string() && s.policy_serial == 2
        })
        .await;
    assert_eq!(
        (second.tls, second.rule),
        (TlsRequirement::Required, Rule::T7)
    );
    wait_empty(&spool).await;
    q.shutdown().await;
}

/// Rules T21 and T6: when the new policy no longer lets the message's
/// client relay, its recipient fails permanently at the next attempt and
/// the sender gets a bounce saying so.
#[tokio::test]
async fn t21_relay_no_longer_allowed_fails_permanently() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).await.unwrap();
    let handle = PolicyHandle::fixed(policy(
        1,
        Enforcement::Opportunistic,
        retry(&[1], 3600, None),
    ));
    let transport = Scripted::new(|s| {
        if s.mail_from.is_empty() {
            (RecipientOutcome::Delivered, None)
        } else {
            (
                temporary("451 4.3.0 try again later"),
                Some("mx.elsewhere.test:25".into()),
            )
        }
    });
    // From a registered outbound server (10/8) to the internet.
    let id = enqueue(
        &spool,
        envelope("s@example.com", &["x@elsewhere.test"], "10.1.2.3", true),
        &message("t21"),
    )
    .await;
    let q = Running::start(&spool, &handle, transport.clone());
    transport
        .wait_for("the first attempt", |s| s.message_id == id.to_string())
        .await;

    // The new policy drops the outbound servers: 10.1.2.3 may not relay.
    let mut next = policy(2, Enforcement::Opportunistic, retry(&[1], 3600, None));
    for d in &mut next.domains {
        d.details = None;
    }
    handle.replace(active(next));
    let dsn = transport
        .wait_for("the bounce", |s| s.mail_from.is_empty())
        .await;
    assert_eq!(dsn.recipients, vec!["s@example.com".to_string()]);
    let text = String::from_utf8_lossy(&dsn.body);
    assert!(
        text.contains("Final-Recipient: rfc822; x@elsewhere.test"),
        "{text}"
    );
    assert!(text.contains("Status: 5.7.1"), "{text}");
    assert!(
        text.contains("not allowed by the policy in force (serial 2, rule T6)"),
        "{text}"
    );
    wait_empty(&spool).await;
    q.shutdown().await;
    let tries = transport
        .seen()
        .iter()
        .filter(|s| s.message_id == id.to_string())
        .count();
    assert_eq!(tries, 1, "never attempted under the policy that refuses it");
}
