#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Hostile inputs: deep nesting, enormous files, arbitrary bytes. The
//! compiler must answer (errors are fine) without crashing or hanging.

use std::path::Path;

use proptest::prelude::*;

fn compile(src: &str) -> Result<tlspolc::Compiled, tlspolc::Failed> {
    tlspolc::compile_str("x.tlspol", src, Path::new("."))
}

#[test]
fn deeply_nested_braces_are_errors_not_stack_overflows() {
    let src = format!(
        "policy serial 1\ndomain a.example {}{}\n",
        "{".repeat(50_000),
        "}".repeat(50_000)
    );
    let f = compile(&src).unwrap_err();
    assert!(f.errors.iter().all(|d| d.code().starts_with("tlspol::")));
    let open_only = format!("policy serial 1\n{}", "{".repeat(50_000));
    assert!(compile(&open_only).is_err());
    assert!(tlspolc::format_str("x.tlspol", &open_only).is_err());
}

#[test]
fn enormous_lists_and_words_are_bounded_errors() {
    let names: Vec<String> = (0..20_000).map(|i| format!("mx{i}.example.com")).collect();
    let src = format!(
        "policy serial 1\ndomain a.example {{\n inbound tls required\n trusted names {}\n}}\ndomain {} uses defaults\n",
        names.join(", "),
        "a".repeat(1_000_000)
    );
    let f = compile(&src).unwrap_err();
    assert!(f
        .errors
        .iter()
        .any(|d| d.code() == "tlspol::limit-exceeded"));
}

#[test]
fn many_domains_compile() {
    let mut src = String::from("policy serial 1\n");
    for i in 0..5_000 {
        src.push_str(&format!(
            "domain d{i}.example.com {{ inbound tls required }}\n"
        ));
    }
    let p = compile(&src).unwrap().policy;
    assert_eq!(p.domains.len(), 5_000);
    assert!(p.domains.windows(2).all(|w| w[0].name < w[1].name));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn arbitrary_text_never_panics(src in "\\PC{0,300}") {
        let _ = compile(&src);
        let _ = tlspolc::format_str("x.tlspol", &src);
    }

    #[test]
    fn keyword_soup_never_panics_and_fmt_is_idempotent(
        words in proptest::collection::vec(
            prop_oneof![
                Just("policy"), Just("serial"), Just("1"), Just("domain"), Just("a.example"),
                Just("{"), Just("}"), Just(","), Just("inbound"), Just("tls"), Just("required"),
                Just("deliver"), Just("routes"), Just("10"), Just("static"), Just("[::1]:25"),
                Just("uses"), Just("defaults"), Just("\n"), Just("# c\n"), Just("retry"),
                Just("every"), Just("5m"), Just("\"x"), Just("include"), Just("\"p.tlspol\""),
            ],
            0..60,
        )
    ) {
        let src = words.join(" ");
        let _ = compile(&src);
        if let Ok(once) = tlspolc::format_str("x.tlspol", &src) {
            let twice = tlspolc::format_str("x.tlspol", &once).unwrap();
            prop_assert_eq!(once, twice);
        }
    }
}
