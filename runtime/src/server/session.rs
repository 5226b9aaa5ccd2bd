//! The ESMTP session state machine (no I/O).
//!
//! [`Session::command`] takes one parsed command and answers a [`Step`]: a
//! reply, a reply and close, "start TLS now" or "start DATA with this
//! envelope". The connection driver (`server::conn`) moves the bytes; the
//! policy questions go to `policy::CompiledPolicy` (T4 at MAIL, T6 at RCPT).

use std::fmt::Write as _;
use std::net::IpAddr;

use policy::MessageContext;

use crate::envelope::Envelope;
use crate::policy_store::PolicyHandle;
use crate::smtp::command::{Command, CommandError, DataFault, MailParams};

/// One SMTP reply (possibly multi-line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn new(code: u16, text: impl Into<String>) -> Self {
        Reply {
            code,
            lines: vec![text.into()],
        }
    }

    /// Appends the wire form (CRLF lines) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let last = self.lines.len().saturating_sub(1);
        let mut s = String::new();
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            let _ = write!(s, "{}{}{}\r\n", self.code, sep, line);
        }
        out.extend_from_slice(s.as_bytes());
    }

    pub fn is_permanent_error(&self) -> bool {
        self.code >= 500
    }
}

/// How recipients are checked.
#[derive(Clone, Debug)]
pub enum Gate {
    /// The relay: every recipient goes through the decision function (T6).
    Policy(PolicyHandle),
    /// The `tlsgate sink` test tool: every recipient is accepted. Never used
    /// by the relay.
    AcceptAll,
}

/// Limits and names a session needs.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// The gateway's host name (banner, EHLO, `Received:`).
    pub hostname: String,
    /// Largest message accepted, in bytes (SIZE).
    pub max_message_size: u64,
    /// Most recipients per message (`452 4.5.3` beyond).
    pub max_recipients: usize,
    /// Bad commands tolerated before `421` and close.
    pub max_errors: u32,
    /// Where `RCPT TO:<postmaster>` (no domain, RFC 5321 §4.5.1) goes;
    /// `None`: `postmaster@` the policy's first registered domain.
    pub postmaster: Option<String>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            hostname: "localhost".into(),
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 100,
            max_errors: 10,
            postmaster: None,
        }
    }
}

/// What the driver must do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Reply(Reply),
    /// Send the reply, then close the connection.
    Close(Reply),
    /// Send the reply (`220`), drop any buffered input, start the TLS
    /// handshake, then call [`Session::tls_started`].
    StartTls(Reply),
    /// Open storage for this envelope; answer `354` (or a storage error),
    /// stream the message, then call [`Session::data_finished`].
    Data(Envelope),
}

/// What a TLS session negotiated, for `Received:` and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsInfo {
    pub protocol: String,
    pub cipher: String,
}

/// One SMTP session's state.
#[derive(Debug)]
pub struct Session {
    cfg: std::sync::Arc<SessionConfig>,
    gate: Gate,
    peer: IpAddr,
    tls_available: bool,
    tls: Option<TlsInfo>,
    helo: Option<(String, bool)>,
    mail: Option<(String, MailParams)>,
    rcpts: Vec<String>,
    errors: u32,
}

impl Session {
    pub fn new(
        cfg: std::sync::Arc<SessionConfig>,
        gate: Gate,
        peer: IpAddr,
        tls_available: bool,
    ) -> Self {
        Session {
            cfg,
            gate,
            peer,
            tls_available,
            tls: None,
            helo: None,
            mail: None,
            rcpts: Vec::new(),
            errors: 0,
        }
    }

    pub fn peer(&self) -> IpAddr {
        self.peer
    }

    pub fn tls(&self) -> Option<&TlsInfo> {
        self.tls.as_ref()
    }

    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    pub fn greeting(&self) -> Reply {
        Reply::new(220, format!("{} ESMTP tlsgate", self.cfg.hostname))
    }

    /// The client's EHLO/HELO name and whether it used EHLO.
    pub fn helo(&self) -> Option<(&str, bool)> {
        self.helo.as_ref().map(|(n, e)| (n.as_str(), *e))
    }

    fn reset_transaction(&mut self) {
        self.mail = None;
        self.rcpts.clear();
    }

    /// Counts a client error; closes after too many.
    fn error(&mut self, reply: Reply) -> Step {
        self.errors += 1;
        if self.errors >= self.cfg.max_errors {
            tracing::info!(peer = %self.peer, "closing session after too many errors");
            return Step::Close(Reply::new(421, "4.7.0 too many errors, closing connection"));
        }
        Step::Reply(reply)
    }

