#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! End-to-end tests of the delivering half: real next-hop SMTP servers on
//! loopback, real TLS with an rcgen PKI, real DNS answers, and jobs built
//! from the real decision function.

mod tx_support;

use std::net::Ipv4Addr;

use hickory_proto::rr::RecordType;
use policy::Delivery;
use tlsgate::delivery::Deliverer;
use tlsgate::transport::RecipientOutcome;
use tx_support::dns::{self, Answer};
use tx_support::mitm;
use tx_support::pki::{self, Ca, LeafSpec};
use tx_support::smtp::{self, Behaviour};
use tx_support::*;

/// A registered domain `example.test` with the given settings, delivered
/// by one inbound route to `host:port`.
fn routed(settings: Option<policy::Settings>, host: &str, port: u16) -> policy::Policy {
    policy(
        vec![domain(
            "example.test",
            settings,
            inbound_routes(&[(10, target(host, port))]),
        )],
        vec![],
    )
}

async fn dns_with_mx_a(names: &[(&str, Ipv4Addr)]) -> (std::net::SocketAddr, dns::Zone) {
    let (addr, zone) = dns::start().await;
    for (n, ip) in names {
        zone.a(n, *ip);
    }
    (addr, zone)
}

// ---------------------------------------------------------------- T2/T3

#[tokio::test]
async fn t3_received_in_clear_is_delivered_in_clear_without_starttls() {
    // rule T3
    let server = smtp::start(
        "127.0.0.1:0",
        Behaviour {
            tls: Some(pki::self_signed(&["localhost"])),
            ..Behaviour::default()
        },
    )
    .await;
    let p = routed(None, "127.0.0.1", server.addr.port());
    let d = deliverer(config(None, &[]));
    let r = deliver(&d, &p, &["bob@example.test"], false).await;
    assert!(all_delivered(&r), "{r:?}");
    assert!(
        !server.seen_command("STARTTLS"),
        "STARTTLS must not be attempted"
    );
    assert_eq!(r.tls_protocol, None);
    assert_eq!(server.seen.lock().unwrap().message_over_tls, vec![false]);
    // Dot-stuffing round trip: the server got the body back unchanged.
    assert_eq!(server.messages(), vec![body().into_bytes()]);
}

#[tokio::test]
async fn t2_received_over_tls_uses_starttls_when_offered() {
    // rule T2
    let server = smtp::start(
        "127.0.0.1:0",
        Behaviour {
            tls: Some(pki::self_signed(&["whatever.invalid"])),
            ..Behaviour::default()
        },
    )
    .await;
    let p = routed(None, "127.0.0.1", server.addr.port());
    let d = deliverer(config(None, &[]));
    let r = deliver(&d, &p, &["bob@example.test"], true).await;
    assert!(all_delivered(&r), "{r:?}");
    assert_eq!(server.seen.lock().unwrap().message_over_tls, vec![true]);
    assert_eq!(r.certificate.as_deref(), Some("unverified"));
    assert!(r.tls_protocol.is_some() && r.tls_cipher.is_some());
}

#[tokio::test]
async fn t2_opportunistic_delivers_in_clear_when_starttls_not_offered() {
    // rule T2
    let server = smtp::start("127.0.0.1:0", Behaviour::default()).await;
    let p = routed(None, "127.0.0.1", server.addr.port());
    let d = deliverer(config(None, &[]));
    let r = deliver(&d, &p, &["bob@example.test"], true).await;
    assert!(all_delivered(&r), "{r:?}");
    assert_eq!(server.seen.lock().unwrap().message_over_tls, vec![false]);
    assert_eq!(r.tls_protocol, None);
}

#[tokio::test]
async fn t2_opportunistic_handshake_failure_retries_once_in_clear() {
    // rule T2 (fall-back choice written in docs/delivery.md)
    let server = smtp::start(
        "127.0.0.1:0",
        Behaviour {
            tls: Some(pki::self_signed(&["localhost"])),
            garbage_handshake: true,
            ..Behaviour::default()
        },
    )
    .await;
    let p = routed(None, "127.0.0.1", server.addr.port());
    let d = deliverer(config(None, &[]));
    let r = deliver(&d, &p, &["bob@example.test"], true).await;
    assert!(all_delivered(&r), "{r:?}");
    assert_eq!(server.connections(), 2);
    assert_eq!(server.seen.lock().unwrap().message_over_tls, vec![false]);
}

// ------------------------------------------------- T7 and STARTTLS stripping

fn assert_deferred_without_leak(
    r: &tlsgate::transport::DeliveryReport,
    server: &smtp::Server,
    needle: &str,
) {
    let reason = temporary(r).unwrap_or_else(|| panic!("expected a temporary outcome: {r:?}"));
    assert!(
        reason.contains(needle),
        "reason {reason:?} should contain {needle:?}"
    );
    assert!(reason.starts_with("4.7."), "4.7.x-style reason: {reason:?}");
    assert!(!server.seen_command("MAIL"), "no transaction may start");
    assert!(!server.seen_command("DATA"));
    assert!(
        !server.received_text(MARKER),
        "no byte of the message may reach the server"
    );
    assert!(server.messages().is_empty());
}

/// Required TLS with strong validation to `mx1.example.test`, a real next
/// hop offering STARTTLS with a good certificate, and a man in the middle
/// between relay and next hop. Returns the report, the next hop and the
/// proxy.
async fn through_mitm(
    attack: mitm::Attack,
) -> (tlsgate::transport::DeliveryReport, smtp::Server, mitm::Mitm) {
    let ca = Ca::root("mitm test root");
    let next_hop = smtp::start(
        "127.0.0.1:0",
        Behaviour {
            tls: Some(ca.leaf_for(&["mx1.example.test"])),
            ..Behaviour::default()
        },
    )
    .await;
    let proxy = mitm::start(next_hop.addr, attack).await;
    let (dns_addr, _zone) = dns_with_mx_a(&[("mx1.example.test", Ipv4Addr::LOCALHOST)]).await;
    let p = routed(
        Some(required(strong(&[], false))),
        "mx1.example.test",
        proxy.addr.port(),
    );
    let d = deliverer(config(Some(dns_addr), &[&ca.der]));
    let r = deliver(&d, &p, &["bob@example.test"], false).await;
    (r, next_hop, proxy)
}

