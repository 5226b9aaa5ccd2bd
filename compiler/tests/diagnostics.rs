#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Golden diagnostics: one tiny `.tlspol` snippet per error and warning
//! class, its rendered miette report (no colour) and its JSON, frozen with
//! insta. Each test also checks the code and the text under the label, so a
//! reader sees what is pointed at without opening the snapshot.

use std::path::Path;

use miette::{GraphicalReportHandler, GraphicalTheme};
use tlspolc::{Diagnostic, Severity};

fn render(d: &Diagnostic) -> String {
    let mut out = String::new();
    GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor())
        .with_width(100)
        .render_report(&mut out, d)
        .unwrap();
    out
}

/// Compiles `src` (includes relative to `tests/diagnostics/`) and returns
/// all diagnostics, errors first.
fn diagnostics(src: &str) -> Vec<Diagnostic> {
    let base = Path::new("tests/diagnostics");
    match tlspolc::compile_str("case.tlspol", src, base) {
        Ok(c) => c.warnings,
        Err(f) => f.errors.into_iter().chain(f.warnings).collect(),
    }
}

/// Snapshots every diagnostic of `src`, and checks the first has `code`,
/// `severity` and a label under `under`.
fn golden(name: &str, src: &str, code: &str, severity: Severity, under: Option<&str>) {
    let ds = diagnostics(src);
    assert!(!ds.is_empty(), "{name}: no diagnostic");
    let first = &ds[0];
    assert_eq!(first.code(), code, "{name}: {:?}", first.to_json());
    assert_eq!(first.severity(), severity, "{name}");
    assert_eq!(first.snippet(), under, "{name}");
    let mut text = format!("--- source ---\n{src}\n");
    for d in &ds {
        text.push_str("--- report ---\n");
        text.push_str(&render(d));
        text.push_str("--- json ---\n");
        text.push_str(&serde_json::to_string_pretty(&d.to_json()).unwrap());
        text.push('\n');
    }
    insta::assert_snapshot!(name, text);
}

const S: &str = "policy serial 1\n";

macro_rules! golden {
    ($name:ident, $src:expr, $code:literal, $sev:ident, $under:expr) => {
        #[test]
        fn $name() {
            golden(stringify!($name), &$src, $code, Severity::$sev, $under);
        }
    };
}

// ---- syntax ---------------------------------------------------------------
golden!(
    syntax_expected_value,
    format!("{S}domain example.com {{\n    inbound tls\n}}\n"),
    "tlspol::syntax",
    Error,
    Some("tls")
);
golden!(
    syntax_reports_every_error,
    format!("{S}domain example.com {{\n    inbound tls sometimes\n    outbound servers\n    validation strong\n}}\ndomain example.org usesdefaults\npartner bank.example {{ outbound tls }}\n"),
    "tlspol::syntax",
    Error,
    Some("sometimes")
);
golden!(
    syntax_unclosed_block,
    format!("{S}domain example.com {{\n    inbound tls required\n"),
    "tlspol::syntax",
    Error,
    Some("{")
);
golden!(
    syntax_unterminated_string,
    format!("{S}include \"partners.tlspol\n"),
    "tlspol::syntax",
    Error,
    Some("\"partners.tlspol")
);
golden!(
    syntax_setting_outside_block,
    format!("{S}inbound tls required\n"),
    "tlspol::syntax",
    Error,
    Some("inbound")
);
golden!(
    unknown_keyword_did_you_mean,
    format!("{S}domian example.com uses defaults\n"),
    "tlspol::unknown-keyword",
    Error,
    Some("domian")
);
golden!(
    unknown_setting_value,
    format!("{S}domain example.com {{ inbound tls requird }}\n"),
    "tlspol::unknown-keyword",
    Error,
    Some("requird")
);

