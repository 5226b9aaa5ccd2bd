//! Lexer: policy text → tokens (nom).
//!
//! The language has five kinds of token: words (keywords and values alike:
//! `domain`, `example.com`, `[2001:db8::25]:2525`, `5m`), quoted strings
//! (file paths), `{`, `}`, `,`, and `#` comments. Line breaks are not tokens,
//! but each token remembers how many came before it, which is how the
//! parser recovers at the next line after a syntax error and how the
//! formatter keeps blank lines.

use nom::branch::alt;
use nom::bytes::complete::{take_till, take_while, take_while1};
use nom::character::complete::char;
use nom::combinator::{map, recognize, value};
use nom::{IResult, Parser};

use crate::source::Span;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    Word,
    /// `"..."` on one line; the span includes the quotes.
    Str,
    /// A `"` with no closing quote on the same line.
    UnterminatedStr,
    LBrace,
    RBrace,
    Comma,
    /// `#` to the end of the line; the span includes the `#`.
    Comment,
}

#[derive(Clone, Copy, Debug)]
pub struct Token {
    pub kind: TokenKind,
    pub span: Span,
    /// Line breaks between the previous token (or the start of the file)
    /// and this one.
    pub breaks_before: u32,
}

impl Token {
    /// True when the token is the first on its line.
    pub fn starts_line(&self) -> bool {
        self.breaks_before > 0
    }
}

fn is_word_char(c: char) -> bool {
    !(c.is_whitespace() || matches!(c, '{' | '}' | ',' | '"' | '#'))
}

fn token(input: &str) -> IResult<&str, TokenKind> {
    alt((
        value(
            TokenKind::Comment,
            recognize((char('#'), take_till(|c| c == '\n'))),
        ),
        value(
            TokenKind::Str,
            recognize((char('"'), take_till(|c| c == '"' || c == '\n'), char('"'))),
        ),
        value(
            TokenKind::UnterminatedStr,
            recognize((char('"'), take_till(|c| c == '\n'))),
        ),
        map(char('{'), |_| TokenKind::LBrace),
        map(char('}'), |_| TokenKind::RBrace),
        map(char(','), |_| TokenKind::Comma),
        value(TokenKind::Word, take_while1(is_word_char)),
    ))
    .parse(input)
}

fn whitespace(input: &str) -> IResult<&str, &str> {
    take_while(char::is_whitespace).parse(input)
}

/// Splits `src` into tokens. Never fails: every character is either
/// whitespace or part of some token (an unterminated string is a token the
/// parser reports).
pub fn tokenize(src: &str) -> Vec<Token> {
    let mut tokens = Vec::with_capacity(src.len() / 6);
    let mut rest = src;
    while let Ok((after_ws, ws)) = whitespace(rest) {
        let breaks = ws.bytes().filter(|b| *b == b'\n').count();
        rest = after_ws;
        if rest.is_empty() {
            break;
        }
        let start = src.len() - rest.len();
        match token(rest) {
            Ok((after, kind)) => {
                let mut end = src.len() - after.len();
                if kind == TokenKind::Comment || kind == TokenKind::UnterminatedStr {
                    // Do not include a CR of a CRLF line ending.
                    if src.as_bytes().get(end.wrapping_sub(1)) == Some(&b'\r') && end > start + 1 {
                        end -= 1;
                    }
                }
                tokens.push(Token {
                    kind,
                    span: Span::new(start, end),
                    breaks_before: u32::try_from(breaks).unwrap_or(u32::MAX),
                });
                rest = after;
            }
            // Unreachable: `token` accepts any non-whitespace character.
            Err(_) => break,
        }
    }
    tokens
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(src: &str) -> Vec<(TokenKind, &str, u32)> {
        tokenize(src)
            .into_iter()
            .map(|t| (t.kind, &src[t.span.start..t.span.end], t.breaks_before))
            .collect()
    }

    #[test]
    fn words_strings_braces_comments() {
        use TokenKind::*;
        assert_eq!(
            kinds("domain a.example { # hi\n  deliver static [2001:db8::25]:2525 }\ninclude \"p.tlspol\",x"),
            vec![
                (Word, "domain", 0),
                (Word, "a.example", 0),
                (LBrace, "{", 0),
                (Comment, "# hi", 0),
                (Word, "deliver", 1),
                (Word, "static", 0),
                (Word, "[2001:db8::25]:2525", 0),
                (RBrace, "}", 0),
                (Word, "include", 1),
                (Str, "\"p.tlspol\"", 0),
                (Comma, ",", 0),
                (Word, "x", 0),
            ]
        );
    }

    #[test]
    fn unterminated_string_stops_at_line_end() {
        use TokenKind::*;
        assert_eq!(
            kinds("include \"a\r\nx"),
            vec![
                (Word, "include", 0),
                (UnterminatedStr, "\"a", 0),
                (Word, "x", 1)
            ]
        );
    }
}
