//! The decision function as tables: each row names the rule it proves and
//! gives the message context and the expected answer (rule, trail, matched
//! entry, TLS requirement, validation, route).
//!
//! Rules covered here: T1–T6, T10–T17 (T13–T15 at the level of which
//! validation the plan carries; the certificate checks themselves are the
//! relay's).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::{IpAddr, Ipv4Addr};

use common::{bvec, name, required, strong};
use policy::*;

const OUTBOUND_REQ: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)); // b.example's servers
const OUTBOUND_OPP: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5)); // d.example's server
const STRANGER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1));

fn route(priority: u16, host: &str) -> InboundRoute {
    InboundRoute {
        priority,
        target: Target {
            host: RouteHost::Name(name(host)),
            port: 25,
        },
    }
}

/// `a.example`: defaults. `b.example`: own settings, inbound and outbound
/// required, strong with trusted names, inbound routes, excluded
/// `legacy.b.example`. `c.example`: relaxed, static route by IP:port.
/// `d.example`: own settings, nothing required, outbound server
/// 203.0.113.5. `partner.example`: required; `soft.example`: opportunistic.
fn fixture(defaults: Settings, always_attempt_tls: bool) -> CompiledPolicy {
    let mut p = Policy::empty(7);
    p.defaults = defaults;
    p.always_attempt_tls = always_attempt_tls;
    p.domains = vec![
        Domain {
            name: name("a.example"),
            settings: None,
            details: None,
        },
        Domain {
            name: name("b.example"),
            settings: Some(Box::new(required(strong(&["trusted.b.example"])))),
            details: Some(Box::new(DomainDetails {
                outbound_servers: bvec([IpNet::parse("192.0.2.0/24").unwrap()]),
                excluded: bvec([name("legacy.b.example")]),
                // Written out of order: the plan lists them by priority.
                delivery: Delivery::InboundRoutes(bvec([
                    route(20, "mx2.b.example"),
                    route(10, "mx1.b.example"),
                ])),
            })),
        },
        Domain {
            name: name("c.example"),
            settings: Some(Box::new(Settings {
                inbound: Enforcement::Required,
                outbound: Enforcement::Opportunistic,
                validation: Validation::Relaxed,
            })),
            details: Some(Box::new(DomainDetails {
                delivery: Delivery::Static(Target {
                    host: RouteHost::Ip(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7))),
                    port: 2525,
                }),
                ..Default::default()
            })),
        },
        Domain {
            name: name("d.example"),
            settings: Some(Box::new(Settings::default())),
            details: Some(Box::new(DomainDetails {
                outbound_servers: bvec([IpNet::parse("203.0.113.5").unwrap()]),
                ..Default::default()
            })),
        },
    ];
    p.partners = vec![
        Partner {
            name: name("partner.example"),
            outbound: Enforcement::Required,
            validation: strong(&["mx.partner.example"]),
        },
        Partner {
            name: name("soft.example"),
            outbound: Enforcement::Opportunistic,
            validation: Validation::default(),
        },
    ];
    CompiledPolicy::new(p)
}

fn opportunistic_defaults() -> Settings {
    Settings::default()
}

