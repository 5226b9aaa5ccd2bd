//! The syntax tree of one `.tlspol` file, as written.
//!
//! Values (names, addresses, durations, ports) are kept as the words the
//! author wrote; the checker ([`crate::check`]) gives them meaning and
//! reports what is wrong with them. Every node carries its [`Span`], but
//! spans and comments take no part in equality: two trees are equal when
//! they say the same thing (this is what the formatter's tests rely on).

use crate::source::Span;

/// A value with its place in the source. Equality ignores the span.
#[derive(Clone, Debug)]
pub struct Node<T> {
    pub node: T,
    pub span: Span,
}

impl<T> Node<T> {
    pub fn new(node: T, span: Span) -> Self {
        Node { node, span }
    }
}

impl<T: PartialEq> PartialEq for Node<T> {
    fn eq(&self, other: &Self) -> bool {
        self.node == other.node
    }
}

impl<T: Eq> Eq for Node<T> {}

/// A bare word as written (`example.com`, `192.0.2.0/24`, `5m`, `2525`).
pub type Word = Node<String>;

/// A `#` comment (text after the `#`, without the line break).
#[derive(Clone, Debug)]
pub struct Comment {
    pub text: String,
    pub span: Span,
}

/// Comments and blank lines around a statement; ignored by equality.
#[derive(Clone, Debug, Default)]
pub struct Trivia {
    /// Whole-line comments just before the statement.
    pub before: Vec<Comment>,
    /// A blank line separated the statement from the previous one.
    pub blank_line_before: bool,
    /// A comment on the same line, after the statement.
    pub after: Option<Comment>,
}

impl PartialEq for Trivia {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Trivia {}

/// A statement with its comments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stmt<T> {
    pub trivia: Trivia,
    pub node: Node<T>,
}

/// A whole file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct File {
    pub items: Vec<Stmt<Item>>,
    /// Comments after the last item.
    pub trailing: Trivia,
}

/// A `{ ... }` block of statements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block<T> {
    pub entries: Vec<Stmt<T>>,
    /// Comments before the closing brace.
    pub trailing: Trivia,
    /// From `{` to `}`.
    pub span: Span,
}

/// A top-level statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// `policy serial 2026112301`
    Serial(Word),
    /// `defaults { ... }`
    Defaults(Block<Setting>),
    /// `domain example.com { ... }` or `domain example.org uses defaults`
    Domain { name: Word, body: DomainBody },
    /// `partner bank.example { ... }`
    Partner { name: Word, body: Block<Setting> },
    /// `retry { ... }`
    Retry(Block<RetrySetting>),
    /// `always attempt tls`
    AlwaysAttemptTls,
    /// `trust anchor "certs/private-ca.pem"`
    TrustAnchor(Node<String>),
    /// `include "partners.tlspol"`
    Include(Node<String>),
}

/// What follows a domain's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DomainBody {
    /// `uses defaults`
    UsesDefaults,
    Block(Block<Setting>),
}

/// `tls opportunistic` or `tls required`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Opportunistic,
    Required,
}

/// `strong` or `relaxed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValidationMode {
    Strong,
    Relaxed,
}

/// A line inside `defaults`, `domain` or `partner`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Setting {
    /// `inbound tls required`
    Inbound(Node<Mode>),
    /// `outbound tls required`
    Outbound(Node<Mode>),
    /// `validation strong`
    Validation(Node<ValidationMode>),
    /// `trusted names a.example, b.example`
    TrustedNames(Vec<Word>),
    /// `match common-name`
    MatchCommonName,
    /// `outbound servers 192.0.2.10, 2001:db8::/48`
    OutboundServers(Vec<Word>),
    /// `exclude legacy.example.com`
    Exclude(Vec<Word>),
    /// `deliver mx`, `deliver static host:port`, `deliver routes { ... }`
    Deliver(Deliver),
}

impl Setting {
    /// The keyword(s) that start the line, as written in the language.
    pub fn keyword(&self) -> &'static str {
        match self {
            Setting::Inbound(_) => "inbound tls",
            Setting::Outbound(_) => "outbound tls",
            Setting::Validation(_) => "validation",
            Setting::TrustedNames(_) => "trusted names",
            Setting::MatchCommonName => "match common-name",
            Setting::OutboundServers(_) => "outbound servers",
            Setting::Exclude(_) => "exclude",
            Setting::Deliver(_) => "deliver",
        }
    }
}

/// How a domain's mail is delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Deliver {
    Mx,
    Static(Word),
    Routes(Block<Route>),
}

/// `10 mx1.example.com` inside `deliver routes { ... }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub priority: Word,
    pub target: Word,
}

/// A line inside `retry { ... }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RetrySetting {
    /// `every 5m, 10m, 1h`
    Every(Vec<Word>),
    /// `give up after 5d`
    GiveUpAfter(Word),
    /// `notify delay after 4h`
    NotifyDelayAfter(Word),
}

impl RetrySetting {
    pub fn keyword(&self) -> &'static str {
        match self {
            RetrySetting::Every(_) => "every",
            RetrySetting::GiveUpAfter(_) => "give up after",
            RetrySetting::NotifyDelayAfter(_) => "notify delay after",
        }
    }
}
