//! SMTP reply parsing (sans-IO).
//!
//! [`parse_reply`] looks at the bytes a client has buffered and answers
//! "a complete reply, using this many bytes", "need more bytes" or "error".
//! It never reads from a socket; the delivery client moves the bytes.
//!
//! Bounds: a reply line is at most [`MAX_REPLY_LINE`] bytes and a reply at
//! most [`MAX_REPLY_LINES`] lines, so a server that sends an endless
//! multi-line reply, or a line without end, is cut off with an error
//! instead of filling memory.

use core::fmt;

/// Longest reply line accepted, CRLF included (RFC 5321 says 512; real
/// servers send longer EHLO lines, so allow some slack).
pub const MAX_REPLY_LINE: usize = 2048;
/// Most lines in one (multi-line) reply.
pub const MAX_REPLY_LINES: usize = 64;

/// An RFC 3463 enhanced status code (`5.7.1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnhancedCode {
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// One complete SMTP reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code (`250`).
    pub code: u16,
    /// The enhanced status code of the first line, when it carries one
    /// whose class matches the reply code's class.
    pub enhanced: Option<EnhancedCode>,
    /// The text of each line, without code, separator and CRLF (the
    /// enhanced code, if any, is left in the text).
    pub lines: Vec<String>,
}

impl Reply {
    /// 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 3xx.
    pub fn is_intermediate(&self) -> bool {
        (300..400).contains(&self.code)
    }

    /// 4xx.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// The reply on one line, for logs and bounce reasons
    /// (`550 5.1.1 no such user`); multi-line text is joined with spaces.
    pub fn one_line(&self) -> String {
        let mut s = self.code.to_string();
        for l in &self.lines {
            if !l.is_empty() {
                s.push(' ');
                s.push_str(l);
            }
        }
        s
    }

    /// True when one of the lines (EHLO keywords) starts with `keyword`
    /// as a whole word, case-insensitively.
    pub fn has_keyword(&self, keyword: &str) -> bool {
        self.keyword_args(keyword).is_some()
    }

    /// The arguments after an EHLO keyword (`SIZE 1000000` → `"1000000"`).
    pub fn keyword_args(&self, keyword: &str) -> Option<&str> {
        // The first line of an EHLO reply is the greeting, not a keyword.
        self.lines.iter().skip(1).find_map(|l| {
            let (word, rest) = match l.split_once(' ') {
                Some((w, r)) => (w, r),
                None => (l.as_str(), ""),
            };
            word.eq_ignore_ascii_case(keyword).then_some(rest.trim())
        })
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.one_line())
    }
}

/// Why the buffered bytes are not a valid reply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("reply line longer than {MAX_REPLY_LINE} bytes")]
    LineTooLong,
    #[error("reply longer than {MAX_REPLY_LINES} lines")]
    TooManyLines,
    #[error("malformed reply line `{0}`")]
    Malformed(String),
    #[error("reply lines carry different codes ({0} then {1})")]
    MixedCodes(u16, u16),
}

/// Parses one reply from the start of `buf`.
///
/// `Ok(Some((reply, used)))`: a complete reply that took `used` bytes;
/// `Ok(None)`: need more bytes; `Err`: the peer is misbehaving (a line or a
/// reply over the bounds, a line that is not `DDD[ -]text`).
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, ReplyError> {
    let mut pos = 0;
    let mut code: Option<u16> = None;
    let mut lines = Vec::new();
    loop {
        let rest = &buf[pos..];
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            if rest.len() >= MAX_REPLY_LINE {
                return Err(ReplyError::LineTooLong);
            }
            return Ok(None);
        };
        if nl + 1 > MAX_REPLY_LINE {
            return Err(ReplyError::LineTooLong);
        }
        let raw = &rest[..nl];
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        pos += nl + 1;
        let text = String::from_utf8_lossy(raw);
        let bytes = raw;
        if bytes.len() < 3 || !bytes[..3].iter().all(u8::is_ascii_digit) {
            return Err(ReplyError::Malformed(text.into_owned()));
        }
        let this = u16::from(bytes[0] - b'0') * 100
            + u16::from(bytes[1] - b'0') * 10
            + u16::from(bytes[2] - b'0');
        if !(200..600).contains(&this) {
            return Err(ReplyError::Malformed(text.into_owned()));
        }
        if let Some(c) = code {
            if c != this {
                return Err(ReplyError::MixedCodes(c, this));
            }
        }
        code = Some(this);
        let (last, body) = match bytes.get(3) {
            None => (true, ""),
            Some(b' ') => (true, text.get(4..).unwrap_or("")),
            Some(b'-') => (false, text.get(4..).unwrap_or("")),
            Some(_) => return Err(ReplyError::Malformed(text.into_owned())),
        };
        lines.push(body.to_string());
        if last {
            let enhanced = lines.first().and_then(|l| enhanced_code(l, this));
            return Ok(Some((
                Reply {
                    code: this,
                    enhanced,
                    lines,
                },
                pos,
            )));
        }
        if lines.len() >= MAX_REPLY_LINES {
            return Err(ReplyError::TooManyLines);
        }
    }
}