fn enforcing_defaults() -> Settings {
    required(strong(&[]))
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum R {
    Mx,
    Routes(&'static [&'static str]),
    Static(&'static str),
}

struct Row {
    /// The rule this row proves.
    rule: &'static str,
    defaults: fn() -> Settings,
    always: bool,
    client: IpAddr,
    tls_in: bool,
    to: &'static str,
    /// `None`: refused (T6).
    want: Option<Want>,
    want_rule: Rule,
    want_trail: &'static [Rule],
}

struct Want {
    matched: Option<&'static str>,
    tls: TlsRequirement,
    validation: Option<Validation>,
    route: R,
}

fn w(
    matched: Option<&'static str>,
    tls: TlsRequirement,
    validation: Option<Validation>,
    route: R,
) -> Option<Want> {
    Some(Want {
        matched,
        tls,
        validation,
        route,
    })
}

fn rows() -> Vec<Row> {
    use Rule::*;
    use TlsRequirement as Tls;
    let opp = opportunistic_defaults as fn() -> Settings;
    let enf = enforcing_defaults as fn() -> Settings;
    let row = |rule, defaults, always, client, tls_in, to, want, want_rule, want_trail| Row {
        rule,
        defaults,
        always,
        client,
        tls_in,
        to,
        want,
        want_rule,
        want_trail,
    };
    vec![
        // T1: nothing enforced → opportunistic both ways (mirror rules).
        row(
            "T1",
            opp,
            false,
            STRANGER,
            true,
            "u@a.example",
            w(Some("a.example"), Tls::Opportunistic, None, R::Mx),
            T2,
            &[T10],
        ),
        row(
            "T1",
            opp,
            false,
            OUTBOUND_OPP,
            true,
            "u@elsewhere.example",
            w(None, Tls::Opportunistic, None, R::Mx),
            T2,
            &[T18],
        ),
        // T2: received over TLS → STARTTLS attempted, clear fallback.
        row(
            "T2",
            opp,
            false,
            OUTBOUND_OPP,
            true,
            "u@soft.example",
            w(None, Tls::Opportunistic, None, R::Mx),
            T2,
            &[T18],
        ),
        // T3: received in clear → clear, STARTTLS not attempted.
        row(
            "T3",
            opp,
            false,
            STRANGER,
            false,
            "u@a.example",
            w(Some("a.example"), Tls::None, None, R::Mx),
            T3,
            &[T10],
        ),
        row(
            "T3",
            opp,
            false,
            OUTBOUND_OPP,
            false,
            "u@elsewhere.example",
            w(None, Tls::None, None, R::Mx),
            T3,
            &[T18],
        ),
        // The opt-in replacement for T3.
        row(
            "T3",
            opp,
            true,
            OUTBOUND_OPP,
            false,
            "u@elsewhere.example",
            w(None, Tls::Opportunistic, None, R::Mx),
            AlwaysAttemptTls,
            &[T18],
        ),
        // T5: partner with outbound enforcement → TLS required, partner's validation.
        row(
            "T5",
            opp,
            false,
            OUTBOUND_REQ,
            false,
            "u@partner.example",
            w(
                Some("partner.example"),
                Tls::Required,
                Some(strong(&["mx.partner.example"])),
                R::Mx,
            ),
            T5,
            &[T18],
        ),
        row(
            "T5",
            opp,
            false,
            OUTBOUND_OPP,
            true,
            "u@mail.partner.example",
            w(
                Some("partner.example"),
                Tls::Required,
                Some(strong(&["mx.partner.example"])),
                R::Mx,
            ),
            T5,
            &[T18],
        ),
        // T5: a partner without enforcement, or anyone else, → mirror rules.
        row(
            "T5",
            opp,
            false,
            OUTBOUND_REQ,
            false,
            "u@soft.example",
            w(None, Tls::None, None, R::Mx),
            T3,
            &[T18],
        ),
        row(
            "T5",
            opp,
            false,
            OUTBOUND_REQ,
            true,
            "u@notpartner.example",
            w(None, Tls::Opportunistic, None, R::Mx),
            T2,
            &[T18],
        ),
        // T6: not registered, client not a registered outbound server → refused.
        row(
            "T6",
            opp,
            false,
            STRANGER,
            true,
            "u@partner.example",
            None,
            T6,
            &[],
        ),
        row(
            "T6",
            enf,
            false,
            STRANGER,
            true,
            "u@elsewhere.example",
            None,
            T6,
            &[],
        ),
        // T7 via T10: defaults enforce inbound, a.example uses the defaults.
        row(
            "T10",
            enf,
            false,
            STRANGER,
            false,
            "u@a.example",
            w(Some("a.example"), Tls::Required, Some(strong(&[])), R::Mx),
            T7,
            &[T10],
        ),
        // T10: the same domain follows the defaults when they change.
        row(
            "T10",
            opp,
            false,
            STRANGER,
            false,
            "u@a.example",
            w(Some("a.example"), Tls::None, None, R::Mx),
            T3,
            &[T10],
        ),
        // T10: a domain with its own settings does not follow the defaults.
        row(
            "T10",
            enf,
            false,
            STRANGER,
            true,
            "u@d.example",
            w(Some("d.example"), Tls::Opportunistic, None, R::Mx),
            T2,
            &[],
        ),
        // T11: sub-domains inherit (any depth), including routes.
        row(
            "T11",
            opp,
            false,
            STRANGER,
            false,
            "u@x.y.b.example",
            w(
                Some("b.example"),
                Tls::Required,
                Some(strong(&["trusted.b.example"])),
                R::Routes(&["mx1.b.example", "mx2.b.example"]),
            ),
            T7,
            &[T16, T11],
        ),
        row(
            "T11",
            enf,
            false,
            STRANGER,
            false,
            "u@sub.a.example",
            w(Some("a.example"), Tls::Required, Some(strong(&[])), R::Mx),
            T7,
            &[T11, T10],
        ),
        // T11 on label boundaries only: `xb.example` is not under `b.example`.
        row(
            "T11",
            opp,
            false,
            STRANGER,
            false,
            "u@xb.example",
            None,
            T6,
            &[],
        ),
        // T12: excluded sub-domain and its own sub-domains → default behaviour.
        row(
            "T12",
            opp,
            false,
            STRANGER,
            false,
            "u@legacy.b.example",
            w(
                Some("b.example"),
                Tls::None,
                None,
                R::Routes(&["mx1.b.example", "mx2.b.example"]),
            ),
            T3,
            &[T16, T12],
        ),
        row(
            "T12",
            opp,
            false,
            STRANGER,
            true,
            "u@deep.legacy.b.example",
            w(
                Some("b.example"),
                Tls::Opportunistic,
                None,
                R::Routes(&["mx1.b.example", "mx2.b.example"]),
            ),
            T2,
            &[T16, T12],
        ),
        // T12: a sibling of the excluded name is still covered.
        row(
            "T12",
            opp,
            false,
            STRANGER,
            false,
            "u@legacy2.b.example",
            w(
                Some("b.example"),
                Tls::Required,
                Some(strong(&["trusted.b.example"])),
                R::Routes(&["mx1.b.example", "mx2.b.example"]),
            ),
            T7,
            &[T16, T11],
        ),
        // T13/T14: strong validation with trusted names travels with the plan.
        row(
            "T13",
            opp,
            false,
            STRANGER,
            false,
            "u@b.example",
            w(
                Some("b.example"),
                Tls::Required,
                Some(strong(&["trusted.b.example"])),
                R::Routes(&["mx1.b.example", "mx2.b.example"]),
            ),
            T7,
            &[T16],
        ),
        row(
            "T14",
            opp,
            false,
            STRANGER,
            true,
            "u@B.Example.",
            w(
                Some("b.example"),
                Tls::Required,
                Some(strong(&["trusted.b.example"])),
                R::Routes(&["mx1.b.example", "mx2.b.example"]),
            ),
            T7,
            &[T16],
        ),
        // T15: relaxed validation, TLS still required; T17 static route by IP:port.
        row(
            "T15",
            opp,
            false,
            STRANGER,
            false,
            "u@c.example",
            w(
                Some("c.example"),
                Tls::Required,
                Some(Validation::Relaxed),
                R::Static("198.51.100.7:2525"),
            ),
            T7,
            &[T17],
        ),
        row(
            "T17",
            enf,
            false,
            STRANGER,
            true,
            "u@mx.c.example",
            w(
                Some("c.example"),
                Tls::Required,
                Some(Validation::Relaxed),
                R::Static("198.51.100.7:2525"),
            ),
            T7,
            &[T17, T11],
        ),
        // T16: inbound routes in priority order.
        row(
            "T16",
            opp,
            false,
            OUTBOUND_REQ,
            true,
            "u@b.example",
            w(
                Some("b.example"),
                Tls::Required,
                Some(strong(&["trusted.b.example"])),
                R::Routes(&["mx1.b.example", "mx2.b.example"]),
            ),
            T7,
            &[T16],
        ),
    ]
}

#[test]
fn decision_table_t1_t3_t5_t6_t10_t17() {
    for (i, r) in rows().into_iter().enumerate() {
        let p = fixture((r.defaults)(), r.always);
        let ctx = MessageContext {
            sender: "s@b.example",
            recipient: r.to,
            client_ip: r.client,
            received_over_tls: r.tls_in,
        };
        let d = p.decide(&ctx).unwrap();
        let at = format!("row {i} ({} → {}, rule {})", r.to, r.want_rule, r.rule);
        assert_eq!(d.rule, r.want_rule, "{at}: rule");
        assert_eq!(d.trail.as_slice(), r.want_trail, "{at}: trail");
        match (&r.want, &d.plan) {
            (None, None) => {
                assert!(d.is_refused(), "{at}");
                assert_eq!(d.matched, None, "{at}");
            }
            (Some(want), Some(plan)) => {
                assert_eq!(d.matched.map(|m| m.as_str()), want.matched, "{at}: matched");
                assert_eq!(plan.tls, want.tls, "{at}: tls");
                assert_eq!(
                    plan.validation,
                    want.validation.as_ref(),
                    "{at}: validation"
                );
                assert_eq!(
                    plan.validation.is_some(),
                    plan.tls == TlsRequirement::Required,
                    "{at}: validation set exactly when required"
                );
                let route = match plan.route {
                    RoutePlan::Mx => format!("{:?}", R::Mx),
                    RoutePlan::InboundRoutes(rs) => format!(
                        "{:?}",
                        rs.iter().map(|r| r.target.to_string()).collect::<Vec<_>>()
                    ),
                    RoutePlan::Static(t) => t.to_string(),
                };
                let want_route = match want.route {
                    R::Mx => format!("{:?}", R::Mx),
                    R::Routes(names) => format!("{names:?}"),
                    R::Static(t) => t.to_string(),
                };
                assert_eq!(route, want_route, "{at}: route");
            }
            (want, got) => panic!("{at}: want refused={} got {got:?}", want.is_none()),
        }
    }
}

/// T1/T4 on the receiving side: which clients must use TLS, which may relay.
#[test]
fn client_table_t1_t4_t6_t10() {
    // (rule, defaults, client, may_relay, tls_required, outbound_for)
    type ClientRow = (
        &'static str,
        fn() -> Settings,
        IpAddr,
        bool,
        bool,
        &'static [&'static str],
    );
    let rows: &[ClientRow] = &[
        (
            "T1",
            opportunistic_defaults,
            OUTBOUND_OPP,
            true,
            false,
            &["d.example"],
        ),
        (
            "T4",
            opportunistic_defaults,
            OUTBOUND_REQ,
            true,
            true,
            &["b.example"],
        ),
        // IPv4-mapped IPv6 is the same client.
        (
            "T4",
            opportunistic_defaults,
            "::ffff:192.0.2.99".parse().unwrap(),
            true,
            true,
            &["b.example"],
        ),
        ("T6", opportunistic_defaults, STRANGER, false, false, &[]),
        // T10: d.example has its own settings, so enforcing defaults don't reach it.
        (
            "T10",
            enforcing_defaults,
            OUTBOUND_OPP,
            true,
            false,
            &["d.example"],
        ),
    ];
    for (rule, defaults, ip, relay, tls, names) in rows {
        let p = fixture(defaults(), false);
        let c = p.client(*ip);
        assert_eq!(c.may_relay(), *relay, "{rule} {ip}");
        assert_eq!(c.tls_required, *tls, "{rule} {ip}");
        let got: Vec<&str> = c.outbound_for.iter().map(|n| n.as_str()).collect();
        assert_eq!(&got, names, "{rule} {ip}");
    }
}

