//! Benchmarks of the decision function on a 100,000-domain policy built in
//! code: exact hits, a sub-domain walk, an excluded sub-domain, partners,
//! unregistered recipients and the client classification.
//!
//! Run: `cargo bench -p tlsgate-policy --bench decide`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, Criterion};
use policy::*;

const DOMAINS: usize = 100_000;
const PARTNERS: usize = 10_000;

fn name(s: &str) -> DomainName {
    DomainName::parse(s).unwrap()
}

/// Most domains on the defaults; every 10th with its own settings; every
/// 20th with outbound servers; every 25th with inbound routes; every 50th
/// with exclusions; every 100th with a static route.
fn big_policy() -> Policy {
    let mut p = Policy::empty(1);
    p.defaults.inbound = Enforcement::Required;
    let mut domains = Vec::with_capacity(DOMAINS);
    for i in 0..DOMAINS {
        let n = name(&format!("customer{i:06}.example"));
        let settings = (i % 10 == 0).then(|| {
            Box::new(Settings {
                inbound: Enforcement::Required,
                outbound: if i % 20 == 0 {
                    Enforcement::Required
                } else {
                    Enforcement::Opportunistic
                },
                validation: if i % 30 == 0 {
                    Validation::Relaxed
                } else {
                    Validation::default()
                },
            })
        });
        let mut details = DomainDetails::default();
        if i % 20 == 0 {
            let ip = Ipv4Addr::from(0x0a00_0000u32 + (i as u32) * 4);
            details
                .outbound_servers
                .push(IpNet::parse(&format!("{ip}/30")).unwrap())
                .unwrap();
        }
        if i % 50 == 0 {
            details
                .excluded
                .push(name(&format!("legacy.customer{i:06}.example")))
                .unwrap();
        }
        if i % 100 == 0 {
            details.delivery = Delivery::Static(Target {
                host: RouteHost::Name(name(&format!("relay.customer{i:06}.example"))),
                port: 25,
            });
        } else if i % 25 == 0 {
            let mut r = policy::bounded::BoundedVec::new();
            for (prio, h) in [(10, "mx1"), (20, "mx2")] {
                r.push(InboundRoute {
                    priority: prio,
                    target: Target {
                        host: RouteHost::Name(name(&format!("{h}.customer{i:06}.example"))),
                        port: 25,
                    },
                })
                .unwrap();
            }
            details.delivery = Delivery::InboundRoutes(r);
        }
        let details = (details != DomainDetails::default()).then(|| Box::new(details));
        domains.push(Domain {
            name: n,
            settings,
            details,
        });
    }
    p.domains = domains;
    p.partners = (0..PARTNERS)
        .map(|i| Partner {
            name: name(&format!("partner{i:05}.example")),
            outbound: Enforcement::Required,
            validation: Validation::default(),
        })
        .collect();
    p
}

fn bench(c: &mut Criterion) {
    let compiled = CompiledPolicy::new(big_policy());
    let relay_client = IpAddr::V4(Ipv4Addr::from(0x0a00_0000u32 + 40 * 4 + 1));
    let stranger = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1));
    let cases: &[(&str, &str, IpAddr)] = &[
        ("exact", "user@customer054321.example", stranger),
        ("exact_uppercase", "user@Customer054321.Example", stranger),
        (
            "subdomain_walk",
            "user@a.b.c.customer054321.example",
            stranger,
        ),
        ("excluded", "user@x.legacy.customer050000.example", stranger),
        ("partner", "user@mx.partner01234.example", relay_client),
        ("unregistered_relay", "user@gmail.example.org", relay_client),
        ("refused_open_relay", "user@gmail.example.org", stranger),
    ];
    let mut g = c.benchmark_group("decide_100k");
    for (label, rcpt, ip) in cases {
        let ctx = MessageContext {
            sender: "sender@customer000040.example",
            recipient: rcpt,
            client_ip: *ip,
            received_over_tls: true,
        };
        assert!(compiled.decide(&ctx).is_ok());
        g.bench_function(*label, |b| {
            b.iter(|| {
                let d = compiled.decide(black_box(&ctx)).unwrap();
                black_box(d.rule)
            })
        });
    }
    g.finish();
    let mut g = c.benchmark_group("client_100k");
    g.bench_function("registered_outbound", |b| {
        b.iter(|| black_box(compiled.client(black_box(relay_client)).tls_required))
    });
    g.bench_function("stranger", |b| {
        b.iter(|| black_box(compiled.client(black_box(stranger)).may_relay()))
    });
    g.finish();
    let mut g = c.benchmark_group("load_100k");
    g.sample_size(10);
    let policy = big_policy();
    g.bench_function("compiled_policy_new", |b| {
        b.iter(|| CompiledPolicy::new(black_box(policy.clone())))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
