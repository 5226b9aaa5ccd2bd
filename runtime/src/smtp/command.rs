//! SMTP command parsing and DATA decoding (sans-IO).
//!
//! Nothing here touches a socket. [`parse_command`] looks at the bytes a
//! server has buffered and answers *complete command* (with how many bytes
//! it used), *need more bytes*, or *line too long*. [`DataDecoder`] turns the
//! bytes of a DATA section into the message as stored: it removes dot
//! stuffing, finds the end marker, and notices what must make the message
//! refused (bare CR or bare LF — SMTP smuggling —, over-long lines, size).
//!
//! Only `CRLF . CRLF` ends a message. A bare LF or bare CR anywhere in the
//! text marks the message as refused, so the `\n.\n`, `\r\n.\n` and
//! `\n.\r\n` tricks cannot end (or split) a message here.

use core::fmt;

/// Longest command line, CRLF included (RFC 5321 §4.5.3.1.4).
pub const MAX_COMMAND_LINE: usize = 512;
/// Longest text line of a message, CRLF included (RFC 5321 §4.5.3.1.6).
pub const MAX_TEXT_LINE: usize = 1000;
/// Longest local part of an address (RFC 5321 §4.5.3.1.1).
pub const MAX_LOCAL_PART: usize = 64;
/// What is tolerated beyond the RFC limits before refusing: real clients
/// occasionally exceed them by a little (long EHLO names, long headers).
pub const LINE_TOLERANCE: usize = 488;

/// A parsed SMTP command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    Mail { from: String, params: MailParams },
    Rcpt { to: String },
    Data,
    Rset,
    Noop,
    Quit,
    StartTls,
    Vrfy,
    Help,
}

/// The ESMTP parameters of MAIL FROM that the server understands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MailParams {
    /// `SIZE=` (RFC 1870): the client's estimate of the message size.
    pub size: Option<u64>,
    /// `BODY=8BITMIME` (RFC 6152).
    pub eight_bit: bool,
}

/// Why a complete command line was not acceptable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandError {
    /// The verb is not known: `500 5.5.1`.
    UnknownCommand,
    /// The verb is known but its arguments are not: `501 5.5.4`.
    Syntax(&'static str),
    /// An ESMTP parameter we do not implement: `555 5.5.4`.
    UnknownParameter(String),
    /// The line ends in a bare LF: `500 5.5.2`.
    BareLf,
    /// An address with non-ASCII characters; SMTPUTF8 is not offered:
    /// `553 5.6.7`.
    NonAsciiAddress,
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandError::UnknownCommand => f.write_str("command not recognized"),
            CommandError::Syntax(what) => write!(f, "syntax error: {what}"),
            CommandError::UnknownParameter(p) => write!(f, "parameter `{p}` not supported"),
            CommandError::BareLf => f.write_str("command lines must end with CRLF"),
            CommandError::NonAsciiAddress => {
                f.write_str("non-ASCII addresses need SMTPUTF8, which is not offered")
            }
        }
    }
}

/// The answer of [`parse_command`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole line was there; `consumed` bytes (through its LF) are used up.
    Complete {
        command: Result<Command, CommandError>,
        consumed: usize,
    },
    /// No complete line yet.
    NeedMore,
    /// The line is longer than [`MAX_COMMAND_LINE`] plus tolerance:
    /// `consumed` bytes are to be dropped; when `line_ended` is false the
    /// rest of the line is still to come and must be dropped as well.
    TooLong { consumed: usize, line_ended: bool },
}

const COMMAND_LIMIT: usize = MAX_COMMAND_LINE + LINE_TOLERANCE;

/// Looks for one command line at the start of `buf`.
pub fn parse_command(buf: &[u8]) -> Parsed {
    let window = &buf[..buf.len().min(COMMAND_LIMIT)];
    match window.iter().position(|&b| b == b'\n') {
        Some(lf) => {
            let consumed = lf + 1;
            let command = match buf[..lf].strip_suffix(b"\r") {
                Some(line) => parse_line(line),
                None => Err(CommandError::BareLf),
            };
            Parsed::Complete { command, consumed }
        }
        // Only the window is dropped here: its line's end (and whatever
        // follows it) may already be buffered beyond it.
        None if buf.len() >= COMMAND_LIMIT => Parsed::TooLong {
            consumed: COMMAND_LIMIT,
            line_ended: false,
        },
        None => Parsed::NeedMore,
    }
}

