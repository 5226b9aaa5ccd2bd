#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Soak: about 1,000 concurrent sessions against the relay binary
//! (`tlsgate run` as a child process) for `TLSGATE_SOAK_SECS` seconds
//! (default 20): good clients (half with STARTTLS) sending mail in a loop,
//! slow clients dripping bytes (in command lines and inside DATA, faster
//! and slower than the idle timeout), abusive ones (garbage until the
//! error limit, oversized lines, early talkers, connect-and-close, garbage
//! TLS handshakes), spread over 40 loopback source addresses. Checks that
//! every good session completes, every hostile one ends the way the relay
//! promises, the relay's memory stays bounded (`VmHWM` < 256 MiB) and
//! every message answered `250` reaches the next hop. Latency percentiles
//! and the memory per connection are printed, not asserted.
//!
//! A longer run for the figures:
//! `TLSGATE_SOAK_SECS=300 cargo test -p tlsgate --test hostile_soak -- --nocapture`

mod load_support;
mod rx_support;
mod tx_support;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use load_support::*;
use rx_support::Signer;
use tlsgate::tools::loadgen::{self, LoadReport, LoadgenArgs, SoakArgs};
use tx_support::smtp::{self as peer, Behaviour};

const MAX_HWM_KIB: u64 = 256 * 1024;

fn sources(first: u8, n: u8) -> Vec<IpAddr> {
    (first..first + n)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
        .collect()
}

