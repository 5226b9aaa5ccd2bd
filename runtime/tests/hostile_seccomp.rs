#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Issue 6, hardening of the process: the relay binary (`tlsgate run`)
//! confines itself to a system-call allow-list (`runtime/src/sandbox.rs`).
//!
//! - `seccomp_relay_lives_its_whole_life_under_the_filter`: the real binary,
//!   started as in production (as root dropping to `nobody` when the test
//!   runs as root), shows `Seccomp: 2` on every thread, and under the
//!   filter receives a message over STARTTLS, commits it, resolves the
//!   next hop over DNS (an in-process server), delivers over TLS, bounces a
//!   refused recipient, answers `tlsgate queue list` over its control
//!   socket, reloads its policy on SIGHUP, and exits cleanly on SIGTERM,
//!   with no "operation not permitted" anywhere in its log: the list is
//!   sufficient.
//! - `seccomp_refuses_forbidden_calls`: a child process (this test binary
//!   re-run for one ignored test) installs the same filter from the
//!   library and checks `execve`, `fork`, `ptrace`, netlink and packet
//!   sockets, `setuid`, `mount`, `kill` and executable memory fail with
//!   `EPERM`, while threads, TCP and unix sockets still work. The filter
//!   is never installed in the test harness process itself.
//!
//! Measuring (not run in CI): `TLSGATE_SECCOMP_STRACE=<file>` runs the
//! relay of the first test under `strace -f -c -o <file>`;
//! `TLSGATE_SECCOMP_BIN=<path>` runs another build of the binary (the
//! static musl one); `TLSGATE_SECCOMP_OFF=1` writes `seccomp = false`.

mod rx_support;
mod tx_support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use policy::{Delivery, Domain, DomainDetails, DomainName, Policy, RouteHost, Target};
use rx_support::{starttls, write_file, Signer};
use tlsgate::tools::client::Client;
use tx_support::{dns, pki, smtp};

fn binary() -> PathBuf {
    std::env::var_os("TLSGATE_SECCOMP_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tlsgate")))
}

/// `example.test` (and `new.test` from serial 2 on), delivered by a static
/// route to `mx.example.test`, a name the relay resolves over DNS.
fn life_policy(serial: u64, sink_port: u16) -> Policy {
    let route = DomainDetails {
        delivery: Delivery::Static(Target {
            host: RouteHost::Name(DomainName::parse("mx.example.test").unwrap()),
            port: sink_port,
        }),
        ..DomainDetails::default()
    };
    let mut names = vec!["example.test"];
    if serial >= 2 {
        names.push("new.test");
    }
    let mut p = Policy::empty(serial);
    for n in names {
        p.domains.push(Domain {
            name: DomainName::parse(n).unwrap(),
            settings: None,
            details: Some(Box::new(route.clone())),
        });
    }
    p.retry.schedule.clear();
    p.retry.schedule.push(1).unwrap();
    p
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn status_field(path: &Path, key: &str) -> Option<String> {
    let s = std::fs::read_to_string(path).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.trim().to_string())
}

/// `(thread id, Seccomp:, Seccomp_filters:)` of every thread of `pid`.
fn threads(pid: u32) -> Vec<(String, Option<String>, Option<String>)> {
    let mut v = Vec::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for e in dir.flatten() {
            let status = e.path().join("status");
            v.push((
                e.file_name().to_string_lossy().into_owned(),
                status_field(&status, "Seccomp:"),
                status_field(&status, "Seccomp_filters:"),
            ));
        }
    }
    v
}

struct Relay {
    child: Child,
    log: PathBuf,
    traced: bool,
}

