//! Dot-stuffing for the DATA phase (sans-IO, RFC 5321 §4.5.2).
//!
//! The body is streamed from the spool file in chunks; [`DotStuffer`]
//! carries the "at the start of a line" state across chunks, so the whole
//! message is never held in memory.

/// Streaming dot-stuffer.
#[derive(Debug)]
pub struct DotStuffer {
    at_line_start: bool,
    /// The last two bytes written, to end the data with CRLF.
    last: [u8; 2],
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer {
            at_line_start: true,
            last: [b'\r', b'\n'],
        }
    }
}

impl DotStuffer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `chunk`, dot-stuffed, to `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        out.reserve(chunk.len() + 16);
        // Line by line: copy up to each LF, adding a dot before a line that
        // starts with one.
        let mut rest = chunk;
        while let Some(&first) = rest.first() {
            if self.at_line_start && first == b'.' {
                out.push(b'.');
            }
            match rest.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    out.extend_from_slice(&rest[..=i]);
                    rest = &rest[i + 1..];
                    self.at_line_start = true;
                }
                None => {
                    out.extend_from_slice(rest);
                    rest = &[];
                    self.at_line_start = false;
                }
            }
        }
        match chunk {
            [.., a, b] => self.last = [*a, *b],
            [b] => self.last = [self.last[1], *b],
            [] => {}
        }
    }

    /// Appends the end-of-data marker (after a CRLF if the body did not end
    /// with one) to `out`.
    pub fn finish(self, out: &mut Vec<u8>) {
        if self.last != [b'\r', b'\n'] {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::DotStuffer;

    fn stuff(chunks: &[&str]) -> String {
        let mut d = DotStuffer::new();
        let mut out = Vec::new();
        for c in chunks {
            d.push(c.as_bytes(), &mut out);
        }
        d.finish(&mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    #[test]
    fn table() {
        let cases: &[(&[&str], &str)] = &[
            (&["a\r\nb\r\n"], "a\r\nb\r\n.\r\n"),
            (&[".hidden\r\n"], "..hidden\r\n.\r\n"),
            (&["a\r\n.\r\nb\r\n"], "a\r\n..\r\nb\r\n.\r\n"),
            (&["a\r\n", ".", "b\r\n"], "a\r\n..b\r\n.\r\n"),
            (&["a\r", "\n.b"], "a\r\n..b\r\n.\r\n"),
            (&["no end"], "no end\r\n.\r\n"),
            (&[""], ".\r\n"),
            (&["x.y\r\n"], "x.y\r\n.\r\n"),
        ];
        for (input, want) in cases {
            assert_eq!(stuff(input), *want, "input {input:?}");
        }
    }
}
