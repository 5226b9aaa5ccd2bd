//! Message ids: unique, sortable by arrival time, safe as file names.
//!
//! Form: 16 hex digits of Unix microseconds, `-`, 8 hex digits of a
//! per-process counter mixed with randomness (`0001a2b3c4d5e6f7-9c0e12ab`).
//! Lexical order is time order; the parser accepts nothing else, so an id
//! given on the command line can never name a path outside the spool.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Spool id of a message.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MessageId {
    micros: u64,
    seq: u32,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl MessageId {
    /// A fresh id for a message arriving now.
    pub fn generate() -> MessageId {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        // Counter in the low half keeps ids of one process unique; random
        // high half keeps two processes (or a restart within the same
        // microsecond) apart.
        let counter = SEQ.fetch_add(1, Ordering::Relaxed) & 0xffff;
        let high: u32 = rand::random::<u32>() & 0xffff_0000;
        MessageId {
            micros,
            seq: high | counter,
        }
    }

    /// Unix time of arrival in microseconds.
    pub fn micros(&self) -> u64 {
        self.micros
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}-{:08x}", self.micros, self.seq)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

/// Why a string is not a [`MessageId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a message id (16 hex digits, `-`, 8 hex digits)")]
pub struct BadMessageId(pub String);

impl FromStr for MessageId {
    type Err = BadMessageId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadMessageId(s.to_string());
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let hex = |x: &str, n: usize| x.len() == n && x.bytes().all(|c| c.is_ascii_hexdigit());
        if !hex(a, 16) || !hex(b, 8) {
            return Err(bad());
        }
        Ok(MessageId {
            micros: u64::from_str_radix(a, 16).map_err(|_| bad())?,
            seq: u32::from_str_radix(b, 16).map_err(|_| bad())?,
        })
    }
}

impl TryFrom<String> for MessageId {
    type Error = BadMessageId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<MessageId> for String {
    fn from(id: MessageId) -> String {
        id.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_order() {
        let a = MessageId::generate();
        let b = MessageId::generate();
        assert_ne!(a, b);
        let s = a.to_string();
        assert_eq!(s.len(), 25);
        assert_eq!(s.parse::<MessageId>().ok(), Some(a));
        let early: MessageId = "0000000000000001-ffffffff".parse().unwrap_or(a);
        let late: MessageId = "0000000000000002-00000000".parse().unwrap_or(a);
        assert!(early < late);
        assert!(early.to_string() < late.to_string());
    }

    #[test]
    fn refuses_paths() {
        for s in [
            "../../etc/passwd",
            "",
            "0000000000000001-fffffff",
            "0000000000000001_ffffffff",
            "000000000000000g-ffffffff",
        ] {
            assert!(s.parse::<MessageId>().is_err(), "{s}");
        }
    }
}