    /// A command line longer than the limit was dropped.
    pub fn line_too_long(&mut self) -> Step {
        self.error(Reply::new(500, "5.5.2 line too long"))
    }

    /// Answers one command.
    pub fn command(&mut self, parsed: Result<Command, CommandError>, has_room: bool) -> Step {
        let cmd = match parsed {
            Ok(c) => c,
            Err(e) => {
                let reply = match &e {
                    CommandError::UnknownCommand => Reply::new(500, format!("5.5.1 {e}")),
                    CommandError::Syntax(_) => Reply::new(501, format!("5.5.4 {e}")),
                    CommandError::UnknownParameter(_) => Reply::new(555, format!("5.5.4 {e}")),
                    CommandError::BareLf => Reply::new(500, format!("5.5.2 {e}")),
                    CommandError::NonAsciiAddress => Reply::new(553, format!("5.6.7 {e}")),
                };
                return self.error(reply);
            }
        };
        match cmd {
            Command::Ehlo(name) => {
                self.reset_transaction();
                self.helo = Some((name, true));
                let mut lines = vec![
                    format!("{} greets {}", self.cfg.hostname, self.peer),
                    "PIPELINING".into(),
                    format!("SIZE {}", self.cfg.max_message_size),
                    "8BITMIME".into(),
                    "ENHANCEDSTATUSCODES".into(),
                ];
                if self.tls_available && self.tls.is_none() {
                    lines.push("STARTTLS".into());
                }
                Step::Reply(Reply { code: 250, lines })
            }
            Command::Helo(name) => {
                self.reset_transaction();
                self.helo = Some((name, false));
                Step::Reply(Reply::new(250, self.cfg.hostname.clone()))
            }
            Command::StartTls => {
                if self.tls.is_some() {
                    self.error(Reply::new(503, "5.5.1 TLS already active"))
                } else if !self.tls_available {
                    Step::Reply(Reply::new(454, "4.7.0 TLS not available"))
                } else {
                    Step::StartTls(Reply::new(220, "2.0.0 ready to start TLS"))
                }
            }
            Command::Mail { from, params } => self.mail(from, params, has_room),
            Command::Rcpt { to } => self.rcpt(to),
            Command::Data => {
                if self.mail.is_none() {
                    return self.error(Reply::new(503, "5.5.1 need MAIL first"));
                }
                if self.rcpts.is_empty() {
                    return self.error(Reply::new(554, "5.5.1 no valid recipients"));
                }
                let (mail_from, _) = self.mail.clone().unwrap_or_default();
                Step::Data(Envelope {
                    mail_from,
                    rcpt_to: self.rcpts.clone(),
                    client_ip: self.peer,
                    helo: self.helo.as_ref().map(|h| h.0.clone()).unwrap_or_default(),
                    received_over_tls: self.tls.is_some(),
                    received_at: unix_now(),
                })
            }
            Command::Rset => {
                self.reset_transaction();
                Step::Reply(Reply::new(250, "2.0.0 ok"))
            }
            Command::Noop => Step::Reply(Reply::new(250, "2.0.0 ok")),
            Command::Quit => Step::Close(Reply::new(221, "2.0.0 bye")),
            Command::Vrfy => Step::Reply(Reply::new(252, "2.5.0 cannot verify, send some mail")),
            Command::Help => Step::Reply(Reply::new(214, "2.0.0 see RFC 5321")),
        }
    }

    fn mail(&mut self, from: String, params: MailParams, has_room: bool) -> Step {
        if self.helo.is_none() {
            return self.error(Reply::new(503, "5.5.1 say EHLO first"));
        }
        if self.mail.is_some() {
            return self.error(Reply::new(503, "5.5.1 nested MAIL command"));
        }
        // Rule T4: a registered domain's outbound servers under outbound
        // enforcement must complete STARTTLS before a mail transaction.
        if self.tls.is_none() {
            if let Gate::Policy(handle) = &self.gate {
                let active = handle.current();
                if active.compiled.client(self.peer).tls_required {
                    tracing::info!(peer = %self.peer, rule = "T4", "mail transaction before STARTTLS refused");
                    return self
                        .error(Reply::new(530, "5.7.0 must issue a STARTTLS command first"));
                }
            }
        }
        if let Some(size) = params.size {
            if size > self.cfg.max_message_size {
                return Step::Reply(Reply::new(552, "5.3.4 message size exceeds fixed maximum"));
            }
        }
        if !has_room {
            return Step::Reply(Reply::new(452, "4.3.1 insufficient system storage"));
        }
        self.mail = Some((from, params));
        Step::Reply(Reply::new(250, "2.1.0 sender ok"))
    }

