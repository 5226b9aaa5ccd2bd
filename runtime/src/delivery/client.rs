//! One SMTP client connection: buffered reads of whole replies (parsed by
//! the sans-IO [`crate::smtp::reply`] parser), commands, and the streamed,
//! dot-stuffed DATA phase. Generic over the stream so the same code runs in
//! clear and inside TLS.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

use super::data::DotStuffer;
use crate::smtp::reply::{parse_reply, Reply, ReplyError};
use crate::transport::MessageBody;

/// Size of one chunk of the body read from the spool.
const BODY_CHUNK: usize = 64 * 1024;

/// Why a connection could not go on.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("connection closed by the server")]
    Closed,
    #[error("invalid reply: {0}")]
    Reply(#[from] ReplyError),
    #[error("cannot read the message from the spool: {0}")]
    Spool(std::io::Error),
}

/// An SMTP client connection over `S`.
#[derive(Debug)]
pub struct Conn<S> {
    stream: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Conn<S> {
    pub fn new(stream: S) -> Self {
        Conn {
            stream,
            buf: Vec::with_capacity(1024),
        }
    }

    /// Reads one complete reply; `limit` bounds the whole reply, so a server
    /// that drips bytes cannot hold the connection forever.
    pub async fn read_reply(
        &mut self,
        limit: Duration,
        waiting_for: &'static str,
    ) -> Result<Reply, SessionError> {
        let fut = async {
            let mut tmp = [0u8; 4096];
            loop {
                if let Some((reply, used)) = parse_reply(&self.buf)? {
                    self.buf.drain(..used);
                    return Ok(reply);
                }
                let n = self.stream.read(&mut tmp).await?;
                if n == 0 {
                    return Err(SessionError::Closed);
                }
                self.buf.extend_from_slice(&tmp[..n]);
            }
        };
        match timeout(limit, fut).await {
            Ok(r) => r,
            Err(_) => Err(SessionError::Timeout(waiting_for)),
        }
    }

    /// Sends one command line (CRLF is added).
    pub async fn send(&mut self, line: &str, limit: Duration) -> Result<(), SessionError> {
        let mut bytes = Vec::with_capacity(line.len() + 2);
        bytes.extend_from_slice(line.as_bytes());
        bytes.extend_from_slice(b"\r\n");
        match timeout(limit, self.stream.write_all(&bytes)).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(SessionError::Timeout("the server to accept a command")),
        }
    }

    /// Sends several command lines (CRLF added to each) in one write, so
    /// that inside TLS they travel in one record (PIPELINING, RFC 2920).
    pub async fn send_group(
        &mut self,
        lines: &[String],
        limit: Duration,
    ) -> Result<(), SessionError> {
        let mut bytes = Vec::with_capacity(lines.iter().map(|l| l.len() + 2).sum());
        for line in lines {
            bytes.extend_from_slice(line.as_bytes());
            bytes.extend_from_slice(b"\r\n");
        }
        match timeout(limit, async {
            self.stream.write_all(&bytes).await?;
            self.stream.flush().await
        })
        .await
        {
            Ok(r) => Ok(r?),
            Err(_) => Err(SessionError::Timeout("the server to accept a command")),
        }
    }

    /// Sends a command and reads its reply.
    pub async fn command(
        &mut self,
        line: &str,
        limit: Duration,
        waiting_for: &'static str,
    ) -> Result<Reply, SessionError> {
        self.send(line, limit).await?;
        self.read_reply(limit, waiting_for).await
    }

    /// True when the server sent bytes nobody asked for yet (after the
    /// `220` to STARTTLS this is a response injection attempt).
    pub fn has_unread_bytes(&self) -> bool {
        !self.buf.is_empty()
    }

    /// The stream, for the TLS handshake. Callers check
    /// [`Self::has_unread_bytes`] first.
    pub fn into_stream(self) -> S {
        self.stream
    }

    /// Streams the body, dot-stuffed, followed by `.`; returns the reply
    /// to the end of data. `write_limit` bounds each write, `reply_limit`
    /// the wait for the final reply. A body in memory goes out in one
    /// write with the end-of-data marker.
    pub async fn send_body(
        &mut self,
        body: MessageBody<'_>,
        write_limit: Duration,
        reply_limit: Duration,
    ) -> Result<Reply, SessionError> {
        let mut stuffer = DotStuffer::new();
        let mut out;
        match body {
            MessageBody::Memory(bytes) => {
                out = Vec::with_capacity(bytes.len() + bytes.len() / 32 + 8);
                stuffer.push(bytes, &mut out);
            }
            MessageBody::File(path) => {
                let file = tokio::fs::File::open(path)
                    .await
                    .map_err(SessionError::Spool)?;
                out = self
                    .stream_file(file, u64::MAX, &mut stuffer, write_limit)
                    .await?;
            }
            MessageBody::FileRange { path, offset, len } => {
                let mut file = tokio::fs::File::open(path)
                    .await
                    .map_err(SessionError::Spool)?;
                file.seek(std::io::SeekFrom::Start(offset))
                    .await
                    .map_err(SessionError::Spool)?;
                out = self
                    .stream_file(file, len, &mut stuffer, write_limit)
                    .await?;
            }
        }
        stuffer.finish(&mut out);
        match timeout(write_limit, async {
            self.stream.write_all(&out).await?;
            self.stream.flush().await
        })
        .await
        {
            Ok(r) => r?,
            Err(_) => return Err(SessionError::Timeout("the server to accept message data")),
        }
        self.read_reply(reply_limit, "the reply to the end of data")
            .await
    }

    /// Sends up to `len` bytes of `file`, dot-stuffed, in chunks; returns
    /// the buffer (empty) for the end-of-data marker.
    async fn stream_file(
        &mut self,
        file: tokio::fs::File,
        len: u64,
        stuffer: &mut DotStuffer,
        write_limit: Duration,
    ) -> Result<Vec<u8>, SessionError> {
        let mut file = file.take(len);
        let mut chunk = vec![0u8; BODY_CHUNK];
        let mut out = Vec::with_capacity(BODY_CHUNK + BODY_CHUNK / 8);
        loop {
            let n = file.read(&mut chunk).await.map_err(SessionError::Spool)?;
            if n == 0 {
                break;
            }
            out.clear();
            stuffer.push(&chunk[..n], &mut out);
            match timeout(write_limit, self.stream.write_all(&out)).await {
                Ok(r) => r?,
                Err(_) => return Err(SessionError::Timeout("the server to accept message data")),
            }
        }
        out.clear();
        Ok(out)
    }

    /// Sends QUIT and waits briefly for the reply; errors are ignored (the
    /// outcome of the transaction is already known).
    pub async fn quit(mut self, limit: Duration) {
        if self.send("QUIT", limit).await.is_ok() {
            let _ = self.read_reply(limit, "the reply to QUIT").await;
        }
        let _ = timeout(limit, self.stream.shutdown()).await;
    }
}
