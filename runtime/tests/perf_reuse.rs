#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Connection reuse (`delivery::pool`): real next-hop servers on loopback,
//! real TLS with an rcgen PKI, jobs built from the real decision function.
//! The test servers count the TCP connections they accept.

mod tx_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use policy::{CompiledPolicy, MessageContext, Validation};
use tlsgate::delivery::{Deliverer, PoolSettings};
use tlsgate::transport::{DeliveryJob, DeliveryReport, Transport};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tx_support::pki::Ca;
use tx_support::smtp::{self, Behaviour};
use tx_support::*;

/// `example.test` delivered by one inbound route to 127.0.0.1:`port`.
fn routed(settings: Option<policy::Settings>, port: u16) -> policy::Policy {
    policy(
        vec![domain(
            "example.test",
            settings,
            inbound_routes(&[(10, target("127.0.0.1", port))]),
        )],
        vec![],
    )
}

/// One delivery attempt under `policy` announced with `serial`.
async fn deliver_serial(
    d: &Deliverer,
    policy: &policy::Policy,
    serial: u64,
    received_over_tls: bool,
) -> DeliveryReport {
    let compiled = CompiledPolicy::new(policy.clone());
    let decision = compiled
        .decide(&MessageContext {
            sender: "a@corp.test",
            recipient: "bob@example.test",
            client_ip: SENDER_IP,
            received_over_tls,
        })
        .unwrap();
    let plan = decision.plan.expect("the recipient is not refused");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("body");
    std::fs::write(&path, body()).unwrap();
    let recipients = vec!["bob@example.test".to_string()];
    let job = DeliveryJob {
        message_id: "reuse-1",
        mail_from: "a@corp.test",
        recipient_domain: "example.test",
        recipients: &recipients,
        plan,
        rule: decision.rule,
        trust_anchors: &compiled.policy().trust_anchors,
        policy_serial: serial,
        body: tlsgate::transport::MessageBody::File(&path),
    };
    d.deliver(job).await
}

/// A server with a certificate for `mx1.example.test` from a private CA,
/// and a deliverer that trusts that CA.
async fn tls_server() -> (smtp::Server, Deliverer) {
    let ca = Ca::root("reuse root");
    let server = smtp::start(
        "127.0.0.1:0",
        Behaviour {
            tls: Some(ca.leaf_for(&["mx1.example.test"])),
            ..Behaviour::default()
        },
    )
    .await;
    (server, deliverer(config(None, &[&ca.der])))
}

fn strong_required() -> Option<policy::Settings> {
    Some(required(strong(&["mx1.example.test"], false)))
}

fn lines(server: &smtp::Server) -> Vec<String> {
    server.seen.lock().unwrap().lines.clone()
}

#[tokio::test]
async fn two_jobs_to_the_same_hop_share_one_tls_connection_with_rset_between() {
    // rule T5, T13: the reused connection keeps its strong validation
    let (server, d) = tls_server().await;
    let p = routed(strong_required(), server.addr.port());
    let r1 = deliver_serial(&d, &p, 1, false).await;
    assert!(all_delivered(&r1), "{r1:?}");
    assert_eq!(d.idle_connections(), 1);
    let r2 = deliver_serial(&d, &p, 1, false).await;
    assert!(all_delivered(&r2), "{r2:?}");
    assert_eq!(server.connections(), 1, "one TCP connection for both jobs");
    assert_eq!(server.messages().len(), 2);
    assert_eq!(
        server.seen.lock().unwrap().message_over_tls,
        vec![true, true]
    );
    assert_eq!(
        r2.certificate.as_deref(),
        Some("strong-ok (mx1.example.test)")
    );
    assert_eq!(r2.tls_protocol, r1.tls_protocol);
    // Exactly one handshake, and RSET between the two transactions.
    let l = lines(&server);
    assert_eq!(l.iter().filter(|x| *x == "STARTTLS").count(), 1, "{l:?}");
    let mails: Vec<usize> = l
        .iter()
        .enumerate()
        .filter(|(_, x)| x.starts_with("MAIL FROM"))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(mails.len(), 2, "{l:?}");
    let rset = l.iter().position(|x| x == "RSET").expect("RSET sent");
    assert!(mails[0] < rset && rset < mails[1], "{l:?}");
    assert!(!l.iter().any(|x| x == "QUIT"), "kept open: {l:?}");
}

