//! Where a delivery attempt connects: inbound routes (T16), static routes
//! (T17) and DNS MX routing (T18).
//!
//! Routes become an ordered list of [`Hop`]s; a hop's addresses are looked
//! up only when the hop is tried, so a route that does not resolve is
//! skipped (fall-through) without delaying the first one.

use std::net::{IpAddr, SocketAddr};

use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use policy::{InboundRoute, RouteHost, RoutePlan, Target};
use rand::seq::SliceRandom;

/// The host part of a hop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HopHost {
    /// A DNS name: looked up for addresses, sent as SNI, matched against
    /// the certificate.
    Name(String),
    /// An address: no SNI, only trusted names can match (T14).
    Ip(IpAddr),
}

/// One next hop to try.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hop {
    pub host: HopHost,
    pub port: u16,
}

impl Hop {
    /// The name to show in reasons and logs (`mx1.example.com`,
    /// `192.0.2.1`, `[2001:db8::1]:2525`).
    pub fn label(&self) -> String {
        let t = Target {
            host: match &self.host {
                HopHost::Name(n) => match policy::DomainName::parse(n) {
                    Ok(d) => RouteHost::Name(d),
                    Err(_) => return format!("{n}:{}", self.port),
                },
                HopHost::Ip(ip) => RouteHost::Ip(*ip),
            },
            port: self.port,
        };
        t.to_string()
    }

    /// The host name, when the hop has one.
    pub fn name(&self) -> Option<&str> {
        match &self.host {
            HopHost::Name(n) => Some(n),
            HopHost::Ip(_) => None,
        }
    }

    fn from_target(t: &Target) -> Hop {
        Hop {
            host: match &t.host {
                RouteHost::Name(n) => HopHost::Name(n.as_str().to_string()),
                RouteHost::Ip(ip) => HopHost::Ip(*ip),
            },
            port: t.port,
        }
    }
}

/// Why no hop could be found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteError {
    /// Bounce now (null MX, NXDOMAIN) rather than retry.
    pub permanent: bool,
    pub reason: String,
}

/// DNS for routing: a resolver, or why there is none. Without one the
/// relay still delivers over static routes and inbound routes given by IP
/// address; anything that needs a lookup fails temporarily with the
/// reason.
#[derive(Clone)]
pub enum Dns {
    Resolver(Box<TokioResolver>),
    Unavailable(String),
}

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dns::Resolver(_) => f.write_str("Dns::Resolver"),
            Dns::Unavailable(why) => write!(f, "Dns::Unavailable({why:?})"),
        }
    }
}

impl Dns {
    /// The resolver, or a temporary routing error saying what lookup of
    /// `name` could not be made.
    fn resolver(&self, what: &str, name: &str) -> Result<&TokioResolver, RouteError> {
        match self {
            Dns::Resolver(r) => Ok(r),
            Dns::Unavailable(why) => Err(RouteError {
                permanent: false,
                reason: format!("4.4.3 cannot look up {what} of {name}: no DNS resolver ({why})"),
            }),
        }
    }
}

/// The hops for a plan's route, in the order to try them.
pub async fn hops(
    dns: &Dns,
    route: &RoutePlan<'_>,
    domain: &str,
    mx_port: u16,
) -> Result<Vec<Hop>, RouteError> {
    match route {
        RoutePlan::Static(t) => Ok(vec![Hop::from_target(t)]),
        RoutePlan::InboundRoutes(routes) => Ok(inbound_hops(routes)),
        RoutePlan::Mx => mx_hops(dns.resolver("MX", domain)?, domain, mx_port).await,
    }
}

/// Inbound routes in priority order (stable: equal priorities keep the
/// policy's order).
pub fn inbound_hops(routes: &[InboundRoute]) -> Vec<Hop> {
    let mut sorted: Vec<&InboundRoute> = routes.iter().collect();
    sorted.sort_by_key(|r| r.priority);
    sorted
        .into_iter()
        .map(|r| Hop::from_target(&r.target))
        .collect()
}

fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

