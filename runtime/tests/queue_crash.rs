#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Crash safety of the whole relay: messages are sent concurrently to a
//! `tlsgate run` child that is SIGKILLed and restarted several times at
//! random moments. Every message that got `250` must reach the sink at
//! least once ("durable before 250"); duplicates are reported, not failed
//! (delivery is at-least-once).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use policy::blob::SigningKey;
use policy::{
    Delivery, Domain, DomainDetails, DomainName, Enforcement, Policy, RouteHost, Settings, Target,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const MESSAGES: usize = 40;
const SENDERS: usize = 8;
const KILLS: usize = 4;

/// A minimal SMTP sink recording the `Subject:` of every message.
async fn sink(received: Arc<Mutex<Vec<String>>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let received = received.clone();
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut r = BufReader::new(r);
                let _ = w.write_all(b"220 sink.test ESMTP\r\n").await;
                let mut line = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let cmd = line.trim_end().to_ascii_uppercase();
                    let reply: &[u8] = if cmd.starts_with("EHLO") || cmd.starts_with("HELO") {
                        b"250-sink.test\r\n250 8BITMIME\r\n"
                    } else if cmd.starts_with("DATA") {
                        let _ = w.write_all(b"354 go ahead\r\n").await;
                        let mut subject = None;
                        loop {
                            line.clear();
                            if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if line == ".\r\n" {
                                break;
                            }
                            if let Some(s) = line.strip_prefix("Subject: ") {
                                subject = Some(s.trim_end().to_string());
                            }
                        }
                        if let Some(s) = subject {
                            received.lock().unwrap().push(s);
                        }
                        b"250 2.0.0 stored\r\n"
                    } else if cmd.starts_with("QUIT") {
                        let _ = w.write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        b"250 2.0.0 ok\r\n"
                    };
                    if w.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Reads one (possibly multi-line) reply; `Some` when it has `code`.
async fn expect(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>, code: &str) -> Option<()> {
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        if line.len() >= 4 && line.as_bytes()[3] == b'-' {
            continue;
        }
        return line.starts_with(code).then_some(());
    }
}

/// Sends one message; `true` only on a `250` to the final dot.
async fn send(relay: SocketAddr, n: usize) -> bool {
    let attempt = async {
        let stream = TcpStream::connect(relay).await.ok()?;
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::new(r);
        expect(&mut r, "220").await?;
        w.write_all(b"EHLO client.test\r\n").await.ok()?;
        expect(&mut r, "250").await?;
        w.write_all(b"MAIL FROM:<s@sender.test>\r\n").await.ok()?;
        expect(&mut r, "250").await?;
        w.write_all(b"RCPT TO:<rcpt@example.com>\r\n").await.ok()?;
        expect(&mut r, "250").await?;
        w.write_all(b"DATA\r\n").await.ok()?;
        expect(&mut r, "354").await?;
        let body = format!(
            "From: <s@sender.test>\r\nTo: <rcpt@example.com>\r\nSubject: crash-{n}\r\n\r\nmessage {n}\r\n.\r\n"
        );
        w.write_all(body.as_bytes()).await.ok()?;
        expect(&mut r, "250").await?;
        let _ = w.write_all(b"QUIT\r\n").await;
        Some(())
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(10), attempt).await,
        Ok(Some(()))
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_relay(config: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_tlsgate"))
        .arg("run")
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_mail_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink_addr = sink(received.clone()).await;

    // Policy: example.com delivered by a static route to the sink, quick
    // retries.
    let details = DomainDetails {
        delivery: Delivery::Static(Target {
            host: RouteHost::Ip(sink_addr.ip()),
            port: sink_addr.port(),
        }),
        ..DomainDetails::default()
    };
    let mut p = Policy::empty(1);
    p.domains.push(Domain {
        name: DomainName::parse("example.com").unwrap(),
        settings: Some(Box::new(Settings {
            inbound: Enforcement::Opportunistic,
            ..Settings::default()
        })),
        details: Some(Box::new(details)),
    });
    p.retry.schedule.clear();
    p.retry.schedule.push(1).unwrap();
    let key = SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().unwrap()).unwrap();
    std::fs::write(
        d.join("policy.blob"),
        policy::blob::sign(&p, 1_700_000_000, &key).unwrap(),
    )
    .unwrap();
    let port = free_port();
    let relay_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config = d.join("tlsgate.toml");
    std::fs::write(
        &config,
        format!(
            "hostname = \"gw.test\"\nlisten = [\"{relay_addr}\"]\nspool_dir = \"{d}/spool\"\nstate_dir = \"{d}/state\"\npolicy = \"{d}/policy.blob\"\ntrusted_keys = [\"{k}\"]\nallow_root = true\n[limits]\nshutdown_grace_secs = 1\n",
            d = d.display(),
            k = key.public_key().to_text().trim()
        ),
    )
    .unwrap();
    let log = d.join("relay.log");

    let child = Arc::new(Mutex::new(start_relay(&config, &log)));
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let mut senders = Vec::new();
    for s in 0..SENDERS {
        let acked = acked.clone();
        senders.push(tokio::spawn(async move {
            // Each sender owns every SENDERS-th message and retries each
            // until it is acknowledged, like a real client.
            for n in (s..MESSAGES).step_by(SENDERS) {
                for _ in 0..200 {
                    if send(relay_addr, n).await {
                        acked.lock().unwrap().insert(n);
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }
    // Kill and restart the relay at random moments while mail flows.
    for _ in 0..KILLS {
        let wait = rand::random_range(100..600);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let mut c = child.lock().unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
        *c = start_relay(&config, &log);
    }
    for s in senders {
        s.await.unwrap();
    }
    let acked: BTreeSet<usize> = acked.lock().unwrap().clone();
    assert_eq!(
        acked.len(),
        MESSAGES,
        "every message is eventually accepted"
    );

    // Wait until every acknowledged message reached the sink.
    let mut missing = Vec::new();
    for _ in 0..600 {
        let got: BTreeSet<String> = received.lock().unwrap().iter().cloned().collect();
        missing = acked
            .iter()
            .filter(|n| !got.contains(&format!("crash-{n}")))
            .collect();
        if missing.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    {
        let mut c = child.lock().unwrap();
        let _ = c.kill();
        let _ = c.wait();
    }
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for s in received.lock().unwrap().iter() {
        *counts.entry(s.clone()).or_default() += 1;
    }
    let duplicates: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).collect();
    println!(
        "crash test: {} acknowledged, {} delivered, {} delivered more than once: {duplicates:?}",
        acked.len(),
        counts.len(),
        duplicates.len()
    );
    if !missing.is_empty() {
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        panic!("acknowledged but never delivered: {missing:?}\nrelay log (last lines, newest first):\n{}", tail.join("\n"));
    }
}