    /// `postmaster` without a domain must be accepted (RFC 5321 §4.5.1):
    /// it becomes the configured postmaster address, or `postmaster@` the
    /// policy's first registered domain. The result still goes through
    /// the decision function like any other recipient.
    fn postmaster(&self) -> Option<String> {
        if let Some(p) = &self.cfg.postmaster {
            return Some(p.clone());
        }
        match &self.gate {
            Gate::Policy(handle) => {
                let active = handle.current();
                let first = active.compiled.policy().domains.first()?;
                Some(format!("postmaster@{}", first.name.as_str()))
            }
            Gate::AcceptAll => Some(format!("postmaster@{}", self.cfg.hostname)),
        }
    }

    fn rcpt(&mut self, to: String) -> Step {
        if self.mail.is_none() {
            return self.error(Reply::new(503, "5.5.1 need MAIL first"));
        }
        let to = if to.contains('@') {
            to
        } else {
            match self.postmaster() {
                Some(p) => p,
                None => return self.error(Reply::new(550, "5.1.1 no postmaster here")),
            }
        };
        let Some((from, _)) = &self.mail else {
            return self.error(Reply::new(503, "5.5.1 need MAIL first"));
        };
        if self.rcpts.len() >= self.cfg.max_recipients {
            return Step::Reply(Reply::new(452, "4.5.3 too many recipients"));
        }
        if let Gate::Policy(handle) = &self.gate {
            let active = handle.current();
            let ctx = MessageContext {
                sender: from,
                recipient: &to,
                client_ip: self.peer,
                received_over_tls: self.tls.is_some(),
            };
            match active.compiled.decide(&ctx) {
                Err(e) => return self.error(Reply::new(501, format!("5.1.3 {e}"))),
                Ok(decision) if decision.is_refused() => {
                    // Rule T6: never an open relay.
                    tracing::info!(peer = %self.peer, rcpt = %to, rule = "T6", "relaying denied");
                    return self.error(Reply::new(550, "5.7.1 relaying denied"));
                }
                Ok(_) => {}
            }
        }
        if !self.rcpts.iter().any(|r| r.eq_ignore_ascii_case(&to)) {
            self.rcpts.push(to);
        }
        Step::Reply(Reply::new(250, "2.1.5 recipient ok"))
    }

    /// The TLS handshake succeeded: everything said before is forgotten
    /// (RFC 3207 §4.2); a new EHLO is required.
    pub fn tls_started(&mut self, info: TlsInfo) {
        self.tls = Some(info);
        self.helo = None;
        self.reset_transaction();
    }

    /// DATA ended (stored or not); the transaction is over.
    pub fn data_finished(&mut self) {
        self.reset_transaction();
    }

    /// The reply for a message refused by the DATA decoder.
    pub fn data_fault_reply(fault: DataFault) -> Reply {
        match fault {
            DataFault::BareLineEnding => Reply::new(
                550,
                "5.6.0 message refused: bare CR or LF (lines must end with CRLF)",
            ),
            DataFault::LineTooLong => Reply::new(550, "5.6.0 message refused: line too long"),
            DataFault::TooBig => Reply::new(552, "5.3.4 message size exceeds fixed maximum"),
        }
    }

