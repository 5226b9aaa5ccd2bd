//! Shared fixtures for the policy crate's integration tests: a policy that
//! uses every feature of the model, and proptest strategies for policies
//! within the model's bounds.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use policy::bounded::BoundedVec;
use policy::*;
use proptest::collection::{btree_set, vec};
use proptest::prelude::*;

pub fn name(s: &str) -> DomainName {
    DomainName::parse(s).unwrap()
}

pub fn hvec<T, const N: usize>(items: impl IntoIterator<Item = T>) -> heapless::Vec<T, N> {
    let mut v = heapless::Vec::new();
    for i in items {
        assert!(v.push(i).is_ok(), "over capacity");
    }
    v
}

pub fn bvec<T, const N: usize>(items: impl IntoIterator<Item = T>) -> BoundedVec<T, N> {
    let mut v = BoundedVec::new();
    for i in items {
        assert!(v.push(i).is_ok(), "over capacity");
    }
    v
}

pub fn strong(names: &[&str]) -> Validation {
    Validation::Strong {
        trusted_names: bvec(names.iter().map(|n| name(n))),
        match_common_name: false,
    }
}

pub fn required(validation: Validation) -> Settings {
    Settings {
        inbound: Enforcement::Required,
        outbound: Enforcement::Required,
        validation,
    }
}

/// A policy that uses every kind of entry of the model.
pub fn sample_policy() -> Policy {
    let mut p = Policy::empty(42);
    p.domains = vec![
        Domain {
            name: name("a.example"),
            settings: None,
            details: None,
        },
        Domain {
            name: name("b.example"),
            settings: Some(Box::new(required(strong(&["mx.b.example"])))),
            details: Some(Box::new(DomainDetails {
                outbound_servers: bvec([
                    IpNet::parse("192.0.2.0/24").unwrap(),
                    IpNet::parse("2001:db8::/32").unwrap(),
                ]),
                excluded: bvec([name("legacy.b.example")]),
                delivery: Delivery::InboundRoutes(bvec([
                    InboundRoute {
                        priority: 10,
                        target: Target {
                            host: RouteHost::Name(name("mx1.b.example")),
                            port: 25,
                        },
                    },
                    InboundRoute {
                        priority: 20,
                        target: Target {
                            host: RouteHost::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)),
                            port: 2525,
                        },
                    },
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
                    port: 587,
                }),
                ..Default::default()
            })),
        },
    ];
    p.partners = vec![Partner {
        name: name("partner.example"),
        outbound: Enforcement::Required,
        validation: Validation::Strong {
            trusted_names: BoundedVec::new(),
            match_common_name: true,
        },
    }];
    p.retry.delay_notice_after = Some(4 * 3600);
    p.always_attempt_tls = true;
    p.trust_anchors = vec![TrustAnchor {
        label: heapless::String::try_from("private-ca.pem").unwrap(),
        der: hvec([0x30, 0x82, 0x01, 0x0a]),
    }];
    p
}

// ---- proptest strategies -------------------------------------------------

pub fn domain_name() -> impl Strategy<Value = DomainName> {
    (
        vec("[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", 1..4),
        "[a-z]{2,6}",
    )
        .prop_map(|(labels, tld)| name(&format!("{}.{tld}", labels.join("."))))
}

pub fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|b| IpAddr::V4(Ipv4Addr::from(b))),
        any::<[u8; 16]>().prop_map(|b| IpAddr::V6(Ipv6Addr::from(b))),
    ]
}

pub fn ip_net() -> impl Strategy<Value = IpNet> {
    (ip(), any::<u8>()).prop_map(|(addr, p)| {
        let width = if addr.is_ipv4() { 32u8 } else { 128 };
        let prefix = p % (width + 1);
        // Clear the host bits below the prefix.
        let bits: u128 = match addr {
            IpAddr::V4(v) => u128::from(u32::from(v)),
            IpAddr::V6(v) => u128::from(v),
        };
        let host = u32::from(width - prefix);
        let net = if host >= 128 {
            0
        } else {
            (bits >> host) << host
        };
        let addr = match addr {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(net as u32)),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(net)),
        };
        IpNet::parse(&format!("{addr}/{prefix}")).unwrap()
    })
}

