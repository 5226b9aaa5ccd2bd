#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The spool's contract with the SMTP server: commit by rename, ids,
//! abandoned receptions, group commit under concurrency, the offline CLI.

mod queue_support;

use std::process::ExitCode;

use queue_support::*;
use tlsgate::queue::cli::{cli, Args, Command, Format};
use tlsgate::spool::{
    MessageId, RecipientStatus, Spool, SpoolOptions, SyncMode, MEMORY_BODY_LIMIT,
};

#[tokio::test]
async fn commit_stores_body_and_envelope() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).await.unwrap();
    let env = envelope(
        "s@sender.test",
        &["a@example.com", "b@example.org"],
        "192.0.2.7",
        true,
    );
    let mut incoming = spool.begin(env.clone()).await.unwrap();
    let body = message("spool");
    for chunk in body.chunks(7) {
        incoming.write(chunk).await.unwrap();
    }
    let id = incoming.commit().await.unwrap();
    assert_eq!(id.to_string().parse::<MessageId>().unwrap(), id);
    let arrivals = spool.take_arrivals();
    assert_eq!(arrivals.len(), 1);
    assert_eq!(arrivals[0].id, id);
    // Handed over in memory, body included.
    let handed = arrivals[0].message.as_ref().unwrap();
    assert!(handed.body_in_memory());
    assert_eq!(handed.read_body().await.unwrap(), body);
    assert_eq!(handed.envelope, env);
    let m = spool.load(&id).await.unwrap();
    assert_eq!(m.envelope, env);
    assert!(!m.body_in_memory());
    assert_eq!(m.read_body().await.unwrap(), body);
    assert_eq!(m.body_len, body.len() as u64);
    // Committed through the journal: no file of its own yet.
    assert!(m.path.starts_with(dir.path().join("journal")));
    assert!(spool_dir_files(dir.path(), "queue").is_empty());
    assert_eq!(spool.list().await.unwrap(), vec![id]);
    assert!(m
        .state
        .recipients
        .iter()
        .all(|r| r.status == RecipientStatus::Pending));
    assert!(spool_dir_files(dir.path(), "incoming").is_empty());
    assert!(spool.has_room());
}

#[tokio::test]
async fn dropping_an_uncommitted_message_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).await.unwrap();
    let env = envelope("s@sender.test", &["a@example.com"], "192.0.2.7", false);
    // A small message stays in memory until the commit.
    let mut incoming = spool.begin(env.clone()).await.unwrap();
    incoming.write(b"Subject: x\r\n").await.unwrap();
    assert!(spool_dir_files(dir.path(), "incoming").is_empty());
    drop(incoming);
    // A large one is streamed to `incoming/` and removed when dropped.
    let mut incoming = spool.begin(env.clone()).await.unwrap();
    let line = [b'x'; 1022];
    for _ in 0..(MEMORY_BODY_LIMIT / 1024 + 2) {
        incoming.write(&line).await.unwrap();
        incoming.write(b"\r\n").await.unwrap();
    }
    assert_eq!(spool_dir_files(dir.path(), "incoming").len(), 1);
    drop(incoming);
    assert!(spool_dir_files(dir.path(), "incoming").is_empty());
    assert!(spool.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn large_message_is_streamed_and_committed() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).await.unwrap();
    let env = envelope("s@sender.test", &["a@example.com"], "192.0.2.7", false);
    let mut body = message("large");
    while body.len() < 3 * MEMORY_BODY_LIMIT {
        body.extend_from_slice(b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789ab\r\n");
    }
    let mut incoming = spool.begin(env.clone()).await.unwrap();
    for chunk in body.chunks(1000) {
        incoming.write(chunk).await.unwrap();
    }
    let id = incoming.commit().await.unwrap();
    let arrivals = spool.take_arrivals();
    let handed = arrivals[0].message.as_ref().unwrap();
    assert!(!handed.body_in_memory());
    assert_eq!(handed.read_body().await.unwrap(), body);
    let m = spool.load(&id).await.unwrap();
    assert_eq!(m.envelope, env);
    assert_eq!(m.read_body().await.unwrap(), body);
    assert!(spool_dir_files(dir.path(), "incoming").is_empty());
}

async fn many_writers(mode: SyncMode) {
    let dir = tempfile::tempdir().unwrap();
    let options = SpoolOptions {
        sync: mode,
        ..SpoolOptions::default()
    };
    let spool = Spool::open_with(dir.path(), options).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let spool = spool.clone();
        tasks.push(tokio::spawn(async move {
            let env = envelope("s@sender.test", &["a@example.com"], "192.0.2.7", false);
            let mut m = spool.begin(env).await.unwrap();
            m.write(&message(&format!("m{i}"))).await.unwrap();
            m.commit().await.unwrap()
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 40);
    assert_eq!(spool.list().await.unwrap(), ids);
    let arrived: Vec<MessageId> = spool.take_arrivals().iter().map(|a| a.id).collect();
    assert_eq!(arrived, ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_grouped() {
    many_writers(SyncMode::Grouped).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_journal() {
    many_writers(SyncMode::Journal).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_per_message() {
    many_writers(SyncMode::PerMessage).await;
}

/// `tlsgate queue` with no relay running works on the spool directly.
#[tokio::test]
async fn offline_cli() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).await.unwrap();
    let id = enqueue(
        &spool,
        envelope("s@sender.test", &["a@example.com"], "192.0.2.7", false),
        &message("cli"),
    )
    .await;
    drop(spool);
    let args = |command| Args {
        spool: dir.path().to_path_buf(),
        command,
    };
    assert_eq!(
        cli(args(Command::List {
            format: Format::Json
        }))
        .await,
        ExitCode::SUCCESS
    );
    assert_eq!(
        cli(args(Command::Show {
            id,
            format: Format::Text
        }))
        .await,
        ExitCode::SUCCESS
    );
    assert_eq!(
        cli(args(Command::Retry {
            id: None,
            domain: None,
            all: true
        }))
        .await,
        ExitCode::SUCCESS
    );
    assert_eq!(cli(args(Command::Delete { id })).await, ExitCode::SUCCESS);
    assert_eq!(cli(args(Command::Delete { id })).await, ExitCode::FAILURE);
    let spool = Spool::open(dir.path()).await.unwrap();
    assert!(spool.list().await.unwrap().is_empty());
}