/// For a line being dropped after [`Parsed::TooLong`]: how many bytes of
/// `buf` belong to it, and whether its end was found.
pub fn skip_line(buf: &[u8]) -> (usize, bool) {
    match buf.iter().position(|&b| b == b'\n') {
        Some(lf) => (lf + 1, true),
        None => (buf.len(), false),
    }
}

fn parse_line(line: &[u8]) -> Result<Command, CommandError> {
    // NUL, other C0 controls (tab aside) and DEL have no place in a
    // command line; they are how parsers in other hops get confused.
    if line.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(CommandError::Syntax("control characters in command"));
    }
    let Ok(line) = core::str::from_utf8(line) else {
        return Err(CommandError::Syntax("command line is not valid UTF-8"));
    };
    let (verb, rest) = match line.find(' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, ""),
    };
    let rest = rest.trim_matches(' ');
    let verb = verb.to_ascii_uppercase();
    let no_args = |c: Command| {
        if rest.is_empty() {
            Ok(c)
        } else {
            Err(CommandError::Syntax("no arguments expected"))
        }
    };
    match verb.as_str() {
        "EHLO" | "HELO" => {
            if rest.is_empty() || rest.contains(' ') {
                return Err(CommandError::Syntax("expected a domain or address literal"));
            }
            if !rest.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(CommandError::Syntax("invalid characters in name"));
            }
            let name = rest.to_string();
            Ok(if verb == "EHLO" {
                Command::Ehlo(name)
            } else {
                Command::Helo(name)
            })
        }
        "MAIL" => {
            let rest = strip_prefix_ci(rest, "FROM:")
                .ok_or(CommandError::Syntax("expected `MAIL FROM:<address>`"))?;
            let (from, params) = path_and_params(rest.trim_start_matches(' '))?;
            let params = mail_params(params)?;
            Ok(Command::Mail { from, params })
        }
        "RCPT" => {
            let rest = strip_prefix_ci(rest, "TO:")
                .ok_or(CommandError::Syntax("expected `RCPT TO:<address>`"))?;
            let (to, params) = path_and_params(rest.trim_start_matches(' '))?;
            if let Some(p) = params.split(' ').find(|p| !p.is_empty()) {
                return Err(CommandError::UnknownParameter(p.to_string()));
            }
            if to.is_empty() {
                return Err(CommandError::Syntax("the null path is not a recipient"));
            }
            if !to.contains('@') && !to.eq_ignore_ascii_case("postmaster") {
                return Err(CommandError::Syntax("recipient must be local@domain"));
            }
            Ok(Command::Rcpt { to })
        }
        "DATA" => no_args(Command::Data),
        "RSET" => no_args(Command::Rset),
        "QUIT" => no_args(Command::Quit),
        "STARTTLS" => no_args(Command::StartTls),
        "NOOP" => Ok(Command::Noop),
        "VRFY" => Ok(Command::Vrfy),
        "HELP" => Ok(Command::Help),
        _ => Err(CommandError::UnknownCommand),
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Splits `<path> params` and returns the path without brackets (and
/// without an RFC 5321 source route).
fn path_and_params(s: &str) -> Result<(String, &str), CommandError> {
    let s = s
        .strip_prefix('<')
        .ok_or(CommandError::Syntax("address must be in angle brackets"))?;
    let end = s
        .find('>')
        .ok_or(CommandError::Syntax("missing `>` after address"))?;
    let mut path = &s[..end];
    let params = &s[end + 1..];
    if !params.is_empty() && !params.starts_with(' ') {
        return Err(CommandError::Syntax("expected a space after `>`"));
    }
    if path.starts_with('@') {
        path = match path.find(':') {
            Some(i) => &path[i + 1..],
            None => return Err(CommandError::Syntax("bad source route")),
        };
    }
    if path
        .bytes()
        .any(|b| b.is_ascii_control() || b == b' ' || b == b'<')
    {
        return Err(CommandError::Syntax("invalid characters in address"));
    }
    if !path.is_ascii() {
        return Err(CommandError::NonAsciiAddress);
    }
    // RFC 5321 §4.5.3.1: path 256 octets with its brackets, local part
    // 64, domain 255.
    if path.len() > 254 {
        return Err(CommandError::Syntax("address too long"));
    }
    if let Some((local, domain)) = path.rsplit_once('@') {
        if local.is_empty() || domain.is_empty() {
            return Err(CommandError::Syntax("address must be local@domain"));
        }
        if local.len() > MAX_LOCAL_PART {
            return Err(CommandError::Syntax("local part too long"));
        }
    }
    Ok((path.to_string(), params.trim_matches(' ')))
}

fn mail_params(s: &str) -> Result<MailParams, CommandError> {
    let mut params = MailParams::default();
    for p in s.split(' ').filter(|p| !p.is_empty()) {
        let (key, value) = p.split_once('=').unwrap_or((p, ""));
        if key.eq_ignore_ascii_case("SIZE") {
            let size = value
                .parse::<u64>()
                .map_err(|_| CommandError::Syntax("SIZE needs a number"))?;
            params.size = Some(size);
        } else if key.eq_ignore_ascii_case("BODY") {
            if value.eq_ignore_ascii_case("8BITMIME") {
                params.eight_bit = true;
            } else if value.eq_ignore_ascii_case("7BIT") {
                params.eight_bit = false;
            } else {
                return Err(CommandError::UnknownParameter(p.to_string()));
            }
        } else {
            return Err(CommandError::UnknownParameter(p.to_string()));
        }
    }
    Ok(params)
}

/// Why a message received by DATA must be refused once it has ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataFault {
    /// A CR not followed by LF, or an LF not preceded by CR (SMTP
    /// smuggling): `550 5.6.0`.
    BareLineEnding,
    /// A text line longer than [`MAX_TEXT_LINE`] plus tolerance: `550 5.6.0`.
    LineTooLong,
    /// More than the announced maximum size: `552 5.3.4`.
    TooBig,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DataState {
    LineStart,
    Mid,
    Cr,
    Dot,
    DotCr,
    Done,
}

/// What one call of [`DataDecoder::feed`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fed {
    /// Input bytes used; when `done`, the rest belongs to the next command.
    pub consumed: usize,
    /// The end marker `CRLF . CRLF` was seen.
    pub done: bool,
}

