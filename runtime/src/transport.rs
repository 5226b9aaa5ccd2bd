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
    pub body: &'a Path,
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
