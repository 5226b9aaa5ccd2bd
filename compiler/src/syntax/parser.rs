//! Parser: tokens → [`ast::File`], reporting every syntax error.
//!
//! The grammar is keyword-led and line-friendly: each statement starts with
//! a keyword, blocks are `{ ... }`, lists are separated by `,`. Nesting is
//! fixed by the grammar (top level → block → `deliver routes` block), so the
//! parser has no recursion; stray braces are skipped by counting.
//!
//! After a syntax error the parser skips to the next line, the next setting
//! keyword of the same block, or the block's closing brace, and goes on, so
//! one run reports all the errors of a file.

use std::sync::Arc;

use crate::ast::*;
use crate::diagnostic::Diagnostic;
use crate::source::{SourceFile, Span};
use crate::syntax::lexer::{tokenize, Token, TokenKind};
use crate::syntax::suggest::closest;

/// Keywords that start a top-level statement.
pub const TOP_KEYWORDS: &[&str] = &[
    "policy", "defaults", "domain", "partner", "retry", "always", "trust", "include",
];
/// Keywords that start a line in `defaults`, `domain` and `partner` blocks.
pub const SETTING_KEYWORDS: &[&str] = &[
    "inbound",
    "outbound",
    "validation",
    "trusted",
    "match",
    "exclude",
    "deliver",
];
/// Keywords that start a line in a `retry` block.
pub const RETRY_KEYWORDS: &[&str] = &["every", "give", "notify"];

/// Parses one file. The tree holds every statement that parsed; the
/// diagnostics are the syntax errors (never warnings).
pub fn parse(file: &Arc<SourceFile>) -> (File, Vec<Diagnostic>) {
    let tokens = tokenize(&file.text);
    let mut p = Parser {
        file,
        src: &file.text,
        tokens,
        pos: 0,
        last_end: 0,
        last_span: Span::default(),
        pending: Vec::new(),
        after_comma: false,
        errors: Vec::new(),
    };
    let ast = p.file();
    (ast, p.errors)
}

/// Marks that an error was reported and the caller must recover.
struct Stop;

type PResult<T> = Result<T, Stop>;

struct Parser<'a> {
    file: &'a Arc<SourceFile>,
    src: &'a str,
    tokens: Vec<Token>,
    pos: usize,
    /// End of the last consumed significant token.
    last_end: usize,
    /// The last consumed significant token.
    last_span: Span,
    /// Comments met while looking ahead, each with whether it is on the
    /// same line as the token before it; [`Parser::settle`] gives them to
    /// the statement they belong to.
    pending: Vec<(Comment, bool)>,
    /// The last consumed token was a `,` (a list goes on to the next line).
    after_comma: bool,
    errors: Vec<Diagnostic>,
}

fn describe(kind: TokenKind, text: &str) -> String {
    match kind {
        TokenKind::Word | TokenKind::Str => format!("`{text}`"),
        TokenKind::UnterminatedStr => "an unterminated string".to_string(),
        TokenKind::LBrace => "`{`".to_string(),
        TokenKind::RBrace => "`}`".to_string(),
        TokenKind::Comma => "`,`".to_string(),
        TokenKind::Comment => "a comment".to_string(),
    }
}