/// Decodes a DATA section as it streams in: dot-unstuffing, end detection,
/// bare CR/LF detection, line and size limits. Holds a few bytes of state,
/// never the message.
#[derive(Clone, Debug)]
pub struct DataDecoder {
    state: DataState,
    line_len: usize,
    size: u64,
    max_size: u64,
    fault: Option<DataFault>,
}

const TEXT_LIMIT: usize = MAX_TEXT_LINE + LINE_TOLERANCE;

impl DataDecoder {
    /// A decoder for a message of at most `max_size` bytes (as stored).
    pub fn new(max_size: u64) -> Self {
        DataDecoder {
            state: DataState::LineStart,
            line_len: 0,
            size: 0,
            max_size,
            fault: None,
        }
    }

    /// The first reason to refuse the message, if any so far.
    pub fn fault(&self) -> Option<DataFault> {
        self.fault
    }

    /// Bytes of message text produced so far (counted even past the limit).
    pub fn size(&self) -> u64 {
        self.size
    }

    fn flag(&mut self, fault: DataFault) {
        if self.fault.is_none() {
            self.fault = Some(fault);
        }
    }

    fn emit(&mut self, out: &mut Vec<u8>, bytes: &[u8]) {
        self.size += bytes.len() as u64;
        self.line_len += bytes.len();
        if self.size > self.max_size {
            self.flag(DataFault::TooBig);
        }
        if self.line_len > TEXT_LIMIT {
            self.flag(DataFault::LineTooLong);
        }
        // Once refused, nothing more needs keeping.
        if self.fault.is_none() {
            out.extend_from_slice(bytes);
        }
    }

