//! Shared test support for the delivery tests: test PKI, DNS server, next
//! hop SMTP servers, and helpers that build a `DeliveryJob` from a real
//! decision of `policy::CompiledPolicy::decide`.
#![allow(dead_code)]

pub mod dns;
pub mod mitm;
pub mod pki;
pub mod smtp;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use policy::{
    CompiledPolicy, Delivery, Domain, DomainDetails, DomainName, Enforcement, InboundRoute, IpNet,
    MessageContext, Partner, Policy, RouteHost, Settings, Target, Validation,
};
use rustls::pki_types::CertificateDer;
use tlsgate::delivery::{Deliverer, DeliveryConfig, ResolverSettings, Timeouts};
use tlsgate::transport::{DeliveryJob, DeliveryReport, RecipientOutcome};

/// The registered domain whose outbound server (10.9.9.9) sends mail to
/// the internet in these tests.
pub const SENDER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 9, 9, 9));
pub const MARKER: &str = "X-Secret-Marker: do-not-leak";

pub fn name(s: &str) -> DomainName {
    DomainName::parse(s).unwrap()
}

pub fn target(host: &str, port: u16) -> Target {
    Target {
        host: match host.parse::<IpAddr>() {
            Ok(ip) => RouteHost::Ip(ip),
            Err(_) => RouteHost::Name(name(host)),
        },
        port,
    }
}

/// The model's bounded (heapless) fields are built through serde, so the
/// tests need no direct dependency on heapless.
fn from_json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap()
}

pub fn strong(trusted: &[&str], match_common_name: bool) -> Validation {
    from_json(serde_json::json!({"Strong": {
        "trusted_names": trusted,
        "match_common_name": match_common_name,
    }}))
}

pub fn required(validation: Validation) -> Settings {
    Settings {
        inbound: Enforcement::Required,
        outbound: Enforcement::Opportunistic,
        validation,
    }
}

pub fn inbound_routes(routes: &[(u16, Target)]) -> Delivery {
    let v: Vec<InboundRoute> = routes
        .iter()
        .map(|(p, t)| InboundRoute {
            priority: *p,
            target: t.clone(),
        })
        .collect();
    from_json(serde_json::json!({ "InboundRoutes": serde_json::to_value(v).unwrap() }))
}

fn details(outbound: &[IpNet], delivery: Delivery) -> Box<DomainDetails> {
    Box::new(from_json(serde_json::json!({
        "outbound_servers": serde_json::to_value(outbound).unwrap(),
        "excluded": [],
        "delivery": serde_json::to_value(delivery).unwrap(),
    })))
}

/// A policy with the sending domain `corp.test` plus `domains`.
pub fn policy(mut domains: Vec<Domain>, partners: Vec<Partner>) -> Policy {
    let outbound = [IpNet {
        addr: SENDER_IP,
        prefix: 32,
    }];
    domains.push(Domain {
        name: name("corp.test"),
        settings: None,
        details: Some(details(&outbound, Delivery::Mx)),
    });
    domains.sort_by(|a, b| a.name.cmp(&b.name));
    let mut p = Policy::empty(1);
    p.domains = domains;
    p.partners = partners;
    p
}

/// A registered domain.
pub fn domain(n: &str, settings: Option<Settings>, delivery: Delivery) -> Domain {
    Domain {
        name: name(n),
        settings: settings.map(Box::new),
        details: Some(details(&[], delivery)),
    }
}

pub fn partner_required(n: &str, validation: Validation) -> Partner {
    Partner {
        name: name(n),
        outbound: Enforcement::Required,
        validation,
    }
}

pub fn timeouts() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(3),
        command: Duration::from_secs(3),
        tls_handshake: Duration::from_secs(5),
        data: Duration::from_secs(3),
        dns: Duration::from_secs(2),
    }
}

