#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The relay binary drops root after binding its ports: `user = "nobody"`
//! gives a process whose real, effective, saved and filesystem ids are
//! nobody's, with no supplementary groups and `NoNewPrivs: 1`; started as
//! root without `user` (and without `allow_root`) it refuses to run.
//! Only meaningful when the test runs as root (it does here and in CI).

mod rx_support;

use std::process::{Command, Stdio};
use std::time::Duration;

use rx_support::*;

fn config_text(dir: &std::path::Path, signer: &Signer, extra: &str) -> String {
    format!(
        "hostname = \"gw.test\"\nlisten = [\"127.0.0.1:0\"]\nspool_dir = \"{d}/spool\"\nstate_dir = \"{d}/state\"\npolicy = \"{d}/policy.blob\"\ntrusted_keys = [\"{k}\"]\n{extra}\n",
        d = dir.display(),
        k = signer.public.to_text().trim()
    )
}

fn status_line(pid: u32, key: &str) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with(key)).map(|l| {
        l[key.len()..]
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    })
}

#[test]
fn root_is_dropped_to_the_configured_user_with_no_new_privs() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("not root: nothing to drop, skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The tempdir must be reachable for nobody (the policy is read later).
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let signer = Signer::new();
    std::fs::write(
        dir.path().join("policy.blob"),
        signer.sign(&policy(1, vec![domain("example.com", &[], false)])),
    )
    .unwrap();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();

    // Root without `user`: refused.
    let cfg = dir.path().join("root.toml");
    std::fs::write(&cfg, config_text(dir.path(), &signer, "")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tlsgate"))
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs `user`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let cfg = dir.path().join("tlsgate.toml");
    std::fs::write(&cfg, config_text(dir.path(), &signer, "user = \"nobody\"")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tlsgate"))
        .args(["run", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut seen = None;
    for _ in 0..200 {
        if let Some(uid) = status_line(pid, "Uid:") {
            if uid != "0 0 0 0" {
                seen = Some(uid);
                break;
            }
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let n = nobody.uid.as_raw();
    let g = nobody.gid.as_raw();
    let result = (
        seen,
        status_line(pid, "Gid:"),
        status_line(pid, "Groups:"),
        status_line(pid, "NoNewPrivs:"),
        // Every thread, not just the main one.
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|d| {
                d.filter_map(|e| e.ok()).all(|e| {
                    let s = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
                    s.lines()
                        .any(|l| l.starts_with("NoNewPrivs:") && l.ends_with('1'))
                })
            })
            .unwrap_or(false),
    );
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        result,
        (
            Some(format!("{n} {n} {n} {n}")),
            Some(format!("{g} {g} {g} {g}")),
            Some(String::new()),
            Some("1".into()),
            true
        )
    );
    // The spool and state directories were handed to nobody.
    use std::os::unix::fs::MetadataExt;
    for d in ["spool", "state"] {
        assert_eq!(
            std::fs::metadata(dir.path().join(d)).unwrap().uid(),
            n,
            "{d}"
        );
    }
}