    /// The `Received:` trace header for a message of this session.
    pub fn received_header(&self, envelope: &Envelope) -> String {
        let helo = self
            .helo
            .as_ref()
            .map(|h| h.0.as_str())
            .unwrap_or("unknown");
        let with = match (&self.tls, self.helo.as_ref().is_some_and(|h| h.1)) {
            (Some(_), _) => "ESMTPS",
            (None, true) => "ESMTP",
            (None, false) => "SMTP",
        };
        let mut h = format!(
            "Received: from {} ([{}])\r\n\tby {} (tlsgate) with {}",
            helo, self.peer, self.cfg.hostname, with
        );
        if let Some(tls) = &self.tls {
            let _ = write!(h, "\r\n\t(version={} cipher={})", tls.protocol, tls.cipher);
        }
        if let [one] = envelope.rcpt_to.as_slice() {
            let _ = write!(h, "\r\n\tfor <{one}>");
        }
        let _ = write!(h, "; {}\r\n", rfc5322_date(envelope.received_at));
        h
    }
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `Mon, 23 Nov 2026 19:28:32 +0000` for unix seconds.
pub fn rfc5322_date(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        DAYS[(days.rem_euclid(7)) as usize],
        d,
        MONTHS[(m - 1) as usize],
        y,
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::smtp::command::{parse_command, Parsed};
    use policy::{DomainName, Policy};
    use std::sync::Arc;

    fn policy() -> PolicyHandle {
        let mut p = Policy::empty(1);
        p.domains.push(policy::Domain {
            name: DomainName::parse("example.com").unwrap(),
            settings: None,
            details: None,
        });
        PolicyHandle::fixed(p)
    }

    fn run(s: &mut Session, line: &str) -> Step {
        match parse_command(format!("{line}\r\n").as_bytes()) {
            Parsed::Complete { command, .. } => s.command(command, true),
            other => panic!("{other:?}"),
        }
    }

    fn code(step: &Step) -> u16 {
        match step {
            Step::Reply(r) | Step::Close(r) | Step::StartTls(r) => r.code,
            Step::Data(_) => 354,
        }
    }

    #[test]
    fn transaction_table() {
        let mut s = Session::new(
            Arc::new(SessionConfig::default()),
            Gate::Policy(policy()),
            "192.0.2.1".parse().unwrap(),
            true,
        );
        let table = [
            ("MAIL FROM:<a@b.example>", 503),
            ("EHLO c.example", 250),
            ("RCPT TO:<x@example.com>", 503),
            ("DATA", 503),
            ("MAIL FROM:<a@b.example> SIZE=999999999999", 552),
            ("MAIL FROM:<a@b.example>", 250),
            ("MAIL FROM:<a@b.example>", 503),
            ("RCPT TO:<x@elsewhere.example>", 550),
            ("RCPT TO:<x@example.com>", 250),
            ("RCPT TO:<y@sub.example.com>", 250),
            ("DATA", 354),
            ("RSET", 250),
            ("DATA", 503),
            ("STARTTLS", 220),
            ("QUIT", 221),
        ];
        for (line, want) in table {
            assert_eq!(code(&run(&mut s, line)), want, "{line}");
        }
    }

    #[test]
    fn ehlo_offers_starttls_once() {
        let mut s = Session::new(
            Arc::new(SessionConfig::default()),
            Gate::AcceptAll,
            "192.0.2.1".parse().unwrap(),
            true,
        );
        let Step::Reply(r) = run(&mut s, "EHLO x") else {
            panic!()
        };
        assert!(r.lines.iter().any(|l| l == "STARTTLS"));
        s.tls_started(TlsInfo {
            protocol: "TLSv1_3".into(),
            cipher: "x".into(),
        });
        assert_eq!(
            code(&run(&mut s, "MAIL FROM:<a@b>")),
            503,
            "EHLO needed again"
        );
        let Step::Reply(r) = run(&mut s, "EHLO x") else {
            panic!()
        };
        assert!(!r.lines.iter().any(|l| l == "STARTTLS"));
        assert_eq!(code(&run(&mut s, "STARTTLS")), 503);
    }

    #[test]
    fn too_many_errors_close() {
        let cfg = SessionConfig {
            max_errors: 3,
            ..SessionConfig::default()
        };
        let mut s = Session::new(
            Arc::new(cfg),
            Gate::AcceptAll,
            "192.0.2.1".parse().unwrap(),
            false,
        );
        assert!(matches!(run(&mut s, "BAD"), Step::Reply(_)));
        assert!(matches!(run(&mut s, "BAD"), Step::Reply(_)));
        assert!(matches!(run(&mut s, "BAD"), Step::Close(r) if r.code == 421));
    }

    #[test]
    fn recipients_limit() {
        let cfg = SessionConfig {
            max_recipients: 2,
            ..SessionConfig::default()
        };
        let mut s = Session::new(
            Arc::new(cfg),
            Gate::AcceptAll,
            "192.0.2.1".parse().unwrap(),
            false,
        );
        run(&mut s, "EHLO x");
        run(&mut s, "MAIL FROM:<>");
        assert_eq!(code(&run(&mut s, "RCPT TO:<a@x>")), 250);
        assert_eq!(code(&run(&mut s, "RCPT TO:<b@x>")), 250);
        assert_eq!(code(&run(&mut s, "RCPT TO:<c@x>")), 452);
    }

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_795_462_112),
            "Mon, 23 Nov 2026 19:28:32 +0000"
        );
    }
}
