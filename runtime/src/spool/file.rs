//! The on-disk format of a queued message: one file, `queue/<id>.qm`.
//!
//! ```text
//! TLSGATE-SPOOL/1 EEEEEEEE BBBBBBBBBBBBBBBB\n   fixed 42 bytes; E: envelope length,
//!                                               B: body length (hex)
//! <envelope JSON, E bytes>\n
//! <body, B bytes: CRLF lines as received, not dot-stuffed>
//! S LLLLLLLL CCCCCCCCCCCCCCCC\n<state JSON, L bytes>\n     zero or more state records
//! ```
//!
//! The envelope is known when reception starts, so the header is written
//! first; the body length is filled in at commit (in place, before the
//! fsync). A message that was never deferred has no state record: every
//! recipient is pending. Each later save *appends* a whole
//! [`MessageState`] record (`C`: FNV-1a 64 of its JSON); the last complete
//! record wins. A record cut short by a crash during an append is ignored
//! (the previous state stands) and overwritten by the next append.

use std::io::{self, Write};
use std::path::Path;

use super::state::{MessageState, StoredEnvelope};

pub const MAGIC: &[u8; 16] = b"TLSGATE-SPOOL/1 ";
/// Length of the fixed first line.
pub const HEADER_LEN: usize = 42;
/// Where the hex body length sits in the first line.
pub const BODY_LEN_AT: usize = 25;
const RECORD_HEAD_LEN: usize = 28;
/// Bounds that no real envelope or state reaches; a larger length field
/// means the file is damaged.
pub const MAX_ENVELOPE: usize = 16 * 1024 * 1024;
pub const MAX_RECORD: usize = 16 * 1024 * 1024;

/// The first line and the envelope, with the body length still zero when
/// `body_len` is `None`.
pub fn header(envelope: &StoredEnvelope, body_len: u64) -> io::Result<Vec<u8>> {
    let json = serde_json::to_vec(envelope).map_err(io::Error::other)?;
    if json.len() > MAX_ENVELOPE {
        return Err(io::Error::other("envelope too large for the spool"));
    }
    let mut out = Vec::with_capacity(HEADER_LEN + json.len() + 1);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(format!("{:08x} {:016x}\n", json.len(), body_len).as_bytes());
    out.extend_from_slice(&json);
    out.push(b'\n');
    Ok(out)
}

/// The 16 hex digits of a body length (patched into the first line).
pub fn body_len_field(body_len: u64) -> [u8; 16] {
    let mut out = [b'0'; 16];
    out.copy_from_slice(format!("{body_len:016x}").as_bytes());
    out
}

/// What the first line says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub envelope_len: usize,
    pub body_len: u64,
}

impl Layout {
    pub fn envelope_offset(&self) -> u64 {
        HEADER_LEN as u64
    }
    pub fn body_offset(&self) -> u64 {
        (HEADER_LEN + self.envelope_len + 1) as u64
    }
    pub fn body_end(&self) -> u64 {
        self.body_offset().saturating_add(self.body_len)
    }
}

fn bad(reason: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason.into())
}

/// The value of a field of hex digits (`None` if it holds anything else).
pub(super) fn hex(field: &[u8]) -> Option<u64> {
    if field.is_empty() || !field.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(field).ok()?, 16).ok()
}

/// Parses the fixed first line.
pub fn parse_first_line(line: &[u8]) -> io::Result<Layout> {
    if line.len() < HEADER_LEN || !line.starts_with(MAGIC) {
        return Err(bad("not a tlsgate spool file (bad first line)"));
    }
    let env = hex(&line[16..24]);
    let body = hex(&line[25..41]);
    match (env, line[24], body, line[41]) {
        (Some(e), b' ', Some(b), b'\n') if (e as usize) <= MAX_ENVELOPE => Ok(Layout {
            envelope_len: e as usize,
            body_len: b,
        }),
        _ => Err(bad("not a tlsgate spool file (bad first line)")),
    }
}

/// Parses the envelope (`bytes`: the envelope JSON and its newline).
pub fn parse_envelope(bytes: &[u8]) -> io::Result<StoredEnvelope> {
    let Some((b'\n', json)) = bytes.split_last() else {
        return Err(bad("envelope not terminated"));
    };
    serde_json::from_slice(json).map_err(|e| bad(format!("envelope: {e}")))
}

/// Writes `parts` to `tmp` (created or truncated), `fdatasync`s it and
/// renames it to `dest`; on failure `tmp` is removed. The caller makes the
/// rename durable (fsync of `dest`'s directory).
pub fn write_then_rename(tmp: &Path, dest: &Path, parts: &[&[u8]]) -> io::Result<()> {
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(tmp)?;
        for part in parts {
            f.write_all(part)?;
        }
        f.sync_data()?;
        drop(f);
        std::fs::rename(tmp, dest)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    result
}

