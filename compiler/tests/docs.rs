#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Keeps `docs/language.md` in step with the compiler: every ```tlspol
//! block compiles (relative paths from `examples/`), or, when its fence
//! says `error <code>` / `warning <code>`, draws that diagnostic.

use std::path::Path;

#[test]
fn every_tlspol_block_of_the_language_reference_compiles() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let doc = std::fs::read_to_string(root.join("docs/language.md")).unwrap();
    let base = root.join("examples");
    let mut blocks = 0;
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(info) = line.strip_prefix("```tlspol") else {
            continue;
        };
        let mut src = String::new();
        for l in lines.by_ref() {
            if l.starts_with("```") {
                break;
            }
            src.push_str(l);
            src.push('\n');
        }
        blocks += 1;
        if !src.contains("policy serial") {
            src.insert_str(0, "policy serial 1\n");
        }
        let words: Vec<&str> = info.split_whitespace().collect();
        let result = tlspolc::compile_str("language.md", &src, &base);
        match words.as_slice() {
            [] => {
                let c = result.unwrap_or_else(|f| {
                    panic!(
                        "block failed:\n{src}\n{:?}",
                        f.errors.iter().map(|d| d.to_json()).collect::<Vec<_>>()
                    )
                });
                assert!(c.warnings.is_empty(), "unexpected warnings in:\n{src}");
            }
            ["error", code] => {
                let f = result.expect_err(&src);
                assert!(
                    f.errors.iter().any(|d| d.code() == *code),
                    "{code} expected in:\n{src}"
                );
            }
            ["warning", code] => {
                let c = result.unwrap_or_else(|_| panic!("block failed:\n{src}"));
                assert!(
                    c.warnings.iter().any(|d| d.code() == *code),
                    "{code} expected in:\n{src}"
                );
            }
            other => panic!("unknown fence `{other:?}`"),
        }
    }
    assert!(blocks >= 15, "only {blocks} blocks found");
}

#[test]
fn every_diagnostic_code_is_documented() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let doc = std::fs::read_to_string(root.join("docs/language.md")).unwrap();
    let mut src = String::new();
    for f in [
        "check/mod.rs",
        "check/values.rs",
        "check/anchors.rs",
        "syntax/parser.rs",
        "lib.rs",
    ] {
        src.push_str(&std::fs::read_to_string(root.join("compiler/src").join(f)).unwrap());
    }
    let mut rest = src.as_str();
    let mut n = 0;
    while let Some(i) = rest.find("\"tlspol::") {
        let tail = &rest[i + 1..];
        let end = tail.find('"').unwrap();
        let code = &tail[..end];
        assert!(
            doc.contains(&format!("`{code}`")),
            "{code} is not in docs/language.md"
        );
        n += 1;
        rest = &tail[end..];
    }
    assert!(n > 20);
}
