//! One connection: moves bytes between a stream and the [`Session`].
//!
//! Generic over the stream, so tests can drive it in memory
//! (`tokio::io::duplex`) as well as over TCP; after STARTTLS the same loop
//! runs over the TLS stream.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

use super::session::{Reply, Session, Step, TlsInfo};
use super::sink::{MessageSink, SinkError};
use crate::smtp::command::{parse_command, skip_line, Command, DataDecoder, Parsed};

/// What a connection needs besides its stream.
pub struct ConnContext {
    pub sink: Arc<dyn MessageSink>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub idle_timeout: Duration,
    /// How long to wait before the greeting, listening for clients that
    /// talk first (zero: no wait, no check).
    pub greeting_delay: Duration,
    pub deadline: Instant,
    pub shutdown: watch::Receiver<bool>,
}

enum End {
    Closed,
    StartTls,
}

enum ReadResult {
    Data,
    Eof,
    Timeout,
    Shutdown,
}

const READ_CHUNK: usize = 4096;

/// Runs a whole session on `stream` (which is already connected).
pub async fn run<S>(mut stream: S, mut session: Session, mut ctx: ConnContext) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut out = Vec::new();
    let mut buf = Vec::new();
    if !ctx.greeting_delay.is_zero() {
        // RFC 5321 §4.3.1: the client waits for the greeting. One that
        // talks first is a spam engine or an attack on the parser.
        match tokio::time::timeout(ctx.greeting_delay, stream.read_buf(&mut buf)).await {
            Err(_) => {}
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(()),
            Ok(Ok(_)) => {
                tracing::info!(peer = %session.peer(), "client talked before the greeting");
                Reply::new(554, "5.5.0 protocol violation: talked before the greeting")
                    .write_to(&mut out);
                stream.write_all(&out).await?;
                return Ok(());
            }
        }
    }
    session.greeting().write_to(&mut out);
    stream.write_all(&out).await?;
    match drive(&mut stream, &mut session, &mut ctx, &mut buf).await? {
        End::Closed => return Ok(()),
        End::StartTls => {}
    }
    if !buf.is_empty() {
        // Bytes pipelined after STARTTLS were sent in clear text; executing
        // them inside TLS would let an attacker inject commands.
        tracing::warn!(peer = %session.peer(), bytes = buf.len(), "discarding input pipelined after STARTTLS");
        buf.clear();
    }
    let Some(acceptor) = ctx.tls.clone() else {
        return Ok(());
    };
    let remaining = ctx.deadline.saturating_duration_since(Instant::now());
    let handshake =
        tokio::time::timeout(ctx.idle_timeout.min(remaining), acceptor.accept(stream)).await;
    let mut tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::info!(peer = %session.peer(), error = %e, "TLS handshake failed, closing");
            return Ok(());
        }
        Err(_) => {
            tracing::info!(peer = %session.peer(), "TLS handshake timed out, closing");
            return Ok(());
        }
    };
    let (_, conn) = tls.get_ref();
    let info = TlsInfo {
        protocol: conn
            .protocol_version()
            .map(|v| format!("{v:?}"))
            .unwrap_or_default(),
        cipher: conn
            .negotiated_cipher_suite()
            .map(|c| format!("{:?}", c.suite()))
            .unwrap_or_default(),
    };
    tracing::info!(peer = %session.peer(), protocol = %info.protocol, cipher = %info.cipher, "TLS established");
    session.tls_started(info);
    drive(&mut tls, &mut session, &mut ctx, &mut buf).await?;
    let _ = tls.shutdown().await;
    Ok(())
}

