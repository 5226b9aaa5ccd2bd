//! A man in the middle between the relay and a next hop, for the
//! STARTTLS-stripping tests: it passes SMTP through line by line and
//! attacks STARTTLS. Every byte it gets from the relay (and, when it
//! terminates TLS itself, every decrypted byte) is recorded, so a test can
//! prove that nothing of the message passed through it readably.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::pki::Leaf;

/// What the man in the middle does to STARTTLS.
#[derive(Clone)]
pub enum Attack {
    /// Nothing: STARTTLS is forwarded and the TLS bytes piped through
    /// (the control case: delivery must work through the proxy).
    None,
    /// Removes STARTTLS from the next hop's EHLO reply.
    StripFromEhlo,
    /// Answers STARTTLS itself with this reply; the next hop never sees it.
    RefuseStarttls(&'static str),
    /// Answers STARTTLS with `220` itself and completes the handshake with
    /// its own certificate; what it decrypts goes on to the next hop in
    /// clear.
    OwnCertificate(Leaf),
}

#[derive(Clone)]
pub struct Mitm {
    pub addr: SocketAddr,
    /// Bytes the relay sent that the proxy could read (clear text and
    /// what it decrypted).
    readable: Arc<Mutex<Vec<u8>>>,
}

impl Mitm {
    /// Whether `needle` appeared in what the proxy could read.
    pub fn read(&self, needle: &str) -> bool {
        let r = self.readable.lock().unwrap();
        String::from_utf8_lossy(&r).contains(needle)
    }
}

trait Rw: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Rw for T {}

/// Starts a proxy on 127.0.0.1 in front of `upstream`.
pub async fn start(upstream: SocketAddr, attack: Attack) -> Mitm {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let readable = Arc::new(Mutex::new(Vec::new()));
    let r = readable.clone();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let (attack, r) = (attack.clone(), r.clone());
            tokio::spawn(async move {
                let _ = relay(client, upstream, &attack, &r).await;
            });
        }
    });
    Mitm { addr, readable }
}

/// One line (with its CRLF) from `s`, buffered in `buf`.
async fn line(s: &mut Box<dyn Rw>, buf: &mut Vec<u8>) -> std::io::Result<Option<Vec<u8>>> {
    loop {
        if let Some(i) = buf.iter().position(|b| *b == b'\n') {
            return Ok(Some(buf.drain(..=i).collect()));
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A whole (possibly multi-line) reply.
async fn reply(s: &mut Box<dyn Rw>, buf: &mut Vec<u8>) -> std::io::Result<Vec<Vec<u8>>> {
    let mut lines = Vec::new();
    while let Some(l) = line(s, buf).await? {
        let last = l.get(3) != Some(&b'-');
        lines.push(l);
        if last {
            break;
        }
    }
    Ok(lines)
}

/// The reply without its STARTTLS line, continuation marks repaired.
fn strip_starttls(lines: Vec<Vec<u8>>) -> Vec<u8> {
    let kept: Vec<Vec<u8>> = lines
        .into_iter()
        .filter(|l| {
            !String::from_utf8_lossy(l)
                .to_ascii_uppercase()
                .contains("STARTTLS")
        })
        .collect();
    let mut out = Vec::new();
    for (i, mut l) in kept.iter().cloned().enumerate() {
        if l.len() > 3 {
            l[3] = if i + 1 == kept.len() { b' ' } else { b'-' };
        }
        out.extend_from_slice(&l);
    }
    out
}

async fn relay(
    client: TcpStream,
    upstream: SocketAddr,
    attack: &Attack,
    readable: &Mutex<Vec<u8>>,
) -> std::io::Result<()> {
    let mut c: Box<dyn Rw> = Box::new(client);
    let mut u: Box<dyn Rw> = Box::new(TcpStream::connect(upstream).await?);
    let (mut cbuf, mut ubuf) = (Vec::new(), Vec::new());
    let banner = reply(&mut u, &mut ubuf).await?.concat();
    c.write_all(&banner).await?;
    let mut in_data = false;
    while let Some(l) = line(&mut c, &mut cbuf).await? {
        readable.lock().unwrap().extend_from_slice(&l);
        let cmd = String::from_utf8_lossy(&l).trim_end().to_ascii_uppercase();
        if in_data {
            u.write_all(&l).await?;
            if cmd == "." {
                in_data = false;
                let r = reply(&mut u, &mut ubuf).await?.concat();
                c.write_all(&r).await?;
            }
            continue;
        }
        if cmd == "STARTTLS" {
            match attack {
                Attack::RefuseStarttls(text) => {
                    c.write_all(format!("{text}\r\n").as_bytes()).await?;
                    continue;
                }
                Attack::OwnCertificate(leaf) => {
                    c.write_all(b"220 2.0.0 ready to start TLS\r\n").await?;
                    let config = ServerConfig::builder_with_provider(Arc::new(
                        rustls::crypto::ring::default_provider(),
                    ))
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_no_client_auth()
                    .with_single_cert(leaf.chain.clone(), leaf.key.clone_key())
                    .unwrap();
                    let tls = TlsAcceptor::from(Arc::new(config)).accept(c).await?;
                    c = Box::new(tls);
                    cbuf.clear();
                    // The relay must say EHLO again; the next hop (still
                    // in clear) answers it.
                    continue;
                }
                Attack::None | Attack::StripFromEhlo => {
                    u.write_all(&l).await?;
                    let r = reply(&mut u, &mut ubuf).await?;
                    let ok = r.last().is_some_and(|l| l.starts_with(b"220"));
                    c.write_all(&r.concat()).await?;
                    if ok {
                        // TLS end to end: only opaque bytes from here on.
                        u.write_all(&cbuf).await?;
                        c.write_all(&ubuf).await?;
                        tokio::io::copy_bidirectional(&mut c, &mut u).await?;
                        return Ok(());
                    }
                    continue;
                }
            }
        }
        u.write_all(&l).await?;
        let r = reply(&mut u, &mut ubuf).await?;
        let hello = cmd.starts_with("EHLO");
        let out = if hello && matches!(attack, Attack::StripFromEhlo) {
            strip_starttls(r)
        } else {
            r.concat()
        };
        if cmd == "DATA" && out.starts_with(b"354") {
            in_data = true;
        }
        c.write_all(&out).await?;
    }
    Ok(())
}