fn one_of(words: &[&str]) -> String {
    let quoted: Vec<String> = words.iter().map(|w| format!("`{w}`")).collect();
    match quoted.as_slice() {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

impl<'a> Parser<'a> {
    // ---- token access -------------------------------------------------

    fn text(&self, t: &Token) -> &'a str {
        self.src.get(t.span.start..t.span.end).unwrap_or("")
    }

    fn comment(&self, t: &Token) -> Comment {
        let text = self.text(t);
        Comment {
            text: text
                .strip_prefix('#')
                .unwrap_or(text)
                .trim_end()
                .to_string(),
            span: t.span,
        }
    }

    /// The next significant token; comments on the way are set aside.
    fn peek(&mut self) -> Option<Token> {
        while let Some(t) = self.tokens.get(self.pos).copied() {
            if t.kind != TokenKind::Comment {
                return Some(t);
            }
            let c = self.comment(&t);
            self.pending.push((c, t.breaks_before == 0));
            self.pos += 1;
        }
        None
    }

    fn bump(&mut self) -> Option<Token> {
        let t = self.peek()?;
        self.pos += 1;
        self.last_end = t.span.end;
        self.last_span = t.span;
        self.after_comma = t.kind == TokenKind::Comma;
        Some(t)
    }

    fn peek_word(&mut self) -> Option<&'a str> {
        let t = self.peek()?;
        (t.kind == TokenKind::Word).then(|| self.text(&t))
    }

    fn eof_span(&self) -> Span {
        let end = self.src.len();
        Span::new(end, end)
    }

    // ---- errors -------------------------------------------------------

    /// Reports that `expected` was wanted where the next token is.
    fn expected(&mut self, expected: &str, help: &str) -> Stop {
        let d = match self.peek() {
            None => Diagnostic::error(
                "tlspol::syntax",
                format!("expected {expected}, found the end of the file"),
            )
            .at(self.file, self.eof_span(), format!("expected {expected}")),
            Some(t) if t.kind == TokenKind::UnterminatedStr => {
                Diagnostic::error("tlspol::syntax", "unterminated string")
                    .at(self.file, t.span, "this string has no closing `\"`")
                    .with_help("close the string with `\"` on the same line")
            }
            Some(t) => {
                let found = describe(t.kind, self.text(&t));
                Diagnostic::error(
                    "tlspol::syntax",
                    format!("expected {expected}, found {found}"),
                )
                .at(self.file, t.span, format!("expected {expected} here"))
            }
        };
        let d = if help.is_empty() {
            d
        } else {
            d.with_help(help)
        };
        self.errors.push(d);
        Stop
    }

    /// True when the next token is on a later line than the statement so
    /// far: a statement's words stay on one line (a list may go on after
    /// a `,`).
    fn at_line_end(&mut self) -> bool {
        let after_comma = self.after_comma;
        self.peek().is_some_and(|t| t.starts_line() && !after_comma)
    }

    /// Reports that the line ended where `expected` was wanted.
    fn expected_at_line_end(&mut self, expected: &str) -> Stop {
        let at = self.last_span;
        self.errors.push(
            Diagnostic::error(
                "tlspol::syntax",
                format!("expected {expected}, found the end of the line"),
            )
            .at(self.file, at, format!("expected {expected} after this")),
        );
        Stop
    }

    /// Reports a word that is not one of the keywords allowed here, with a
    /// suggestion when one is close.
    fn unknown(&mut self, t: Token, allowed: &[&str], what: &str) -> Stop {
        let word = self.text(&t);
        let d = match closest(word, allowed) {
            Some(s) => Diagnostic::error(
                "tlspol::unknown-keyword",
                format!("unknown {what} `{word}`"),
            )
            .at(self.file, t.span, format!("did you mean `{s}`?"))
            .with_help(format!("expected {}", one_of(allowed))),
            None => Diagnostic::error(
                "tlspol::unknown-keyword",
                format!("unknown {what} `{word}`"),
            )
            .at(self.file, t.span, "not a keyword here")
            .with_help(format!("expected {}", one_of(allowed))),
        };
        self.errors.push(d);
        Stop
    }

    /// Consumes one of `words` (a keyword) or reports what was expected.
    fn keyword(&mut self, words: &[&'static str], what: &str) -> PResult<&'static str> {
        if self.at_line_end() {
            return Err(self.expected_at_line_end(&one_of(words)));
        }
        match self.peek() {
            Some(t) if t.kind == TokenKind::Word => {
                let text = self.text(&t);
                if let Some(w) = words.iter().find(|w| w.eq_ignore_ascii_case(text)) {
                    self.bump();
                    Ok(w)
                } else if closest(text, words).is_some() {
                    Err(self.unknown(t, words, what))
                } else {
                    Err(self.expected(&one_of(words), ""))
                }
            }
            _ => Err(self.expected(&one_of(words), "")),
        }
    }

    /// A value word (name, address, duration, number).
    fn word(&mut self, what: &str) -> PResult<Word> {
        if self.at_line_end() {
            return Err(self.expected_at_line_end(what));
        }
        match self.peek() {
            Some(t) if t.kind == TokenKind::Word => {
                self.bump();
                Ok(Node::new(self.text(&t).to_string(), t.span))
            }
            _ => Err(self.expected(what, "")),
        }
    }

    /// A quoted string (a file path), without its quotes.
    fn string(&mut self, what: &str) -> PResult<Node<String>> {
        if self.at_line_end() {
            return Err(self.expected_at_line_end(what));
        }
        match self.peek() {
            Some(t) if t.kind == TokenKind::Str => {
                self.bump();
                let text = self.text(&t);
                let inner = text.get(1..text.len().saturating_sub(1)).unwrap_or("");
                Ok(Node::new(inner.to_string(), t.span))
            }
            Some(t) if t.kind == TokenKind::Word => Err(self.expected(
                what,
                &format!("write the path in double quotes: `\"{}\"`", self.text(&t)),
            )),
            _ => Err(self.expected(what, "")),
        }
    }

    /// `value (, value)*`
    fn list(&mut self, what: &str) -> PResult<Vec<Word>> {
        let mut out = vec![self.word(what)?];
        while self.peek().is_some_and(|t| t.kind == TokenKind::Comma) {
            self.bump();
            out.push(self.word(what)?);
        }
        Ok(out)
    }

    // ---- trivia and recovery ---------------------------------------------

    /// Comments before the next statement, and whether a blank line precedes
    /// it.
    fn leading(&mut self) -> Trivia {
        let blank = self
            .tokens
            .get(self.pos)
            .is_some_and(|t| t.breaks_before >= 2);
        self.peek();
        Trivia {
            before: std::mem::take(&mut self.pending)
                .into_iter()
                .map(|(c, _)| c)
                .collect(),
            blank_line_before: blank,
            after: None,
        }
    }

    /// Completes the trivia of the statement just parsed (it ends at
    /// `last_end`): comments met inside it (a list continued over lines)
    /// join the comments before it, a comment right after it on its last
    /// line is its end-of-line comment, and comments further on (met while
    /// looking for a `,`) wait for the next statement.
    fn settle(&mut self, mut trivia: Trivia) -> Trivia {
        let end = self.last_end;
        let mut rest = Vec::new();
        for (c, same_line) in std::mem::take(&mut self.pending) {
            if c.span.start < end {
                trivia.before.push(c);
            } else if rest.is_empty() && same_line && trivia.after.is_none() {
                trivia.after = Some(c);
            } else {
                rest.push((c, same_line));
            }
        }
        self.pending = rest;
        if trivia.after.is_none() {
            trivia.after = self.trailing_comment();
        }
        trivia
    }

    /// A comment on the same line as the statement just parsed.
    fn trailing_comment(&mut self) -> Option<Comment> {
        let t = self.tokens.get(self.pos).copied()?;
        if t.kind == TokenKind::Comment && t.breaks_before == 0 {
            self.pos += 1;
            return Some(self.comment(&t));
        }
        None
    }

    /// Skips what is left of a statement that failed, started at token
    /// `start`: up to the next line, the next of `keywords`, or (without
    /// consuming it) the `}` of the enclosing block.
    fn recover(&mut self, start: usize, keywords: &[&str], in_block: bool) {
        let mut depth = 0usize;
        while let Some(t) = self.peek() {
            let at_start = self.pos == start;
            if depth == 0 && !at_start {
                if t.starts_line() {
                    break;
                }
                if t.kind == TokenKind::Word && keywords.contains(&self.text(&t)) {
                    break;
                }
            }
            match t.kind {
                TokenKind::LBrace => depth += 1,
                TokenKind::RBrace if depth > 0 => depth -= 1,
                TokenKind::RBrace if in_block => break,
                _ => {}
            }
            self.bump();
        }
        self.pending.clear();
    }

    // ---- grammar ------------------------------------------------------

    fn file(&mut self) -> File {
        let mut items = Vec::new();
        loop {
            let trivia = self.leading();
            let Some(t) = self.peek() else {
                return File {
                    items,
                    trailing: trivia,
                };
            };
            let start = self.pos;
            match self.item(t) {
                Ok(node) => {
                    let trivia = self.settle(trivia);
                    items.push(Stmt { trivia, node });
                }
                Err(Stop) => self.recover(start, TOP_KEYWORDS, false),
            }
        }
    }

    fn item(&mut self, t: Token) -> PResult<Node<Item>> {
        let start = t.span.start;
        let item = match t.kind {
            TokenKind::Word => {
                let kw = self.text(&t).to_ascii_lowercase();
                match kw.as_str() {
                    "policy" => {
                        self.bump();
                        self.keyword(&["serial"], "word")?;
                        Item::Serial(self.word("a serial number")?)
                    }
                    "defaults" => {
                        self.bump();
                        Item::Defaults(self.block(Self::setting, SETTING_KEYWORDS)?)
                    }
                    "domain" => {
                        self.bump();
                        let name = self.word("a domain name")?;
                        let body =
                            match self.peek() {
                                Some(b) if b.kind == TokenKind::LBrace => {
                                    DomainBody::Block(self.block(Self::setting, SETTING_KEYWORDS)?)
                                }
                                Some(b)
                                    if b.kind == TokenKind::Word
                                        && self.text(&b).eq_ignore_ascii_case("uses") =>
                                {
                                    self.bump();
                                    self.keyword(&["defaults"], "word")?;
                                    DomainBody::UsesDefaults
                                }
                                _ => return Err(self.expected(
                                    "`{` or `uses defaults`",
                                    "give the domain a block of settings, or write `uses defaults`",
                                )),
                            };
                        Item::Domain { name, body }
                    }
                    "partner" => {
                        self.bump();
                        let name = self.word("a domain name")?;
                        let body = self.block(Self::setting, SETTING_KEYWORDS)?;
                        Item::Partner { name, body }
                    }
                    "retry" => {
                        self.bump();
                        Item::Retry(self.block(Self::retry_setting, RETRY_KEYWORDS)?)
                    }
                    "always" => {
                        self.bump();
                        self.keyword(&["attempt"], "word")?;
                        self.keyword(&["tls"], "word")?;
                        Item::AlwaysAttemptTls
                    }
                    "trust" => {
                        self.bump();
                        self.keyword(&["anchor"], "word")?;
                        Item::TrustAnchor(self.string("a quoted PEM file path")?)
                    }
                    "include" => {
                        self.bump();
                        Item::Include(self.string("a quoted file path")?)
                    }
                    _ => {
                        if SETTING_KEYWORDS.contains(&kw.as_str()) {
                            let d = Diagnostic::error(
                                "tlspol::syntax",
                                format!("`{kw}` must be inside a block"),
                            )
                            .at(self.file, t.span, "this setting is outside any block")
                            .with_help(
                                "put it inside `defaults { ... }`, `domain <name> { ... }` or `partner <name> { ... }`",
                            );
                            self.errors.push(d);
                            return Err(Stop);
                        }
                        return Err(self.unknown(t, TOP_KEYWORDS, "keyword"));
                    }
                }
            }
            _ => {
                return Err(self.expected(
                    "a statement",
                    &format!("statements start with {}", one_of(TOP_KEYWORDS)),
                ))
            }
        };
        Ok(Node::new(item, Span::new(start, self.last_end)))
    }

    /// `{ entry* }`
    fn block<T>(
        &mut self,
        entry: fn(&mut Self, Token) -> PResult<Node<T>>,
        keywords: &[&str],
    ) -> PResult<Block<T>> {
        let open = match self.peek() {
            Some(t) if t.kind == TokenKind::LBrace => t,
            _ => return Err(self.expected("`{`", "")),
        };
        self.bump();
        let mut entries = Vec::new();
        loop {
            let trivia = self.leading();
            match self.peek() {
                Some(t) if t.kind == TokenKind::RBrace => {
                    self.bump();
                    return Ok(Block {
                        entries,
                        trailing: trivia,
                        span: open.span.to(t.span),
                    });
                }
                None => {
                    let d = Diagnostic::error(
                        "tlspol::syntax",
                        "expected `}`, found the end of the file",
                    )
                    .at(self.file, open.span, "this block is never closed")
                    .with_help("add `}` at the end of the block");
                    self.errors.push(d);
                    return Err(Stop);
                }
                Some(t) => {
                    let start = self.pos;
                    match entry(self, t) {
                        Ok(node) => {
                            let trivia = self.settle(trivia);
                            entries.push(Stmt { trivia, node });
                        }
                        Err(Stop) => self.recover(start, keywords, true),
                    }
                }
            }
        }
    }

    fn mode(&mut self) -> PResult<Node<Mode>> {
        self.keyword(&["tls"], "word")?;
        let t = self.peek();
        let w = self.keyword(&["opportunistic", "required"], "TLS mode")?;
        let mode = if w == "required" {
            Mode::Required
        } else {
            Mode::Opportunistic
        };
        Ok(Node::new(mode, t.map(|t| t.span).unwrap_or_default()))
    }

    fn setting(&mut self, t: Token) -> PResult<Node<Setting>> {
        let start = t.span.start;
        if t.kind != TokenKind::Word {
            return Err(self.expected("a setting or `}`", ""));
        }
        let kw = self.text(&t).to_ascii_lowercase();
        let setting = match kw.as_str() {
            "inbound" => {
                self.bump();
                Setting::Inbound(self.mode()?)
            }
            "outbound" => {
                self.bump();
                match self.peek_word().map(str::to_ascii_lowercase).as_deref() {
                    Some("servers") => {
                        self.bump();
                        Setting::OutboundServers(self.list("an IP address or network")?)
                    }
                    Some("tls") => Setting::Outbound(self.mode()?),
                    _ => {
                        self.keyword(&["tls", "servers"], "word")?;
                        return Err(Stop);
                    }
                }
            }
            "validation" => {
                self.bump();
                let v = self.peek();
                let w = self.keyword(&["strong", "relaxed"], "validation")?;
                let mode = if w == "relaxed" {
                    ValidationMode::Relaxed
                } else {
                    ValidationMode::Strong
                };
                Setting::Validation(Node::new(mode, v.map(|t| t.span).unwrap_or_default()))
            }
            "trusted" => {
                self.bump();
                self.keyword(&["names"], "word")?;
                Setting::TrustedNames(self.list("a certificate name")?)
            }
            "match" => {
                self.bump();
                self.keyword(&["common-name"], "word")?;
                Setting::MatchCommonName
            }
            "exclude" => {
                self.bump();
                Setting::Exclude(self.list("a sub-domain name")?)
            }
            "deliver" => {
                self.bump();
                let how = self.keyword(&["mx", "static", "routes"], "delivery")?;
                Setting::Deliver(match how {
                    "static" => Deliver::Static(
                        self.word("a host, IP address, `host:port` or `[IPv6]:port`")?,
                    ),
                    "routes" => Deliver::Routes(self.block(Self::route, &[])?),
                    _ => Deliver::Mx,
                })
            }
            _ => return Err(self.unknown(t, SETTING_KEYWORDS, "setting")),
        };
        Ok(Node::new(setting, Span::new(start, self.last_end)))
    }

    fn route(&mut self, t: Token) -> PResult<Node<Route>> {
        if t.kind != TokenKind::Word {
            return Err(self.expected("a route (`<priority> <host>`) or `}`", ""));
        }
        self.bump();
        let priority = Node::new(self.text(&t).to_string(), t.span);
        let target = match self.peek() {
            Some(n) if n.kind == TokenKind::Word && !n.starts_line() => self.word("a host")?,
            _ => {
                return Err(self.expected(
                    "a host, IP address, `host:port` or `[IPv6]:port`",
                    "each route is a priority and a server, e.g. `10 mx1.example.com`",
                ))
            }
        };
        // An optional comma between routes.
        if self.peek().is_some_and(|t| t.kind == TokenKind::Comma) {
            self.bump();
        }
        let span = priority.span.to(target.span);
        Ok(Node::new(Route { priority, target }, span))
    }

    fn retry_setting(&mut self, t: Token) -> PResult<Node<RetrySetting>> {
        let start = t.span.start;
        if t.kind != TokenKind::Word {
            return Err(self.expected("a retry setting or `}`", ""));
        }
        let kw = self.text(&t).to_ascii_lowercase();
        let setting = match kw.as_str() {
            "every" => {
                self.bump();
                RetrySetting::Every(self.list("a duration (e.g. `5m`)")?)
            }
            "give" => {
                self.bump();
                self.keyword(&["up"], "word")?;
                self.keyword(&["after"], "word")?;
                RetrySetting::GiveUpAfter(self.word("a duration (e.g. `5d`)")?)
            }
            "notify" => {
                self.bump();
                self.keyword(&["delay"], "word")?;
                self.keyword(&["after"], "word")?;
                RetrySetting::NotifyDelayAfter(self.word("a duration (e.g. `4h`)")?)
            }
            _ => return Err(self.unknown(t, RETRY_KEYWORDS, "retry setting")),
        };
        Ok(Node::new(setting, Span::new(start, self.last_end)))
    }
}
