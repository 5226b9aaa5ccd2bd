//! Shared helpers of the `hostile_load` and `hostile_blob` tests: the
//! relay as a child process (`tlsgate run`, the real binary) with a signed
//! policy routing `example.test` to a next-hop sink in the test process,
//! its JSON log read line by line, its memory read from `/proc`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::rx_support::{write_file, Signer};

/// Compiles `.tlspol` text with the real compiler.
pub fn compile(dir: &Path, src: &str) -> policy::Policy {
    std::fs::write(dir.join("policy.tlspol"), src).unwrap();
    match tlspolc::compile_str("policy.tlspol", src, dir) {
        Ok(c) => c.policy,
        Err(f) => panic!(
            "policy does not compile: {:?}",
            f.errors.iter().map(|d| d.to_string()).collect::<Vec<_>>()
        ),
    }
}

/// `example.test` delivered to the next hop at `127.0.0.1:port`, plus
/// `extra` domains (same route).
pub fn routed_policy(dir: &Path, serial: u64, port: u16, extra: &[&str]) -> policy::Policy {
    let mut src = format!(
        "policy serial {serial}\n\ndomain example.test {{\n    trusted names mx.example.test\n    deliver static 127.0.0.1:{port}\n}}\n"
    );
    for d in extra {
        src.push_str(&format!(
            "\ndomain {d} {{\n    trusted names mx.example.test\n    deliver static 127.0.0.1:{port}\n}}\n"
        ));
    }
    compile(dir, &src)
}

/// Raises this process's soft `RLIMIT_NOFILE` to the hard limit (the
/// child relay inherits it). Returns the new soft limit.
#[allow(unsafe_code)]
pub fn raise_nofile() -> libc::rlim_t {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct passed by
    // reference; there is no other way to this without a new dependency.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    lim.rlim_cur
}

/// What the relay logged (JSON lines on stderr).
#[derive(Default)]
pub struct LogState {
    /// Number of lines per `message`.
    pub counts: HashMap<String, usize>,
    /// Every line except the per-session ones.
    pub lines: Vec<serde_json::Value>,
    pub listen: Option<SocketAddr>,
    pub closed: bool,
}

#[derive(Default)]
pub struct Log {
    state: Mutex<LogState>,
    changed: Condvar,
}

impl Log {
    pub fn count(&self, message: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .counts
            .get(message)
            .copied()
            .unwrap_or(0)
    }

    /// Lines whose `message` is `message`.
    pub fn lines_of(&self, message: &str) -> Vec<serde_json::Value> {
        self.state
            .lock()
            .unwrap()
            .lines
            .iter()
            .filter(|l| l["message"] == message)
            .cloned()
            .collect()
    }

    /// Blocks until `f` holds (true) or `limit` passed (false).
    pub fn wait_until(&self, limit: Duration, f: impl Fn(&LogState) -> bool) -> bool {
        let end = Instant::now() + limit;
        let mut g = self.state.lock().unwrap();
        loop {
            if f(&g) {
                return true;
            }
            let now = Instant::now();
            if now >= end || g.closed {
                return f(&g);
            }
            g = self.changed.wait_timeout(g, end - now).unwrap().0;
        }
    }

    fn push(&self, line: &str) {
        let v: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(_) => serde_json::json!({ "message": line }),
        };
        let msg = v["message"].as_str().unwrap_or("").to_string();
        let mut g = self.state.lock().unwrap();
        if msg == "SMTP listening" {
            g.listen = v["listen"].as_str().and_then(|s| s.parse().ok());
        }
        *g.counts.entry(msg.clone()).or_insert(0) += 1;
        if msg != "session opened" && msg != "session closed" {
            g.lines.push(v);
        }
        drop(g);
        self.changed.notify_all();
    }
}

/// A relay running as a child process; killed when dropped.
pub struct ChildRelay {
    pub child: Child,
    pub pid: u32,
    pub addr: SocketAddr,
    pub log: Arc<Log>,
    pub policy_path: PathBuf,
    pub spool_dir: PathBuf,
}