pub fn config(dns: Option<SocketAddr>, roots: &[&CertificateDer<'static>]) -> DeliveryConfig {
    DeliveryConfig {
        helo_name: "gateway.corp.test".into(),
        resolver: match dns {
            Some(a) => ResolverSettings::NameServers(vec![a]),
            None => ResolverSettings::NameServers(vec!["127.0.0.1:9".parse().unwrap()]),
        },
        timeouts: timeouts(),
        max_hosts: 5,
        max_addresses_per_host: 3,
        mx_port: 25,
        extra_roots_for_tests: roots.iter().map(|r| (*r).clone()).collect(),
        pool: Default::default(),
        myself: Default::default(),
    }
}

pub fn deliverer(config: DeliveryConfig) -> Deliverer {
    Deliverer::new(config).unwrap()
}

pub fn body() -> String {
    format!(
        "From: a@corp.test\r\nTo: b@example.test\r\n{MARKER}\r\nSubject: test\r\n\r\nline one\r\n.leading dot\r\n..two dots\r\nlast line\r\n"
    )
}

/// Decides each recipient with the real decision function (all must get
/// the same plan), builds the job and runs one delivery attempt.
pub async fn deliver(
    d: &Deliverer,
    policy: &Policy,
    rcpts: &[&str],
    received_over_tls: bool,
) -> DeliveryReport {
    deliver_body(d, policy, rcpts, received_over_tls, &body()).await
}

pub async fn deliver_body(
    d: &Deliverer,
    policy: &Policy,
    rcpts: &[&str],
    received_over_tls: bool,
    body: &str,
) -> DeliveryReport {
    let compiled = CompiledPolicy::new(policy.clone());
    let decide = |r: &str| {
        compiled
            .decide(&MessageContext {
                sender: "a@corp.test",
                recipient: r,
                client_ip: SENDER_IP,
                received_over_tls,
            })
            .unwrap()
    };
    let decision = decide(rcpts[0]);
    for r in rcpts {
        assert_eq!(decide(r).plan, decision.plan, "recipients share a plan");
    }
    let plan = decision.plan.expect("the recipient is not refused");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("body");
    std::fs::write(&path, body).unwrap();
    let recipients: Vec<String> = rcpts.iter().map(|s| s.to_string()).collect();
    let domain = rcpts[0].rsplit_once('@').unwrap().1.to_string();
    let job = DeliveryJob {
        message_id: "test-1",
        mail_from: "a@corp.test",
        recipient_domain: &domain,
        recipients: &recipients,
        plan,
        rule: decision.rule,
        trust_anchors: &compiled.policy().trust_anchors,
        policy_serial: 1,
        body: tlsgate::transport::MessageBody::File(&path),
    };
    use tlsgate::transport::Transport;
    d.deliver(job).await
}

pub fn all_delivered(r: &DeliveryReport) -> bool {
    !r.outcomes.is_empty()
        && r.outcomes
            .iter()
            .all(|(_, o)| *o == RecipientOutcome::Delivered)
}

/// The reason of the first recipient when it is temporary.
pub fn temporary(r: &DeliveryReport) -> Option<String> {
    match &r.outcomes.first()?.1 {
        RecipientOutcome::Temporary { reason } => Some(reason.clone()),
        _ => None,
    }
}

pub fn permanent(r: &DeliveryReport) -> Option<String> {
    match &r.outcomes.first()?.1 {
        RecipientOutcome::Permanent { reason } => Some(reason.clone()),
        _ => None,
    }
}

/// Binds the same free port on `127.0.0.<first>`, `127.0.0.<first+1>`, …
pub async fn bind_group(first: u8, n: u8) -> (u16, Vec<tokio::net::TcpListener>) {
    'retry: loop {
        let l0 = tokio::net::TcpListener::bind((Ipv4Addr::new(127, 0, 0, first), 0))
            .await
            .unwrap();
        let port = l0.local_addr().unwrap().port();
        let mut v = vec![l0];
        for i in 1..n {
            match tokio::net::TcpListener::bind((Ipv4Addr::new(127, 0, 0, first + i), port)).await {
                Ok(l) => v.push(l),
                Err(_) => continue 'retry,
            }
        }
        return (port, v);
    }
}