    /// Decodes as much of `input` as belongs to the message, appending the
    /// unstuffed text to `out` (nothing is appended once the message is
    /// known to be refused).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Fed {
        for (i, &b) in input.iter().enumerate() {
            match self.state {
                DataState::Done => {
                    return Fed {
                        consumed: i,
                        done: true,
                    }
                }
                DataState::LineStart if b == b'.' => self.state = DataState::Dot,
                DataState::LineStart | DataState::Mid | DataState::Dot => self.text(b, out),
                DataState::Cr => {
                    if b == b'\n' {
                        self.emit(out, b"\r\n");
                        self.line_len = 0;
                        self.state = DataState::LineStart;
                    } else {
                        self.flag(DataFault::BareLineEnding);
                        self.emit(out, b"\r");
                        self.state = DataState::Mid;
                        self.text(b, out);
                    }
                }
                DataState::DotCr => {
                    if b == b'\n' {
                        self.state = DataState::Done;
                        return Fed {
                            consumed: i + 1,
                            done: true,
                        };
                    }
                    self.flag(DataFault::BareLineEnding);
                    self.emit(out, b"\r");
                    self.state = DataState::Mid;
                    self.text(b, out);
                }
            }
        }
        Fed {
            consumed: input.len(),
            done: self.state == DataState::Done,
        }
    }

    /// One byte of line text (not a line start dot).
    fn text(&mut self, b: u8, out: &mut Vec<u8>) {
        let was_dot = self.state == DataState::Dot;
        match b {
            b'\r' if was_dot => self.state = DataState::DotCr,
            b'\r' => self.state = DataState::Cr,
            b'\n' => {
                // Bare LF: refused, and it does not start a new line, so
                // no end marker can follow it.
                self.flag(DataFault::BareLineEnding);
                self.emit(out, b"\n");
                self.state = DataState::Mid;
            }
            _ => {
                self.emit(out, &[b]);
                self.state = DataState::Mid;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn cmd(line: &str) -> Result<Command, CommandError> {
        match parse_command(line.as_bytes()) {
            Parsed::Complete { command, consumed } => {
                assert_eq!(consumed, line.len());
                command
            }
            other => panic!("{line:?}: {other:?}"),
        }
    }

    #[test]
    fn command_table() {
        let ok: &[(&str, Command)] = &[
            (
                "EHLO client.example\r\n",
                Command::Ehlo("client.example".into()),
            ),
            ("ehlo [127.0.0.1]\r\n", Command::Ehlo("[127.0.0.1]".into())),
            ("HELO x\r\n", Command::Helo("x".into())),
            (
                "MAIL FROM:<a@b.example>\r\n",
                Command::Mail {
                    from: "a@b.example".into(),
                    params: MailParams::default(),
                },
            ),
            (
                "mail from: <> SIZE=100 BODY=8BITMIME\r\n",
                Command::Mail {
                    from: String::new(),
                    params: MailParams {
                        size: Some(100),
                        eight_bit: true,
                    },
                },
            ),
            (
                "MAIL FROM:<@relay.example:a@b.example>\r\n",
                Command::Mail {
                    from: "a@b.example".into(),
                    params: MailParams::default(),
                },
            ),
            (
                "RCPT TO:<x@y.example>\r\n",
                Command::Rcpt {
                    to: "x@y.example".into(),
                },
            ),
            (
                "RCPT TO:<Postmaster>\r\n",
                Command::Rcpt {
                    to: "Postmaster".into(),
                },
            ),
            ("DATA\r\n", Command::Data),
            ("rset\r\n", Command::Rset),
            ("NOOP hello\r\n", Command::Noop),
            ("QUIT\r\n", Command::Quit),
            ("STARTTLS\r\n", Command::StartTls),
        ];
        for (line, want) in ok {
            assert_eq!(cmd(line).as_ref(), Ok(want), "{line:?}");
        }
        let bad: &[(&str, CommandError)] = &[
            ("FOO\r\n", CommandError::UnknownCommand),
            (
                "EHLO\r\n",
                CommandError::Syntax("expected a domain or address literal"),
            ),
            (
                "MAIL FROM:a@b\r\n",
                CommandError::Syntax("address must be in angle brackets"),
            ),
            (
                "MAIL FROM:<a@b\r\n",
                CommandError::Syntax("missing `>` after address"),
            ),
            (
                "MAIL FROM:<a@b> X=1\r\n",
                CommandError::UnknownParameter("X=1".into()),
            ),
            (
                "MAIL FROM:<a@b> SIZE=x\r\n",
                CommandError::Syntax("SIZE needs a number"),
            ),
            (
                "RCPT TO:<>\r\n",
                CommandError::Syntax("the null path is not a recipient"),
            ),
            (
                "RCPT TO:<a@b> NOTIFY=NEVER\r\n",
                CommandError::UnknownParameter("NOTIFY=NEVER".into()),
            ),
            (
                "DATA now\r\n",
                CommandError::Syntax("no arguments expected"),
            ),
            (
                "STARTTLS x\r\n",
                CommandError::Syntax("no arguments expected"),
            ),
            ("QUIT\n", CommandError::BareLf),
        ];
        for (line, want) in bad {
            assert_eq!(cmd(line).as_ref(), Err(want), "{line:?}");
        }
    }

    #[test]
    fn need_more_and_too_long() {
        assert_eq!(parse_command(b"EHLO x"), Parsed::NeedMore);
        assert_eq!(parse_command(b""), Parsed::NeedMore);
        let long = vec![b'A'; COMMAND_LIMIT];
        assert_eq!(
            parse_command(&long),
            Parsed::TooLong {
                consumed: COMMAND_LIMIT,
                line_ended: false
            }
        );
        assert_eq!(skip_line(b"AAAA\r\nQUIT\r\n"), (6, true));
        assert_eq!(skip_line(b"AAAA"), (4, false));
    }

    #[test]
    fn pipelined_commands_are_consumed_one_by_one() {
        let buf = b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n";
        let Parsed::Complete { consumed, .. } = parse_command(buf) else {
            panic!()
        };
        assert_eq!(&buf[consumed..], b"RCPT TO:<c@d>\r\nDATA\r\n");
    }

    /// Feeds `input` in one go and in one-byte pieces; both must agree.
    fn decode(input: &[u8]) -> (Vec<u8>, Option<DataFault>, usize, bool) {
        let mut d = DataDecoder::new(10_000);
        let mut out = Vec::new();
        let fed = d.feed(input, &mut out);
        let mut d2 = DataDecoder::new(10_000);
        let mut out2 = Vec::new();
        let mut used = 0;
        let mut done = false;
        for chunk in input.chunks(1) {
            let f = d2.feed(chunk, &mut out2);
            used += f.consumed;
            if f.done {
                done = true;
                break;
            }
        }
        assert_eq!(
            (out.clone(), d.fault(), fed.consumed, fed.done),
            (out2, d2.fault(), used, done)
        );
        (out, d.fault(), fed.consumed, fed.done)
    }

    #[test]
    fn data_table() {
        type Row = (&'static [u8], &'static [u8], Option<DataFault>, usize, bool);
        let table: &[Row] = &[
            (b"Hi\r\n.\r\n", b"Hi\r\n", None, 7, true),
            (b".\r\n", b"", None, 3, true),
            (b"Hi\r\n.\r\nQUIT\r\n", b"Hi\r\n", None, 7, true),
            (b"..dot\r\n.\r\n", b".dot\r\n", None, 10, true),
            (b"a\r\n..\r\n.\r\n", b"a\r\n.\r\n", None, 10, true),
            (b"Hi\r\n", b"Hi\r\n", None, 4, false),
            // SMTP smuggling: none of these ends the message.
            (
                b"a\n.\nMAIL",
                b"a\n.\nMAIL",
                Some(DataFault::BareLineEnding),
                8,
                false,
            ),
            (
                b"a\r\n.\nMAIL",
                b"a\r\n",
                Some(DataFault::BareLineEnding),
                9,
                false,
            ),
            (
                b"a\n.\r\nMAIL",
                b"a\n",
                Some(DataFault::BareLineEnding),
                9,
                false,
            ),
            (
                b"a\r.\r\nMAIL",
                b"a\r",
                Some(DataFault::BareLineEnding),
                9,
                false,
            ),
            (
                b"a\r\n.\rMAIL",
                b"a\r\n",
                Some(DataFault::BareLineEnding),
                9,
                false,
            ),
            // ...and a message carrying one is refused at its real end.
            (
                b"a\n.\n\r\n.\r\n",
                b"a\n.\n\r\n",
                Some(DataFault::BareLineEnding),
                9,
                true,
            ),
        ];
        for (input, out, fault, consumed, done) in table {
            let got = decode(input);
            assert_eq!(
                (got.1, got.2, got.3),
                (*fault, *consumed, *done),
                "{:?}",
                String::from_utf8_lossy(input)
            );
            if fault.is_none() {
                assert_eq!(got.0, *out, "{:?}", String::from_utf8_lossy(input));
            }
        }
    }

    #[test]
    fn data_limits() {
        let mut d = DataDecoder::new(5);
        let mut out = Vec::new();
        let fed = d.feed(b"123456\r\n.\r\n", &mut out);
        assert!(fed.done);
        assert_eq!(d.fault(), Some(DataFault::TooBig));
        assert!(out.len() <= 5);

        let mut d = DataDecoder::new(1 << 20);
        let mut line = vec![b'x'; TEXT_LIMIT + 1];
        line.extend_from_slice(b"\r\n.\r\n");
        let mut out = Vec::new();
        assert!(d.feed(&line, &mut out).done);
        assert_eq!(d.fault(), Some(DataFault::LineTooLong));
    }
}