pub fn enforcement() -> impl Strategy<Value = Enforcement> {
    prop_oneof![
        Just(Enforcement::Opportunistic),
        Just(Enforcement::Required)
    ]
}

pub fn validation() -> impl Strategy<Value = Validation> {
    prop_oneof![
        Just(Validation::Relaxed),
        (vec(domain_name(), 0..=4), any::<bool>()).prop_map(|(n, cn)| Validation::Strong {
            trusted_names: bvec(n),
            match_common_name: cn,
        }),
    ]
}

pub fn settings() -> impl Strategy<Value = Settings> {
    (enforcement(), enforcement(), validation()).prop_map(|(inbound, outbound, validation)| {
        Settings {
            inbound,
            outbound,
            validation,
        }
    })
}

pub fn target() -> impl Strategy<Value = Target> {
    (
        prop_oneof![
            domain_name().prop_map(RouteHost::Name),
            ip().prop_map(RouteHost::Ip)
        ],
        any::<u16>(),
    )
        .prop_map(|(host, port)| Target { host, port })
}

pub fn delivery() -> impl Strategy<Value = Delivery> {
    prop_oneof![
        Just(Delivery::Mx),
        vec((any::<u16>(), target()), 1..=4).prop_map(|r| Delivery::InboundRoutes(bvec(
            r.into_iter()
                .map(|(priority, target)| InboundRoute { priority, target })
        ))),
        target().prop_map(Delivery::Static),
    ]
}

pub fn details() -> impl Strategy<Value = DomainDetails> {
    (vec(ip_net(), 0..4), vec(domain_name(), 0..4), delivery()).prop_map(|(o, e, delivery)| {
        DomainDetails {
            outbound_servers: bvec(o),
            excluded: bvec(e),
            delivery,
        }
    })
}

pub fn policy() -> impl Strategy<Value = Policy> {
    (
        any::<u64>(),
        settings(),
        btree_set(domain_name(), 0..12),
        vec(
            (
                proptest::option::of(settings()),
                proptest::option::of(details()),
            ),
            12,
        ),
        btree_set(domain_name(), 0..6),
        vec(enforcement(), 6),
        vec(validation(), 6),
        (
            vec(1u32..100_000, 1..=8),
            any::<u32>(),
            proptest::option::of(any::<u32>()),
        ),
        any::<bool>(),
        vec(("[a-z./-]{1,40}", vec(any::<u8>(), 0..64)), 0..3),
    )
        .prop_map(
            |(serial, defaults, names, per, pnames, pe, pv, retry, always, anchors)| {
                let domains = names
                    .into_iter()
                    .zip(per)
                    .map(|(name, (s, d))| Domain {
                        name,
                        settings: s.map(Box::new),
                        details: d.map(Box::new),
                    })
                    .collect();
                let partners = pnames
                    .into_iter()
                    .zip(pe.into_iter().zip(pv))
                    .map(|(name, (outbound, validation))| Partner {
                        name,
                        outbound,
                        validation,
                    })
                    .collect();
                Policy {
                    serial,
                    defaults,
                    domains,
                    partners,
                    retry: RetryPolicy {
                        schedule: hvec(retry.0),
                        give_up_after: retry.1,
                        delay_notice_after: retry.2,
                    },
                    always_attempt_tls: always,
                    trust_anchors: anchors
                        .into_iter()
                        .map(|(label, der)| TrustAnchor {
                            label: heapless::String::try_from(label.as_str()).unwrap(),
                            der: hvec(der),
                        })
                        .collect(),
                }
            },
        )
}
