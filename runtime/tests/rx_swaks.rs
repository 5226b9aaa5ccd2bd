#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Interoperability: `swaks` (a real, independent SMTP client) sends
//! through the server with STARTTLS and in clear text (rule T1).

mod rx_support;

use std::process::Command;

use rx_support::*;

/// Makes sure `swaks` is there: installs it with apt-get when running as
/// root, else fails with a clear message.
fn ensure_swaks() {
    if Command::new("swaks").arg("--version").output().is_ok() {
        return;
    }
    let root = nix::unistd::Uid::effective().is_root();
    assert!(
        root,
        "swaks is not installed; install it (`apt-get install -y swaks`, see scripts/setup) to run this test"
    );
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-q", "swaks"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !install() {
        let _ = Command::new("apt-get").args(["update", "-q"]).status();
        assert!(install(), "`apt-get install -y swaks` failed");
    }
}

async fn swaks(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || Command::new("swaks").args(&args).output().unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn t1_swaks_sends_through_the_server_with_and_without_starttls() {
    // rule T1
    ensure_swaks();
    let s = start(policy(1, vec![domain("example.com", &[], false)])).await;
    let common = |extra: &[&str]| {
        let mut v: Vec<String> = [
            "--server",
            "127.0.0.1",
            "--port",
            &s.addr.port().to_string(),
            "--from",
            "sender@outside.test",
            "--to",
            "rcpt@example.com",
            "--helo",
            "swaks.test",
            "--pipeline",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    let out = swaks(common(&["--tls"])).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "swaks --tls failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = swaks(common(&[])).await;
    assert!(
        out.status.success(),
        "swaks failed:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let m = s.sink.messages();
    assert_eq!(m.len(), 2);
    assert!(m[0].envelope.received_over_tls);
    assert!(!m[1].envelope.received_over_tls);
    assert_eq!(m[0].envelope.helo, "swaks.test");
    assert!(String::from_utf8_lossy(&m[0].data).contains("with ESMTPS"));

    // An unregistered domain is refused to swaks too (rule T6).
    let mut args = common(&["--tls"]);
    let i = args.iter().position(|a| a == "rcpt@example.com").unwrap();
    args[i] = "someone@elsewhere.example".into();
    let out = swaks(args).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("550 5.7.1"));
}
