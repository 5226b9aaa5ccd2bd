//! Diagnostics: the errors and warnings the compiler reports.
//!
//! A [`Diagnostic`] carries a stable code (`tlspol::...`, listed in
//! `docs/language.md`), a lowercase message, an optional label under the
//! offending text of the file it points into, an optional `help` line, and
//! optional notes pointing at related text (possibly in another file, e.g.
//! the first declaration of a duplicated domain). It renders through miette
//! and serialises to JSON for tools.

use std::fmt;
use std::sync::Arc;

use miette::{LabeledSpan, SourceCode};

use crate::source::{Location, SourceFile, Span};

/// How bad a diagnostic is: errors stop compilation, warnings do not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Severity {
    Error,
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One error or warning about policy text.
#[derive(Clone, Debug)]
pub struct Diagnostic {
    severity: Severity,
    code: &'static str,
    message: String,
    help: Option<String>,
    file: Option<Arc<SourceFile>>,
    label: Option<(Span, String)>,
    /// Further labels in the same file.
    secondary: Vec<(Span, String)>,
    /// Notes pointing into other files.
    notes: Vec<Note>,
}

/// A related location shown below a diagnostic (e.g. "first declared here"
/// in another file).
#[derive(Clone, Debug)]
pub struct Note {
    message: String,
    location: Location,
}

impl Diagnostic {
    pub(crate) fn error(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(Severity::Error, code, message)
    }

    pub(crate) fn warning(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(Severity::Warning, code, message)
    }

    fn new(severity: Severity, code: &'static str, message: impl Into<String>) -> Self {
        Diagnostic {
            severity,
            code,
            message: message.into(),
            help: None,
            file: None,
            label: None,
            secondary: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Points the diagnostic at `span` of `file` with a label.
    pub(crate) fn at(
        mut self,
        file: &Arc<SourceFile>,
        span: Span,
        label: impl Into<String>,
    ) -> Self {
        self.file = Some(Arc::clone(file));
        self.label = Some((span, label.into()));
        self
    }

    /// Adds a second label: in the same file it is drawn in the same
    /// snippet, in another file it becomes a note.
    pub(crate) fn also(mut self, at: &Location, label: impl Into<String>) -> Self {
        let same = self.file.as_ref().is_some_and(|f| Arc::ptr_eq(f, &at.file));
        if same {
            self.secondary.push((at.span, label.into()));
        } else {
            self.notes.push(Note {
                message: label.into(),
                location: at.clone(),
            });
        }
        self
    }

    pub(crate) fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn severity(&self) -> Severity {
        self.severity
    }

    /// The stable code, e.g. `tlspol::duplicate-domain`.
    pub fn code(&self) -> &str {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn help_text(&self) -> Option<&str> {
        self.help.as_deref()
    }

    /// The name of the file the diagnostic points into, if any.
    pub fn file_name(&self) -> Option<&str> {
        self.file.as_ref().map(|f| f.name.as_str())
    }

    /// The text under the main label, if any.
    pub fn snippet(&self) -> Option<&str> {
        let (span, _) = self.label.as_ref()?;
        self.file.as_ref()?.text.get(span.start..span.end)
    }

    /// `{severity, code, message, file, line, column, offset, length, label, help}`;
    /// location fields are `null` for diagnostics without a span.
    pub fn to_json(&self) -> serde_json::Value {
        let loc = match (&self.file, &self.label) {
            (Some(f), Some((span, _))) => Some((f.line_col(span.start), span)),
            _ => None,
        };
        serde_json::json!({
            "severity": self.severity.to_string(),
            "code": self.code,
            "message": self.message,
            "file": self.file.as_ref().map(|f| f.name.clone()),
            "line": loc.map(|((l, _), _)| l),
            "column": loc.map(|((_, c), _)| c),
            "offset": loc.map(|(_, s)| s.start),
            "length": loc.map(|(_, s)| s.len()),
            "label": self.label.as_ref().map(|(_, l)| l.clone()),
            "help": self.help,
        })
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Diagnostic {}

fn labeled(span: Span, text: &str, primary: bool) -> LabeledSpan {
    let label = (!text.is_empty()).then(|| text.to_string());
    if primary {
        LabeledSpan::new_primary_with_span(label, span)
    } else {
        LabeledSpan::new_with_span(label, span)
    }
}

impl miette::Diagnostic for Diagnostic {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.code))
    }

    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        })
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display + 'a>)
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        self.file.as_ref().map(|f| f.named() as &dyn SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let (span, text) = self.label.as_ref()?;
        let first = std::iter::once(labeled(*span, text, true));
        let rest = self.secondary.iter().map(|(s, t)| labeled(*s, t, false));
        Some(Box::new(first.chain(rest)))
    }

    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn miette::Diagnostic> + 'a>> {
        if self.notes.is_empty() {
            return None;
        }
        Some(Box::new(
            self.notes.iter().map(|n| n as &dyn miette::Diagnostic),
        ))
    }
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Note {}

impl miette::Diagnostic for Note {
    fn severity(&self) -> Option<miette::Severity> {
        Some(miette::Severity::Advice)
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        Some(self.location.file.named() as &dyn SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        Some(Box::new(std::iter::once(labeled(
            self.location.span,
            "here",
            true,
        ))))
    }
}