#[tokio::test]
async fn t7_mitm_control_delivery_through_a_passive_proxy_works() {
    // rule T7: the control case for the attacks below — the proxy itself
    // does not stop delivery, TLS runs end to end through it.
    let (r, next_hop, proxy) = through_mitm(mitm::Attack::None).await;
    assert!(all_delivered(&r), "{r:?}");
    assert_eq!(next_hop.seen.lock().unwrap().message_over_tls, vec![true]);
    assert!(proxy.read("STARTTLS"), "the proxy saw the clear part");
    assert!(!proxy.read(MARKER), "and nothing of the message");
}

#[tokio::test]
async fn t7_mitm_strips_starttls_from_ehlo() {
    // rule T7 (STARTTLS stripping by a man in the middle)
    let (r, next_hop, proxy) = through_mitm(mitm::Attack::StripFromEhlo).await;
    assert_deferred_without_leak(&r, &next_hop, "TLS required but not offered");
    assert!(!proxy.read("MAIL FROM") && !proxy.read(MARKER));
}

#[tokio::test]
async fn t7_mitm_answers_starttls_with_an_error() {
    // rule T7 (STARTTLS refused by a man in the middle)
    let (r, next_hop, proxy) = through_mitm(mitm::Attack::RefuseStarttls(
        "502 5.5.1 command not implemented",
    ))
    .await;
    assert_deferred_without_leak(&r, &next_hop, "502");
    assert!(!next_hop.seen_command("STARTTLS"), "the proxy kept it");
    assert!(!proxy.read("MAIL FROM") && !proxy.read(MARKER));
}

#[tokio::test]
async fn t7_mitm_presents_its_own_certificate() {
    // rule T7, T13: the man in the middle terminates TLS with a
    // certificate for the right name from a CA nobody trusts.
    let forged = Ca::root("attacker root").leaf_for(&["mx1.example.test"]);
    let (r, next_hop, proxy) = through_mitm(mitm::Attack::OwnCertificate(forged)).await;
    assert_deferred_without_leak(&r, &next_hop, "failed strong validation");
    assert!(
        !proxy.read("MAIL FROM") && !proxy.read(MARKER),
        "nothing readable reached the proxy"
    );
}

#[tokio::test]
async fn t7_required_tls_not_offered_defers_and_sends_nothing() {
    // rule T7 (STARTTLS stripping)
    let server = smtp::start("127.0.0.1:0", Behaviour::default()).await;
    let p = routed(
        Some(required(policy::Validation::Relaxed)),
        "127.0.0.1",
        server.addr.port(),
    );
    let d = deliverer(config(None, &[]));
    let r = deliver(&d, &p, &["bob@example.test"], false).await;
    assert_deferred_without_leak(&r, &server, "TLS required but not offered by 127.0.0.1");
}

#[tokio::test]
async fn t7_required_tls_answered_454_defers() {
    // rule T7 (STARTTLS refused)
    let server = smtp::start(
        "127.0.0.1:0",
        Behaviour {
            tls: Some(pki::self_signed(&["localhost"])),
            starttls_reply: Some("454 4.7.0 TLS not available due to temporary reason"),
            ..Behaviour::default()
        },
    )
    .await;
    let p = routed(
        Some(required(policy::Validation::Relaxed)),
        "127.0.0.1",
        server.addr.port(),
    );
    let d = deliverer(config(None, &[]));
    let r = deliver(&d, &p, &["bob@example.test"], true).await;
    assert_deferred_without_leak(&r, &server, "answered STARTTLS with 454");
}

#[tokio::test]
async fn t7_wrong_certificate_under_strong_validation_defers() {
    // rule T7, T13 (wrong name)
    let ca = Ca::root("tx test root");
    let (dns_addr, _zone) = dns_with_mx_a(&[("mx1.example.test", Ipv4Addr::LOCALHOST)]).await;
    let server = smtp::start(
        "127.0.0.1:0",
        Behaviour {
            tls: Some(ca.leaf_for(&["other.example.test"])),
            ..Behaviour::default()
        },
    )
    .await;
    let p = routed(
        Some(required(strong(&[], false))),
        "mx1.example.test",
        server.addr.port(),
    );
    let d = deliverer(config(Some(dns_addr), &[&ca.der]));
    let r = deliver(&d, &p, &["bob@example.test"], false).await;
    assert_deferred_without_leak(&r, &server, "certificate for mx1.example.test");
    let reason = temporary(&r).unwrap();
    assert!(reason.contains("failed strong validation"), "{reason}");
    assert!(reason.contains("other.example.test"), "{reason}");
    assert!(
        r.certificate.as_deref().unwrap_or("").starts_with("failed"),
        "{r:?}"
    );
}

#[tokio::test]
async fn response_injection_after_starttls_220_aborts_tls() {
    // rule T7: bytes after the 220 to STARTTLS are an attack, not a reply
    let server = smtp::start(
        "127.0.0.1:0",
        Behaviour {
            tls: Some(pki::self_signed(&["localhost"])),
            inject_after_220: true,
            ..Behaviour::default()
        },
    )
    .await;
    let p = routed(
        Some(required(policy::Validation::Relaxed)),
        "127.0.0.1",
        server.addr.port(),
    );
    let d = deliverer(config(None, &[]));
    let r = deliver(&d, &p, &["bob@example.test"], false).await;
    assert_deferred_without_leak(&r, &server, "response injection");
}

// ------------------------------------------------------------- T13 / T14