// ---- duplicates and conflicts ----------------------------------------------
golden!(
    duplicate_domain,
    format!("{S}domain example.com uses defaults\ndomain EXAMPLE.com {{ inbound tls required }}\n"),
    "tlspol::duplicate-domain",
    Error,
    Some("EXAMPLE.com")
);
golden!(
    duplicate_domain_across_files,
    format!("{S}include \"one_domain.tlspol\"\ndomain example.com uses defaults\n"),
    "tlspol::duplicate-domain",
    Error,
    Some("example.com")
);
golden!(
    duplicate_partner,
    format!("{S}partner bank.example {{ outbound tls required }}\npartner bank.example {{ outbound tls required }}\n"),
    "tlspol::duplicate-partner",
    Error,
    Some("bank.example")
);
golden!(
    domain_and_partner,
    format!(
        "{S}domain bank.example uses defaults\npartner bank.example {{ outbound tls required }}\n"
    ),
    "tlspol::domain-and-partner",
    Error,
    Some("bank.example")
);
golden!(
    duplicate_setting,
    format!(
        "{S}domain example.com {{\n    inbound tls required\n    inbound tls opportunistic\n}}\n"
    ),
    "tlspol::duplicate-setting",
    Error,
    Some("inbound tls opportunistic")
);
golden!(
    duplicate_serial,
    format!("{S}policy serial 2\n"),
    "tlspol::duplicate-serial",
    Error,
    Some("policy serial 2")
);
golden!(
    missing_serial,
    "domain example.com uses defaults\n",
    "tlspol::missing-serial",
    Error,
    None
);
golden!(
    invalid_serial,
    "policy serial 2026-11-23\n",
    "tlspol::invalid-serial",
    Error,
    Some("2026-11-23")
);
golden!(
    setting_not_allowed,
    format!("{S}partner bank.example {{\n    outbound tls required\n    deliver static mx.bank.example\n}}\n"),
    "tlspol::setting-not-allowed",
    Error,
    Some("deliver static mx.bank.example")
);

// ---- values -------------------------------------------------------------
golden!(
    invalid_name,
    format!("{S}domain exa_mple.com uses defaults\n"),
    "tlspol::invalid-name",
    Error,
    Some("exa_mple.com")
);
golden!(
    invalid_address,
    format!("{S}domain example.com {{ outbound servers 192.0.2.300 }}\n"),
    "tlspol::invalid-address",
    Error,
    Some("192.0.2.300")
);
golden!(
    invalid_network_host_bits,
    format!("{S}domain example.com {{ outbound servers 198.51.100.7/24 }}\n"),
    "tlspol::invalid-network",
    Error,
    Some("198.51.100.7/24")
);
golden!(
    invalid_port,
    format!("{S}domain example.com {{ deliver static mx.example.com:65536 }}\n"),
    "tlspol::invalid-port",
    Error,
    Some("mx.example.com:65536")
);
golden!(
    invalid_port_zero,
    format!("{S}domain example.com {{ deliver static [2001:db8::25]:0 }}\n"),
    "tlspol::invalid-port",
    Error,
    Some("[2001:db8::25]:0")
);
golden!(
    invalid_target,
    format!("{S}domain example.com {{ deliver static [2001:db8::25:2525 }}\n"),
    "tlspol::invalid-target",
    Error,
    Some("[2001:db8::25:2525")
);
golden!(
    invalid_priority,
    format!("{S}domain example.com {{ deliver routes {{ high mx1.example.com }} }}\n"),
    "tlspol::invalid-priority",
    Error,
    Some("high")
);
golden!(
    empty_routes,
    format!("{S}domain example.com {{ deliver routes {{ }} }}\n"),
    "tlspol::empty-routes",
    Error,
    Some("{ }")
);
golden!(
    invalid_duration,
    format!("{S}retry {{ every 5m, 10 }}\n"),
    "tlspol::invalid-duration",
    Error,
    Some("10")
);
golden!(
    notify_after_give_up,
    format!("{S}retry {{\n    give up after 1d\n    notify delay after 2d\n}}\n"),
    "tlspol::notify-after-give-up",
    Error,
    Some("2d")
);

// ---- rules of the behaviour contract -------------------------------------
// rule T12
golden!(
    t12_exclude_outside_domain,
    format!("{S}domain example.com {{ exclude legacy.example.org }}\n"),
    "tlspol::exclude-outside-domain",
    Error,
    Some("legacy.example.org")
);
// rule T14
golden!(
    t14_trusted_names_with_relaxed,
    format!("{S}domain example.com {{\n    inbound tls required\n    validation relaxed\n    trusted names mx.example.com\n}}\n"),
    "tlspol::trusted-names-relaxed",
    Error,
    Some("trusted names mx.example.com")
);
// rule T15
golden!(
    t15_relaxed_validation_warns,
    format!("{S}domain example.com {{\n    inbound tls required\n    validation relaxed\n}}\n"),
    "tlspol::relaxed-validation",
    Warning,
    Some("relaxed")
);
// rule T17
golden!(
    t17_static_route_by_ip_unverifiable,
    format!("{S}domain example.com {{\n    inbound tls required\n    deliver static 192.0.2.25:2525\n}}\n"),
    "tlspol::static-ip-unverifiable",
    Error,
    Some("192.0.2.25:2525")
);
golden!(
    t17_inbound_route_by_ip_unverifiable,
    format!("{S}defaults {{ inbound tls required }}\ndomain example.com {{\n    deliver routes {{\n        10 mx1.example.com\n        20 [2001:db8::25]\n    }}\n}}\n"),
    "tlspol::route-ip-unverifiable",
    Error,
    Some("[2001:db8::25]")
);

