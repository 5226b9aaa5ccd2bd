//! The queue's control socket: how `tlsgate queue` talks to a running relay.
//!
//! The runner listens on `<spool>/control.sock` (a unix socket, mode 0600).
//! A client sends one JSON [`Request`] on one line and reads one JSON
//! [`Response`] line back. Every request is carried out by the runner's own
//! loop, which is the only writer of the queue, so operations never race
//! with delivery attempts (a message being attempted answers "busy").
//! Without a running relay the CLI opens the spool itself; the spool's
//! `lock` file guarantees the two never write at the same time.

use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::envelope::Envelope;
use crate::spool::{MessageId, MessageKind, RecipientState, StoredMessage};

/// File name of the socket in the spool directory.
pub const SOCKET: &str = "control.sock";

/// Longest request line accepted.
const MAX_LINE: u64 = 64 * 1024;

/// Which messages a retry applies to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryTarget {
    Id(MessageId),
    Domain(String),
    All,
}

/// An operator's request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    List,
    Show { id: MessageId },
    Retry { target: RetryTarget },
    Delete { id: MessageId },
    Bounce { id: MessageId },
}

/// One line of `tlsgate queue list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageSummary {
    pub id: MessageId,
    pub age_secs: u64,
    pub size: u64,
    pub sender: String,
    /// Recipients not yet delivered or failed.
    pub recipients: Vec<String>,
    /// Unix milliseconds of the next attempt (`None`: waiting for a
    /// destination's probe, or nothing left).
    pub next_attempt_ms: Option<u64>,
    pub attempts: u32,
    pub last_reason: Option<String>,
    pub in_flight: bool,
}

/// `tlsgate queue show ID`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageDetail {
    pub summary: MessageSummary,
    pub envelope: Envelope,
    pub kind: MessageKind,
    pub recipients: Vec<RecipientState>,
    pub delay_notice_sent: bool,
    pub in_flight: bool,
}

/// The runner's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Messages { messages: Vec<MessageSummary> },
    Message { message: Box<MessageDetail> },
    Done { affected: usize, note: String },
    Error { message: String },
}

/// The summary of a stored message.
pub fn summarize(
    msg: &StoredMessage,
    now_ms: u64,
    next_attempt_ms: Option<u64>,
    in_flight: bool,
) -> MessageSummary {
    MessageSummary {
        id: msg.id,
        age_secs: (now_ms / 1000).saturating_sub(msg.envelope.received_at),
        size: msg.body_len,
        sender: msg.envelope.mail_from.clone(),
        recipients: msg
            .state
            .recipients
            .iter()
            .filter(|r| !r.is_final())
            .map(|r| r.address.clone())
            .collect(),
        next_attempt_ms: next_attempt_ms.or_else(|| msg.state.next_attempt_ms()),
        attempts: msg.state.attempts(),
        last_reason: msg.state.last_reason().map(str::to_string),
        in_flight,
    }
}

/// Binds the socket and serves it, forwarding requests to the runner.
pub fn serve(
    spool_dir: &Path,
    runner: mpsc::Sender<(Request, oneshot::Sender<Response>)>,
) -> io::Result<JoinHandle<()>> {
    let path = spool_dir.join(SOCKET);
    // The spool lock is ours, so a socket file left here is stale.
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(&path)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let runner = runner.clone();
            tokio::spawn(async move {
                if let Err(e) = handle(stream, runner).await {
                    tracing::debug!(error = %e, "control connection ended with an error");
                }
            });
        }
    }))
}

async fn handle(
    stream: UnixStream,
    runner: mpsc::Sender<(Request, oneshot::Sender<Response>)>,
) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read)
        .take(MAX_LINE)
        .read_line(&mut line)
        .await?;
    let response = match serde_json::from_str::<Request>(line.trim()) {
        Err(e) => Response::Error {
            message: format!("bad request: {e}"),
        },
        Ok(req) => {
            let (tx, rx) = oneshot::channel();
            if runner.send((req, tx)).await.is_err() {
                Response::Error {
                    message: "the queue runner is stopping".into(),
                }
            } else {
                rx.await.unwrap_or(Response::Error {
                    message: "the queue runner is stopping".into(),
                })
            }
        }
    };
    let mut out = serde_json::to_vec(&response).map_err(io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await
}

/// Sends one request to the runner of the spool in `spool_dir`. Fails with
/// `NotFound`/`ConnectionRefused` when no runner serves the socket.
pub async fn request(spool_dir: &Path, req: &Request) -> io::Result<Response> {
    let mut stream = UnixStream::connect(spool_dir.join(SOCKET)).await?;
    let mut out = serde_json::to_vec(req).map_err(io::Error::other)?;
    out.push(b'\n');
    stream.write_all(&out).await?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).await?;
    serde_json::from_str(line.trim()).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}