impl Relay {
    fn start(config: &Path, log: &Path) -> Relay {
        let file = std::fs::File::create(log).unwrap();
        let strace = std::env::var_os("TLSGATE_SECCOMP_STRACE");
        let mut cmd = match &strace {
            Some(out) => {
                let mut c = Command::new("strace");
                c.args(["-f", "-c", "-o"]).arg(out).arg(binary());
                c
            }
            None => Command::new(binary()),
        };
        let child = cmd
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Relay {
            child,
            log: log.to_path_buf(),
            traced: strace.is_some(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log shows `needle` (or the relay died).
    async fn wait_log(&mut self, needle: &str) -> bool {
        for _ in 0..600 {
            if self.log().contains(needle) {
                return true;
            }
            if self.child.try_wait().unwrap().is_some() {
                return self.log().contains(needle);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// The relay's pid (under strace: strace's child).
    fn pid(&self) -> u32 {
        let id = self.child.id();
        if !self.traced {
            return id;
        }
        std::fs::read_to_string(format!("/proc/{id}/task/{id}/children"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(id)
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid()).unwrap());
        nix::sys::signal::kill(pid, sig).unwrap();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn until(mut check: impl FnMut() -> bool) -> bool {
    for _ in 0..600 {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

async fn rcpt_code(addr: SocketAddr, rcpt: &str) -> u16 {
    let mut c = Client::connect(addr, None).await.unwrap();
    assert_eq!(c.read_reply().await.unwrap().code, 220);
    assert_eq!(c.command("EHLO client.test").await.unwrap().code, 250);
    assert_eq!(
        c.command("MAIL FROM:<s@example.test>").await.unwrap().code,
        250
    );
    let code = c.command(&format!("RCPT TO:<{rcpt}>")).await.unwrap().code;
    let _ = c.command("QUIT").await;
    code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seccomp_relay_lives_its_whole_life_under_the_filter() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let root = nix::unistd::Uid::effective().is_root();
    if root {
        // `nobody` reads the policy and the keys below this directory.
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }

    // Next hop: STARTTLS with a certificate of a test CA; one recipient
    // refused for good (so a bounce goes back to the sender, who is at
    // the same next hop).
    let ca = pki::Ca::root("Seccomp Test Root");
    let sink = smtp::start(
        "127.0.0.1:0",
        smtp::Behaviour {
            tls: Some(ca.leaf_for(&["mx.example.test"])),
            rcpt_replies: vec![("refused@example.test", "550 5.1.1 no such user")],
            ..smtp::Behaviour::default()
        },
    )
    .await;
    let (dns_addr, zone) = dns::start().await;
    zone.a("mx.example.test", std::net::Ipv4Addr::LOCALHOST);

    let signer = Signer::new();
    write_file(
        &d.join("policy.blob"),
        &signer.sign(&life_policy(1, sink.addr.port())),
    );
    let port = free_port();
    let relay_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let who = if root { "user = \"nobody\"" } else { "" };
    let seccomp = if std::env::var_os("TLSGATE_SECCOMP_OFF").is_some() {
        "seccomp = false"
    } else {
        ""
    };
    let config = d.join("tlsgate.toml");
    std::fs::write(
        &config,
        format!(
            "hostname = \"gw.test\"\nlisten = [\"{relay_addr}\"]\nspool_dir = \"{d}/spool\"\nstate_dir = \"{d}/state\"\npolicy = \"{d}/policy.blob\"\ntrusted_keys = [\"{k}\"]\n{who}\n{seccomp}\n[dns]\nname_servers = [\"{dns_addr}\"]\n[limits]\nshutdown_grace_secs = 2\npolicy_poll_millis = 3600000\n",
            d = d.display(),
            k = signer.public.to_text().trim()
        ),
    )
    .unwrap();

    let mut relay = Relay::start(&config, &d.join("relay.log"));
    assert!(
        relay.wait_log("SMTP listening").await,
        "relay did not start: {}",
        relay.log()
    );
    if seccomp.is_empty() {
        assert!(
            relay.log().contains("seccomp filter in force"),
            "{}",
            relay.log()
        );
    }

    // Every thread is filtered (mode 2), by both filters.
    if seccomp.is_empty() {
        let t = threads(relay.pid());
        assert!(t.len() > 1, "{t:?}");
        for (tid, mode, filters) in &t {
            assert_eq!(mode.as_deref(), Some("2"), "thread {tid}: {t:?}");
            assert_eq!(filters.as_deref(), Some("2"), "thread {tid}: {t:?}");
        }
    }

    // Receive over STARTTLS; commit (250 to the final dot).
    let mut c = Client::connect(relay_addr, None).await.unwrap();
    assert_eq!(c.read_reply().await.unwrap().code, 220);
    let ehlo = c.command("EHLO client.test").await.unwrap();
    assert!(ehlo.text.contains("STARTTLS"), "{ehlo:?}");
    let (mut c, _) = starttls(c).await;
    let r = c
        .send_mail(
            "s@example.test",
            &["rcpt@example.test", "refused@example.test"],
            b"From: <s@example.test>\r\nSubject: seccomp-life\r\n\r\nhello\r\n",
        )
        .await
        .unwrap();
    assert_eq!(r.code, 250, "{r:?}");
    let _ = c.command("QUIT").await;

    // Delivered over TLS after a DNS lookup; the refused recipient's
    // bounce reaches the sender.
    let s = sink.clone();
    assert!(
        until(|| s.messages().len() >= 2).await,
        "original and bounce never both reached the next hop: {}",
        relay.log()
    );
    let (over_tls, texts) = {
        let seen = sink.seen.lock().unwrap();
        let texts: Vec<String> = seen
            .messages
            .iter()
            .map(|m| String::from_utf8_lossy(m).into_owned())
            .collect();
        (seen.message_over_tls.clone(), texts)
    };
    assert!(
        over_tls.len() >= 2 && over_tls.iter().all(|t| *t),
        "{over_tls:?}"
    );
    assert!(
        texts.iter().any(|t| t.contains("Subject: seccomp-life")),
        "{texts:?}"
    );
    assert!(
        texts
            .iter()
            .any(|t| !t.starts_with("From: <s@example.test>") && t.contains("refused@example.test")),
        "no bounce: {texts:?}"
    );

    // The queue control socket answers (a separate, unfiltered process).
    let out = Command::new(env!("CARGO_BIN_EXE_tlsgate"))
        .args(["queue", "--spool"])
        .arg(d.join("spool"))
        .arg("list")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        relay.log()
    );

    // SIGHUP reloads a new policy (the file is polled only hourly here).
    assert_eq!(rcpt_code(relay_addr, "x@new.test").await, 550);
    write_file(
        &d.join("policy.blob"),
        &signer.sign(&life_policy(2, sink.addr.port())),
    );
    relay.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(
        relay.wait_log("policy replaced").await,
        "no reload: {}",
        relay.log()
    );
    assert_eq!(rcpt_code(relay_addr, "x@new.test").await, 250);

    // SIGTERM: a clean exit.
    relay.signal(nix::sys::signal::Signal::SIGTERM);
    let mut status = None;
    for _ in 0..600 {
        status = relay.child.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = relay.log();
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{log}");
    assert!(log.contains("stopped"), "{log}");
    let lower = log.to_ascii_lowercase();
    assert!(
        !lower.contains("operation not permitted") && !lower.contains("os error 1)"),
        "something was refused: {log}"
    );
}

/// Re-runs this test binary for [`seccomp_child_probe`] only.
#[test]
fn seccomp_refuses_forbidden_calls() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "seccomp_child_probe",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TLSGATE_SECCOMP_PROBE", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("seccomp probe: done"), "{stdout}\n{stderr}");
}

fn errno<T>(r: nix::Result<T>) -> Option<nix::errno::Errno> {
    r.err()
}

/// Runs only in the child process of [`seccomp_refuses_forbidden_calls`]:
/// installing the filter is irreversible and covers every thread, so it
/// must never happen in the harness running the other tests.
#[test]
#[ignore = "run in a child process by seccomp_refuses_forbidden_calls"]
#[allow(unsafe_code)]
fn seccomp_child_probe() {
    use nix::errno::Errno;
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockProtocol, SockType};
    if std::env::var_os("TLSGATE_SECCOMP_PROBE").is_none() {
        return;
    }
    let missing = c"/nonexistent/tlsgate-seccomp-probe";
    // Before: the calls fail for their ordinary reasons, or work.
    assert_eq!(
        errno(nix::unistd::execv(missing, &[missing])),
        Some(Errno::ENOENT)
    );
    assert!(socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute
    )
    .is_ok());

    let allowed = tlsgate::sandbox::install_relay_filter().unwrap();
    assert!(allowed > 80);
    let me = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    assert!(me.lines().any(|l| l == "Seccomp:\t2"), "{me}");

    // Refused.
    assert_eq!(
        errno(nix::unistd::execv(missing, &[missing])),
        Some(Errno::EPERM),
        "execve"
    );
    let spawn = Command::new("/bin/true").status();
    assert!(
        matches!(
            spawn.as_ref().map_err(|e| e.raw_os_error()),
            Err(Some(libc::EPERM | libc::ENOSYS))
        ),
        "fork/spawn: {spawn:?}"
    );
    for (family, ty, proto) in [
        (
            AddressFamily::Netlink,
            SockType::Raw,
            SockProtocol::NetlinkRoute,
        ),
        (AddressFamily::Packet, SockType::Raw, SockProtocol::EthAll),
    ] {
        assert_eq!(
            errno(socket(family, ty, SockFlag::SOCK_CLOEXEC, proto)),
            Some(Errno::EPERM),
            "socket({family:?})"
        );
    }
    assert_eq!(
        errno(nix::unistd::setuid(nix::unistd::getuid())),
        Some(Errno::EPERM),
        "setuid"
    );
    assert_eq!(
        errno(nix::mount::mount(
            Some("none"),
            "/nonexistent/tlsgate-seccomp-probe",
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )),
        Some(Errno::EPERM),
        "mount"
    );
    assert_eq!(
        errno(nix::sys::signal::kill(nix::unistd::Pid::from_raw(1), None)),
        Some(Errno::EPERM),
        "kill"
    );
    // SAFETY: PTRACE_ATTACH to a pid that cannot exist touches no memory
    // of ours; unfiltered it fails with ESRCH.
    let rc = unsafe { libc::ptrace(libc::PTRACE_ATTACH, 0x3fff_fff0, 0usize, 0usize) };
    assert_eq!((rc, Errno::last()), (-1, Errno::EPERM), "ptrace");
    // SAFETY: an anonymous private mapping with no fixed address cannot
    // alias anything; it is unmapped again if the filter let it through.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    let mmap_errno = Errno::last();
    if p != libc::MAP_FAILED {
        // SAFETY: the mapping made just above, 4096 bytes.
        unsafe { libc::munmap(p, 4096) };
    }
    assert_eq!(
        (p, mmap_errno),
        (libc::MAP_FAILED, Errno::EPERM),
        "mmap PROT_EXEC"
    );

    // Still working: threads (glibc falls back from clone3 to clone),
    // TCP and unix sockets, files.
    let t = std::thread::spawn(|| {
        std::fs::read_to_string("/proc/thread-self/status")
            .unwrap()
            .lines()
            .any(|l| l == "Seccomp:\t2")
    });
    assert!(t.join().unwrap(), "a new thread is filtered too");
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let _c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let _pair = std::os::unix::net::UnixStream::pair().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), b"x").unwrap();
    println!("seccomp probe: done");
}