#[tokio::test]
async fn different_validation_does_not_reuse() {
    // rule T13, T15: a connection checked under relaxed validation is not
    // used for a job that needs strong validation (and vice versa)
    let (server, d) = tls_server().await;
    let relaxed = routed(Some(required(Validation::Relaxed)), server.addr.port());
    let strong_p = routed(strong_required(), server.addr.port());
    let strong_other = routed(
        Some(required(strong(&["mx1.example.test"], true))),
        server.addr.port(),
    );
    assert!(all_delivered(&deliver_serial(&d, &relaxed, 1, false).await));
    let r = deliver_serial(&d, &strong_p, 1, false).await;
    assert!(all_delivered(&r), "{r:?}");
    assert_eq!(
        r.certificate.as_deref(),
        Some("strong-ok (mx1.example.test)")
    );
    assert_eq!(server.connections(), 2);
    // Same names, but CN matching on: other validation inputs, new connection.
    assert!(all_delivered(
        &deliver_serial(&d, &strong_other, 1, false).await
    ));
    assert_eq!(server.connections(), 3);
    assert_eq!(d.idle_connections(), 3);
}

#[tokio::test]
async fn policy_serial_change_does_not_reuse() {
    // rule T21: after a newer policy is in force, connections validated
    // under the old one are not reused
    let (server, d) = tls_server().await;
    let p = routed(strong_required(), server.addr.port());
    assert!(all_delivered(&deliver_serial(&d, &p, 1, false).await));
    assert!(all_delivered(&deliver_serial(&d, &p, 2, false).await));
    assert_eq!(server.connections(), 2);
    assert!(all_delivered(&deliver_serial(&d, &p, 2, false).await));
    assert_eq!(server.connections(), 2, "serial 2 connection reused");
}

#[tokio::test]
async fn clear_connection_is_never_reused_when_tls_is_required() {
    // rule T3 then T5: a connection kept in clear (received in clear, T3)
    // must not carry a job that requires TLS
    let (server, d) = tls_server().await;
    let clear = routed(None, server.addr.port());
    let r = deliver_serial(&d, &clear, 1, false).await;
    assert!(all_delivered(&r), "{r:?}");
    assert_eq!(r.tls_protocol, None);
    let r = deliver_serial(&d, &routed(strong_required(), server.addr.port()), 1, false).await;
    assert!(all_delivered(&r), "{r:?}");
    assert_eq!(server.connections(), 2);
    assert_eq!(
        server.seen.lock().unwrap().message_over_tls,
        vec![false, true]
    );
}

/// A clear SMTP server that counts connections and closes each connection
/// right after its first end-of-data reply (no `421`, no QUIT: the peer
/// simply goes away while the connection sits in the pool).
async fn closing_server() -> (
    std::net::SocketAddr,
    Arc<AtomicUsize>,
    Arc<Mutex<Vec<String>>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (c, s) = (count.clone(), seen.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let s = s.clone();
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut r = BufReader::new(r);
                w.write_all(b"220 closing.test ESMTP\r\n").await.unwrap();
                let mut line = String::new();
                let mut in_data = false;
                loop {
                    line.clear();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let l = line.trim_end().to_string();
                    if in_data {
                        if l == "." {
                            w.write_all(b"250 2.0.0 queued\r\n").await.unwrap();
                            s.lock().unwrap().push("<message>".into());
                            return; // close the connection
                        }
                        continue;
                    }
                    s.lock().unwrap().push(l.clone());
                    let reply: &[u8] = if l.starts_with("EHLO") {
                        b"250-closing.test\r\n250 8BITMIME\r\n"
                    } else if l == "DATA" {
                        in_data = true;
                        b"354 go ahead\r\n"
                    } else if l == "QUIT" {
                        b"221 bye\r\n"
                    } else {
                        b"250 ok\r\n"
                    };
                    w.write_all(reply).await.unwrap();
                }
            });
        }
    });
    (addr, count, seen)
}

