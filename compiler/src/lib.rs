//! `tlspolc`: the `.tlspol` policy language, its parser, checker and
//! formatter.
//!
//! # Layout
//! The path text takes, readable from the file names:
//!
//! - [`source`]: each file read (top-level and included) as an `Arc<str>`
//!   with its name; [`source::Span`]s point into it.
//! - [`syntax`]: [`syntax::lexer`] (nom) splits text into tokens,
//!   [`syntax::parser`] builds the [`ast`] and reports syntax errors
//!   (recovering at the next line or closing brace), [`syntax::value`]
//!   (nom) reads durations, ports and route targets.
//! - [`ast`]: the tree as written; every node has a span, spans take no part
//!   in equality.
//! - [`check`]: tree → [`policy::Policy`]: includes, trust anchors, values,
//!   duplicates, the rules of the behaviour contract that a policy can
//!   break (T12, T14, T15, T17), every size bound of `policy::limits`.
//! - [`diagnostic`]: errors and warnings with stable codes, rendered by
//!   miette, serialised to JSON.
//! - [`fmt`]: the tree back to canonical text, comments kept.
//!
//! The language itself is described in `docs/language.md`.
//!
//! # Entry points
//! [`compile_file`] and [`compile_str`] give a [`Compiled`] policy (plus
//! warnings) or a [`Failed`] list of errors; [`format_source`] gives the
//! canonical text of one file.

pub mod ast;
pub mod check;
pub mod diagnostic;
pub mod fmt;
pub mod source;
pub mod syntax;

use std::path::{Path, PathBuf};

pub use diagnostic::{Diagnostic, Severity};
use source::SourceFile;

/// A policy that compiled, with the warnings it drew.
#[derive(Debug)]
pub struct Compiled {
    pub policy: policy::Policy,
    pub warnings: Vec<Diagnostic>,
}

/// A policy that did not compile: at least one error.
#[derive(Debug)]
pub struct Failed {
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

fn unreadable(path: &Path, e: &std::io::Error) -> Failed {
    Failed {
        errors: vec![Diagnostic::error(
            "tlspol::io",
            format!("cannot read `{}`: {e}", path.display()),
        )
        .with_help("check the path and its permissions")],
        warnings: Vec::new(),
    }
}

fn base_dir_of(path: &Path) -> PathBuf {
    path.parent().map(PathBuf::from).unwrap_or_default()
}

fn finish(policy: Option<policy::Policy>, sink: check::Sink) -> Result<Compiled, Failed> {
    match policy {
        Some(policy) if sink.errors.is_empty() => Ok(Compiled {
            policy,
            warnings: sink.warnings,
        }),
        _ => Err(Failed {
            errors: sink.errors,
            warnings: sink.warnings,
        }),
    }
}

/// Compiles the policy in `path`, reading `include`d files and PEM trust
/// anchors relative to the file that names them.
pub fn compile_file(path: &Path) -> Result<Compiled, Failed> {
    let text = std::fs::read_to_string(path).map_err(|e| unreadable(path, &e))?;
    let file = SourceFile::new(path.display().to_string(), text, base_dir_of(path));
    let canonical = std::fs::canonicalize(path).ok();
    let (policy, sink) = check::check(file, canonical);
    finish(policy, sink)
}

/// Compiles policy text `src` shown as `name`; `include` and `trust anchor`
/// paths are relative to `base_dir`.
pub fn compile_str(name: &str, src: &str, base_dir: &Path) -> Result<Compiled, Failed> {
    let file = SourceFile::new(name, src, base_dir.to_path_buf());
    let canonical = std::fs::canonicalize(base_dir.join(name)).ok();
    let (policy, sink) = check::check(file, canonical);
    finish(policy, sink)
}

/// The canonical text of the file at `path` (its includes are not read).
/// Fails only on syntax errors; running it on its own output changes
/// nothing.
pub fn format_source(path: &Path) -> Result<String, Failed> {
    let text = std::fs::read_to_string(path).map_err(|e| unreadable(path, &e))?;
    format_str(&path.display().to_string(), &text)
}

/// [`format_source`] for text already in memory.
pub fn format_str(name: &str, src: &str) -> Result<String, Failed> {
    let file = SourceFile::new(name, src, PathBuf::new());
    let (ast, errors) = syntax::parse(&file);
    if !errors.is_empty() {
        return Err(Failed {
            errors,
            warnings: Vec::new(),
        });
    }
    Ok(fmt::format_file(&ast))
}