// ---- limits ----------------------------------------------------------------
golden!(
    limit_trusted_names,
    format!(
        "{S}domain example.com {{\n    inbound tls required\n    trusted names {}\n}}\n",
        (1..=17).map(|i| format!("mx{i}.example.com")).collect::<Vec<_>>().join(", ")
    ),
    "tlspol::limit-exceeded",
    Error,
    Some(
        "trusted names mx1.example.com, mx2.example.com, mx3.example.com, mx4.example.com, mx5.example.com, mx6.example.com, mx7.example.com, mx8.example.com, mx9.example.com, mx10.example.com, mx11.example.com, mx12.example.com, mx13.example.com, mx14.example.com, mx15.example.com, mx16.example.com, mx17.example.com"
    )
);
golden!(
    limit_name_length,
    format!(
        "{S}domain {}.example uses defaults\n",
        vec!["a".repeat(60); 5].join(".")
    ),
    "tlspol::limit-exceeded",
    Error,
    Some(format!("{}.example", vec!["a".repeat(60); 5].join(".")).as_str())
);
golden!(
    limit_retry_give_up,
    format!("{S}retry {{ give up after 31d }}\n"),
    "tlspol::limit-exceeded",
    Error,
    Some("31d")
);

// ---- files ---------------------------------------------------------------
golden!(
    io_unreadable_include,
    format!("{S}include \"missing.tlspol\"\n"),
    "tlspol::io",
    Error,
    Some("\"missing.tlspol\"")
);
golden!(
    include_cycle,
    format!("{S}include \"cycle_a.tlspol\"\n"),
    "tlspol::include-cycle",
    Error,
    Some("\"cycle_a.tlspol\"")
);
golden!(
    error_in_included_file,
    format!("{S}include \"bad_partner.tlspol\"\n"),
    "tlspol::unknown-keyword",
    Error,
    Some("strng")
);
golden!(
    pem_not_certificate,
    format!("{S}trust anchor \"not_cert.pem\"\n"),
    "tlspol::pem-not-certificate",
    Error,
    Some("\"not_cert.pem\"")
);
golden!(
    pem_private_key,
    format!("{S}trust anchor \"key.pem\"\n"),
    "tlspol::pem-not-certificate",
    Error,
    Some("\"key.pem\"")
);

// ---- warnings ------------------------------------------------------------
golden!(
    unused_validation,
    format!("{S}domain example.com {{\n    outbound tls required\n    trusted names mx.example.com\n}}\n"),
    "tlspol::unused-validation",
    Warning,
    Some("trusted names mx.example.com")
);
golden!(
    partner_no_effect,
    format!("{S}partner bank.example {{ validation strong }}\n"),
    "tlspol::partner-no-effect",
    Warning,
    Some("bank.example")
);
golden!(
    duplicate_entry,
    format!("{S}domain example.com {{ exclude a.example.com, b.example.com, a.example.com }}\n"),
    "tlspol::duplicate-entry",
    Warning,
    Some("a.example.com")
);
golden!(
    duplicate_trust_anchor,
    format!(
        "{S}trust anchor \"ca.pem\"\ntrust anchor \"../../../examples/certs/private-ca.pem\"\n"
    ),
    "tlspol::duplicate-entry",
    Warning,
    Some("\"../../../examples/certs/private-ca.pem\"")
);

golden!(
    anchor_not_ca,
    format!("{S}trust anchor \"server_cert.pem\"\n"),
    "tlspol::anchor-not-ca",
    Warning,
    Some("\"server_cert.pem\"")
);
golden!(
    anchor_expired,
    format!("{S}trust anchor \"expired_ca.pem\"\n"),
    "tlspol::anchor-expired",
    Warning,
    Some("\"expired_ca.pem\"")
);

#[test]
fn unreadable_top_level_file_is_one_diagnostic_without_span() {
    let f =
        tlspolc::compile_file(Path::new("tests/diagnostics/does-not-exist.tlspol")).unwrap_err();
    assert_eq!(f.errors.len(), 1);
    assert_eq!(f.errors[0].code(), "tlspol::io");
    assert!(f.errors[0].to_json()["line"].is_null());
}

#[test]
fn errors_and_warnings_are_kept_apart() {
    let f = tlspolc::compile_str(
        "case.tlspol",
        "policy serial 1\ndomain a.example { validation relaxed }\ndomain a.example uses defaults\n",
        Path::new("."),
    )
    .unwrap_err();
    assert!(f.errors.iter().all(|d| d.severity() == Severity::Error));
    assert!(f.warnings.iter().all(|d| d.severity() == Severity::Warning));
    assert_eq!(f.errors.len(), 1);
    assert_eq!(f.warnings.len(), 1);
}
