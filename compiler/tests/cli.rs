//! The `tlspolc` binary end to end: every sub-command and every exit code,
//! in temporary directories. Rules: T5, T6, T7, T11, T12, T15 (through
//! `explain` and `check`), T19 (through `verify`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_tlspolc");

const GOOD: &str = "policy serial 7

domain example.com {
    inbound tls required
    outbound tls required
    outbound servers 192.0.2.0/24
    exclude legacy.example.com
}

partner partner.example {
    outbound tls required
}
";

const WARNS: &str = "policy serial 8

domain example.net {
    inbound tls required
    validation relaxed
}
";

const BROKEN: &str = "policy serial 9

domain example.com {
    inbound tls sometimes
}
";

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("SOURCE_DATE_EPOCH")
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("good.tlspol"), GOOD).unwrap();
    std::fs::write(dir.path().join("warns.tlspol"), WARNS).unwrap();
    std::fs::write(dir.path().join("broken.tlspol"), BROKEN).unwrap();
    let o = run(dir.path(), &["keygen", "ci"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    dir
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &[][..],
        &["frobnicate"],
        &["check"],
        &["verify", "x.blob"],
        &["check", "--format", "xml", "a.tlspol"],
        &["fmt", "a", "--check", "--write"],
    ] {
        let o = run(dir.path(), args);
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
    }
    let o = run(dir.path(), &["--help"]);
    assert_eq!(code(&o), 0);
    let o = run(dir.path(), &["build", "--help"]);
    assert!(stdout(&o).contains("SOURCE_DATE_EPOCH"));
}

#[test]
fn check_exit_codes_and_formats() {
    let dir = setup();
    let d = dir.path();
    let o = run(d, &["check", "good.tlspol"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));

    // rule T15: relaxed validation draws a warning; fatal only when denied.
    let o = run(d, &["check", "warns.tlspol"]);
    assert_eq!(code(&o), 0);
    assert!(stdout(&o).contains("relaxed"), "{}", stdout(&o));
    let o = run(d, &["check", "--deny-warnings", "warns.tlspol"]);
    assert_eq!(code(&o), 1);

    let o = run(d, &["check", "good.tlspol", "broken.tlspol"]);
    assert_eq!(code(&o), 1);
    assert!(stdout(&o).contains("sometimes"), "{}", stdout(&o));
    assert!(
        !stdout(&o).contains('\u{1b}'),
        "no colour when not a terminal"
    );

    let o = run(
        d,
        &[
            "check",
            "--format",
            "json",
            "good.tlspol",
            "broken.tlspol",
            "warns.tlspol",
        ],
    );
    assert_eq!(code(&o), 1);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["ok"], false);
    let files = v["files"].as_array().unwrap();
    assert_eq!(files.len(), 3);
    assert_eq!(files[0]["ok"], true);
    assert_eq!(files[1]["ok"], false);
    let err = &files[1]["errors"][0];
    assert_eq!(err["severity"], "error");
    assert_eq!(err["line"], 4);
    assert_eq!(files[2]["warnings"][0]["severity"], "warning");

    let o = run(d, &["check", "missing.tlspol"]);
    assert_eq!(code(&o), 1);
}