async fn read_more<S>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    ctx: &mut ConnContext,
    allow_shutdown: bool,
) -> io::Result<ReadResult>
where
    S: AsyncRead + Unpin,
{
    let now = Instant::now();
    if now >= ctx.deadline {
        return Ok(ReadResult::Timeout);
    }
    let wait = ctx.idle_timeout.min(ctx.deadline - now);
    buf.reserve(READ_CHUNK);
    let read = async {
        match tokio::time::timeout(wait, stream.read_buf(buf)).await {
            Ok(Ok(0)) => Ok(ReadResult::Eof),
            Ok(Ok(_)) => Ok(ReadResult::Data),
            Ok(Err(e)) => Err(e),
            Err(_) => Ok(ReadResult::Timeout),
        }
    };
    if !allow_shutdown {
        return read.await;
    }
    if *ctx.shutdown.borrow() {
        return Ok(ReadResult::Shutdown);
    }
    let mut shutdown = ctx.shutdown.clone();
    tokio::select! {
        r = read => r,
        _ = shutdown.wait_for(|stop| *stop) => Ok(ReadResult::Shutdown),
    }
}

/// Reads and answers commands until the session ends or STARTTLS.
async fn drive<S>(
    stream: &mut S,
    session: &mut Session,
    ctx: &mut ConnContext,
    buf: &mut Vec<u8>,
) -> io::Result<End>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut out: Vec<u8> = Vec::new();
    let mut skipping = false;
    loop {
        // Answer every complete command already buffered (PIPELINING).
        let mut used = 0;
        loop {
            let rest = &buf[used..];
            if skipping {
                let (n, ended) = skip_line(rest);
                used += n;
                if !ended {
                    break;
                }
                skipping = false;
                match session.line_too_long() {
                    Step::Close(r) => {
                        r.write_to(&mut out);
                        stream.write_all(&out).await?;
                        return Ok(End::Closed);
                    }
                    Step::Reply(r) => r.write_to(&mut out),
                    _ => {}
                }
                continue;
            }
            let (command, n) = match parse_command(rest) {
                Parsed::NeedMore => break,
                Parsed::TooLong { consumed, .. } => {
                    used += consumed;
                    skipping = true;
                    continue;
                }
                Parsed::Complete { command, consumed } => (command, consumed),
            };
            used += n;
            // RFC 2920 §3.1: EHLO, HELO and DATA end a group; a client
            // that sends more before their reply is not speaking SMTP (and
            // text after a DATA that fails would run as commands).
            let ends_group = matches!(
                command,
                Ok(Command::Ehlo(_) | Command::Helo(_) | Command::Data)
            );
            if ends_group && used < buf.len() {
                tracing::info!(peer = %session.peer(), "improper pipelining, closing");
                Reply::new(554, "5.5.0 improper pipelining, closing connection").write_to(&mut out);
                stream.write_all(&out).await?;
                return Ok(End::Closed);
            }
            match session.command(command, ctx.sink.has_room()) {
                Step::Reply(r) => r.write_to(&mut out),
                Step::Close(r) => {
                    r.write_to(&mut out);
                    stream.write_all(&out).await?;
                    return Ok(End::Closed);
                }
                Step::StartTls(r) => {
                    r.write_to(&mut out);
                    stream.write_all(&out).await?;
                    buf.drain(..used);
                    return Ok(End::StartTls);
                }
                Step::Data(envelope) => {
                    buf.drain(..used);
                    used = 0;
                    stream.write_all(&out).await?;
                    out.clear();
                    match receive_message(stream, session, ctx, buf, envelope).await? {
                        Some(reply) => reply.write_to(&mut out),
                        None => return Ok(End::Closed),
                    }
                    session.data_finished();
                }
            }
        }
        buf.drain(..used);
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if buf.is_empty() && buf.capacity() > 2 * READ_CHUNK {
            buf.shrink_to(READ_CHUNK);
        }
        match read_more(stream, buf, ctx, true).await? {
            ReadResult::Data => {}
            ReadResult::Eof => return Ok(End::Closed),
            ReadResult::Timeout => {
                tracing::info!(peer = %session.peer(), "session timed out");
                Reply::new(421, "4.4.2 timeout, closing connection").write_to(&mut out);
                stream.write_all(&out).await?;
                return Ok(End::Closed);
            }
            ReadResult::Shutdown => {
                Reply::new(421, "4.3.2 shutting down").write_to(&mut out);
                stream.write_all(&out).await?;
                return Ok(End::Closed);
            }
        }
    }
}

