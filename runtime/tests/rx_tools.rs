#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! `tlsgate loadgen` and the sink's maildir storage, on loopback.

mod rx_support;

use std::sync::Arc;

use rx_support::*;
use tlsgate::server::{Gate, Server, ServerLimits};
use tlsgate::tools::loadgen::{make_message, run, LoadgenArgs};
use tlsgate::tools::sink::MaildirSink;

#[tokio::test]
async fn loadgen_drives_a_starttls_sink() {
    let s = start_with(Gate::AcceptAll, session_config(), ServerLimits::default()).await;
    let args = LoadgenArgs {
        target: s.addr,
        sessions: 3,
        messages: 5,
        size: 5 * 1024,
        starttls: true,
        from: "load@gen.test".into(),
        to: "sink@example.com".into(),
        ehlo: "loadgen.test".into(),
        soak: Default::default(),
    };
    let report = run(args).await.unwrap();
    assert_eq!((report.sent, report.failed), (15, 0), "{report}");
    assert!(report.p50 <= report.p90 && report.p90 <= report.p99);
    let m = s.sink.messages();
    assert_eq!(m.len(), 15);
    assert!(m.iter().all(|m| m.envelope.received_over_tls));
    assert_eq!(make_message(5 * 1024, "a@b", "c@d").len(), 5 * 1024);
}

#[tokio::test]
async fn maildir_sink_stores_whole_messages() {
    let dir = tempfile::tempdir().unwrap();
    let sink = MaildirSink::open(dir.path()).unwrap();
    let server = Server::new(
        session_config(),
        ServerLimits::default(),
        Gate::AcceptAll,
        Arc::new(sink),
        None,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_stop, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move { server.serve(listener, rx).await });
    let (mut c, _) = connect(addr, None).await;
    let r = c.send_mail("a@b.test", &["x@y.test"], BODY).await.unwrap();
    assert_eq!(r.code, 250);
    let files: Vec<_> = std::fs::read_dir(dir.path().join("new")).unwrap().collect();
    assert_eq!(files.len(), 1);
    let text = std::fs::read_to_string(files[0].as_ref().unwrap().path()).unwrap();
    assert!(
        text.starts_with("X-Sink-Mail-From: <a@b.test>\r\nX-Sink-Rcpt-To: <x@y.test>\r\n"),
        "{text}"
    );
    assert!(text.ends_with("\r\n\r\nhello\r\n"));
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0
    );
}