/// MX hosts by preference, equal preferences shuffled; the implicit MX
/// when there is none; a null MX refuses delivery.
pub async fn mx_hops(
    resolver: &TokioResolver,
    domain: &str,
    port: u16,
) -> Result<Vec<Hop>, RouteError> {
    match resolver.mx_lookup(fqdn(domain)).await {
        Ok(lookup) => {
            let mut mx: Vec<(u16, String)> = lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::MX(m) => Some((m.preference, m.exchange.to_ascii())),
                    _ => None,
                })
                .collect();
            if mx.is_empty() {
                return Ok(vec![implicit(domain, port)]);
            }
            if mx.iter().any(|(_, name)| name == "." || name.is_empty()) {
                return Err(RouteError {
                    permanent: true,
                    reason: format!(
                        "5.1.10 domain {domain} does not accept mail (null MX, RFC 7505)"
                    ),
                });
            }
            mx.sort_by_key(|(p, _)| *p);
            let mut rng = rand::rng();
            let mut out = Vec::with_capacity(mx.len());
            for group in mx.chunk_by_mut(|a, b| a.0 == b.0) {
                group.shuffle(&mut rng);
                for (_, name) in group.iter() {
                    let name = name.trim_end_matches('.').to_ascii_lowercase();
                    out.push(Hop {
                        host: HopHost::Name(name),
                        port,
                    });
                }
            }
            Ok(out)
        }
        Err(e) if e.is_nx_domain() => Err(RouteError {
            permanent: true,
            reason: format!("5.1.2 domain {domain} does not exist (NXDOMAIN)"),
        }),
        Err(e) if e.is_no_records_found() => Ok(vec![implicit(domain, port)]),
        Err(e) => Err(RouteError {
            permanent: false,
            reason: format!("4.4.3 temporary DNS failure looking up MX of {domain}: {e}"),
        }),
    }
}

fn implicit(domain: &str, port: u16) -> Hop {
    Hop {
        host: HopHost::Name(domain.to_string()),
        port,
    }
}

/// The socket addresses of a hop; an error says why there are none and
/// whether that is permanent.
pub async fn addresses(dns: &Dns, hop: &Hop, max: usize) -> Result<Vec<SocketAddr>, RouteError> {
    match &hop.host {
        HopHost::Ip(ip) => Ok(vec![SocketAddr::new(*ip, hop.port)]),
        HopHost::Name(name) => match dns.resolver("addresses", name)?.lookup_ip(fqdn(name)).await {
            Ok(l) => {
                let v: Vec<SocketAddr> = l
                    .iter()
                    .take(max)
                    .map(|ip| SocketAddr::new(ip, hop.port))
                    .collect();
                if v.is_empty() {
                    Err(RouteError {
                        permanent: true,
                        reason: format!("{name} has no address records"),
                    })
                } else {
                    Ok(v)
                }
            }
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => Err(RouteError {
                permanent: true,
                reason: format!("{name} has no address records"),
            }),
            Err(e) => Err(RouteError {
                permanent: false,
                reason: format!("4.4.3 temporary DNS failure looking up {name}: {e}"),
            }),
        },
    }
}

/// The relay's own identity, to refuse delivering to itself: its host
/// name(s) and the addresses its SMTP server listens on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Myself {
    /// Host names of this gateway (lower case, no trailing dot).
    pub names: Vec<String>,
    /// The SMTP listening addresses; an unspecified address (`0.0.0.0`,
    /// `::`) stands for every address of this machine on that port.
    pub listen: Vec<SocketAddr>,
}

impl Myself {
    fn is_my_name(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.');
        self.names.iter().any(|n| n.eq_ignore_ascii_case(name))
    }

    fn is_my_address(&self, addr: SocketAddr) -> bool {
        self.listen.iter().any(|l| {
            l.port() == addr.port()
                && (l.ip() == addr.ip() || (l.ip().is_unspecified() && is_local_ip(addr.ip())))
        })
    }

    /// Refuses a hop that is this relay (Postfix: "mail for DOMAIN loops
    /// back to myself"): permanent, as retrying cannot help. Passes the
    /// addresses through otherwise.
    pub fn check(
        &self,
        hop: &Hop,
        addrs: Vec<SocketAddr>,
        domain: &str,
    ) -> Result<Vec<SocketAddr>, RouteError> {
        let named_me = hop.name().is_some_and(|n| self.is_my_name(n));
        if named_me || addrs.iter().any(|a| self.is_my_address(*a)) {
            tracing::warn!(target: "delivery", domain, next_hop = %hop.label(), "mail loops back to myself");
            return Err(RouteError {
                permanent: true,
                reason: format!(
                    "5.4.6 mail for {domain} loops back to myself (next hop {})",
                    hop.label()
                ),
            });
        }
        Ok(addrs)
    }
}

/// Whether `ip` is an address of this machine: loopback, or one a socket
/// can be bound to.
fn is_local_ip(ip: IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified() || std::net::UdpSocket::bind((ip, 0)).is_ok()
}
