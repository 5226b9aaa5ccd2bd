//! Spool throughput: acknowledged messages per second (commit returned,
//! i.e. durable) with 1, 20 and 100 concurrent writers, for each
//! `SyncMode`: a file per message (`queue/<id>.qm`) with its own or a
//! shared directory fsync, or the journal (many messages per
//! `fdatasync`; a body above `spool::MEMORY_BODY_LIMIT` is streamed to a
//! file of its own in every mode).
//!
//! `cargo bench -p tlsgate --bench spool` (set `SPOOL_BENCH_DIR` to put the
//! spool on the file system you want to measure; default: the system temp
//! dir; `SPOOL_BENCH_SECS` per run, default 3; `SPOOL_BENCH_SIZE` body
//! bytes, default 4096: above 65536 the streamed path is measured).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tlsgate::envelope::Envelope;
use tlsgate::spool::{Spool, SpoolOptions, SyncMode};

fn envelope() -> Envelope {
    Envelope {
        mail_from: "sender@sender.test".into(),
        rcpt_to: vec!["rcpt@example.com".into()],
        client_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        helo: "client.test".into(),
        received_over_tls: true,
        received_at: 0,
    }
}

async fn run(mode: SyncMode, writers: usize, secs: u64, body: Arc<Vec<u8>>) -> f64 {
    let base = std::env::var_os("SPOOL_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(base).unwrap();
    let options = SpoolOptions {
        sync: mode,
        ..SpoolOptions::default()
    };
    let spool = Spool::open_with(dir.path(), options).await.unwrap();
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let until = start + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let spool = spool.clone();
        let done = done.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                let mut m = spool.begin(envelope()).await.unwrap();
                m.write(&body).await.unwrap();
                m.commit().await.unwrap();
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    done.load(Ordering::Relaxed) as f64 / elapsed
}

fn main() {
    // `cargo test` runs bench targets with `--bench` absent; keep it quick.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let secs = std::env::var("SPOOL_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut body = Vec::new();
    body.extend_from_slice(
        b"From: <sender@sender.test>\r\nTo: <rcpt@example.com>\r\nSubject: bench\r\n\r\n",
    );
    let size: usize = std::env::var("SPOOL_BENCH_SIZE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4096);
    while body.len() < size {
        body.extend_from_slice(
            b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd\r\n",
        );
    }
    let body = Arc::new(body);
    println!(
        "spool bench: {} byte messages, {secs} s per run, acknowledged (durable) messages per second",
        body.len()
    );
    for writers in [1usize, 20, 100] {
        for (name, mode) in [
            ("file, own fsync", SyncMode::PerMessage),
            ("file, shared fsync", SyncMode::Grouped),
            ("journal", SyncMode::Journal),
        ] {
            let rate = rt.block_on(run(mode, writers, secs, body.clone()));
            println!("{writers:>4} writers  {name:<19} {rate:>9.0} msg/s");
        }
    }
}
