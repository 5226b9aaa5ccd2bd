//! The seam between the queue and the SMTP client.
//!
//! The queue decides *when* and *which* recipients to attempt (calling the
//! policy's decision function at each attempt, T21); a [`Transport`] makes
//! one delivery attempt for a group of recipients that share a domain and a
//! delivery plan, and says what became of each. `delivery::Deliverer` is the
//! real transport; tests may drive the queue with their own.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;

use policy::{DeliveryPlan, Rule, TrustAnchor};
use serde::Serialize;

/// One delivery attempt: these recipients, this plan, this message.
#[derive(Clone, Copy, Debug)]
pub struct DeliveryJob<'a> {
    /// Spool id, for logs.
    pub message_id: &'a str,
    /// Envelope sender (`""` for the null sender).
    pub mail_from: &'a str,
    /// The recipient domain all of `recipients` share (lower-case); MX
    /// routing looks this name up.
    pub recipient_domain: &'a str,
    pub recipients: &'a [String],
    /// The decision function's answer for these recipients.
    pub plan: DeliveryPlan<'a>,
    pub rule: Rule,
    /// Extra trust anchors of the policy in force (private CAs).
    pub trust_anchors: &'a [TrustAnchor],
    /// Serial of the policy in force, for logs and caches.
    pub policy_serial: u64,
    /// The message as received: CRLF lines, not dot-stuffed.
    pub body: MessageBody<'a>,
}

/// Where the transport reads the message from.
#[derive(Clone, Copy, Debug)]
pub enum MessageBody<'a> {
    /// The whole file is the message.
    File(&'a Path),
    /// `len` bytes of a file from `offset` (a spool file keeps its
    /// envelope before the body).
    FileRange {
        path: &'a Path,
        offset: u64,
        len: u64,
    },
    /// The message in memory (the spool still holds it from reception).
    Memory(&'a [u8]),
}

impl MessageBody<'_> {
    /// The size of the message in bytes (reads the file's metadata for
    /// [`MessageBody::File`]).
    pub async fn len(&self) -> std::io::Result<u64> {
        match self {
            MessageBody::File(path) => Ok(tokio::fs::metadata(path).await?.len()),
            MessageBody::FileRange { len, .. } => Ok(*len),
            MessageBody::Memory(bytes) => Ok(bytes.len() as u64),
        }
    }

    /// Reads the whole message into memory (tests, small messages).
    pub async fn read_all(&self) -> std::io::Result<Vec<u8>> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        match self {
            MessageBody::File(path) => tokio::fs::read(path).await,
            MessageBody::FileRange { path, offset, len } => {
                let mut f = tokio::fs::File::open(path).await?;
                f.seek(std::io::SeekFrom::Start(*offset)).await?;
                let mut out = Vec::with_capacity(usize::try_from(*len).unwrap_or(0).min(1 << 20));
                f.take(*len).read_to_end(&mut out).await?;
                Ok(out)
            }
            MessageBody::Memory(bytes) => Ok(bytes.to_vec()),
        }
    }
}

/// What became of one recipient in one attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum RecipientOutcome {
    Delivered,
    /// Try again later (4xx, TLS required but unavailable, DNS temporary
    /// failure, connection refused, ...).
    Temporary {
        reason: String,
    },
    /// Bounce now (5xx, null MX, ...).
    Permanent {
        reason: String,
    },
}

/// How the attempt went, for the queue and for the delivery log line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DeliveryReport {
    /// One entry per recipient of the job, in the job's order.
    pub outcomes: Vec<(String, RecipientOutcome)>,
    /// The last next hop tried (`mx1.example.com:25 [192.0.2.1]`), if any.
    pub next_hop: Option<String>,
    /// Negotiated TLS protocol and cipher, when TLS was used.
    pub tls_protocol: Option<String>,
    pub tls_cipher: Option<String>,
    /// Certificate verdict (`strong-ok`, `relaxed`, `unverified`, or the
    /// failure), when TLS was used.
    pub certificate: Option<String>,
}

/// Makes delivery attempts.
pub trait Transport: Send + Sync + 'static {
    fn deliver<'a>(
        &'a self,
        job: DeliveryJob<'a>,
    ) -> Pin<Box<dyn Future<Output = DeliveryReport> + Send + 'a>>;
}