/// Starts `tlsgate run` in `dir` with `blob` as its policy, trusting
/// `signer`; `limits` are extra lines of the `[limits]` table.
pub fn start_child(dir: &Path, signer: &Signer, blob: &[u8], limits: &str) -> ChildRelay {
    let policy_path = dir.join("policy.blob");
    write_file(&policy_path, blob);
    let cfg = dir.join("tlsgate.toml");
    std::fs::write(
        &cfg,
        format!(
            "hostname = \"gw.test\"\nlisten = [\"127.0.0.1:0\"]\nspool_dir = \"{d}/spool\"\nstate_dir = \"{d}/state\"\npolicy = \"{d}/policy.blob\"\ntrusted_keys = [\"{k}\"]\nallow_root = true\n[limits]\nshutdown_grace_secs = 2\n{limits}\n",
            d = dir.display(),
            k = signer.public.to_text().trim()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tlsgate"))
        .args(["--log-format", "json", "run", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let log = Arc::new(Log::default());
    let stderr = child.stderr.take().unwrap();
    {
        let log = log.clone();
        std::thread::spawn(move || {
            let mut r = std::io::BufReader::new(stderr);
            let mut line = String::new();
            loop {
                line.clear();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => log.push(line.trim_end()),
                }
            }
            log.state.lock().unwrap().closed = true;
            log.changed.notify_all();
        });
    }
    let up = log.wait_until(Duration::from_secs(60), |s| s.listen.is_some());
    if !up {
        let _ = child.kill();
        let _ = child.wait();
        let lines: Vec<String> = log
            .state
            .lock()
            .unwrap()
            .lines
            .iter()
            .map(|l| l.to_string())
            .collect();
        panic!("the relay did not start listening: {lines:#?}");
    }
    let addr = log.state.lock().unwrap().listen.unwrap();
    ChildRelay {
        child,
        pid,
        addr,
        log,
        policy_path,
        spool_dir: dir.join("spool"),
    }
}

impl ChildRelay {
    /// Still running (never exited or restarted).
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn hangup(&self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap();
    }

    /// `VmRSS` / `VmHWM` in KiB and the number of open descriptors.
    pub fn memory(&self) -> Memory {
        memory_of(self.pid)
    }

    /// SIGTERM, then waits (SIGKILL after `limit`); true if it exited
    /// cleanly on its own.
    pub fn stop(mut self, limit: Duration) -> bool {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for ChildRelay {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub fds: usize,
    /// Descriptors that are sockets (connections, listeners).
    pub sockets: usize,
    /// When sampled: seconds since an arbitrary fixed point.
    pub at: f64,
}

/// The `Message-ID` header values of the messages a next hop received.
pub fn message_ids(messages: &[Vec<u8>]) -> Vec<String> {
    messages
        .iter()
        .filter_map(|m| {
            let text = String::from_utf8_lossy(m);
            let head = text.split("\r\n\r\n").next().unwrap_or("");
            head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("message-id")
                    .then(|| v.trim().to_string())
            })
        })
        .collect()
}

static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// `VmRSS` / `VmHWM` in KiB and the number of open descriptors of `pid`.
pub fn memory_of(pid: u32) -> Memory {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l[key.len()..].split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let (mut fds, mut sockets) = (0, 0);
    if let Ok(d) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in d.flatten() {
            fds += 1;
            if std::fs::read_link(e.path())
                .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
            {
                sockets += 1;
            }
        }
    }
    Memory {
        rss_kib: kib("VmRSS:"),
        hwm_kib: kib("VmHWM:"),
        fds,
        sockets,
        at: EPOCH.get_or_init(Instant::now).elapsed().as_secs_f64(),
    }
}

/// Waits (hang guard only: 120 s) until the next hop has every id in
/// `ids`; returns how often each id arrived.
pub async fn wait_delivered(
    hop: &crate::tx_support::smtp::Server,
    ids: &[String],
) -> std::collections::BTreeMap<String, usize> {
    let mut seen = std::collections::BTreeMap::new();
    let mut scanned = 0;
    for _ in 0..2400 {
        let fresh: Vec<Vec<u8>> = {
            let s = hop.seen.lock().unwrap();
            s.messages[scanned..].to_vec()
        };
        scanned += fresh.len();
        for id in message_ids(&fresh) {
            *seen.entry(id).or_insert(0) += 1;
        }
        if ids.iter().all(|id| seen.contains_key(id)) {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let missing: Vec<&String> = ids.iter().filter(|id| !seen.contains_key(*id)).collect();
    panic!(
        "{} acknowledged messages never reached the next hop: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
}
