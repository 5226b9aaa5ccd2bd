//! Diagnostics on the terminal (miette graphics, colour only on a terminal
//! and without `NO_COLOR`) and as JSON.

use std::io::IsTerminal;

use miette::{GraphicalReportHandler, GraphicalTheme};
use tlspolc::Diagnostic;

/// Whether the stream may carry colour.
pub fn colour(is_terminal: bool) -> bool {
    is_terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// One diagnostic as miette draws it.
pub fn render(d: &Diagnostic, colour: bool) -> String {
    let theme = if colour {
        GraphicalTheme::unicode()
    } else {
        GraphicalTheme::unicode_nocolor()
    };
    let handler = GraphicalReportHandler::new_themed(theme).with_width(100);
    let mut out = String::new();
    if handler.render_report(&mut out, d).is_err() {
        // Fall back to the plain message: never lose a diagnostic.
        out = format!("{}: {}\n", d.severity(), d);
    }
    out
}

/// Renders warnings then errors to stderr.
pub fn eprint_all(errors: &[Diagnostic], warnings: &[Diagnostic]) {
    let colour = colour(std::io::stderr().is_terminal());
    for d in warnings.iter().chain(errors) {
        eprint!("{}", render(d, colour));
    }
}

/// `[d.to_json(), …]`.
pub fn json_list(ds: &[Diagnostic]) -> serde_json::Value {
    serde_json::Value::Array(ds.iter().map(Diagnostic::to_json).collect())
}

/// `1 error`, `2 warnings`.
pub fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// Writes `text` to stdout. A closed pipe (`tlspolc inspect … | head`) is
/// not an error worth a panic: the reader has what it wanted.
pub fn print_out(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}
