#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The one-file spool format: recovery at open (interrupted receptions,
//! damaged files, the previous layout), appended state records (torn
//! appends, compaction), and a message deferred then delivered leaving
//! nothing behind.

mod queue_support;

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use policy::Enforcement;
use queue_support::*;
use tlsgate::policy_store::PolicyHandle;
use tlsgate::spool::{
    MessageId, MessageKind, MessageState, RecipientStatus, Spool, SpoolError, SpoolOptions,
    StoredEnvelope, SyncMode, COMPACT_AFTER,
};
use tlsgate::transport::RecipientOutcome;

/// These tests are about the file of a message, so messages are committed
/// as files (the journal's own tests are in `queue_journal.rs`).
async fn open_files(dir: &std::path::Path) -> Result<Spool, SpoolError> {
    Spool::open_with(
        dir,
        SpoolOptions {
            sync: SyncMode::Grouped,
            ..SpoolOptions::default()
        },
    )
    .await
}

fn relay_envelope(rcpts: &[&str]) -> tlsgate::envelope::Envelope {
    envelope("s@example.com", rcpts, "10.1.2.3", true)
}

#[tokio::test]
async fn interrupted_reception_is_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open_files(dir.path()).await.unwrap();
    let id = enqueue(
        &spool,
        relay_envelope(&["a@example.com"]),
        &message("crash"),
    )
    .await;
    // A complete file that never reached `queue/` (crash before the
    // rename), and a partial one.
    let name = format!("{id}.qm");
    std::fs::copy(
        dir.path().join("queue").join(&name),
        dir.path()
            .join("incoming")
            .join(format!("{}.qm", MessageId::generate())),
    )
    .unwrap();
    std::fs::write(
        dir.path()
            .join("incoming")
            .join(format!("{}.qm", MessageId::generate())),
        b"TLSGATE-SPOOL/1 0000",
    )
    .unwrap();
    drop(spool);
    let spool = open_files(dir.path()).await.unwrap();
    assert!(spool_dir_files(dir.path(), "incoming").is_empty());
    assert_eq!(spool.list().await.unwrap(), vec![id]);
    assert_eq!(spool_dir_files(dir.path(), "queue"), vec![name]);
}

#[tokio::test]
async fn damaged_queue_file_is_reported_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open_files(dir.path()).await.unwrap();
    let truncated = enqueue(&spool, relay_envelope(&["a@example.com"]), &message("cut")).await;
    drop(spool);
    let path = dir.path().join("queue").join(format!("{truncated}.qm"));
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    let garbage = MessageId::generate();
    let garbage_path = dir.path().join("queue").join(format!("{garbage}.qm"));
    std::fs::write(&garbage_path, b"From: someone\r\n\r\nnot a spool file\r\n").unwrap();

    let spool = open_files(dir.path()).await.unwrap();
    let mut listed = spool.list().await.unwrap();
    listed.sort();
    let mut want = vec![truncated, garbage];
    want.sort();
    assert_eq!(listed, want, "damaged files stay listed");
    for id in [truncated, garbage] {
        match spool.load(&id).await {
            Err(SpoolError::Corrupt { path, reason }) => {
                assert!(path.ends_with(format!("{id}.qm")), "{}", path.display());
                assert!(!reason.is_empty());
            }
            other => panic!("{id}: expected a damaged-file error, got {other:?}"),
        }
    }
    // The runner delivers good mail and leaves the damaged files alone.
    let good = enqueue(&spool, relay_envelope(&["b@example.com"]), &message("good")).await;
    let transport = Scripted::new(|_| (RecipientOutcome::Delivered, None));
    let policy = PolicyHandle::fixed(policy(
        1,
        Enforcement::Opportunistic,
        retry(&[3600], 86_400, None),
    ));
    let q = Running::start(&spool, &policy, transport.clone());
    transport
        .wait_for("the good message", |s| s.recipients == ["b@example.com"])
        .await;
    for _ in 0..600 {
        if !spool.list().await.unwrap().contains(&good) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    q.shutdown().await;
    assert!(path.exists() && garbage_path.exists());
    assert_eq!(transport.seen().len(), 1);
}