#[tokio::test]
async fn dead_pooled_connection_is_replaced_without_failing_the_job() {
    // rule T3 (clear delivery); the pooled connection was closed by the peer
    let (addr, count, seen) = closing_server().await;
    let d = deliverer(config(None, &[]));
    let p = routed(None, addr.port());
    let r1 = deliver_serial(&d, &p, 1, false).await;
    assert!(all_delivered(&r1), "{r1:?}");
    assert_eq!(d.idle_connections(), 1, "kept: the close is not seen yet");
    // Let the peer's close arrive (no timing assertion: RSET detects it
    // whenever it happens).
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r2 = deliver_serial(&d, &p, 1, false).await;
    assert!(all_delivered(&r2), "{r2:?}");
    assert_eq!(count.load(Ordering::SeqCst), 2, "a fresh connection");
    let s = seen.lock().unwrap().clone();
    assert_eq!(s.iter().filter(|l| *l == "<message>").count(), 2, "{s:?}");
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_time() {
    let (server, _) = tls_server().await;
    let ca_free = routed(None, server.addr.port());
    let mut c = config(None, &[]);
    c.pool = PoolSettings {
        idle_timeout: Duration::from_millis(100),
        ..PoolSettings::default()
    };
    let d = deliverer(c);
    assert!(all_delivered(&deliver_serial(&d, &ca_free, 1, false).await));
    for _ in 0..200 {
        if d.idle_connections() == 0 && server.seen_command("QUIT") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(d.idle_connections(), 0);
    assert!(server.seen_command("QUIT"), "closed politely");
}

#[tokio::test]
async fn pool_bounds_and_disabled_pool() {
    let (server, _) = tls_server().await;
    let p = routed(None, server.addr.port());
    // Disabled: every job opens and closes its own connection.
    let mut c = config(None, &[]);
    c.pool = PoolSettings::disabled();
    let d = deliverer(c);
    assert!(all_delivered(&deliver_serial(&d, &p, 1, false).await));
    assert!(all_delivered(&deliver_serial(&d, &p, 1, false).await));
    assert_eq!(server.connections(), 2);
    assert_eq!(d.idle_connections(), 0);
    // At most two transactions per connection.
    let mut c = config(None, &[]);
    c.pool = PoolSettings {
        max_transactions: 2,
        ..PoolSettings::default()
    };
    let d = deliverer(c);
    for _ in 0..3 {
        assert!(all_delivered(&deliver_serial(&d, &p, 1, false).await));
    }
    assert_eq!(server.connections(), 4);
    // Concurrent jobs to one destination: never more idle than the bound.
    let mut c = config(None, &[]);
    c.pool = PoolSettings {
        max_idle_per_destination: 2,
        ..PoolSettings::default()
    };
    let d = deliverer(c);
    let jobs: Vec<_> = (0..5).map(|_| deliver_serial(&d, &p, 1, false)).collect();
    for r in futures_join(jobs).await {
        assert!(all_delivered(&r), "{r:?}");
    }
    assert!(d.idle_connections() <= 2);
}

async fn futures_join<F: std::future::Future>(fs: Vec<F>) -> Vec<F::Output> {
    let mut out = Vec::new();
    let mut pinned: Vec<_> = fs.into_iter().map(Box::pin).collect();
    // Poll all together by joining them one after another on a local set:
    // the futures are started concurrently with tokio::join-like polling.
    let mut done: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all = true;
        for (i, f) in pinned.iter_mut().enumerate() {
            if done[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => done[i] = Some(v),
                    std::task::Poll::Pending => all = false,
                }
            }
        }
        if all {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.extend(done.into_iter().flatten());
    out
}
