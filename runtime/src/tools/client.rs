//! A small SMTP client for tools and tests (not the delivery client).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

/// Any byte stream the client can run on.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An SMTP reply: code and the text of its lines joined by `\n`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientReply {
    pub code: u16,
    pub text: String,
}

impl ClientReply {
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
}

fn protocol_error(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// How long a reply (or a TLS handshake) may take by default: RFC 5321
/// section 4.5.3.2 asks clients to wait at least 5 minutes for most
/// replies.
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a TCP connection may take to open (the kernel alone retries a
/// lost SYN for about two minutes).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// One SMTP client connection.
pub struct Client {
    io: BufReader<Box<dyn Io>>,
    reply_timeout: Duration,
}

fn timed_out(what: &str, limit: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no {what} within {} s", limit.as_secs_f32()),
    )
}

/// A TCP connection to `addr` (no Nagle delay), from the local address
/// `local` when given; fails after [`CONNECT_TIMEOUT`].
pub async fn tcp_connect(addr: SocketAddr, local: Option<IpAddr>) -> io::Result<TcpStream> {
    tokio::time::timeout(CONNECT_TIMEOUT, tcp_connect_inner(addr, local))
        .await
        .map_err(|_| timed_out("connection", CONNECT_TIMEOUT))?
}

async fn tcp_connect_inner(addr: SocketAddr, local: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = local {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

impl Client {
    /// Connects to `addr`, from `local` when given (e.g. `127.0.0.5` to
    /// play a particular client address on loopback).
    pub async fn connect(addr: SocketAddr, local: Option<IpAddr>) -> io::Result<Client> {
        Ok(Client::over(Box::new(tcp_connect(addr, local).await?)))
    }

    /// A client on an existing stream.
    pub fn over(io: Box<dyn Io>) -> Client {
        Client {
            io: BufReader::new(io),
            reply_timeout: DEFAULT_REPLY_TIMEOUT,
        }
    }

    /// How long to wait for each reply and for a TLS handshake before
    /// failing with [`io::ErrorKind::TimedOut`] (default
    /// [`DEFAULT_REPLY_TIMEOUT`]).
    pub fn with_reply_timeout(mut self, limit: Duration) -> Client {
        self.reply_timeout = limit;
        self
    }

    /// Reads one (possibly multi-line) reply.
    pub async fn read_reply(&mut self) -> io::Result<ClientReply> {
        let limit = self.reply_timeout;
        tokio::time::timeout(limit, self.read_reply_inner())
            .await
            .map_err(|_| timed_out("reply", limit))?
    }

    async fn read_reply_inner(&mut self) -> io::Result<ClientReply> {
        let mut text = String::new();
        let mut line = String::new();
        loop {
            line.clear();
            let n = (&mut self.io).take(4096).read_line(&mut line).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed",
                ));
            }
            let l = line.trim_end_matches(['\r', '\n']);
            if l.len() < 3 {
                return Err(protocol_error(format!("bad reply line `{l}`")));
            }
            let code: u16 = l[..3]
                .parse()
                .map_err(|_| protocol_error(format!("bad reply line `{l}`")))?;
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(l.get(4..).unwrap_or(""));
            if l.as_bytes().get(3) != Some(&b'-') {
                return Ok(ClientReply { code, text });
            }
        }
    }

    /// Sends raw bytes.
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.io.get_mut().write_all(bytes).await?;
        self.io.get_mut().flush().await
    }

    /// Sends one command line (CRLF added) and reads the reply.
    pub async fn command(&mut self, line: &str) -> io::Result<ClientReply> {
        self.send(format!("{line}\r\n").as_bytes()).await?;
        self.read_reply().await
    }

    /// Sends STARTTLS, expects `220` and performs the handshake.
    pub async fn starttls(
        mut self,
        server_name: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> io::Result<Client> {
        let r = self.command("STARTTLS").await?;
        if r.code != 220 {
            return Err(protocol_error(format!(
                "STARTTLS refused: {} {}",
                r.code, r.text
            )));
        }
        self.tls(server_name, config).await
    }

    /// Performs a TLS handshake on the connection as it is.
    pub async fn tls(
        self,
        server_name: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> io::Result<Client> {
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|e| protocol_error(format!("bad server name `{server_name}`: {e}")))?;
        let limit = self.reply_timeout;
        let stream = self.io.into_inner();
        let tls = tokio::time::timeout(
            limit,
            tokio_rustls::TlsConnector::from(config).connect(name, stream),
        )
        .await
        .map_err(|_| timed_out("TLS handshake", limit))??;
        Ok(Client::over(Box::new(tls)).with_reply_timeout(limit))
    }

    /// MAIL, RCPTs, DATA with `body` (CRLF lines, dot-stuffed here) using
    /// PIPELINING; returns the final reply (or the first refusal).
    pub async fn send_mail(
        &mut self,
        from: &str,
        rcpts: &[&str],
        body: &[u8],
    ) -> io::Result<ClientReply> {
        let mut cmds = format!("MAIL FROM:<{from}>\r\n");
        for r in rcpts {
            cmds.push_str(&format!("RCPT TO:<{r}>\r\n"));
        }
        cmds.push_str("DATA\r\n");
        self.send(cmds.as_bytes()).await?;
        let mail = self.read_reply().await?;
        let mut accepted = 0;
        let mut first_refusal = None;
        for _ in rcpts {
            let r = self.read_reply().await?;
            if r.is_positive() {
                accepted += 1;
            } else if first_refusal.is_none() {
                first_refusal = Some(r);
            }
        }
        let data = self.read_reply().await?;
        if data.code != 354 {
            if !mail.is_positive() {
                return Ok(mail);
            }
            if accepted == 0 {
                if let Some(r) = first_refusal {
                    return Ok(r);
                }
            }
            return Ok(data);
        }
        self.send_data(body).await
    }

    /// After a `354`: sends `body` dot-stuffed with the final `.` and reads
    /// the reply to the end of data.
    pub async fn send_data(&mut self, body: &[u8]) -> io::Result<ClientReply> {
        let mut out = Vec::with_capacity(body.len() + 64);
        dot_stuff(body, &mut out);
        out.extend_from_slice(b".\r\n");
        self.send(&out).await?;
        self.read_reply().await
    }
}

/// Dot-stuffs `body` and makes sure it ends with CRLF.
pub fn dot_stuff(body: &[u8], out: &mut Vec<u8>) {
    let mut at_line_start = true;
    for &b in body {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !body.is_empty() && !body.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
}

use tokio::io::AsyncReadExt as _;