/// What an abusive connection may end with (label prefixes), one or more
/// per kind of abuse. An early talker whose bytes the loaded test process
/// sends only after the greeting delay is greeted, then refused for
/// improper pipelining: the same `554 5.5.0` close.
const ABUSE_ENDS: &[(&str, &[&str])] = &[
    ("garbage:", &["garbage: 421 4.7.0"]),
    ("long line:", &["long line: 500 5.5.2, then 221"]),
    (
        "early talker:",
        &["early talker: 554 5.5.0", "early talker: 220, 554 5.5.0"],
    ),
    ("connect-and-close", &["connect-and-close"]),
    ("tls garbage:", &["tls garbage: closed"]),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_1000_sessions_good_clients_served_memory_bounded_nothing_lost() {
    let secs: u64 = std::env::var("TLSGATE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    // Good client workers per load run (0: only hostile ones, to see the
    // memory of the receiving side alone).
    let good: usize = std::env::var("TLSGATE_SOAK_GOOD")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let nofile = raise_nofile();
    assert!(
        nofile >= 4096,
        "RLIMIT_NOFILE {nofile} is too low for the soak"
    );
    let dir = tempfile::tempdir().unwrap();
    let hop = peer::start("127.0.0.1:0", Behaviour::default()).await;
    let signer = Signer::new();
    let blob = signer.sign(&routed_policy(dir.path(), 1, hop.addr.port(), &[]));
    let mut relay = start_child(
        dir.path(),
        &signer,
        &blob,
        "idle_timeout_secs = 3\nsession_timeout_secs = 15\ngreeting_delay_millis = 100\nmax_connections = 4000\nmax_connections_per_ip = 4000\n",
    );
    // Let the relay settle (the first delivery set-up, the resolver).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base = relay.memory();

    // Memory and descriptors sampled every 200 ms while the load runs.
    let samples = Arc::new(Mutex::new(Vec::<Memory>::new()));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (samples, sampling, pid) = (samples.clone(), sampling.clone(), relay.pid);
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                samples.lock().unwrap().push(memory_of(pid));
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };

    let common = |starttls: bool, sessions: usize, soak: SoakArgs| LoadgenArgs {
        target: relay.addr,
        sessions,
        messages: 3,
        size: 4096,
        starttls,
        from: "soak@sender.test".into(),
        to: "user@example.test".into(),
        ehlo: "soak.test".into(),
        soak,
    };
    // 30 STARTTLS clients + 700 drips faster than the idle timeout (cut by
    // the session timeout), from 127.0.0.2-21.
    let a = common(
        true,
        good,
        SoakArgs {
            duration: Some(secs),
            slow: 700,
            drip_millis: 500,
            sources: sources(2, 20),
            ..SoakArgs::default()
        },
    );
    // 30 clear-text clients + 200 drips slower than the idle timeout + 200
    // abusive connections, from 127.0.0.22-41.
    let b = common(
        false,
        good,
        SoakArgs {
            duration: Some(secs),
            slow: 200,
            drip_millis: 4000,
            abusive: 200,
            abuse_pause_millis: 500,
            sources: sources(22, 20),
        },
    );
    let guard = Duration::from_secs(secs + 120);
    let (ra, rb) = tokio::join!(
        tokio::time::timeout(guard, loadgen::run(a)),
        tokio::time::timeout(guard, loadgen::run(b)),
    );
    sampling.store(false, Ordering::Relaxed);
    sampler.join().unwrap();
    let ra: LoadReport = ra.expect("load run A hung").unwrap();
    let rb: LoadReport = rb.expect("load run B hung").unwrap();
    eprintln!("STARTTLS clients + fast drips:\n{ra}");
    eprintln!("clear-text clients + slow drips + abusive:\n{rb}");

    // Memory: the peak, and per connection at the busiest sample.
    let samples = samples.lock().unwrap().clone();
    let peak = samples.iter().map(|m| m.rss_kib).max().unwrap_or(0);
    let busiest = samples.iter().max_by_key(|m| m.sockets).copied().unwrap();
    let end = relay.memory();
    let t0 = samples.first().map(|m| m.at).unwrap_or(0.0);
    let timeline: Vec<String> = samples
        .iter()
        .step_by(25)
        .map(|m| format!("{:.0}s {} sockets {} KiB", m.at - t0, m.sockets, m.rss_kib))
        .collect();
    eprintln!("relay RSS every 5 s: {}", timeline.join("; "));
    let per_conn = |m: &Memory| {
        m.rss_kib.saturating_sub(base.rss_kib) as f64
            / m.sockets.saturating_sub(base.sockets).max(1) as f64
    };
    // The first sample with 90 % of the most sockets: before a queue
    // backlog (the next hop is slower than the relay) adds its own memory.
    let early = samples
        .iter()
        .find(|m| m.sockets * 10 >= busiest.sockets * 9)
        .copied()
        .unwrap();
    eprintln!(
        "relay memory: base RSS {} KiB ({} sockets); first full sample {} sockets, RSS {} KiB: {:.1} KiB per connection; busiest sample {} sockets ({} fds), RSS {} KiB: {:.1} KiB per connection; peak RSS {} KiB; VmHWM {} KiB",
        base.rss_kib,
        base.sockets,
        early.sockets,
        early.rss_kib,
        per_conn(&early),
        busiest.sockets,
        busiest.fds,
        busiest.rss_kib,
        per_conn(&busiest),
        peak,
        end.hwm_kib
    );

    // Good clients: every session completed, every message accepted.
    for r in [&ra, &rb] {
        assert!(r.session_errors.is_empty(), "{r}");
        assert_eq!(r.failed, 0, "{r}");
        assert!(r.sessions >= good, "{r}");
    }
    // Hostile clients ended as promised.
    for r in [&ra, &rb] {
        assert_eq!(r.slow.keys().collect::<Vec<_>>(), vec!["421 4.4.2"], "{r}");
        for k in r.abusive.keys() {
            assert!(
                ABUSE_ENDS
                    .iter()
                    .flat_map(|(_, ends)| ends.iter())
                    .any(|p| k.starts_with(p)),
                "unexpected end of an abusive connection `{k}`: {r}"
            );
        }
    }
    for (kind, _) in ABUSE_ENDS {
        assert!(
            rb.abusive.keys().any(|k| k.starts_with(kind)),
            "no `{kind}` abuse ran: {rb}"
        );
    }
    // About 1,000 sessions at once.
    assert!(busiest.sockets >= base.sockets + 900, "{busiest:?}");
    assert!(
        end.hwm_kib < MAX_HWM_KIB,
        "VmHWM {} KiB over the bound",
        end.hwm_kib
    );

    // No acknowledged message lost.
    let acked: Vec<String> = ra
        .acknowledged
        .iter()
        .chain(&rb.acknowledged)
        .cloned()
        .collect();
    let started = std::time::Instant::now();
    let seen = wait_delivered(&hop, &acked).await;
    let dups: usize = seen.values().map(|n| n - 1).sum();
    eprintln!(
        "{} messages acknowledged, all delivered ({} duplicates) {:.1}s after the load ended",
        acked.len(),
        dups,
        started.elapsed().as_secs_f64()
    );
    let drained = relay.memory();
    eprintln!(
        "relay after the queue drained: RSS {} KiB, {} sockets",
        drained.rss_kib, drained.sockets
    );
    assert!(relay.running(), "the relay exited");
    assert!(relay.stop(Duration::from_secs(30)), "no clean exit");
}