/// FNV-1a, 64 bits: enough to tell a torn or damaged record from a good one.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// One state record, ready to append.
pub fn state_record(state: &MessageState) -> io::Result<Vec<u8>> {
    let json = serde_json::to_vec(state).map_err(io::Error::other)?;
    if json.len() > MAX_RECORD {
        return Err(io::Error::other("queue state too large"));
    }
    let mut out = Vec::with_capacity(RECORD_HEAD_LEN + json.len() + 1);
    out.extend_from_slice(format!("S {:08x} {:016x}\n", json.len(), fnv1a(&json)).as_bytes());
    out.extend_from_slice(&json);
    out.push(b'\n');
    Ok(out)
}

/// The state records after the body.
#[derive(Debug, Default)]
pub struct Records {
    /// The last complete record.
    pub state: Option<MessageState>,
    /// Bytes of `tail` that hold complete records (where the next one goes).
    pub valid: usize,
    /// A torn or damaged record follows the valid ones.
    pub torn: bool,
}

/// Reads the records in `tail` (everything after the body). A record that
/// is incomplete, fails its checksum or does not parse ends the scan: it is
/// what an interrupted append leaves, and the next append replaces it.
pub fn parse_records(tail: &[u8]) -> Records {
    let mut out = Records::default();
    let mut at = 0usize;
    while at < tail.len() {
        let rest = &tail[at..];
        let Some(head) = rest.get(..RECORD_HEAD_LEN) else {
            out.torn = true;
            break;
        };
        let (len, sum) = match (
            head[0],
            head[1],
            hex(&head[2..10]),
            head[10],
            hex(&head[11..27]),
            head[27],
        ) {
            (b'S', b' ', Some(l), b' ', Some(c), b'\n') if (l as usize) <= MAX_RECORD => {
                (l as usize, c)
            }
            _ => {
                out.torn = true;
                break;
            }
        };
        let Some(body) = rest.get(RECORD_HEAD_LEN..RECORD_HEAD_LEN + len + 1) else {
            out.torn = true;
            break;
        };
        let (json, nl) = body.split_at(len);
        if nl != b"\n" || fnv1a(json) != sum {
            out.torn = true;
            break;
        }
        match serde_json::from_slice::<MessageState>(json) {
            Ok(s) => out.state = Some(s),
            Err(_) => {
                out.torn = true;
                break;
            }
        }
        at += RECORD_HEAD_LEN + len + 1;
        out.valid = at;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Envelope;
    use crate::spool::state::{MessageKind, RecipientStatus};
    use std::net::{IpAddr, Ipv4Addr};

    fn env() -> StoredEnvelope {
        StoredEnvelope {
            envelope: Envelope {
                mail_from: "a@b.test".into(),
                rcpt_to: vec!["c@d.test".into(), "e@f.test".into()],
                client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                helo: "h".into(),
                received_over_tls: true,
                received_at: 7,
            },
            kind: MessageKind::Received,
        }
    }

    #[test]
    fn header_round_trip() {
        let e = env();
        let mut h = header(&e, 0).unwrap_or_default();
        h[BODY_LEN_AT..BODY_LEN_AT + 16].copy_from_slice(&body_len_field(1234));
        let layout = parse_first_line(&h).unwrap_or(Layout {
            envelope_len: 0,
            body_len: 0,
        });
        assert_eq!(layout.body_len, 1234);
        assert_eq!(layout.body_offset() as usize, h.len());
        let parsed = parse_envelope(&h[HEADER_LEN..]).ok();
        assert_eq!(parsed, Some(e));
        assert!(parse_first_line(b"From: someone\r\n").is_err());
    }

    #[test]
    fn last_complete_record_wins_and_torn_tail_is_ignored() {
        let e = env();
        let mut s = MessageState::fresh(&e.envelope);
        let mut tail = state_record(&s).unwrap_or_default();
        s.recipients[0].status = RecipientStatus::Delivered { at_ms: 5 };
        let second = state_record(&s).unwrap_or_default();
        tail.extend_from_slice(&second);
        let good = tail.len();
        let r = parse_records(&tail);
        assert_eq!(r.state.as_ref(), Some(&s));
        assert_eq!((r.valid, r.torn), (good, false));
        // A torn third record.
        let third = state_record(&MessageState::fresh(&e.envelope)).unwrap_or_default();
        tail.extend_from_slice(&third[..third.len() - 5]);
        let r = parse_records(&tail);
        assert_eq!(r.state.as_ref(), Some(&s));
        assert_eq!((r.valid, r.torn), (good, true));
        // A flipped byte in the last record: the one before it stands.
        let mut damaged = tail[..good].to_vec();
        let n = damaged.len();
        damaged[n - 3] ^= 0x20;
        let r = parse_records(&damaged);
        assert_eq!(r.valid, good - second.len());
        assert!(r.torn);
    }
}
