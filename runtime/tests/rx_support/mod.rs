//! Shared helpers of the `rx_*` tests: test policies, signing keys, a
//! server on loopback with an in-memory sink, an SMTP client.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use policy::blob::{PublicKey, SigningKey};
use policy::{Domain, DomainDetails, DomainName, Enforcement, IpNet, Policy, Settings};
use tlsgate::policy_store::PolicyHandle;
use tlsgate::server::{Gate, MemorySink, Server, ServerLimits, SessionConfig};
use tlsgate::tools::client::Client;
use tokio::sync::watch;

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A registered domain; `outbound` lists its outbound servers, and
/// `outbound_required` switches on outbound enforcement (T4).
pub fn domain(name: &str, outbound: &[&str], outbound_required: bool) -> Domain {
    let mut details = DomainDetails::default();
    for net in outbound {
        details
            .outbound_servers
            .push(IpNet::parse(net).unwrap())
            .unwrap();
    }
    Domain {
        name: DomainName::parse(name).unwrap(),
        settings: outbound_required.then(|| {
            Box::new(Settings {
                outbound: Enforcement::Required,
                ..Settings::default()
            })
        }),
        details: (!outbound.is_empty()).then(|| Box::new(details)),
    }
}

pub fn policy(serial: u64, mut domains: Vec<Domain>) -> Policy {
    domains.sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
    let mut p = Policy::empty(serial);
    p.domains = domains;
    p
}

pub struct Signer {
    pub key: SigningKey,
    pub public: PublicKey,
}

impl Signer {
    pub fn new() -> Signer {
        let key = SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().unwrap()).unwrap();
        let public = key.public_key();
        Signer { key, public }
    }

    pub fn sign(&self, p: &Policy) -> Vec<u8> {
        policy::blob::sign(p, 1_700_000_000, &self.key).unwrap()
    }
}

pub fn tls_server_config() -> Arc<rustls::ServerConfig> {
    let (cert, key) = tlsgate::identity::self_signed("gw.test").unwrap();
    tlsgate::identity::server_config(cert.as_bytes(), key.as_bytes(), "test").unwrap()
}

pub fn tls_client_config() -> Arc<rustls::ClientConfig> {
    tlsgate::tools::danger::accept_any_certificate().unwrap()
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub sink: MemorySink,
    pub server: Server,
    pub stop: watch::Sender<bool>,
}

pub fn session_config() -> SessionConfig {
    SessionConfig {
        hostname: "gw.test".into(),
        ..SessionConfig::default()
    }
}

/// A server with TLS, the given gate and limits, on `127.0.0.1:0`.
pub async fn start_with(gate: Gate, session: SessionConfig, limits: ServerLimits) -> TestServer {
    let sink = MemorySink::keeping();
    let server = Server::new(
        session,
        limits,
        gate,
        Arc::new(sink.clone()),
        Some(tls_server_config()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = watch::channel(false);
    let s = server.clone();
    tokio::spawn(async move { s.serve(listener, rx).await });
    TestServer {
        addr,
        sink,
        server,
        stop,
    }
}

pub async fn start(policy: Policy) -> TestServer {
    start_with(
        Gate::Policy(PolicyHandle::fixed(policy)),
        session_config(),
        ServerLimits::default(),
    )
    .await
}

/// Connects (from `from`, when given), reads the banner, says EHLO.
pub async fn connect(addr: SocketAddr, from: Option<&str>) -> (Client, String) {
    let mut c = Client::connect(addr, from.map(ip)).await.unwrap();
    let banner = c.read_reply().await.unwrap();
    assert_eq!(banner.code, 220, "{banner:?}");
    let ehlo = c.command("EHLO client.test").await.unwrap();
    assert_eq!(ehlo.code, 250, "{ehlo:?}");
    (c, ehlo.text)
}

/// STARTTLS and a new EHLO.
pub async fn starttls(c: Client) -> (Client, String) {
    let mut c = c.starttls("gw.test", tls_client_config()).await.unwrap();
    let ehlo = c.command("EHLO client.test").await.unwrap();
    assert_eq!(ehlo.code, 250);
    (c, ehlo.text)
}

pub const BODY: &[u8] = b"From: <a@sender.test>\r\nSubject: test\r\n\r\nhello\r\n";

/// Reads until the server closes the connection; true if it did.
pub async fn closed(c: &mut Client) -> bool {
    for _ in 0..10 {
        match tokio::time::timeout(Duration::from_secs(30), c.read_reply()).await {
            Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
    false
}

pub fn write_file(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}