/// T4 via T10: a domain on the defaults, listing outbound servers, gets
/// outbound enforcement when the defaults carry it.
#[test]
fn t4_t10_outbound_enforcement_from_defaults() {
    let mut p = Policy::empty(1);
    p.defaults = enforcing_defaults();
    p.domains = vec![Domain {
        name: name("e.example"),
        settings: None,
        details: Some(Box::new(DomainDetails {
            outbound_servers: bvec([IpNet::parse("2001:db8::/48").unwrap()]),
            ..Default::default()
        })),
    }];
    let c = CompiledPolicy::new(p.clone());
    assert!(c.client("2001:db8:0:1::25".parse().unwrap()).tls_required);
    assert!(!c.client("2001:db8:1::25".parse().unwrap()).may_relay());
    p.defaults = opportunistic_defaults();
    let c = CompiledPolicy::new(p);
    let class = c.client("2001:db8::1".parse().unwrap());
    assert!(class.may_relay() && !class.tls_required);
}

#[test]
fn bad_recipients_are_errors_not_decisions() {
    let p = fixture(opportunistic_defaults(), false);
    for bad in [
        "no-at-sign",
        "u@",
        "u@.b.example",
        "u@b..example",
        "u@b.example..",
        "u@[192.0.2.1]",
        "u@b_x.example",
    ] {
        let ctx = MessageContext {
            sender: "",
            recipient: bad,
            client_ip: OUTBOUND_REQ,
            received_over_tls: true,
        };
        assert!(p.decide(&ctx).is_err(), "{bad:?} was decided");
    }
}