#[test]
fn keygen_writes_private_key_0600_and_refuses_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(dir.path(), &["keygen", "site"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let key = dir.path().join("site.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let pubtext = std::fs::read_to_string(dir.path().join("site.pub")).unwrap();
    assert!(pubtext.starts_with("tlsgate-ed25519 "));
    let before = std::fs::read(&key).unwrap();
    let o = run(dir.path(), &["keygen", "site"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("refusing to overwrite"));
    assert_eq!(std::fs::read(&key).unwrap(), before);
}

#[test]
fn build_is_reproducible_and_refuses_errors() {
    let dir = setup();
    let d = dir.path();
    let o = run(
        d,
        &["build", "good.tlspol", "--key", "ci.key", "-o", "a.blob"],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = Command::new(BIN)
        .args(["build", "good.tlspol", "--key", "ci.key", "-o", "b.blob"])
        .current_dir(d)
        .env("SOURCE_DATE_EPOCH", "0")
        .output()
        .unwrap();
    assert_eq!(code(&o), 0);
    let a = std::fs::read(d.join("a.blob")).unwrap();
    assert_eq!(
        a,
        std::fs::read(d.join("b.blob")).unwrap(),
        "same input, same bytes"
    );
    assert_eq!(&a[..8], b"TLSGPOL\0");

    let o = run(
        d,
        &[
            "build",
            "good.tlspol",
            "--key",
            "ci.key",
            "-o",
            "c.blob",
            "--created",
            "1700000000",
        ],
    );
    assert_eq!(code(&o), 0);
    let header = policy::blob::read_header(&std::fs::read(d.join("c.blob")).unwrap()).unwrap();
    assert_eq!(header.created, 1_700_000_000);
    assert_eq!(header.serial, 7);

    let o = run(
        d,
        &["build", "broken.tlspol", "--key", "ci.key", "-o", "x.blob"],
    );
    assert_eq!(code(&o), 1);
    assert!(!d.join("x.blob").exists());
    let o = run(
        d,
        &[
            "build",
            "warns.tlspol",
            "--key",
            "ci.key",
            "-o",
            "w.blob",
            "--deny-warnings",
        ],
    );
    assert_eq!(code(&o), 1);
    assert!(!d.join("w.blob").exists());
    let o = run(
        d,
        &["build", "good.tlspol", "--key", "ci.pub", "-o", "k.blob"],
    );
    assert_eq!(code(&o), 1, "a public key is no signing key");
}

// rule T19: only authentic blobs verify.
#[test]
fn t19_verify_accepts_authentic_and_refuses_the_rest() {
    let dir = setup();
    let d = dir.path();
    assert_eq!(code(&run(d, &["keygen", "other"])), 0);
    assert_eq!(
        code(&run(
            d,
            &["build", "good.tlspol", "--key", "ci.key", "-o", "p.blob"]
        )),
        0
    );
    let o = run(d, &["verify", "p.blob", "--pubkey", "ci.pub"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("serial 7"));
    let o = run(
        d,
        &[
            "verify",
            "p.blob",
            "--pubkey",
            "other.pub",
            "--pubkey",
            "ci.pub",
        ],
    );
    assert_eq!(code(&o), 0);

    let o = run(d, &["verify", "p.blob", "--pubkey", "other.pub"]);
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).contains("not among the trusted keys"),
        "{}",
        stderr(&o)
    );
    assert_eq!(stderr(&o).lines().count(), 1);

    let mut bytes = std::fs::read(d.join("p.blob")).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(d.join("t.blob"), &bytes).unwrap();
    let o = run(d, &["verify", "t.blob", "--pubkey", "ci.pub"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("signature"), "{}", stderr(&o));

    std::fs::write(d.join("short.blob"), &bytes[..30]).unwrap();
    let o = run(d, &["verify", "short.blob", "--pubkey", "ci.pub"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("truncated"));

    let o = run(d, &["verify", "good.tlspol", "--pubkey", "ci.pub"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("bad magic"));
}

#[test]
fn inspect_says_whether_it_verified() {
    let dir = setup();
    let d = dir.path();
    assert_eq!(
        code(&run(
            d,
            &["build", "good.tlspol", "--key", "ci.key", "-o", "p.blob"]
        )),
        0
    );
    let o = run(d, &["inspect", "p.blob"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["verified"], false);
    assert!(v["note"].as_str().unwrap().contains("NOT VERIFIED"));
    assert_eq!(v["header"]["serial"], 7);
    assert_eq!(v["header"]["format_version"], 1);
    assert_eq!(v["header"]["key_id"].as_str().unwrap().len(), 16);
    assert_eq!(v["policy"]["domains"][0]["name"], "example.com");

    let o = run(d, &["inspect", "p.blob", "--pubkey", "ci.pub"]);
    assert_eq!(code(&o), 0);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["verified"], true);

    assert_eq!(code(&run(d, &["keygen", "other"])), 0);
    let o = run(d, &["inspect", "p.blob", "--pubkey", "other.pub"]);
    assert_eq!(code(&o), 1);
}

#[test]
fn explain_uses_the_decision_function() {
    let dir = setup();
    let d = dir.path();
    // rule T11 + T7: a sub-domain of an enforcing domain.
    let o = run(
        d,
        &[
            "explain",
            "good.tlspol",
            "--from",
            "a@x.example",
            "--to",
            "u@mail.example.com",
            "--received-over",
            "clear",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("rule        T7"), "{out}");
    assert!(out.contains("T11"), "{out}");
    assert!(out.contains("tls         required"), "{out}");
    assert!(out.contains("matched     example.com"), "{out}");

    // rule T12: the excluded sub-domain falls back to the mirror rules.
    let o = run(
        d,
        &[
            "explain",
            "good.tlspol",
            "--from",
            "a@x.example",
            "--to",
            "u@legacy.example.com",
            "--received-over",
            "clear",
            "--format",
            "json",
        ],
    );
    assert_eq!(code(&o), 0);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["decision"]["rule"], "T3");
    assert_eq!(v["decision"]["trail"], serde_json::json!(["T12"]));
    assert_eq!(v["decision"]["plan"]["tls"], "none");

    // rule T6: a stranger cannot relay to an unregistered domain.
    let o = run(
        d,
        &[
            "explain",
            "good.tlspol",
            "--from",
            "a@x.example",
            "--to",
            "u@partner.example",
            "--format",
            "json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["decision"]["rule"], "T6");
    assert_eq!(v["refused"], true);

    // rule T5: from the domain's outbound server to the partner, from a blob.
    assert_eq!(
        code(&run(
            d,
            &["build", "good.tlspol", "--key", "ci.key", "-o", "p.blob"]
        )),
        0
    );
    let o = run(
        d,
        &[
            "explain",
            "p.blob",
            "--from",
            "a@example.com",
            "--to",
            "u@partner.example",
            "--client-ip",
            "192.0.2.25",
            "--pubkey",
            "ci.pub",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("rule        T5"), "{out}");
    assert!(out.contains("verified"), "{out}");
    assert!(out.contains("TLS required before MAIL: yes"), "{out}");
    let o = run(
        d,
        &[
            "explain",
            "p.blob",
            "--from",
            "a@example.com",
            "--to",
            "u@partner.example",
        ],
    );
    assert!(stdout(&o).contains("NOT VERIFIED"));

    let o = run(
        d,
        &[
            "explain",
            "broken.tlspol",
            "--from",
            "a@b.example",
            "--to",
            "u@example.com",
        ],
    );
    assert_eq!(code(&o), 1);
    let o = run(
        d,
        &[
            "explain",
            "good.tlspol",
            "--from",
            "a@b.example",
            "--to",
            "not-an-address",
        ],
    );
    assert_eq!(code(&o), 2);
}

#[test]
fn fmt_prints_checks_and_writes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("messy.tlspol"),
        "policy   serial 3\ndomain Example.COM {\ninbound tls required\n}\n",
    )
    .unwrap();
    let o = run(d, &["fmt", "messy.tlspol"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let canonical = stdout(&o);
    let o = run(d, &["fmt", "--check", "messy.tlspol"]);
    assert_eq!(code(&o), 1);
    let o = run(d, &["fmt", "--write", "messy.tlspol"]);
    assert_eq!(code(&o), 0);
    assert_eq!(
        std::fs::read_to_string(d.join("messy.tlspol")).unwrap(),
        canonical
    );
    let o = run(d, &["fmt", "--check", "messy.tlspol"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    std::fs::write(d.join("bad.tlspol"), "policy serial\n{{{\n").unwrap();
    assert_eq!(code(&run(d, &["fmt", "bad.tlspol"])), 1);
}
