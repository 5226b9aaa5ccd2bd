//! What the queue remembers about a message between attempts.
//!
//! Stored beside the message as `<id>.state` (JSON), rewritten whole by
//! write-temp + fsync + rename + directory fsync, so a crash leaves either
//! the old state or the new one. A message without a state file has never
//! been attempted: every recipient is pending.

use serde::{Deserialize, Serialize};

use crate::envelope::Envelope;

/// Where a message came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// Accepted from an SMTP client.
    #[default]
    Received,
    /// A delivery status notification the gateway wrote itself (from `<>`).
    Notification,
}

/// The envelope as stored on disk (`<id>.env`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEnvelope {
    #[serde(flatten)]
    pub envelope: Envelope,
    #[serde(default)]
    pub kind: MessageKind,
}

/// Where one recipient stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RecipientStatus {
    /// Not attempted yet.
    Pending,
    /// Accepted by the next hop (unix milliseconds).
    Delivered { at_ms: u64 },
    /// Failed temporarily; try again at `next_attempt_ms`.
    Deferred {
        reason: String,
        next_attempt_ms: u64,
    },
    /// Failed for good (permanent answer, policy refusal, or retry period
    /// over).
    Failed { reason: String, at_ms: u64 },
}

/// One envelope recipient and what became of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientState {
    pub address: String,
    #[serde(flatten)]
    pub status: RecipientStatus,
    /// Attempts made for this recipient.
    #[serde(default)]
    pub attempts: u32,
    /// The last next hop tried for it (`mx1.example.com:25 [192.0.2.1]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_hop: Option<String>,
    /// A bounce naming this (failed) recipient was written (so a crash
    /// before the message is removed does not send it twice).
    #[serde(default)]
    pub notified: bool,
}

impl RecipientState {
    /// Delivered or failed: nothing more will be attempted.
    pub fn is_final(&self) -> bool {
        matches!(
            self.status,
            RecipientStatus::Delivered { .. } | RecipientStatus::Failed { .. }
        )
    }

    /// The last reason it was not delivered, if any.
    pub fn reason(&self) -> Option<&str> {
        match &self.status {
            RecipientStatus::Deferred { reason, .. } | RecipientStatus::Failed { reason, .. } => {
                Some(reason)
            }
            _ => None,
        }
    }
}

/// The per-message state file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageState {
    pub recipients: Vec<RecipientState>,
    /// A delay notice went to the sender.
    #[serde(default)]
    pub delay_notice_sent: bool,
}

impl MessageState {
    /// The state of a message nobody has attempted yet.
    pub fn fresh(envelope: &Envelope) -> MessageState {
        MessageState {
            recipients: envelope
                .rcpt_to
                .iter()
                .map(|a| RecipientState {
                    address: a.clone(),
                    status: RecipientStatus::Pending,
                    attempts: 0,
                    last_hop: None,
                    notified: false,
                })
                .collect(),
            delay_notice_sent: false,
        }
    }

    /// Every recipient is delivered or failed.
    pub fn is_done(&self) -> bool {
        self.recipients.iter().all(RecipientState::is_final)
    }

    /// Earliest time (unix ms) something is due: `0` for pending
    /// recipients, `None` when all are final.
    pub fn next_attempt_ms(&self) -> Option<u64> {
        self.recipients
            .iter()
            .filter_map(|r| match &r.status {
                RecipientStatus::Pending => Some(0),
                RecipientStatus::Deferred {
                    next_attempt_ms, ..
                } => Some(*next_attempt_ms),
                _ => None,
            })
            .min()
    }

    /// Most attempts made for any recipient.
    pub fn attempts(&self) -> u32 {
        self.recipients
            .iter()
            .map(|r| r.attempts)
            .max()
            .unwrap_or(0)
    }

    /// The most recent reason any recipient gave.
    pub fn last_reason(&self) -> Option<&str> {
        self.recipients
            .iter()
            .rev()
            .find_map(|r| match &r.status {
                RecipientStatus::Deferred { reason, .. } => Some(reason.as_str()),
                _ => None,
            })
            .or_else(|| {
                self.recipients
                    .iter()
                    .rev()
                    .find_map(RecipientState::reason)
            })
    }
}
