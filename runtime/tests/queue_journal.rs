#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The intake journal (`spool::journal`): group commit, recovery at open
//! (queued messages written out, torn tails, damage in the middle, a
//! message moved out just before a crash), removal of finished segments,
//! and a durable delete. The relay killed mid-load with the journal in use
//! is `queue_crash.rs`.

mod queue_support;

use queue_support::*;
use tlsgate::spool::journal::IDLE_ROTATE_BYTES;
use tlsgate::spool::{MessageId, RecipientStatus, Spool};

fn relay_envelope(rcpts: &[&str]) -> tlsgate::envelope::Envelope {
    envelope("s@example.com", rcpts, "10.1.2.3", true)
}

fn segments(dir: &std::path::Path) -> Vec<String> {
    spool_dir_files(dir, "journal")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_share_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let spool = spool.clone();
        tasks.push(tokio::spawn(async move {
            enqueue(
                &spool,
                relay_envelope(&["a@example.com"]),
                &message(&format!("m{i}")),
            )
            .await
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stats = spool.journal_stats().unwrap();
    assert_eq!(stats.commits, 200);
    assert!(
        stats.flushes < stats.commits,
        "200 concurrent commits took {} flushes",
        stats.flushes
    );
    assert_eq!(spool.list().await.unwrap().len(), 200);
    assert!(spool_dir_files(dir.path(), "queue").is_empty());
}

#[tokio::test]
async fn queued_messages_are_written_out_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).await.unwrap();
    let bodies: Vec<Vec<u8>> = (0..4).map(|i| message(&format!("j{i}"))).collect();
    let mut ids = Vec::new();
    for b in &bodies {
        ids.push(
            enqueue(
                &spool,
                relay_envelope(&["a@example.com", "b@example.org"]),
                b,
            )
            .await,
        );
    }
    // ids[0] delivered, ids[1] deleted by the operator, ids[2] deferred
    // (moved to its own file), ids[3] untouched.
    spool.remove_done(&ids[0]).await.unwrap();
    spool.remove(&ids[1]).await.unwrap();
    let mut m = spool.load(&ids[2]).await.unwrap();
    assert!(m.path.starts_with(dir.path().join("journal")));
    m.state.recipients[0].status = RecipientStatus::Delivered { at_ms: 1 };
    m.state.recipients[1].status = RecipientStatus::Deferred {
        reason: "451 later".into(),
        next_attempt_ms: 5,
    };
    spool.save_state(&mut m).await.unwrap();
    assert_eq!(m.path, spool.message_path(&ids[2]));
    assert_eq!(m.read_body().await.unwrap(), bodies[2]);
    assert_eq!(
        spool_dir_files(dir.path(), "queue"),
        vec![format!("{}.qm", ids[2])]
    );
    assert_eq!(spool.list().await.unwrap(), vec![ids[2], ids[3]]);
    drop(spool);

    // Reopened (as after a crash or a restart with mail queued): the
    // journal's queued message becomes a file, the journal is emptied.
    let spool = Spool::open(dir.path()).await.unwrap();
    assert!(segments(dir.path()).is_empty());
    assert_eq!(spool.list().await.unwrap(), vec![ids[2], ids[3]]);
    let moved = spool.load(&ids[2]).await.unwrap();
    assert_eq!(moved.state, m.state);
    let fresh = spool.load(&ids[3]).await.unwrap();
    assert_eq!(fresh.read_body().await.unwrap(), bodies[3]);
    assert!(fresh
        .state
        .recipients
        .iter()
        .all(|r| r.status == RecipientStatus::Pending));
    let arrived: Vec<MessageId> = spool.take_arrivals().iter().map(|a| a.id).collect();
    assert_eq!(arrived, vec![ids[2], ids[3]]);
}

#[tokio::test]
async fn torn_tail_is_an_unacknowledged_commit() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).await.unwrap();
    let a = enqueue(&spool, relay_envelope(&["a@example.com"]), &message("a")).await;
    let b = enqueue(&spool, relay_envelope(&["a@example.com"]), &message("b")).await;
    drop(spool);
    // A crash in the middle of the next batch's write.
    let seg = dir.path().join("journal").join(&segments(dir.path())[0]);
    let mut bytes = std::fs::read(&seg).unwrap();
    let one = bytes.len() / 2;
    let partial = bytes[..one - 7].to_vec();
    bytes.extend_from_slice(&partial);
    std::fs::write(&seg, &bytes).unwrap();

    let spool = Spool::open(dir.path()).await.unwrap();
    assert_eq!(spool.list().await.unwrap(), vec![a, b]);
    assert!(
        segments(dir.path()).is_empty(),
        "{:?}",
        segments(dir.path())
    );
    assert_eq!(
        spool.load(&b).await.unwrap().read_body().await.unwrap(),
        message("b")
    );
}