/// Writes a message the way the previous version did.
fn write_old_layout(
    queue: &std::path::Path,
    id: MessageId,
    env: &StoredEnvelope,
    body: &[u8],
    state: Option<&MessageState>,
) {
    std::fs::write(queue.join(format!("{id}.msg")), body).unwrap();
    if let Some(s) = state {
        std::fs::write(
            queue.join(format!("{id}.state")),
            serde_json::to_vec(s).unwrap(),
        )
        .unwrap();
    }
    std::fs::write(
        queue.join(format!("{id}.env")),
        serde_json::to_vec(env).unwrap(),
    )
    .unwrap();
}

#[tokio::test]
async fn previous_layout_is_converted_and_delivered() {
    let dir = tempfile::tempdir().unwrap();
    drop(Spool::open(dir.path()).await.unwrap());
    let queue = dir.path().join("queue");

    // Attempted once: a@example.com delivered, b@elsewhere.test due now.
    let attempted = MessageId::generate();
    let env = StoredEnvelope {
        envelope: relay_envelope(&["a@example.com", "b@elsewhere.test"]),
        kind: MessageKind::Received,
    };
    let mut state = MessageState::fresh(&env.envelope);
    state.recipients[0].status = RecipientStatus::Delivered { at_ms: 1 };
    state.recipients[0].attempts = 1;
    state.recipients[1].status = RecipientStatus::Deferred {
        reason: "421 busy".into(),
        next_attempt_ms: 0,
    };
    state.recipients[1].attempts = 1;
    let body1 = message("old attempted");
    write_old_layout(&queue, attempted, &env, &body1, Some(&state));
    // Never attempted (no state file).
    let fresh = MessageId::generate();
    let env2 = StoredEnvelope {
        envelope: relay_envelope(&["c@example.com"]),
        kind: MessageKind::Received,
    };
    let body2 = message("old fresh");
    write_old_layout(&queue, fresh, &env2, &body2, None);
    // Damaged: kept and reported, never dropped.
    let damaged = MessageId::generate();
    std::fs::write(queue.join(format!("{damaged}.msg")), b"body").unwrap();
    std::fs::write(queue.join(format!("{damaged}.env")), b"{not json").unwrap();
    // Never committed under the old rules (no envelope): removed.
    let orphan = MessageId::generate();
    std::fs::write(queue.join(format!("{orphan}.msg")), b"body").unwrap();

    let spool = Spool::open(dir.path()).await.unwrap();
    let mut files = spool_dir_files(dir.path(), "queue");
    files.sort();
    let mut want = vec![
        format!("{attempted}.qm"),
        format!("{fresh}.qm"),
        format!("{damaged}.env"),
        format!("{damaged}.msg"),
    ];
    want.sort();
    assert_eq!(files, want);
    let m = spool.load(&attempted).await.unwrap();
    assert_eq!(m.state, state);
    assert_eq!(m.envelope, env.envelope);
    assert_eq!(m.read_body().await.unwrap(), body1);

    let transport = Scripted::new(|_| (RecipientOutcome::Delivered, None));
    let policy = PolicyHandle::fixed(policy(
        1,
        Enforcement::Opportunistic,
        retry(&[3600], 86_400, None),
    ));
    let q = Running::start(&spool, &policy, transport.clone());
    wait_empty(&spool).await;
    q.shutdown().await;
    let mut seen = transport.seen();
    seen.sort_by(|a, b| a.recipients.cmp(&b.recipients));
    assert_eq!(seen.len(), 2, "{seen:#?}");
    assert_eq!(seen[0].recipients, ["b@elsewhere.test"]);
    assert_eq!(seen[0].body, body1);
    assert_eq!(seen[1].recipients, ["c@example.com"]);
    assert_eq!(seen[1].body, body2);
    let mut files = spool_dir_files(dir.path(), "queue");
    files.sort();
    assert_eq!(
        files,
        vec![format!("{damaged}.env"), format!("{damaged}.msg")]
    );
}

