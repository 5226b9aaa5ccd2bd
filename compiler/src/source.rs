//! Source files and spans.
//!
//! Every file the compiler reads (the top-level policy and each included
//! file) becomes a [`SourceFile`]: its name as shown in diagnostics, its
//! text as an `Arc<str>` shared with every diagnostic that points into it,
//! and the directory that `include` and `trust anchor` paths in it are
//! relative to. A [`Span`] is a byte range in one of those files.

use std::path::PathBuf;
use std::sync::Arc;

use miette::NamedSource;

/// One file of policy text.
#[derive(Debug)]
pub struct SourceFile {
    /// The name diagnostics show (the path as given or as written in the
    /// `include` line that pulled the file in).
    pub name: String,
    pub text: Arc<str>,
    /// Where relative paths written in this file start from.
    pub base_dir: PathBuf,
    named: NamedSource<Arc<str>>,
}

impl SourceFile {
    pub fn new(name: impl Into<String>, text: impl Into<Arc<str>>, base_dir: PathBuf) -> Arc<Self> {
        let name = name.into();
        let text: Arc<str> = text.into();
        let named = NamedSource::new(name.clone(), Arc::clone(&text));
        Arc::new(SourceFile {
            name,
            text,
            base_dir,
            named,
        })
    }

    /// The file as miette wants it for rendering snippets.
    pub fn named(&self) -> &NamedSource<Arc<str>> {
        &self.named
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = self.text.get(..offset).unwrap_or("");
        let line = before.bytes().filter(|b| *b == b'\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
        (line, column)
    }
}

/// A byte range in one source file. Spans never take part in equality of
/// syntax-tree nodes (see [`crate::ast::Node`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Self {
        Span { start, end }
    }

    /// The smallest span covering both.
    pub fn to(self, other: Span) -> Span {
        Span {
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }

    pub fn len(&self) -> usize {
        self.end.saturating_sub(self.start)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Span> for miette::SourceSpan {
    fn from(s: Span) -> Self {
        (s.start, s.len()).into()
    }
}

/// A span together with the file it belongs to, for diagnostics that point
/// into a file other than the one being checked.
#[derive(Clone, Debug)]
pub struct Location {
    pub file: Arc<SourceFile>,
    pub span: Span,
}
