//! The formatter: a syntax tree back to canonical text.
//!
//! One statement per line, four-space indentation, keywords in lower case,
//! lists joined by `, `, at most one blank line between top-level
//! statements (kept where the author put one), comments kept with their
//! statement (whole-line comments before it, an end-of-line comment after
//! it; a comment inside a list continued over lines goes before the
//! statement, since the list is joined on one line). Values are written as the author wrote them, so formatting
//! never changes what a policy means. Formatting its own output changes
//! nothing.

use crate::ast::*;

const INDENT: &str = "    ";

/// Canonical text of a parsed file.
pub fn format_file(file: &File) -> String {
    let mut out = String::new();
    for (i, stmt) in file.items.iter().enumerate() {
        if i > 0 && stmt.trivia.blank_line_before {
            out.push('\n');
        }
        comments_before(&mut out, &stmt.trivia, 0);
        item(&mut out, &stmt.node.node);
        line_end(&mut out, &stmt.trivia);
    }
    if !file.trailing.before.is_empty() {
        if !file.items.is_empty() && file.trailing.blank_line_before {
            out.push('\n');
        }
        comments_before(&mut out, &file.trailing, 0);
    }
    out
}

fn indent(out: &mut String, depth: usize) {
    for _ in 0..depth {
        out.push_str(INDENT);
    }
}

fn comments_before(out: &mut String, t: &Trivia, depth: usize) {
    for c in &t.before {
        indent(out, depth);
        out.push('#');
        out.push_str(&c.text);
        out.push('\n');
    }
}

fn line_end(out: &mut String, t: &Trivia) {
    if let Some(c) = &t.after {
        out.push_str(" #");
        out.push_str(&c.text);
    }
    out.push('\n');
}

fn list(words: &[Word]) -> String {
    words
        .iter()
        .map(|w| w.node.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn item(out: &mut String, item: &Item) {
    match item {
        Item::Serial(w) => {
            out.push_str("policy serial ");
            out.push_str(&w.node);
        }
        Item::Defaults(b) => {
            out.push_str("defaults ");
            block(out, b, 0, setting);
        }
        Item::Domain { name, body } => {
            out.push_str("domain ");
            out.push_str(&name.node);
            match body {
                DomainBody::UsesDefaults => out.push_str(" uses defaults"),
                DomainBody::Block(b) => {
                    out.push(' ');
                    block(out, b, 0, setting);
                }
            }
        }
        Item::Partner { name, body } => {
            out.push_str("partner ");
            out.push_str(&name.node);
            out.push(' ');
            block(out, body, 0, setting);
        }
        Item::Retry(b) => {
            out.push_str("retry ");
            block(out, b, 0, retry_setting);
        }
        Item::AlwaysAttemptTls => out.push_str("always attempt tls"),
        Item::TrustAnchor(p) => {
            out.push_str("trust anchor \"");
            out.push_str(&p.node);
            out.push('"');
        }
        Item::Include(p) => {
            out.push_str("include \"");
            out.push_str(&p.node);
            out.push('"');
        }
    }
}

/// `{`, the entries one per line at `depth + 1`, `}` at `depth` (no line
/// break after the `}`: the caller ends the line).
fn block<T>(out: &mut String, b: &Block<T>, depth: usize, entry: fn(&mut String, &T, usize)) {
    if b.entries.is_empty() && b.trailing.before.is_empty() {
        out.push_str("{}");
        return;
    }
    out.push_str("{\n");
    for (i, stmt) in b.entries.iter().enumerate() {
        if i > 0 && stmt.trivia.blank_line_before {
            out.push('\n');
        }
        comments_before(out, &stmt.trivia, depth + 1);
        indent(out, depth + 1);
        entry(out, &stmt.node.node, depth + 1);
        line_end(out, &stmt.trivia);
    }
    comments_before(out, &b.trailing, depth + 1);
    indent(out, depth);
    out.push('}');
}

fn mode(m: Mode) -> &'static str {
    match m {
        Mode::Opportunistic => "opportunistic",
        Mode::Required => "required",
    }
}

fn setting(out: &mut String, s: &Setting, depth: usize) {
    match s {
        Setting::Inbound(m) => {
            out.push_str("inbound tls ");
            out.push_str(mode(m.node));
        }
        Setting::Outbound(m) => {
            out.push_str("outbound tls ");
            out.push_str(mode(m.node));
        }
        Setting::Validation(v) => out.push_str(match v.node {
            ValidationMode::Strong => "validation strong",
            ValidationMode::Relaxed => "validation relaxed",
        }),
        Setting::TrustedNames(l) => {
            out.push_str("trusted names ");
            out.push_str(&list(l));
        }
        Setting::MatchCommonName => out.push_str("match common-name"),
        Setting::OutboundServers(l) => {
            out.push_str("outbound servers ");
            out.push_str(&list(l));
        }
        Setting::Exclude(l) => {
            out.push_str("exclude ");
            out.push_str(&list(l));
        }
        Setting::Deliver(Deliver::Mx) => out.push_str("deliver mx"),
        Setting::Deliver(Deliver::Static(w)) => {
            out.push_str("deliver static ");
            out.push_str(&w.node);
        }
        Setting::Deliver(Deliver::Routes(b)) => {
            out.push_str("deliver routes ");
            block(out, b, depth, route);
        }
    }
}

fn route(out: &mut String, r: &Route, _depth: usize) {
    out.push_str(&r.priority.node);
    out.push(' ');
    out.push_str(&r.target.node);
}

fn retry_setting(out: &mut String, s: &RetrySetting, _depth: usize) {
    match s {
        RetrySetting::Every(l) => {
            out.push_str("every ");
            out.push_str(&list(l));
        }
        RetrySetting::GiveUpAfter(w) => {
            out.push_str("give up after ");
            out.push_str(&w.node);
        }
        RetrySetting::NotifyDelayAfter(w) => {
            out.push_str("notify delay after ");
            out.push_str(&w.node);
        }
    }
}
