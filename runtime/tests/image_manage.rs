#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The appliance's management listener over real TLS on loopback: token
//! authentication, `status`, and `policy push` refusing unsigned, tampered,
//! wrongly-keyed and older blobs while the policy in force stays (T19,
//! T20), and taking a newer one (T21: no restart needed).

use std::path::Path;
use std::sync::Arc;

use policy::blob::{sign, SigningKey};
use tlsgate::manage::protocol::{GREETING, VERSION};
use tlsgate::manage::server::{context, serve, tls_acceptor, Args};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;

const TOKEN: &str = "0123456789abcdef0123";

fn key() -> SigningKey {
    SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().unwrap()).unwrap()
}

fn blob(serial: u64, key: &SigningKey) -> Vec<u8> {
    let src =
        format!("policy serial {serial}\n\ndomain example.com {{\n    inbound tls required\n}}\n");
    let compiled = tlspolc::compile_str("test.tlspol", &src, Path::new("."))
        .unwrap_or_else(|f| panic!("{:?}", f.errors));
    sign(&compiled.policy, 0, key).unwrap()
}

struct Appliance {
    addr: std::net::SocketAddr,
    ca: rustls::pki_types::CertificateDer<'static>,
    policy: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn start(trusted: &SigningKey, initial: Option<Vec<u8>>) -> Appliance {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let made = rcgen::generate_simple_self_signed(vec!["appliance.test".to_string()]).unwrap();
    std::fs::write(d.join("cert.pem"), made.cert.pem()).unwrap();
    std::fs::write(d.join("key.pem"), made.signing_key.serialize_pem()).unwrap();
    std::fs::write(d.join("token"), format!("{TOKEN}\n")).unwrap();
    std::fs::write(
        d.join("keys"),
        format!("{}\n", trusted.public_key().to_text()),
    )
    .unwrap();
    let policy = d.join("policy.blob");
    if let Some(b) = initial {
        std::fs::write(&policy, b).unwrap();
    }
    let args = Args {
        listen: "127.0.0.1:0".parse().unwrap(),
        token_file: d.join("token"),
        policy: policy.clone(),
        trusted_keys: d.join("keys"),
        tls_cert: Some(d.join("cert.pem")),
        tls_key: Some(d.join("key.pem")),
        state_dir: d.to_path_buf(),
        spool_dir: None,
        relay_pid_file: None,
        relay_config: None,
    };
    let (acceptor, _fp) = tls_acceptor(&args).unwrap();
    let listener = TcpListener::bind(args.listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let ctx = Arc::new(context(args).unwrap());
    tokio::spawn(serve(listener, acceptor, ctx));
    Appliance {
        addr,
        ca: made.cert.der().clone(),
        policy,
        _dir: dir,
    }
}

async fn request(a: &Appliance, token: &str, line: &str, body: &[u8]) -> String {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(a.ca.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(a.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("appliance.test").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let mut out = format!("{GREETING} {VERSION} {token}\n{line}\n").into_bytes();
    out.extend_from_slice(body);
    tls.write_all(&out).await.unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    String::from_utf8(answer).unwrap()
}

async fn push(a: &Appliance, b: &[u8]) -> String {
    request(a, TOKEN, &format!("policy push {}", b.len()), b).await
}

fn last(s: &str) -> &str {
    s.lines().last().unwrap_or("")
}

#[tokio::test]
async fn wrong_token_is_refused() {
    let k = key();
    let a = start(&k, Some(blob(1, &k))).await;
    let answer = request(&a, "not-the-token-at-all", "status", b"").await;
    assert_eq!(last(&answer), "error: authentication failed");
    assert!(!answer.contains("policy serial"));
}

#[tokio::test]
async fn t19_bad_blobs_are_refused_and_the_policy_in_force_stays() {
    // rule T19
    let k = key();
    let good = blob(5, &k);
    let a = start(&k, Some(good.clone())).await;
    let status = request(&a, TOKEN, "status", b"").await;
    assert!(status.lines().any(|l| l == "policy serial 5"), "{status}");

    let unsigned = vec![0x42u8; 300];
    let mut tampered = blob(6, &k);
    let n = tampered.len();
    tampered[n / 2] ^= 1;
    let truncated = blob(6, &k)[..100].to_vec();
    let wrong_key = blob(6, &key());
    for (what, b) in [
        ("unsigned", unsigned),
        ("tampered", tampered),
        ("truncated", truncated),
        ("wrong key", wrong_key),
    ] {
        let answer = push(&a, &b).await;
        assert!(
            last(&answer).starts_with("error: policy refused"),
            "{what}: {answer}"
        );
        assert_eq!(
            std::fs::read(&a.policy).unwrap(),
            good,
            "{what} reached the disk"
        );
    }
    let status = request(&a, TOKEN, "status", b"").await;
    assert!(status.lines().any(|l| l == "policy serial 5"), "{status}");
}

#[tokio::test]
async fn t20_older_serial_is_refused_newer_is_taken() {
    // rule T20, rule T21
    let k = key();
    let a = start(&k, Some(blob(5, &k))).await;
    let answer = push(&a, &blob(4, &k)).await;
    assert!(
        last(&answer).contains("serial 4 is lower than the serial 5"),
        "{answer}"
    );
    let answer = push(&a, &blob(5, &k)).await;
    assert!(last(&answer).starts_with("ok"), "identical blob: {answer}");
    let answer = push(&a, &blob(7, &k)).await;
    assert_eq!(last(&answer), "ok policy serial 7 installed (was 5)");
    let status = request(&a, TOKEN, "status", b"").await;
    assert!(status.lines().any(|l| l == "policy serial 7"), "{status}");
}

#[tokio::test]
async fn first_policy_can_be_pushed_to_an_empty_appliance() {
    let k = key();
    let a = start(&k, None).await;
    let status = request(&a, TOKEN, "status", b"").await;
    assert!(status.lines().any(|l| l == "policy none"), "{status}");
    let answer = push(&a, &blob(1, &k)).await;
    assert_eq!(last(&answer), "ok policy serial 1 installed");
}