mod lookup_matches_naive_scan {
    use super::*;
    use proptest::prelude::*;

    /// The longest registered name that `domain` is within (rule T11), by
    /// a plain scan: what the indexed lookup must agree with.
    fn naive<'p>(p: &'p Policy, domain: &str) -> Option<&'p DomainName> {
        p.domains
            .iter()
            .map(|d| &d.name)
            .filter(|n| is_within(domain, n.as_str()))
            .max_by_key(|n| n.as_str().len())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        // rule T11: the most specific registered domain covers a name.
        #[test]
        fn t11_indexed_lookup_equals_scan(
            p in common::policy(),
            pick in any::<prop::sample::Index>(),
            prefix in proptest::collection::vec("[a-z0-9]{1,6}", 0..3),
            random in common::domain_name(),
        ) {
            let compiled = CompiledPolicy::new(p.clone());
            let mut candidates = vec![random.to_string()];
            if !p.domains.is_empty() {
                let base = &p.domains[pick.index(p.domains.len())].name;
                let mut labels = prefix.clone();
                labels.push(base.to_string());
                candidates.push(labels.join("."));
            }
            for domain in candidates {
                let rcpt = format!("x@{domain}");
                let d = compiled.decide(&MessageContext {
                    sender: "",
                    recipient: &rcpt,
                    client_ip: STRANGER,
                    received_over_tls: false,
                }).unwrap();
                let want = naive(&p, &domain);
                match want {
                    Some(n) => prop_assert_eq!(d.matched, Some(n)),
                    None => prop_assert!(d.rule == Rule::T6 || d.rule == Rule::T5 || d.matched.is_none()),
                }
            }
        }
    }
}