#[tokio::test]
async fn deferred_then_delivered_leaves_no_files() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let transport = Scripted::new(move |_| {
        if c.fetch_add(1, Ordering::SeqCst) == 0 {
            (temporary("421 4.4.2 busy"), None)
        } else {
            (RecipientOutcome::Delivered, None)
        }
    });
    let policy = PolicyHandle::fixed(policy(
        1,
        Enforcement::Opportunistic,
        retry(&[1], 86_400, None),
    ));
    let body = message("deferred");
    let id = enqueue(&spool, relay_envelope(&["a@example.com"]), &body).await;
    let q = Running::start(&spool, &policy, transport.clone());
    wait_empty(&spool).await;
    q.shutdown().await;
    let seen = transport.seen();
    assert_eq!(seen.len(), 2);
    // The first attempt had the body from memory, the retry from the file.
    assert!(seen
        .iter()
        .all(|s| s.body == body && s.message_id == id.to_string()));
    assert!(spool_dir_files(dir.path(), "queue").is_empty());
    assert!(spool_dir_files(dir.path(), "incoming").is_empty());
    // Committed through the journal, moved to its own file when deferred;
    // nothing of either is left once the spool is closed.
    drop(spool);
    assert!(spool_dir_files(dir.path(), "journal").is_empty());
}

#[tokio::test]
async fn torn_state_record_is_ignored_then_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).await.unwrap();
    let body = message("torn");
    let id = enqueue(&spool, relay_envelope(&["a@example.com"]), &body).await;
    let mut m = spool.load(&id).await.unwrap();
    m.state.recipients[0].attempts = 1;
    m.state.recipients[0].status = RecipientStatus::Deferred {
        reason: "first".into(),
        next_attempt_ms: 5,
    };
    spool.save_state(&mut m).await.unwrap();
    let saved = m.state.clone();
    // A crash in the middle of the next append.
    let path = spool.message_path(&id);
    let good_len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(b"S 00000400 0123456789abcdef\n{\"recipients\":[")
        .unwrap();
    let mut m = spool.load(&id).await.unwrap();
    assert_eq!(m.state, saved);
    m.state.recipients[0].attempts = 2;
    spool.save_state(&mut m).await.unwrap();
    let again = spool.load(&id).await.unwrap();
    assert_eq!(again.state, m.state);
    assert_eq!(again.read_body().await.unwrap(), body);
    assert!(std::fs::metadata(&path).unwrap().len() > good_len);
}

#[tokio::test]
async fn state_records_are_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open_files(dir.path()).await.unwrap();
    let rcpts: Vec<String> = (0..100)
        .map(|i| format!("recipient-number-{i}@example.com"))
        .collect();
    let rcpts: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    let body = message("compact");
    let id = enqueue(&spool, relay_envelope(&rcpts), &body).await;
    let mut m = spool.load(&id).await.unwrap();
    let path = spool.message_path(&id);
    let start = std::fs::metadata(&path).unwrap().len();
    let mut max = 0;
    for round in 0..12u32 {
        for r in &mut m.state.recipients {
            r.attempts = round + 1;
            r.status = RecipientStatus::Deferred {
                reason: format!("421 4.4.2 still busy, round {round}, try again later"),
                next_attempt_ms: u64::from(round),
            };
        }
        spool.save_state(&mut m).await.unwrap();
        max = max.max(std::fs::metadata(&path).unwrap().len());
    }
    assert!(
        max - start <= COMPACT_AFTER,
        "records grew to {} bytes",
        max - start
    );
    let loaded = spool.load(&id).await.unwrap();
    assert_eq!(loaded.state, m.state);
    assert_eq!(loaded.read_body().await.unwrap(), body);
    assert!(spool_dir_files(dir.path(), "incoming").is_empty());
}