#[tokio::test]
async fn damage_in_the_middle_costs_only_the_damaged_record() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).await.unwrap();
    let ids = [
        enqueue(&spool, relay_envelope(&["a@example.com"]), &message("one")).await,
        enqueue(&spool, relay_envelope(&["a@example.com"]), &message("two")).await,
        enqueue(
            &spool,
            relay_envelope(&["a@example.com"]),
            &message("three"),
        )
        .await,
    ];
    drop(spool);
    let name = segments(dir.path())[0].clone();
    let seg = dir.path().join("journal").join(&name);
    let mut bytes = std::fs::read(&seg).unwrap();
    // Flip a byte of the second message's body.
    let at = bytes
        .windows(b"Subject: two".len())
        .position(|w| w == b"Subject: two")
        .unwrap();
    bytes[at + 9] ^= 0x20;
    std::fs::write(&seg, &bytes).unwrap();

    let spool = Spool::open(dir.path()).await.unwrap();
    assert_eq!(spool.list().await.unwrap(), vec![ids[0], ids[2]]);
    assert_eq!(
        spool
            .load(&ids[2])
            .await
            .unwrap()
            .read_body()
            .await
            .unwrap(),
        message("three")
    );
    // The damaged segment is kept for the operator, not read again.
    let kept = segments(dir.path());
    assert_eq!(kept, vec![name.replace(".log", ".damaged")]);
    drop(spool);
    let spool = Spool::open(dir.path()).await.unwrap();
    assert_eq!(spool.list().await.unwrap(), vec![ids[0], ids[2]]);
}

#[tokio::test]
async fn a_message_moved_out_before_a_crash_keeps_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).await.unwrap();
    let id = enqueue(&spool, relay_envelope(&["a@example.com"]), &message("m")).await;
    let name = segments(dir.path())[0].clone();
    let seg = dir.path().join("journal").join(&name);
    let before = std::fs::read(&seg).unwrap();
    let mut m = spool.load(&id).await.unwrap();
    m.state.recipients[0].attempts = 1;
    m.state.recipients[0].status = RecipientStatus::Deferred {
        reason: "421 busy".into(),
        next_attempt_ms: 7,
    };
    spool.save_state(&mut m).await.unwrap();
    drop(spool);
    // The crash came before the journal's D record reached the disk: the
    // journal still has the message, and so does its own file.
    std::fs::write(&seg, &before).unwrap();

    let spool = Spool::open(dir.path()).await.unwrap();
    assert_eq!(spool.list().await.unwrap(), vec![id]);
    assert_eq!(spool.load(&id).await.unwrap().state, m.state);
    assert!(segments(dir.path()).is_empty());
}

#[tokio::test]
async fn finished_segments_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).await.unwrap();
    let mut body = message("bulk");
    body.resize(32 * 1024, b'x');
    body.extend_from_slice(b"\r\n");
    let n = (IDLE_ROTATE_BYTES as usize / body.len()) + 2;
    for _ in 0..n {
        let id = enqueue(&spool, relay_envelope(&["a@example.com"]), &body).await;
        spool.remove_done(&id).await.unwrap();
    }
    // The segment is past the idle size with nothing queued: the next
    // commit starts a new one and the old one goes.
    let kept = enqueue(&spool, relay_envelope(&["a@example.com"]), &message("k")).await;
    let mut listed = Vec::new();
    for _ in 0..100 {
        listed = segments(dir.path());
        if listed.len() == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(spool.list().await.unwrap(), vec![kept]);
    spool.remove_done(&kept).await.unwrap();
    drop(spool);
    // Closed with nothing queued: no segment left.
    assert!(segments(dir.path()).is_empty());
}
