//! Receiving side: ESMTP server, STARTTLS, limits, T4, T6.
//!
//! - [`session`]: the state machine (no I/O): replies, T4 at MAIL, T6 at
//!   RCPT through the decision function.
//! - [`conn`]: one connection's byte pump, generic over the stream.
//! - [`sink`]: where accepted messages go (the spool, or a test sink).
//!
//! [`Server::serve`] accepts on a listener until shutdown, bounding
//! connections globally and per client address (`421 4.7.0` beyond).

pub mod conn;
pub mod session;
pub mod sink;

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

pub use session::{Gate, Reply, Session, SessionConfig, Step, TlsInfo};
pub use sink::{IncomingMessage, MemorySink, MessageSink, SinkError};

/// Connection limits and timeouts.
#[derive(Clone, Debug)]
pub struct ServerLimits {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Longest wait for the next bytes from a client.
    pub idle_timeout: Duration,
    /// Longest whole session.
    pub session_timeout: Duration,
    /// Wait before the greeting; a client that talks within it is refused
    /// (`554 5.5.0`). Zero: greet at once, no check.
    pub greeting_delay: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 1000,
            max_connections_per_ip: 50,
            idle_timeout: Duration::from_secs(300),
            session_timeout: Duration::from_secs(1800),
            greeting_delay: Duration::ZERO,
        }
    }
}

/// The SMTP server: shared by every listener of a relay.
#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
}

struct Inner {
    session: Arc<SessionConfig>,
    limits: ServerLimits,
    gate: Gate,
    sink: Arc<dyn MessageSink>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    slots: Arc<Semaphore>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// Releases a per-address slot when a connection ends.
struct IpSlot {
    inner: Arc<Inner>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut map = match self.inner.per_ip.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

impl Server {
    pub fn new(
        session: SessionConfig,
        limits: ServerLimits,
        gate: Gate,
        sink: Arc<dyn MessageSink>,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Self {
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        Server {
            inner: Arc::new(Inner {
                session: Arc::new(session),
                limits,
                gate,
                sink,
                tls: tls.map(tokio_rustls::TlsAcceptor::from),
                slots,
                per_ip: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Number of sessions running now.
    pub fn active(&self) -> usize {
        self.inner.limits.max_connections - self.inner.slots.available_permits()
    }

    /// Accepts connections until `shutdown` turns true; sessions run on
    /// their own tasks and see the shutdown at their next command.
    pub async fn serve(
        &self,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) -> io::Result<()> {
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.wait_for(|s| *s) => return Ok(()),
            };
            let (stream, addr) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let server = self.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                server.connection(stream, addr.ip(), shutdown).await;
            });
        }
    }

    async fn connection(
        &self,
        mut stream: TcpStream,
        peer: IpAddr,
        shutdown: watch::Receiver<bool>,
    ) {
        let peer = policy::canonical_ip(peer);
        let Ok(permit) = self.inner.slots.clone().try_acquire_owned() else {
            tracing::warn!(peer = %peer, "too many connections");
            let _ = stream
                .write_all(b"421 4.7.0 too many connections, try again later\r\n")
                .await;
            return;
        };
        let ip_slot = {
            let mut map = match self.inner.per_ip.lock() {
                Ok(m) => m,
                Err(p) => p.into_inner(),
            };
            let n = map.entry(peer).or_insert(0);
            if *n >= self.inner.limits.max_connections_per_ip {
                None
            } else {
                *n += 1;
                Some(IpSlot {
                    inner: self.inner.clone(),
                    ip: peer,
                })
            }
        };
        let Some(_ip_slot) = ip_slot else {
            tracing::warn!(peer = %peer, "too many connections from one address");
            let _ = stream
                .write_all(b"421 4.7.0 too many connections from your address\r\n")
                .await;
            return;
        };
        tracing::info!(peer = %peer, "session opened");
        self.handle(stream, peer, shutdown).await;
        tracing::info!(peer = %peer, "session closed");
        drop(permit);
    }

    /// Runs one session on any stream (in-memory tests use this directly).
    pub async fn handle<S>(&self, stream: S, peer: IpAddr, shutdown: watch::Receiver<bool>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    {
        let session = Session::new(
            self.inner.session.clone(),
            self.inner.gate.clone(),
            peer,
            self.inner.tls.is_some(),
        );
        let ctx = conn::ConnContext {
            sink: self.inner.sink.clone(),
            tls: self.inner.tls.clone(),
            idle_timeout: self.inner.limits.idle_timeout,
            greeting_delay: self.inner.limits.greeting_delay,
            deadline: Instant::now() + self.inner.limits.session_timeout,
            shutdown,
        };
        if let Err(e) = conn::run(stream, session, ctx).await {
            tracing::debug!(peer = %peer, error = %e, "session ended with an I/O error");
        }
    }

    /// Waits until every session has ended, or `grace` has passed.
    pub async fn drain(&self, grace: Duration) -> bool {
        let all = self.inner.limits.max_connections as u32;
        matches!(
            tokio::time::timeout(grace, self.inner.slots.acquire_many(all)).await,
            Ok(Ok(_))
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Sessions are generic over the stream: a whole transaction in memory.
    #[tokio::test]
    async fn session_over_an_in_memory_stream() {
        let sink = MemorySink::keeping();
        let server = Server::new(
            SessionConfig::default(),
            ServerLimits::default(),
            Gate::AcceptAll,
            Arc::new(sink.clone()),
            None,
        );
        let (client, server_end) = tokio::io::duplex(1 << 16);
        let (_stop, rx) = watch::channel(false);
        let peer: IpAddr = "192.0.2.7".parse().unwrap();
        let task = tokio::spawn(async move { server.handle(server_end, peer, rx).await });
        let (mut r, mut w) = tokio::io::split(client);
        // Each group ends where RFC 2920 says it must (EHLO, DATA).
        let mut all = String::new();
        for (group, replies) in [
            (&b"EHLO x\r\n"[..], 2),
            (b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n", 5),
            (b"hi\r\n.\r\nQUIT\r\n", 7),
        ] {
            w.write_all(group).await.unwrap();
            while all
                .lines()
                .filter(|l| l.as_bytes().get(3) == Some(&b' '))
                .count()
                < replies
            {
                let mut chunk = [0u8; 1024];
                let n = r.read(&mut chunk).await.unwrap();
                assert!(n > 0, "{all}");
                all.push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        }
        r.read_to_string(&mut all).await.unwrap();
        task.await.unwrap();
        let codes: Vec<&str> = all
            .lines()
            .map(|l| &l[..4])
            .filter(|c| c.ends_with(' '))
            .collect();
        assert_eq!(
            codes,
            ["220 ", "250 ", "250 ", "250 ", "354 ", "250 ", "221 "],
            "{all}"
        );
        assert!(!all.contains("STARTTLS"), "no TLS configured: {all}");
        let m = sink.messages();
        assert_eq!(m[0].envelope.client_ip, peer);
        assert!(m[0].data.ends_with(b"\r\nhi\r\n"));
    }
}