/// Strong validation against a server at `mx1.example.test` presenting
/// `leaf`; `validation` is the domain's setting.
async fn strong_case(
    leaf: pki::Leaf,
    roots: &[&rustls::pki_types::CertificateDer<'static>],
    validation: policy::Validation,
    host: &str,
) -> (tlsgate::transport::DeliveryReport, smtp::Server) {
    let (dns_addr, _zone) = dns_with_mx_a(&[("mx1.example.test", Ipv4Addr::LOCALHOST)]).await;
    let server = smtp::start(
        "127.0.0.1:0",
        Behaviour {
            tls: Some(leaf),
            ..Behaviour::default()
        },
    )
    .await;
    let p = routed(Some(required(validation)), host, server.addr.port());
    let d = deliverer(config(Some(dns_addr), roots));
    let r = deliver(&d, &p, &["bob@example.test"], false).await;
    (r, server)
}

#[tokio::test]
async fn t13_valid_chain_and_name_passes() {
    // rule T13
    let ca = Ca::root("tx root");
    let inter = ca.intermediate("tx intermediate");
    let (r, server) = strong_case(
        inter.leaf_for(&["mx1.example.test"]),
        &[&ca.der],
        strong(&[], false),
        "mx1.example.test",
    )
    .await;
    assert!(all_delivered(&r), "{r:?}");
    assert_eq!(
        r.certificate.as_deref(),
        Some("strong-ok (mx1.example.test)")
    );
    assert_eq!(server.seen.lock().unwrap().message_over_tls, vec![true]);
    // The host name is sent as SNI.
    assert_eq!(
        server.seen.lock().unwrap().sni,
        vec![Some("mx1.example.test".to_string())]
    );
}

#[tokio::test]
async fn t13_wildcard_matches_one_label() {
    // rule T13 (RFC 6125 wildcard)
    let ca = Ca::root("tx root");
    let (r, _) = strong_case(
        ca.leaf_for(&["*.example.test"]),
        &[&ca.der],
        strong(&[], false),
        "mx1.example.test",
    )
    .await;
    assert!(all_delivered(&r), "{r:?}");
}

async fn strong_failure(
    leaf: pki::Leaf,
    roots: &[&rustls::pki_types::CertificateDer<'static>],
    needle: &str,
) {
    let (r, server) = strong_case(leaf, roots, strong(&[], false), "mx1.example.test").await;
    assert_deferred_without_leak(&r, &server, needle);
}

#[tokio::test]
async fn t13_expired_certificate_fails() {
    // rule T13 (validity dates)
    let ca = Ca::root("tx root");
    let leaf = ca.leaf(LeafSpec {
        sans: &["mx1.example.test"],
        expired: true,
        ..LeafSpec::default()
    });
    strong_failure(leaf, &[&ca.der], "expired").await;
}

#[tokio::test]
async fn t13_not_yet_valid_certificate_fails() {
    // rule T13 (validity dates)
    let ca = Ca::root("tx root");
    let leaf = ca.leaf(LeafSpec {
        sans: &["mx1.example.test"],
        not_yet_valid: true,
        ..LeafSpec::default()
    });
    strong_failure(leaf, &[&ca.der], "not valid yet").await;
}

#[tokio::test]
async fn t13_self_signed_certificate_fails() {
    // rule T13 (chain to a trusted root)
    let ca = Ca::root("tx root");
    strong_failure(
        pki::self_signed(&["mx1.example.test"]),
        &[&ca.der],
        "unknown issuer",
    )
    .await;
}

#[tokio::test]
async fn t13_missing_intermediate_fails() {
    // rule T13 (chain to a trusted root)
    let ca = Ca::root("tx root");
    let inter = ca.intermediate("tx intermediate");
    let leaf = inter.leaf(LeafSpec {
        sans: &["mx1.example.test"],
        omit_intermediates: true,
        ..LeafSpec::default()
    });
    strong_failure(leaf, &[&ca.der], "unknown issuer").await;
}

#[tokio::test]
async fn t13_untrusted_private_ca_fails_and_trust_anchor_makes_it_pass() {
    // rule T13 (the policy's trust anchors are trusted roots)
    let private = Ca::root("private ca");
    strong_failure(
        private.leaf_for(&["mx1.example.test"]),
        &[],
        "unknown issuer",
    )
    .await;

    let (dns_addr, _zone) = dns_with_mx_a(&[("mx1.example.test", Ipv4Addr::LOCALHOST)]).await;
    let server = smtp::start(
        "127.0.0.1:0",
        Behaviour {
            tls: Some(private.leaf_for(&["mx1.example.test"])),
            ..Behaviour::default()
        },
    )
    .await;
    let mut p = routed(
        Some(required(strong(&[], false))),
        "mx1.example.test",
        server.addr.port(),
    );
    p.trust_anchors = vec![serde_json::from_value(serde_json::json!({
        "label": "private-ca.pem",
        "der": private.der.as_ref(),
    }))
    .unwrap()];
    let d = deliverer(config(Some(dns_addr), &[]));
    let r = deliver(&d, &p, &["bob@example.test"], false).await;
    assert!(all_delivered(&r), "{r:?}");
}

#[tokio::test]
async fn t13_name_only_in_cn_fails_without_match_common_name() {
    // rule T13 (SAN only unless the policy says CN)
    let ca = Ca::root("tx root");
    let leaf = ca.leaf(LeafSpec {
        sans: &["unrelated.example.test"],
        cn: Some("mx1.example.test"),
        ..LeafSpec::default()
    });
    strong_failure(leaf, &[&ca.der], "name mismatch").await;
}

#[tokio::test]
async fn t13_name_only_in_cn_passes_with_match_common_name() {
    // rule T13 (CN when the policy says so)
    let ca = Ca::root("tx root");
    let leaf = ca.leaf(LeafSpec {
        sans: &["unrelated.example.test"],
        cn: Some("mx1.example.test"),
        ..LeafSpec::default()
    });
    let (r, _) = strong_case(leaf, &[&ca.der], strong(&[], true), "mx1.example.test").await;
    assert!(all_delivered(&r), "{r:?}");
    assert_eq!(
        r.certificate.as_deref(),
        Some("strong-ok (CN mx1.example.test)")
    );
}

#[tokio::test]
async fn t14_trusted_name_passes_a_host_name_mismatch() {
    // rule T14
    let ca = Ca::root("tx root");
    let (r, _) = strong_case(
        ca.leaf_for(&["mail.hosting.test"]),
        &[&ca.der],
        strong(&["mail.hosting.test"], false),
        "mx1.example.test",
    )
    .await;
    assert!(all_delivered(&r), "{r:?}");
    assert_eq!(
        r.certificate.as_deref(),
        Some("strong-ok (mail.hosting.test)")
    );
}

#[tokio::test]
async fn t14_route_by_ip_validates_only_against_trusted_names() {
    // rule T14, T17: no SNI, no host name; the trusted names decide
    let ca = Ca::root("tx root");
    // A certificate carrying the IP as SAN still fails: IP routes match
    // only trusted names.
    let (r, server) = strong_case(
        ca.leaf_for(&["127.0.0.1", "mx1.example.test"]),
        &[&ca.der],
        strong(&[], false),
        "127.0.0.1",
    )
    .await;
    assert_deferred_without_leak(&r, &server, "no host name to match");

    let (r, server) = strong_case(
        ca.leaf_for(&["mx1.example.test"]),
        &[&ca.der],
        strong(&["mx1.example.test"], false),
        "127.0.0.1",
    )
    .await;
    assert!(all_delivered(&r), "{r:?}");
    assert_eq!(
        server.seen.lock().unwrap().sni,
        vec![None],
        "no SNI for a route by IP"
    );
}

// ------------------------------------------------------------------ T15

#[tokio::test]
async fn t15_relaxed_accepts_any_certificate_but_still_requires_tls() {
    // rule T15
    let ca = Ca::root("tx root");
    let leaf = ca.leaf(LeafSpec {
        sans: &["nothing.to.do.with.it"],
        expired: true,
        ..LeafSpec::default()
    });
    let (r, server) = strong_case(leaf, &[], policy::Validation::Relaxed, "mx1.example.test").await;
    assert!(all_delivered(&r), "{r:?}");
    assert_eq!(r.certificate.as_deref(), Some("relaxed"));
    assert_eq!(server.seen.lock().unwrap().message_over_tls, vec![true]);

    let clear = smtp::start("127.0.0.1:0", Behaviour::default()).await;
    let p = routed(
        Some(required(policy::Validation::Relaxed)),
        "127.0.0.1",
        clear.addr.port(),
    );
    let r = deliver(
        &deliverer(config(None, &[])),
        &p,
        &["bob@example.test"],
        true,
    )
    .await;
    assert_deferred_without_leak(&r, &clear, "TLS required but not offered");
}

// ------------------------------------------------------------- T16 / T17

#[tokio::test]
async fn t16_inbound_routes_in_priority_order_with_fall_through() {
    // rule T16
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let second = smtp::start("127.0.0.1:0", Behaviour::default()).await;
    let third = smtp::start("127.0.0.1:0", Behaviour::default()).await;
    let p = policy(
        vec![domain(
            "example.test",
            None,
            inbound_routes(&[
                (30, target("127.0.0.1", third.addr.port())),
                (10, target("127.0.0.1", closed_port)),
                (20, target("127.0.0.1", second.addr.port())),
            ]),
        )],
        vec![],
    );
    let d = deliverer(config(None, &[]));
    let r = deliver(&d, &p, &["bob@example.test"], false).await;
    assert!(all_delivered(&r), "{r:?}");
    assert_eq!(second.messages().len(), 1);
    assert_eq!(third.connections(), 0);
}

#[tokio::test]
async fn t16_required_tls_falls_through_to_the_next_route() {
    // rule T16 + T7: a route without STARTTLS is skipped, not used in clear
    let plain = smtp::start("127.0.0.1:0", Behaviour::default()).await;
    let tls = smtp::start(
        "127.0.0.1:0",
        Behaviour {
            tls: Some(pki::self_signed(&["x"])),
            ..Behaviour::default()
        },
    )
    .await;
    let p = policy(
        vec![domain(
            "example.test",
            Some(required(policy::Validation::Relaxed)),
            inbound_routes(&[
                (10, target("127.0.0.1", plain.addr.port())),
                (20, target("127.0.0.1", tls.addr.port())),
            ]),
        )],
        vec![],
    );
    let r = deliver(
        &deliverer(config(None, &[])),
        &p,
        &["bob@example.test"],
        false,
    )
    .await;
    assert!(all_delivered(&r), "{r:?}");
    assert!(plain.messages().is_empty());
    assert_eq!(tls.seen.lock().unwrap().message_over_tls, vec![true]);
}

#[tokio::test]
async fn t17_static_route_forms() {
    // rule T17: host:port, IP:port, [v6]:port
    let (dns_addr, _zone) = dns_with_mx_a(&[("relay.example.test", Ipv4Addr::LOCALHOST)]).await;
    let v4 = smtp::start("127.0.0.1:0", Behaviour::default()).await;
    for host in ["relay.example.test", "127.0.0.1"] {
        let p = policy(
            vec![domain(
                "example.test",
                None,
                Delivery::Static(target(host, v4.addr.port())),
            )],
            vec![],
        );
        let r = deliver(
            &deliverer(config(Some(dns_addr), &[])),
            &p,
            &["bob@example.test"],
            false,
        )
        .await;
        assert!(all_delivered(&r), "{host}: {r:?}");
        assert!(r.next_hop.as_deref().unwrap_or("").contains(host), "{r:?}");
    }
    assert_eq!(v4.messages().len(), 2);
    if let Ok(l) = tokio::net::TcpListener::bind("[::1]:0").await {
        let v6 = smtp::serve(l, Behaviour::default());
        let p = policy(
            vec![domain(
                "example.test",
                None,
                Delivery::Static(target("::1", v6.addr.port())),
            )],
            vec![],
        );
        let r = deliver(
            &deliverer(config(None, &[])),
            &p,
            &["bob@example.test"],
            false,
        )
        .await;
        assert!(all_delivered(&r), "{r:?}");
        assert!(
            r.next_hop.as_deref().unwrap_or("").starts_with("[::1]:"),
            "{r:?}"
        );
    }
}

// ------------------------------------------------------------------ T18

fn mx_config(dns_addr: std::net::SocketAddr, port: u16) -> tlsgate::delivery::DeliveryConfig {
    let mut c = config(Some(dns_addr), &[]);
    c.mx_port = port;
    c
}

#[tokio::test]
async fn t18_mx_in_preference_order_with_fall_through() {
    // rule T18
    let (port, mut ls) = bind_group(21, 2).await;
    let l2 = ls.pop().unwrap();
    let l1 = ls.pop().unwrap();
    // The preferred MX answers 421 at the banner: fall through to the next.
    let mx1 = smtp::serve(
        l1,
        Behaviour {
            banner: Some("421 4.3.2 try later"),
            ..Behaviour::default()
        },
    );
    let mx2 = smtp::serve(l2, Behaviour::default());
    let (dns_addr, zone) = dns::start().await;
    zone.mx(
        "remote.test",
        &[(20, "mx2.remote.test."), (10, "mx1.remote.test.")],
    )
    .a("mx1.remote.test", Ipv4Addr::new(127, 0, 0, 21))
    .a("mx2.remote.test", Ipv4Addr::new(127, 0, 0, 22));
    let p = policy(vec![], vec![]);
    let r = deliver(
        &deliverer(mx_config(dns_addr, port)),
        &p,
        &["carol@remote.test"],
        false,
    )
    .await;
    assert!(all_delivered(&r), "{r:?}");
    assert_eq!(mx1.connections(), 1);
    assert_eq!(mx2.messages().len(), 1);
    assert!(
        r.next_hop
            .as_deref()
            .unwrap_or("")
            .starts_with("mx2.remote.test"),
        "{r:?}"
    );
}

#[tokio::test]
async fn t18_implicit_mx_uses_the_domain_address() {
    // rule T18
    let (port, mut ls) = bind_group(23, 1).await;
    let server = smtp::serve(ls.pop().unwrap(), Behaviour::default());
    let (dns_addr, zone) = dns::start().await;
    zone.a("implicit.test", Ipv4Addr::new(127, 0, 0, 23));
    let p = policy(vec![], vec![]);
    let r = deliver(
        &deliverer(mx_config(dns_addr, port)),
        &p,
        &["carol@implicit.test"],
        false,
    )
    .await;
    assert!(all_delivered(&r), "{r:?}");
    assert_eq!(server.messages().len(), 1);
}

#[tokio::test]
async fn t18_null_mx_fails_permanently_without_connecting() {
    // rule T18 (RFC 7505)
    let (port, mut ls) = bind_group(24, 1).await;
    let server = smtp::serve(ls.pop().unwrap(), Behaviour::default());
    let (dns_addr, zone) = dns::start().await;
    zone.mx("nullmx.test", &[(0, ".")])
        .a("nullmx.test", Ipv4Addr::new(127, 0, 0, 24));
    let p = policy(vec![], vec![]);
    let r = deliver(
        &deliverer(mx_config(dns_addr, port)),
        &p,
        &["carol@nullmx.test"],
        false,
    )
    .await;
    let reason = permanent(&r).unwrap_or_else(|| panic!("{r:?}"));
    assert!(reason.contains("null MX"), "{reason}");
    assert_eq!(server.connections(), 0);
}

#[tokio::test]
async fn t18_servfail_is_temporary_and_nxdomain_permanent() {
    // rule T18 (DNS failures)
    let (dns_addr, zone) = dns::start().await;
    zone.set("broken.test", RecordType::MX, Answer::ServFail);
    let p = policy(vec![], vec![]);
    let d = deliverer(mx_config(dns_addr, 25));
    let r = deliver(&d, &p, &["carol@broken.test"], false).await;
    let reason = temporary(&r).unwrap_or_else(|| panic!("{r:?}"));
    assert!(reason.contains("temporary DNS failure"), "{reason}");

    let r = deliver(&d, &p, &["carol@nowhere.test"], false).await;
    let reason = permanent(&r).unwrap_or_else(|| panic!("{r:?}"));
    assert!(reason.contains("does not exist"), "{reason}");
}

// ------------------------------------------------------------------- T5

#[tokio::test]
async fn t5_partner_mail_goes_only_over_validated_tls() {
    // rule T5
    let ca = Ca::root("tx root");
    let (port, mut ls) = bind_group(25, 2).await;
    let plain_l = ls.pop().unwrap();
    let tls_l = ls.pop().unwrap();
    let good = smtp::serve(
        tls_l,
        Behaviour {
            tls: Some(ca.leaf_for(&["mx.partner.test"])),
            ..Behaviour::default()
        },
    );
    let plain = smtp::serve(plain_l, Behaviour::default());
    let (dns_addr, zone) = dns::start().await;
    zone.mx("partner.test", &[(10, "mx.partner.test.")])
        .a("mx.partner.test", Ipv4Addr::new(127, 0, 0, 25))
        .mx("stripped.test", &[(10, "mx.stripped.test.")])
        .a("mx.stripped.test", Ipv4Addr::new(127, 0, 0, 26));
    let p = policy(
        vec![],
        vec![
            partner_required("partner.test", strong(&[], false)),
            partner_required("stripped.test", strong(&[], false)),
        ],
    );
    let mut c = mx_config(dns_addr, port);
    c.extra_roots_for_tests = vec![ca.der.clone()];
    let d = deliverer(c);
    let r = deliver(&d, &p, &["dave@partner.test"], false).await;
    assert!(all_delivered(&r), "{r:?}");
    assert_eq!(good.seen.lock().unwrap().message_over_tls, vec![true]);

    let r = deliver(&d, &p, &["dave@stripped.test"], false).await;
    assert_deferred_without_leak(
        &r,
        &plain,
        "TLS required but not offered by mx.stripped.test",
    );
}

// ------------------------------------------------- misbehaving next hops

#[tokio::test]
async fn per_recipient_outcomes_and_helo_fallback() {
    let server = smtp::start(
        "127.0.0.1:0",
        Behaviour {
            refuse_ehlo: true,
            rcpt_replies: vec![
                ("gone@", "550 5.1.1 no such user"),
                ("full@", "452 4.2.2 mailbox full"),
            ],
            ..Behaviour::default()
        },
    )
    .await;
    let p = routed(None, "127.0.0.1", server.addr.port());
    let r = deliver(
        &deliverer(config(None, &[])),
        &p,
        &["ok@example.test", "gone@example.test", "full@example.test"],
        false,
    )
    .await;
    assert_eq!(r.outcomes[0].1, RecipientOutcome::Delivered);
    assert!(
        matches!(&r.outcomes[1].1, RecipientOutcome::Permanent { reason } if reason.contains("550 5.1.1")),
        "{r:?}"
    );
    assert!(
        matches!(&r.outcomes[2].1, RecipientOutcome::Temporary { reason } if reason.contains("452 4.2.2")),
        "{r:?}"
    );
    assert!(server.seen_command("HELO"));
    assert_eq!(server.messages().len(), 1);
}

#[tokio::test]
async fn endless_multiline_reply_is_cut_off() {
    let server = smtp::start(
        "127.0.0.1:0",
        Behaviour {
            endless_ehlo: true,
            ..Behaviour::default()
        },
    )
    .await;
    let p = routed(None, "127.0.0.1", server.addr.port());
    let r = deliver(
        &deliverer(config(None, &[])),
        &p,
        &["bob@example.test"],
        false,
    )
    .await;
    let reason = temporary(&r).unwrap_or_else(|| panic!("{r:?}"));
    assert!(reason.contains("reply longer than"), "{reason}");
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn dripping_server_times_out() {
    let server = smtp::start(
        "127.0.0.1:0",
        Behaviour {
            drip: true,
            ..Behaviour::default()
        },
    )
    .await;
    let p = routed(None, "127.0.0.1", server.addr.port());
    let mut c = config(None, &[]);
    c.timeouts.command = std::time::Duration::from_millis(500);
    let r = deliver(&deliverer(c), &p, &["bob@example.test"], false).await;
    let reason = temporary(&r).unwrap_or_else(|| panic!("{r:?}"));
    assert!(
        reason.contains("timed out waiting for the banner"),
        "{reason}"
    );
}

#[tokio::test]
async fn server_hanging_after_data_gives_a_temporary_outcome() {
    let server = smtp::start(
        "127.0.0.1:0",
        Behaviour {
            hang_after_data: true,
            ..Behaviour::default()
        },
    )
    .await;
    let p = routed(None, "127.0.0.1", server.addr.port());
    let mut c = config(None, &[]);
    c.timeouts.data = std::time::Duration::from_millis(500);
    let r = deliver(&deliverer(c), &p, &["bob@example.test"], false).await;
    let reason = temporary(&r).unwrap_or_else(|| panic!("{r:?}"));
    assert!(reason.contains("end of data"), "{reason}");
}

#[tokio::test]
async fn large_body_is_streamed_and_dot_stuffed() {
    let server = smtp::start("127.0.0.1:0", Behaviour::default()).await;
    let p = routed(None, "127.0.0.1", server.addr.port());
    let mut body = String::from("Subject: big\r\n\r\n");
    for i in 0..20_000 {
        body.push_str(&format!(
            ".line {i} with a leading dot and some padding text\r\n"
        ));
    }
    let r = deliver_body(
        &deliverer(config(None, &[])),
        &p,
        &["bob@example.test"],
        false,
        &body,
    )
    .await;
    assert!(all_delivered(&r), "{r:?}");
    assert_eq!(server.messages(), vec![body.into_bytes()]);
}

/// Two MX hosts for `remote.test` on 127.0.0.<first> (preferred) and
/// 127.0.0.<first+1>, behaving as given.
async fn two_mx(
    first: u8,
    b1: Behaviour,
    b2: Behaviour,
) -> (smtp::Server, smtp::Server, Deliverer) {
    let (port, mut ls) = bind_group(first, 2).await;
    let l2 = ls.pop().unwrap();
    let l1 = ls.pop().unwrap();
    let mx1 = smtp::serve(l1, b1);
    let mx2 = smtp::serve(l2, b2);
    let (dns_addr, zone) = dns::start().await;
    zone.mx(
        "remote.test",
        &[(10, "mx1.remote.test."), (20, "mx2.remote.test.")],
    )
    .a("mx1.remote.test", Ipv4Addr::new(127, 0, 0, first))
    .a("mx2.remote.test", Ipv4Addr::new(127, 0, 0, first + 1));
    (mx1, mx2, deliverer(mx_config(dns_addr, port)))
}

#[tokio::test]
async fn t18_temporary_reply_to_mail_falls_through_to_the_next_mx() {
    // rule T18: a 4xx at MAIL from the preferred MX; the next MX takes the
    // message in the same attempt.
    let (mx1, mx2, d) = two_mx(
        31,
        Behaviour {
            mail_reply: Some("451 4.3.0 queue full, try later"),
            ..Behaviour::default()
        },
        Behaviour::default(),
    )
    .await;
    let r = deliver(&d, &policy(vec![], vec![]), &["carol@remote.test"], false).await;
    assert!(all_delivered(&r), "{r:?}");
    assert!(mx1.seen_command("MAIL FROM"), "mx1 was asked first");
    assert!(mx1.messages().is_empty());
    assert_eq!(mx2.messages().len(), 1);
    assert!(
        r.next_hop
            .as_deref()
            .unwrap_or("")
            .starts_with("mx2.remote.test"),
        "{r:?}"
    );
}

#[tokio::test]
async fn t18_permanent_reply_to_mail_is_final() {
    // rule T18: a 5xx at MAIL is the domain's answer; no other MX is asked.
    let (mx1, mx2, d) = two_mx(
        33,
        Behaviour {
            mail_reply: Some("550 5.7.1 sender refused"),
            ..Behaviour::default()
        },
        Behaviour::default(),
    )
    .await;
    let r = deliver(&d, &policy(vec![], vec![]), &["carol@remote.test"], false).await;
    let reason = permanent(&r).unwrap_or_else(|| panic!("{r:?}"));
    assert!(reason.contains("550"), "{reason}");
    assert_eq!(mx1.connections(), 1);
    assert_eq!(mx2.connections(), 0);
}

#[tokio::test]
async fn t18_recipient_deferred_by_one_mx_is_delivered_by_the_next() {
    // rule T18: one recipient 4xx'd at RCPT by the preferred MX, the other
    // accepted there; the deferred one goes to the next MX, alone.
    let (mx1, mx2, d) = two_mx(
        35,
        Behaviour {
            rcpt_replies: vec![("dave@", "450 4.2.1 mailbox busy")],
            ..Behaviour::default()
        },
        Behaviour::default(),
    )
    .await;
    let r = deliver(
        &d,
        &policy(vec![], vec![]),
        &["carol@remote.test", "dave@remote.test"],
        false,
    )
    .await;
    assert!(all_delivered(&r), "{r:?}");
    assert_eq!(r.outcomes.len(), 2);
    assert_eq!(r.outcomes[0].0, "carol@remote.test");
    assert_eq!(r.outcomes[1].0, "dave@remote.test");
    assert_eq!(mx1.messages().len(), 1);
    assert_eq!(mx2.messages().len(), 1);
    let rcpts = |s: &smtp::Server| -> Vec<String> {
        s.seen
            .lock()
            .unwrap()
            .lines
            .iter()
            .filter(|l| l.to_ascii_uppercase().starts_with("RCPT TO"))
            .cloned()
            .collect()
    };
    assert_eq!(rcpts(&mx2), vec!["RCPT TO:<dave@remote.test>".to_string()]);
}

#[tokio::test]
async fn t18_deferred_everywhere_keeps_the_server_reason() {
    // rule T18: both MX hosts answer 4xx at MAIL; the recipient stays
    // temporary with a server's own reply as the reason.
    let busy = Behaviour {
        mail_reply: Some("452 4.3.1 insufficient system storage"),
        ..Behaviour::default()
    };
    let (mx1, mx2, d) = two_mx(37, busy.clone(), busy).await;
    let r = deliver(&d, &policy(vec![], vec![]), &["carol@remote.test"], false).await;
    let reason = temporary(&r).unwrap_or_else(|| panic!("{r:?}"));
    assert!(reason.contains("452"), "{reason}");
    assert_eq!(mx1.connections(), 1);
    assert_eq!(mx2.connections(), 1);
}

#[tokio::test]
async fn t17_static_route_by_ip_needs_no_dns() {
    // rule T17: no usable DNS configuration (a resolv.conf without name
    // servers): the deliverer still starts, a static route by IP delivers,
    // and a route that needs DNS is deferred with the reason.
    let dir = tempfile::tempdir().unwrap();
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, "# no name servers\n").unwrap();
    let mut c = config(None, &[]);
    c.resolver = tlsgate::delivery::ResolverSettings::ResolvConf(resolv);
    let d = deliverer(c);
    let next = smtp::start("127.0.0.1:0", Behaviour::default()).await;
    let p = policy(
        vec![domain(
            "example.test",
            None,
            Delivery::Static(target("127.0.0.1", next.addr.port())),
        )],
        vec![],
    );
    let r = deliver(&d, &p, &["bob@example.test"], false).await;
    assert!(all_delivered(&r), "{r:?}");
    assert_eq!(next.messages().len(), 1);
    let r = deliver(&d, &p, &["carol@remote.test"], false).await;
    let reason = temporary(&r).unwrap_or_else(|| panic!("{r:?}"));
    assert!(reason.contains("no DNS resolver"), "{reason}");
}

// ------------------------------------------------- PIPELINING (RFC 2920)

/// The group of command lines that arrived with the first MAIL of the
/// session (one read from the socket).
fn group_with_mail(server: &smtp::Server) -> Vec<String> {
    server
        .reads()
        .into_iter()
        .find(|g| {
            g.iter()
                .any(|l| l.to_ascii_uppercase().starts_with("MAIL FROM"))
        })
        .unwrap_or_else(|| panic!("no MAIL seen: {:?}", server.reads()))
}

fn pipelining(b: Behaviour) -> Behaviour {
    Behaviour {
        pipelining: true,
        ..b
    }
}

#[tokio::test]
async fn pipelining_sends_mail_rcpts_and_data_in_one_write() {
    let server = smtp::start(
        "127.0.0.1:0",
        pipelining(Behaviour {
            tls: Some(pki::self_signed(&["localhost"])),
            ..Behaviour::default()
        }),
    )
    .await;
    let p = routed(None, "127.0.0.1", server.addr.port());
    let d = deliverer(config(None, &[]));
    let r = deliver(&d, &p, &["a@example.test", "b@example.test"], true).await;
    assert!(all_delivered(&r), "{r:?}");
    assert_eq!(server.seen.lock().unwrap().message_over_tls, vec![true]);
    assert_eq!(server.messages(), vec![body().into_bytes()]);
    let group = group_with_mail(&server);
    assert_eq!(group.len(), 4, "{group:?}");
    assert!(group[0].starts_with("MAIL FROM:<a@corp.test>"), "{group:?}");
    assert_eq!(group[1], "RCPT TO:<a@example.test>");
    assert_eq!(group[2], "RCPT TO:<b@example.test>");
    assert_eq!(group[3], "DATA");
    // The pooled connection carries a second pipelined transaction.
    let r = deliver(&d, &p, &["c@example.test"], true).await;
    assert!(all_delivered(&r), "{r:?}");
    assert_eq!(server.connections(), 1);
    assert_eq!(server.messages().len(), 2);
}

#[tokio::test]
async fn without_pipelining_commands_go_one_by_one() {
    let server = smtp::start("127.0.0.1:0", Behaviour::default()).await;
    let p = routed(None, "127.0.0.1", server.addr.port());
    let r = deliver(
        &deliverer(config(None, &[])),
        &p,
        &["a@example.test", "b@example.test"],
        false,
    )
    .await;
    assert!(all_delivered(&r), "{r:?}");
    assert_eq!(group_with_mail(&server).len(), 1);
}

/// Delivers to one accepted, one 550'd and one 450'd recipient.
async fn mixed_recipients(b: Behaviour) -> (tlsgate::transport::DeliveryReport, smtp::Server) {
    let server = smtp::start(
        "127.0.0.1:0",
        Behaviour {
            rcpt_replies: vec![
                ("gone@", "550 5.1.1 no such user"),
                ("busy@", "450 4.2.1 mailbox busy"),
            ],
            ..b
        },
    )
    .await;
    let p = routed(None, "127.0.0.1", server.addr.port());
    let r = deliver(
        &deliverer(config(None, &[])),
        &p,
        &["gone@example.test", "ok@example.test", "busy@example.test"],
        false,
    )
    .await;
    (r, server)
}

#[tokio::test]
async fn pipelining_keeps_per_recipient_outcomes() {
    let (lockstep, _) = mixed_recipients(Behaviour::default()).await;
    let (piped, server) = mixed_recipients(pipelining(Behaviour::default())).await;
    assert_eq!(group_with_mail(&server).len(), 5);
    for r in [&lockstep, &piped] {
        assert!(
            matches!(&r.outcomes[0].1, RecipientOutcome::Permanent { reason } if reason.contains("550 5.1.1")),
            "{r:?}"
        );
        assert_eq!(r.outcomes[1].1, RecipientOutcome::Delivered, "{r:?}");
        assert!(
            matches!(&r.outcomes[2].1, RecipientOutcome::Temporary { reason } if reason.contains("450 4.2.1")),
            "{r:?}"
        );
    }
    // The same outcomes but for the port in the reasons.
    let kinds = |r: &tlsgate::transport::DeliveryReport| -> Vec<String> {
        r.outcomes
            .iter()
            .map(|(rcpt, o)| {
                let o = format!("{o:?}");
                let said = o.find(" said: ").map_or(o.as_str(), |i| &o[i..]);
                format!("{rcpt} {} {said}", o.split(' ').next().unwrap_or(""))
            })
            .collect()
    };
    assert_eq!(kinds(&lockstep), kinds(&piped));
    assert_eq!(server.messages(), vec![body().into_bytes()]);
}

/// Two recipients, both refused (550 and 450), on a pipelining server;
/// then a second delivery with the same deliverer.
async fn all_refused(b: Behaviour) {
    let server = smtp::start(
        "127.0.0.1:0",
        pipelining(Behaviour {
            rcpt_replies: vec![
                ("gone@", "550 5.1.1 no such user"),
                ("busy@", "450 4.2.1 mailbox busy"),
            ],
            ..b
        }),
    )
    .await;
    let p = routed(None, "127.0.0.1", server.addr.port());
    let d = deliverer(config(None, &[]));
    let r = deliver(&d, &p, &["gone@example.test", "busy@example.test"], false).await;
    assert!(
        matches!(&r.outcomes[0].1, RecipientOutcome::Permanent { reason } if reason.contains("550 5.1.1")),
        "{r:?}"
    );
    assert!(
        matches!(&r.outcomes[1].1, RecipientOutcome::Temporary { reason } if reason.contains("450 4.2.1")),
        "{r:?}"
    );
    assert_eq!(group_with_mail(&server).len(), 4);
    assert!(
        !server.received_text(MARKER),
        "no byte of the message may reach the server"
    );
    assert!(server.messages().iter().all(|m| m.is_empty()));
    // The connection is still in step: the next message goes through on it.
    let r = deliver(&d, &p, &["ok@example.test"], false).await;
    assert!(all_delivered(&r), "{r:?}");
    assert_eq!(server.connections(), 1);
    assert_eq!(server.messages().last().cloned(), Some(body().into_bytes()));
}

#[tokio::test]
async fn pipelining_all_recipients_refused_data_refused_with_554() {
    all_refused(Behaviour::default()).await;
}

#[tokio::test]
async fn pipelining_all_recipients_refused_but_data_answered_354() {
    // RFC 2920 §3.1: the client ends the data at once with a lone `.`.
    all_refused(Behaviour {
        data_354_without_rcpt: true,
        ..Behaviour::default()
    })
    .await;
}

#[tokio::test]
async fn pipelining_mail_refused_gives_every_recipient_that_outcome() {
    for (reply, permanent_outcome) in [
        ("550 5.7.1 sender refused", true),
        ("451 4.3.0 queue full, try later", false),
    ] {
        let server = smtp::start(
            "127.0.0.1:0",
            pipelining(Behaviour {
                mail_reply: Some(reply),
                ..Behaviour::default()
            }),
        )
        .await;
        let p = routed(None, "127.0.0.1", server.addr.port());
        let d = deliverer(config(None, &[]));
        let r = deliver(&d, &p, &["a@example.test", "b@example.test"], false).await;
        assert_eq!(r.outcomes.len(), 2);
        for (_, o) in &r.outcomes {
            match o {
                RecipientOutcome::Permanent { reason } if permanent_outcome => {
                    assert!(reason.contains(reply), "{reason}")
                }
                RecipientOutcome::Temporary { reason } if !permanent_outcome => {
                    assert!(reason.contains(reply), "{reason}")
                }
                other => panic!("{reply}: {other:?}"),
            }
        }
        assert_eq!(group_with_mail(&server).len(), 4);
        assert!(server.messages().is_empty());
        assert!(!server.received_text(MARKER));
    }
}