/// Reads `x.y.z` at the start of `text` when `x` is the class of `code`.
fn enhanced_code(text: &str, code: u16) -> Option<EnhancedCode> {
    let word = text.split(' ').next()?;
    let mut parts = word.split('.');
    let class: u8 = parts.next()?.parse().ok()?;
    let subject: u16 = parts.next()?.parse().ok()?;
    let detail: u16 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || u16::from(class) != code / 100 || !(2..=5).contains(&class) {
        return None;
    }
    if subject > 999 || detail > 999 {
        return None;
    }
    Some(EnhancedCode {
        class,
        subject,
        detail,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn one(input: &str) -> Result<Option<(Reply, usize)>, ReplyError> {
        parse_reply(input.as_bytes())
    }

    #[test]
    fn table() {
        // (input, Some((code, lines, bytes used)) or None for "need more")
        type Case = (&'static str, Option<(u16, usize, usize)>);
        let cases: &[Case] = &[
            ("220 mx.example.com ESMTP\r\n", Some((220, 1, 26))),
            (
                "250-mx\r\n250-SIZE 100\r\n250 STARTTLS\r\n",
                Some((250, 3, 36)),
            ),
            ("250-mx\r\n250-SIZE 100\r\n", None),
            ("250 ok", None),
            ("", None),
            ("354\r\n", Some((354, 1, 5))),
            ("250 ok\nrest", Some((250, 1, 7))),
            ("221 bye\r\n220 next\r\n", Some((221, 1, 9))),
        ];
        for (input, want) in cases {
            let got = one(input).unwrap().map(|(r, n)| (r.code, r.lines.len(), n));
            assert_eq!(got, *want, "input {input:?}");
        }
    }

    #[test]
    fn errors() {
        assert!(matches!(one("hello\r\n"), Err(ReplyError::Malformed(_))));
        assert!(matches!(one("25\r\n"), Err(ReplyError::Malformed(_))));
        assert!(matches!(one("250x\r\n"), Err(ReplyError::Malformed(_))));
        assert!(matches!(one("150 x\r\n"), Err(ReplyError::Malformed(_))));
        assert_eq!(
            one("250-a\r\n251 b\r\n"),
            Err(ReplyError::MixedCodes(250, 251))
        );
        let long = format!("250 {}", "x".repeat(MAX_REPLY_LINE));
        assert_eq!(one(&long), Err(ReplyError::LineTooLong));
        let long = format!("250 {}\r\n", "x".repeat(MAX_REPLY_LINE));
        assert_eq!(one(&long), Err(ReplyError::LineTooLong));
        let endless = "250-more\r\n".repeat(MAX_REPLY_LINES + 1);
        assert_eq!(one(&endless), Err(ReplyError::TooManyLines));
        let at_bound = format!("{}250 end\r\n", "250-more\r\n".repeat(MAX_REPLY_LINES - 1));
        assert_eq!(
            one(&at_bound).unwrap().unwrap().0.lines.len(),
            MAX_REPLY_LINES
        );
    }

    #[test]
    fn enhanced_codes() {
        let (r, _) = one("550 5.1.1 no such user\r\n").unwrap().unwrap();
        assert_eq!(
            r.enhanced,
            Some(EnhancedCode {
                class: 5,
                subject: 1,
                detail: 1
            })
        );
        assert_eq!(r.one_line(), "550 5.1.1 no such user");
        let (r, _) = one("450 5.1.1 class mismatch\r\n").unwrap().unwrap();
        assert_eq!(r.enhanced, None);
        let (r, _) = one("250 2.0.0\r\n").unwrap().unwrap();
        assert_eq!(r.enhanced.map(|e| e.to_string()), Some("2.0.0".into()));
        let (r, _) = one("250 ok\r\n").unwrap().unwrap();
        assert_eq!(r.enhanced, None);
    }

    #[test]
    fn ehlo_keywords() {
        let (r, _) =
            one("250-mx.example.com hi\r\n250-SIZE 1000\r\n250-starttls\r\n250 PIPELINING\r\n")
                .unwrap()
                .unwrap();
        assert!(r.has_keyword("STARTTLS"));
        assert!(r.has_keyword("pipelining"));
        assert!(!r.has_keyword("mx.example.com"));
        assert_eq!(r.keyword_args("SIZE"), Some("1000"));
        assert_eq!(r.keyword_args("8BITMIME"), None);
    }
}