/// DATA: opens storage, answers 354, streams the message through the
/// decoder into storage, and returns the final reply (`None`: close now).
async fn receive_message<S>(
    stream: &mut S,
    session: &mut Session,
    ctx: &mut ConnContext,
    buf: &mut Vec<u8>,
    envelope: crate::envelope::Envelope,
) -> io::Result<Option<Reply>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let header = session.received_header(&envelope);
    let from = envelope.mail_from.clone();
    let rcpts = envelope.rcpt_to.len();
    let mut incoming = match ctx.sink.begin(envelope).await {
        Ok(i) => Some(i),
        Err(SinkError::DiskFull) => {
            return Ok(Some(Reply::new(452, "4.3.1 insufficient system storage")));
        }
        Err(e) => {
            tracing::warn!(peer = %session.peer(), error = %e, "cannot store message");
            return Ok(Some(Reply::new(451, "4.3.0 cannot store message now")));
        }
    };
    let mut out = Vec::new();
    Reply::new(354, "end data with <CR><LF>.<CR><LF>").write_to(&mut out);
    stream.write_all(&out).await?;

    let mut decoder = DataDecoder::new(session.config().max_message_size);
    let mut store_error: Option<SinkError> = None;
    if let Some(inc) = incoming.as_mut() {
        if let Err(e) = inc.write(header.as_bytes()).await {
            store_error = Some(e);
        }
    }
    let mut text = Vec::with_capacity(READ_CHUNK);
    loop {
        text.clear();
        let fed = decoder.feed(buf, &mut text);
        buf.drain(..fed.consumed);
        if store_error.is_none() && decoder.fault().is_none() && !text.is_empty() {
            if let Some(inc) = incoming.as_mut() {
                if let Err(e) = inc.write(&text).await {
                    store_error = Some(e);
                    incoming = None;
                }
            }
        }
        if decoder.fault().is_some() {
            // Refused: the partial file is dropped (removed) right away.
            incoming = None;
        }
        if fed.done {
            break;
        }
        match read_more(stream, buf, ctx, false).await? {
            ReadResult::Data => {}
            ReadResult::Eof | ReadResult::Shutdown => return Ok(None),
            ReadResult::Timeout => {
                out.clear();
                Reply::new(421, "4.4.2 timeout, closing connection").write_to(&mut out);
                stream.write_all(&out).await?;
                return Ok(None);
            }
        }
    }
    if let Some(fault) = decoder.fault() {
        tracing::info!(peer = %session.peer(), fault = ?fault, size = decoder.size(), "message refused");
        return Ok(Some(Session::data_fault_reply(fault)));
    }
    if let Some(e) = store_error {
        tracing::warn!(peer = %session.peer(), error = %e, "cannot store message");
        return Ok(Some(match e {
            SinkError::DiskFull => Reply::new(452, "4.3.1 insufficient system storage"),
            SinkError::Failed(_) => Reply::new(451, "4.3.0 cannot store message now"),
        }));
    }
    let Some(inc) = incoming else {
        return Ok(Some(Reply::new(451, "4.3.0 cannot store message now")));
    };
    match inc.commit().await {
        Ok(id) => {
            tracing::info!(peer = %session.peer(), id = %id, from = %from, rcpts, size = decoder.size(), tls = session.tls().is_some(), "message accepted");
            Ok(Some(Reply::new(250, format!("2.0.0 queued as {id}"))))
        }
        Err(e) => {
            tracing::warn!(peer = %session.peer(), error = %e, "cannot commit message");
            Ok(Some(Reply::new(451, "4.3.0 cannot store message now")))
        }
    }
}
