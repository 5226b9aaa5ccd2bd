//! Next-hop SMTP servers for the tests: small tokio servers with and
//! without STARTTLS, and misbehaving ones (bytes injected after the `220`
//! to STARTTLS, dripped replies, endless multi-line replies, a hang after
//! DATA). Every line received (also inside TLS) is recorded.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::pki::Leaf;

/// How the server behaves.
#[derive(Clone, Default)]
pub struct Behaviour {
    /// Offer STARTTLS with this certificate.
    pub tls: Option<Leaf>,
    /// Answer STARTTLS with this line instead of `220`.
    pub starttls_reply: Option<&'static str>,
    /// Send a line right after the `220` to STARTTLS.
    pub inject_after_220: bool,
    /// After the `220` to STARTTLS, send garbage instead of a TLS handshake.
    pub garbage_handshake: bool,
    /// Refuse EHLO with 500 (the client must fall back to HELO).
    pub refuse_ehlo: bool,
    /// Answer EHLO with an endless multi-line reply.
    pub endless_ehlo: bool,
    /// Send every reply one byte at a time, slowly.
    pub drip: bool,
    /// Never answer the end of data.
    pub hang_after_data: bool,
    /// The reply to MAIL (default `250`).
    pub mail_reply: Option<&'static str>,
    /// Per-recipient RCPT replies (default `250`).
    pub rcpt_replies: Vec<(&'static str, &'static str)>,
    /// Banner line (default `220 mx.test ESMTP`).
    pub banner: Option<&'static str>,
    /// Advertise PIPELINING; DATA without an accepted recipient is then
    /// answered `554` (as RFC 2920 servers do), MAIL refused → `503`s.
    pub pipelining: bool,
    /// With `pipelining`: answer DATA with `354` even when no recipient
    /// was accepted (a sloppy server).
    pub data_354_without_rcpt: bool,
}

/// What the server saw.
#[derive(Default, Debug)]
pub struct Seen {
    pub connections: usize,
    /// Every command line received, in order, across connections.
    pub lines: Vec<String>,
    /// Message bodies received (dot-unstuffed, without the final dot).
    pub messages: Vec<Vec<u8>>,
    /// Whether each completed message came over TLS.
    pub message_over_tls: Vec<bool>,
    /// SNI of each TLS handshake that completed.
    pub sni: Vec<Option<String>>,
    /// The command lines completed by each read from the socket, in order
    /// (lines of a message body are not recorded): commands sent in one
    /// write arrive as one group.
    pub reads: Vec<Vec<String>>,
}

#[derive(Clone)]
pub struct Server {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Seen>>,
}

impl Server {
    pub fn seen_command(&self, prefix: &str) -> bool {
        let p = prefix.to_ascii_uppercase();
        self.seen
            .lock()
            .unwrap()
            .lines
            .iter()
            .any(|l| l.to_ascii_uppercase().starts_with(&p))
    }
    pub fn messages(&self) -> Vec<Vec<u8>> {
        self.seen.lock().unwrap().messages.clone()
    }
    /// The groups of command lines that arrived in one read.
    pub fn reads(&self) -> Vec<Vec<String>> {
        self.seen.lock().unwrap().reads.clone()
    }
    pub fn connections(&self) -> usize {
        self.seen.lock().unwrap().connections
    }
    /// True when `needle` appears anywhere in what the server received.
    pub fn received_text(&self, needle: &str) -> bool {
        let s = self.seen.lock().unwrap();
        s.lines.iter().any(|l| l.contains(needle))
            || s.messages
                .iter()
                .any(|m| String::from_utf8_lossy(m).contains(needle))
    }
}

/// Starts a server on `bind` (`127.0.0.1:0` or a fixed address).
pub async fn start(bind: &str, b: Behaviour) -> Server {
    let listener = TcpListener::bind(bind).await.unwrap();
    serve(listener, b)
}

pub fn serve(listener: TcpListener, b: Behaviour) -> Server {
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let acceptor = b.tls.as_ref().map(|leaf| {
        let config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(leaf.chain.clone(), leaf.key.clone_key())
                .unwrap();
        TlsAcceptor::from(Arc::new(config))
    });
    let s = seen.clone();
    let b = Arc::new(b);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            s.lock().unwrap().connections += 1;
            let (b, s, acceptor) = (b.clone(), s.clone(), acceptor.clone());
            tokio::spawn(async move {
                let _ = session(stream, &b, &s, acceptor).await;
            });
        }
    });
    Server { addr, seen }
}

trait Rw: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Rw for T {}

