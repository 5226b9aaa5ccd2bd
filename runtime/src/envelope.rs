//! What the gateway keeps about a message besides its bytes.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// The SMTP envelope of an accepted message, as stored in the spool.
///
/// `client_ip` and `received_over_tls` are kept because the decision
/// function needs them at every delivery attempt (T2/T3, T6, T21).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Reverse-path without angle brackets; `""` is the null sender.
    pub mail_from: String,
    /// Forward-paths without angle brackets, in RCPT order, unique.
    pub rcpt_to: Vec<String>,
    pub client_ip: IpAddr,
    /// The name the client gave in EHLO/HELO.
    pub helo: String,
    pub received_over_tls: bool,
    /// Unix seconds when the message was acknowledged.
    pub received_at: u64,
}
