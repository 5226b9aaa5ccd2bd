//! Delivery status notifications (RFC 3464): bounces and delay notices.
//!
//! One notification covers every recipient of one message that it reports
//! on. Layout: `multipart/report; report-type=delivery-status` with a
//! human-readable `text/plain` part, a `message/delivery-status` part (one
//! per-recipient block with `Final-Recipient`, `Action`, `Status`,
//! `Remote-MTA` and `Diagnostic-Code` carrying the exact reason), and the
//! original message's headers as `text/rfc822-headers`. Lines end in CRLF
//! and no line starts with a dot issue: the spool stores bodies unstuffed
//! and the SMTP client stuffs.

use std::time::{SystemTime, UNIX_EPOCH};

/// Whether the notification reports a final failure or a delay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DsnAction {
    Failed,
    Delayed,
}

/// One recipient reported on.
#[derive(Clone, Debug)]
pub struct DsnRecipient {
    pub address: String,
    pub reason: String,
    /// Last next hop tried (`mx1.example.com:25 [192.0.2.1]`).
    pub last_hop: Option<String>,
    /// Whether the reason is a permanent answer (as opposed to temporary
    /// failures that ran out of time).
    pub permanent: bool,
}

/// Everything a notification says.
#[derive(Clone, Debug)]
pub struct Dsn<'a> {
    pub action: DsnAction,
    /// The gateway's host name (`Reporting-MTA`, `From`).
    pub reporting_mta: &'a str,
    /// Spool id of the original message.
    pub queue_id: &'a str,
    /// Envelope sender of the original message (the notification's `To`).
    pub original_sender: &'a str,
    /// Unix seconds when the original message arrived.
    pub arrival: u64,
    pub recipients: &'a [DsnRecipient],
    /// Unix seconds until which delayed recipients are retried.
    pub retry_until: Option<u64>,
    /// The original message's header section (without the blank line).
    pub original_headers: &'a [u8],
}

impl Dsn<'_> {
    /// The notification as a complete message: CRLF lines, unstuffed.
    pub fn render(&self, now: u64) -> Vec<u8> {
        let boundary = format!("{}/{}", self.queue_id, self.reporting_mta);
        let mut out = String::with_capacity(4096);
        let mut line = |s: &str| {
            out.push_str(s);
            out.push_str("\r\n");
        };
        let (subject, intro) = match self.action {
            DsnAction::Failed => (
                "Undelivered Mail Returned to Sender",
                "Your message could not be delivered to one or more recipients.\r\n\
                 It has been returned; the reasons are below.",
            ),
            DsnAction::Delayed => (
                "Delayed Mail (still being retried)",
                "Your message has not been delivered to one or more recipients yet.\r\n\
                 Delivery is still being attempted; you need not resend it.",
            ),
        };
        line(&format!(
            "From: Mail Delivery System <MAILER-DAEMON@{}>",
            self.reporting_mta
        ));
        line(&format!("To: <{}>", self.original_sender));
        line(&format!("Subject: {subject}"));
        line(&format!("Date: {}", rfc5322_date(now)));
        line(&format!(
            "Message-ID: <{}.{}.dsn@{}>",
            self.queue_id,
            match self.action {
                DsnAction::Failed => "failed",
                DsnAction::Delayed => "delayed",
            },
            self.reporting_mta
        ));
        line("Auto-Submitted: auto-replied");
        line("MIME-Version: 1.0");
        line(&format!(
            "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\""
        ));
        line("");
        line("This is a MIME-encapsulated delivery status notification.");
        line("");

        // Human-readable part.
        line(&format!("--{boundary}"));
        line("Content-Type: text/plain; charset=utf-8");
        line("Content-Transfer-Encoding: 8bit");
        line("");
        line(&format!(
            "This is the mail gateway at {}.",
            self.reporting_mta
        ));
        line("");
        line(intro);
        line("");
        for r in self.recipients {
            line(&format!("<{}>:", r.address));
            line(&format!("    {}", one_line(&r.reason)));
            if let Some(hop) = &r.last_hop {
                line(&format!("    (last tried: {})", one_line(hop)));
            }
        }
        if let (DsnAction::Delayed, Some(until)) = (self.action, self.retry_until) {
            line("");
            line(&format!(
                "Delivery will be retried until {}.",
                rfc5322_date(until)
            ));
        }
        line("");

        // Machine-readable part.
        line(&format!("--{boundary}"));
        line("Content-Type: message/delivery-status");
        line("");
        line(&format!("Reporting-MTA: dns; {}", self.reporting_mta));
        line(&format!("X-Tlsgate-Queue-ID: {}", self.queue_id));
        line(&format!("Arrival-Date: {}", rfc5322_date(self.arrival)));
        for r in self.recipients {
            line("");
            line(&format!("Final-Recipient: rfc822; {}", r.address));
            line(&format!(
                "Action: {}",
                match self.action {
                    DsnAction::Failed => "failed",
                    DsnAction::Delayed => "delayed",
                }
            ));
            line(&format!("Status: {}", status_code(self.action, r)));
            if let Some(host) = r.last_hop.as_deref().and_then(hop_host) {
                line(&format!("Remote-MTA: dns; {host}"));
            }
            let reason = one_line(&r.reason);
            let kind = if starts_with_reply_code(&reason) {
                "smtp"
            } else {
                "X-tlsgate"
            };
            line(&format!("Diagnostic-Code: {kind}; {reason}"));
            line(&format!("Last-Attempt-Date: {}", rfc5322_date(now)));
            if let (DsnAction::Delayed, Some(until)) = (self.action, self.retry_until) {
                line(&format!("Will-Retry-Until: {}", rfc5322_date(until)));
            }
        }
        line("");

        // The original headers.
        line(&format!("--{boundary}"));
        line("Content-Type: text/rfc822-headers");
        line("");
        let mut bytes = out.into_bytes();
        let headers = self.original_headers;
        bytes.extend_from_slice(headers);
        if !headers.is_empty() && !headers.ends_with(b"\r\n") {
            bytes.extend_from_slice(b"\r\n");
        }
        bytes.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        bytes
    }
}