async fn say(s: &mut Box<dyn Rw>, b: &Behaviour, text: &str) -> std::io::Result<()> {
    if b.drip {
        for byte in text.as_bytes() {
            s.write_all(&[*byte]).await?;
            s.flush().await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    } else {
        s.write_all(text.as_bytes()).await?;
        s.flush().await
    }
}

/// Reads one line; when `reads` is given, records the complete lines each
/// socket read brought.
async fn read_line(
    s: &mut Box<dyn Rw>,
    buf: &mut Vec<u8>,
    reads: Option<&Mutex<Seen>>,
) -> Option<String> {
    loop {
        if let Some(i) = buf.iter().position(|&c| c == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            let line = String::from_utf8_lossy(&line);
            return Some(line.trim_end_matches(['\r', '\n']).to_string());
        }
        let mut tmp = [0u8; 4096];
        let n = s.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(seen) = reads {
            // The lines completed by this read (a partial line left in the
            // buffer before it is counted with its end).
            let before = buf.len() - n;
            let start = buf[..before]
                .iter()
                .rposition(|&c| c == b'\n')
                .map_or(0, |i| i + 1);
            let end = buf.iter().rposition(|&c| c == b'\n').map_or(0, |i| i + 1);
            if end > start && end > before {
                let lines = String::from_utf8_lossy(&buf[start..end])
                    .split("\r\n")
                    .filter(|l| !l.is_empty())
                    .map(str::to_string)
                    .collect();
                seen.lock().unwrap().reads.push(lines);
            }
        }
    }
}

async fn session(
    stream: TcpStream,
    b: &Behaviour,
    seen: &Mutex<Seen>,
    acceptor: Option<TlsAcceptor>,
) -> std::io::Result<()> {
    let mut s: Box<dyn Rw> = Box::new(stream);
    let mut buf = Vec::new();
    let mut tls = false;
    say(
        &mut s,
        b,
        &format!("{}\r\n", b.banner.unwrap_or("220 mx.test ESMTP")),
    )
    .await?;
    // Recipients accepted in the current transaction; whether MAIL was.
    let mut accepted = 0usize;
    let mut in_mail = false;
    while let Some(line) = read_line(&mut s, &mut buf, Some(seen)).await {
        seen.lock().unwrap().lines.push(line.clone());
        let up = line.to_ascii_uppercase();
        if up.starts_with("EHLO") {
            if b.refuse_ehlo {
                say(&mut s, b, "500 5.5.1 command not recognised\r\n").await?;
            } else if b.endless_ehlo {
                for _ in 0..100_000 {
                    s.write_all(b"250-more and more and more\r\n").await?;
                }
                return Ok(());
            } else {
                let mut r = String::from("250-mx.test hello\r\n250-SIZE 10000000\r\n");
                if acceptor.is_some() && !tls {
                    r.push_str("250-STARTTLS\r\n");
                }
                if b.pipelining {
                    r.push_str("250-PIPELINING\r\n");
                }
                r.push_str("250 8BITMIME\r\n");
                say(&mut s, b, &r).await?;
            }
        } else if up.starts_with("HELO") {
            say(&mut s, b, "250 mx.test\r\n").await?;
        } else if up == "STARTTLS" {
            let Some(acc) = acceptor.clone().filter(|_| !tls) else {
                say(&mut s, b, "502 5.5.1 not offered\r\n").await?;
                continue;
            };
            if let Some(r) = b.starttls_reply {
                say(&mut s, b, &format!("{r}\r\n")).await?;
                continue;
            }
            if b.inject_after_220 {
                s.write_all(b"220 2.0.0 ready\r\n250 2.0.0 injected\r\n")
                    .await?;
                s.flush().await?;
            } else {
                say(&mut s, b, "220 2.0.0 ready\r\n").await?;
            }
            if b.garbage_handshake {
                s.write_all(b"this is not TLS at all\r\n").await?;
                s.flush().await?;
                tokio::time::sleep(Duration::from_millis(200)).await;
                return Ok(());
            }
            let inner: Box<dyn Rw> = s;
            let t = acc.accept(inner).await?;
            let sni = t.get_ref().1.server_name().map(str::to_string);
            seen.lock().unwrap().sni.push(sni);
            s = Box::new(t);
            buf.clear();
            tls = true;
        } else if up.starts_with("MAIL FROM") {
            let reply = b.mail_reply.unwrap_or("250 2.1.0 ok");
            in_mail = reply.starts_with('2');
            accepted = 0;
            say(&mut s, b, &format!("{reply}\r\n")).await?;
        } else if up.starts_with("RCPT TO") {
            let reply = b
                .rcpt_replies
                .iter()
                .find(|(r, _)| line.contains(r))
                .map(|(_, reply)| *reply)
                .unwrap_or("250 2.1.5 ok");
            if b.pipelining && !in_mail {
                say(&mut s, b, "503 5.5.1 MAIL first\r\n").await?;
                continue;
            }
            if reply.starts_with('2') {
                accepted += 1;
            }
            say(&mut s, b, &format!("{reply}\r\n")).await?;
        } else if up == "DATA" {
            if b.pipelining && !in_mail {
                say(&mut s, b, "503 5.5.1 MAIL first\r\n").await?;
                continue;
            }
            if b.pipelining && accepted == 0 && !b.data_354_without_rcpt {
                in_mail = false;
                say(&mut s, b, "554 5.5.1 no valid recipients\r\n").await?;
                continue;
            }
            in_mail = false;
            accepted = 0;
            say(&mut s, b, "354 go ahead\r\n").await?;
            let mut body = Vec::new();
            loop {
                let Some(l) = read_line(&mut s, &mut buf, None).await else {
                    return Ok(());
                };
                if l == "." {
                    break;
                }
                let l = l.strip_prefix('.').unwrap_or(&l);
                body.extend_from_slice(l.as_bytes());
                body.extend_from_slice(b"\r\n");
            }
            {
                let mut g = seen.lock().unwrap();
                g.messages.push(body);
                g.message_over_tls.push(tls);
            }
            if b.hang_after_data {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return Ok(());
            }
            say(&mut s, b, "250 2.0.0 queued\r\n").await?;
        } else if up == "QUIT" {
            say(&mut s, b, "221 2.0.0 bye\r\n").await?;
            return Ok(());
        } else if up == "RSET" || up == "NOOP" {
            if up == "RSET" {
                in_mail = false;
                accepted = 0;
            }
            say(&mut s, b, "250 2.0.0 ok\r\n").await?;
        } else {
            say(&mut s, b, "500 5.5.2 what\r\n").await?;
        }
    }
    Ok(())
}
