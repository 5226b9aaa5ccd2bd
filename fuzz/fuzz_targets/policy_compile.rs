//! Arbitrary UTF-8 through the `.tlspol` parser and checker
//! (`tlspolc::compile_str`), and the formatter round trip: a source that
//! compiles must format, and its formatted text must compile to the same
//! policy; formatting is idempotent.
//!
//! `include` and `trust anchor` paths are read relative to `examples/`.
//! Inputs with an absolute or `..` path in a quoted string are skipped so
//! the fuzzer cannot make the compiler read device files (`/dev/zero`
//! would hang it) or wander the file system.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

const BASE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");

/// Renders a diagnostic the way `tlspolc` prints it (labels point into
/// the source: spans must fall on character boundaries), and as JSON.
fn render(d: &tlspolc::Diagnostic) {
    let mut out = String::new();
    let handler =
        miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor());
    let _ = handler.render_report(&mut out, d);
    let _ = d.snippet();
    let _ = d.to_json().to_string();
}

/// False when a quoted string (conservatively: anything from a `"` to the
/// next `"` or the end of the line) could name a file outside `BASE_DIR`.
fn paths_stay_inside(src: &str) -> bool {
    src.lines().all(|line| {
        line.split('"')
            .skip(1)
            .step_by(2)
            .all(|s| !s.starts_with('/') && !s.contains(".."))
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    if !paths_stay_inside(src) {
        return;
    }
    let base = Path::new(BASE_DIR);
    let compiled = tlspolc::compile_str("fuzz.tlspol", src, base);
    match &compiled {
        Ok(c) => c.warnings.iter().take(3).for_each(render),
        Err(f) => {
            assert!(!f.errors.is_empty(), "a failure carries an error");
            f.errors.iter().take(3).for_each(render);
        }
    }
    let formatted = tlspolc::format_str("fuzz.tlspol", src);
    if let Ok(c) = &compiled {
        let text = formatted
            .as_ref()
            .unwrap_or_else(|f| panic!("compiles but does not format: {:?}", f.errors));
        let again = tlspolc::compile_str("fuzz.tlspol", text, base)
            .unwrap_or_else(|f| panic!("formatted text does not compile: {:?}\n{text}", f.errors));
        assert_eq!(
            c.policy, again.policy,
            "formatting changed the policy:\n{text}"
        );
    }
    if let Ok(text) = &formatted {
        let twice = tlspolc::format_str("fuzz.tlspol", text)
            .unwrap_or_else(|f| panic!("formatted text does not parse: {:?}\n{text}", f.errors));
        assert_eq!(text, &twice, "formatting is not idempotent");
    }
});
