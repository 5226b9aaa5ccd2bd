#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! DNS faults and mail loops through the real resolver and an in-process
//! DNS server (T18): a name server that never answers is a temporary
//! failure; an MX that is the relay itself (by host name, by listening
//! address, or by a wildcard listening address) is a permanent "loops
//! back to myself", and no connection is made. SERVFAIL, NXDOMAIN and
//! null MX are in `tx_delivery.rs` (`t18_*`).

mod tx_support;

use std::net::{Ipv4Addr, SocketAddr};

use tlsgate::delivery::route::Myself;
use tx_support::dns;
use tx_support::smtp::{self, Behaviour};
use tx_support::*;

#[tokio::test]
async fn t18_dns_timeout_is_temporary() {
    // rule T18: a name server that swallows every query.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let d = deliverer(config(Some(addr), &[]));
    let p = policy(vec![], vec![]);
    let r = deliver(&d, &p, &["carol@slow-dns.test"], false).await;
    let reason = temporary(&r).unwrap_or_else(|| panic!("{r:?}"));
    assert!(reason.contains("temporary DNS failure"), "{reason}");
    drop(silent);
}

async fn loop_case(mx_host: &str, a: Option<(&str, Ipv4Addr)>, myself: impl Fn(u16) -> Myself) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = smtp::serve(listener, Behaviour::default());
    let (dns_addr, zone) = dns::start().await;
    zone.mx("loop.test", &[(10, mx_host)]);
    if let Some((name, ip)) = a {
        zone.a(name, ip);
    }
    let mut c = config(Some(dns_addr), &[]);
    c.mx_port = port;
    c.myself = myself(port);
    let p = policy(vec![], vec![]);
    let r = deliver(&deliverer(c), &p, &["carol@loop.test"], false).await;
    let reason = permanent(&r).unwrap_or_else(|| panic!("{mx_host}: {r:?}"));
    assert!(
        reason.contains("mail for loop.test loops back to myself"),
        "{reason}"
    );
    assert_eq!(server.connections(), 0, "{mx_host}");
}

#[tokio::test]
async fn t18_mx_naming_the_gateway_is_a_permanent_loop() {
    // rule T18
    loop_case(
        "GW.test.",
        Some(("gw.test", Ipv4Addr::new(127, 0, 0, 1))),
        |_| Myself {
            names: vec!["gw.test".into()],
            listen: vec![],
        },
    )
    .await;
}

#[tokio::test]
async fn t18_mx_at_a_listening_address_is_a_permanent_loop() {
    // rule T18
    let a = Some(("mx.elsewhere.test", Ipv4Addr::new(127, 0, 0, 1)));
    loop_case("mx.elsewhere.test.", a, |port| Myself {
        names: vec!["gw.test".into()],
        listen: vec![SocketAddr::from(([127, 0, 0, 1], port))],
    })
    .await;
    // Listening on every address: any local address on that port loops.
    loop_case("mx.elsewhere.test.", a, |port| Myself {
        names: vec![],
        listen: vec![SocketAddr::from(([0, 0, 0, 0], port))],
    })
    .await;
}

#[tokio::test]
async fn t18_same_address_on_another_port_is_not_a_loop() {
    // rule T18: a next hop on this machine but not this relay is fine.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = smtp::serve(listener, Behaviour::default());
    let (dns_addr, zone) = dns::start().await;
    zone.mx("other.test", &[(10, "mx.other.test.")])
        .a("mx.other.test", Ipv4Addr::new(127, 0, 0, 1));
    let mut c = config(Some(dns_addr), &[]);
    c.mx_port = port;
    c.myself = Myself {
        names: vec!["gw.test".into()],
        listen: vec![SocketAddr::from(([0, 0, 0, 0], port.wrapping_add(1)))],
    };
    let p = policy(vec![], vec![]);
    let r = deliver(&deliverer(c), &p, &["carol@other.test"], false).await;
    assert!(all_delivered(&r), "{r:?}");
    assert_eq!(server.messages().len(), 1);
}
