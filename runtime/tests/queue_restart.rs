#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! A queue reopened after its process went away resumes every message with
//! its schedule; a recipient that was delivered is not sent again; leftovers
//! of interrupted writes are cleaned.

mod queue_support;

use policy::Enforcement;
use queue_support::*;
use tlsgate::policy_store::PolicyHandle;
use tlsgate::queue::control::{self, Request, Response, RetryTarget};
use tlsgate::spool::{RecipientStatus, Spool, SpoolError};
use tlsgate::transport::RecipientOutcome;

#[tokio::test]
async fn restart_resumes_messages_and_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let policy = PolicyHandle::fixed(policy(
        1,
        Enforcement::Opportunistic,
        retry(&[3600], 86_400, None),
    ));

    // First life: example.com takes the message, elsewhere.test does not.
    let spool = Spool::open(dir.path()).await.unwrap();
    let transport = Scripted::new(|s| match s.domain.as_str() {
        "example.com" => (
            RecipientOutcome::Delivered,
            Some("mx1.example.com:25".into()),
        ),
        _ => (
            temporary("421 4.4.2 elsewhere.test busy"),
            Some("mx.elsewhere.test:25".into()),
        ),
    });
    let m1 = enqueue(
        &spool,
        envelope(
            "s@example.com",
            &["a@example.com", "b@elsewhere.test"],
            "10.1.2.3",
            true,
        ),
        &message("restart"),
    )
    .await;
    let q = Running::start(&spool, &policy, transport.clone());
    let mut before = None;
    for _ in 0..600 {
        let m = spool.load(&m1).await.unwrap();
        if m.state.recipients.iter().all(|r| r.attempts == 1) {
            before = Some(m.state);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let before = before.expect("both recipients attempted");
    assert!(matches!(
        before.recipients[0].status,
        RecipientStatus::Delivered { .. }
    ));
    let RecipientStatus::Deferred {
        next_attempt_ms, ..
    } = before.recipients[1].status.clone()
    else {
        panic!("{before:?}");
    };
    q.shutdown().await;

    // A reception interrupted by the crash, and a body that never got its
    // envelope, and a message committed while no runner ran.
    std::fs::write(
        dir.path().join("incoming/0000000000000002-00000000.msg"),
        b"Subject: half\r\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("queue/0000000000000001-00000000.msg"),
        b"orphan",
    )
    .unwrap();
    let m2 = enqueue(
        &spool,
        envelope("s@example.com", &["d@example.com"], "10.1.2.3", true),
        &message("later"),
    )
    .await;
    assert_eq!(spool_dir_files(dir.path(), "incoming").len(), 1);
    assert!(
        matches!(Spool::open(dir.path()).await, Err(SpoolError::Locked(_))),
        "one process at a time"
    );
    drop(spool);

    // Second life.
    let spool = Spool::open(dir.path()).await.unwrap();
    assert!(
        spool_dir_files(dir.path(), "incoming").is_empty(),
        "interrupted write cleaned"
    );
    assert!(!spool_dir_files(dir.path(), "queue")
        .iter()
        .any(|f| f.starts_with("0000000000000001")));
    assert_eq!(spool.list().await.unwrap(), vec![m1, m2]);
    let after = spool.load(&m1).await.unwrap().state;
    assert_eq!(after, before, "state survives as it was");

    let transport = Scripted::new(|_| (RecipientOutcome::Delivered, Some("mx:25".into())));
    let q = Running::start(&spool, &policy, transport.clone());
    // The never-attempted message goes at once.
    transport
        .wait_for("m2", |s| s.message_id == m2.to_string())
        .await;
    // m1 keeps its slot (an hour away), not reset by the restart.
    let mut shown = None;
    for _ in 0..600 {
        if let Ok(Response::Message { message }) =
            control::request(dir.path(), &Request::Show { id: m1 }).await
        {
            shown = Some(message);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        shown.unwrap().summary.next_attempt_ms,
        Some(next_attempt_ms)
    );
    // Asked to retry now, only the recipient still owed is sent.
    control::request(
        dir.path(),
        &Request::Retry {
            target: RetryTarget::Id(m1),
        },
    )
    .await
    .unwrap();
    let job = transport
        .wait_for("m1", |s| s.message_id == m1.to_string())
        .await;
    assert_eq!(job.recipients, vec!["b@elsewhere.test".to_string()]);
    wait_empty(&spool).await;
    q.shutdown().await;
    assert_eq!(transport.seen().len(), 2);
}