/// The header section of a message (up to the first empty line), capped at
/// `max` bytes (cut at a line end).
pub fn header_section(message: &[u8], max: usize) -> &[u8] {
    let end = find(message, b"\r\n\r\n")
        .map(|i| i + 2)
        .unwrap_or(message.len());
    let mut cut = end.min(max);
    if cut < end {
        cut = message[..cut]
            .windows(2)
            .rposition(|w| w == b"\r\n")
            .map(|i| i + 2)
            .unwrap_or(0);
    }
    &message[..cut]
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reasons go on one header line: no CR/LF, bounded length.
fn one_line(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > 900 {
        let mut cut = 900;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str("...");
    }
    out
}

fn starts_with_reply_code(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 3
        && b[..3].iter().all(u8::is_ascii_digit)
        && (b.len() == 3 || b[3] == b' ' || b[3] == b'-')
}

/// `mx1.example.com:25 [192.0.2.1]` → `mx1.example.com`; `[2001:db8::1]:25` → `2001:db8::1`.
fn hop_host(hop: &str) -> Option<&str> {
    let hop = hop.trim();
    let host = if let Some(rest) = hop.strip_prefix('[') {
        rest.split(']').next()?
    } else {
        let first = hop.split_whitespace().next()?;
        match first.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|c| c.is_ascii_digit()) && !h.contains(':') => h,
            _ => first,
        }
    };
    (!host.is_empty()).then_some(host)
}

/// An enhanced status code (RFC 3463) found in a reason (`550 5.1.1 ...`).
fn enhanced_code(reason: &str) -> Option<(u8, &str)> {
    reason.split_whitespace().take(3).find_map(|w| {
        let (class, rest) = w.split_once('.')?;
        let class: u8 = match class {
            "2" | "4" | "5" => class.parse().ok()?,
            _ => return None,
        };
        let mut sub = rest.split('.');
        let a = sub.next()?;
        let b = sub.next()?;
        let ok = |x: &str| !x.is_empty() && x.len() <= 3 && x.bytes().all(|c| c.is_ascii_digit());
        (ok(a) && ok(b) && sub.next().is_none()).then_some((class, rest))
    })
}

fn status_code(action: DsnAction, r: &DsnRecipient) -> String {
    let class = match action {
        DsnAction::Failed => 5,
        DsnAction::Delayed => 4,
    };
    if let Some((_, detail)) = enhanced_code(&r.reason) {
        return format!("{class}.{detail}");
    }
    let lower = r.reason.to_ascii_lowercase();
    if lower.contains("not allowed by the policy") || lower.contains("policy refused") {
        // X.7.1: delivery not authorized.
        format!("{class}.7.1")
    } else if lower.contains("tls") || lower.contains("certificate") || lower.contains("starttls") {
        // X.7.10: encryption needed.
        format!("{class}.7.10")
    } else if r.permanent {
        format!("{class}.0.0")
    } else {
        // X.4.7: delivery time expired (or, for a delay, still trying).
        format!("{class}.4.7")
    }
}

/// Unix seconds now.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `Mon, 23 Nov 2026 19:28:57 +0000`.
pub fn rfc5322_date(unix: u64) -> String {
    let days = unix / 86_400;
    let secs = unix % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MON: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        WD[(days % 7) as usize],
        d,
        MON[(m - 1) as usize],
        y,
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_795_462_137),
            "Mon, 23 Nov 2026 19:28:57 +0000"
        );
    }

    #[test]
    fn hops_and_codes() {
        assert_eq!(
            hop_host("mx1.example.com:25 [192.0.2.1]"),
            Some("mx1.example.com")
        );
        assert_eq!(hop_host("[2001:db8::1]:25"), Some("2001:db8::1"));
        assert_eq!(hop_host("192.0.2.1"), Some("192.0.2.1"));
        let r = |reason: &str, permanent| DsnRecipient {
            address: "a@b.example".into(),
            reason: reason.into(),
            last_hop: None,
            permanent,
        };
        assert_eq!(
            status_code(DsnAction::Failed, &r("550 5.1.1 no such user", true)),
            "5.1.1"
        );
        assert_eq!(
            status_code(DsnAction::Failed, &r("451 4.3.0 try later", false)),
            "5.3.0"
        );
        assert_eq!(
            status_code(
                DsnAction::Failed,
                &r("TLS required but not offered by mx1.example.com", false)
            ),
            "5.7.10"
        );
        assert_eq!(
            status_code(DsnAction::Delayed, &r("connection refused", false)),
            "4.4.7"
        );
    }

    #[test]
    fn headers_are_cut_at_the_blank_line() {
        let m = b"Subject: hi\r\nFrom: a@b\r\n\r\nbody\r\n";
        assert_eq!(header_section(m, 1000), b"Subject: hi\r\nFrom: a@b\r\n");
        assert_eq!(header_section(m, 15), b"Subject: hi\r\n");
    }
}
