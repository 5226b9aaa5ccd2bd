//! Words → model values, each failure a diagnostic pointing at the word.

use std::sync::Arc;

use policy::limits::*;
use policy::{DomainName, IpNet, NameError, NetError, RouteHost, Target};

use crate::ast::Word;
use crate::check::Sink;
use crate::diagnostic::Diagnostic;
use crate::source::SourceFile;
use crate::syntax::value;

/// The error for a list or table that holds more than the relay can.
pub(crate) fn limit(
    file: &Arc<SourceFile>,
    span: crate::source::Span,
    what: &str,
    count: usize,
    constant: &str,
    max: usize,
) -> Diagnostic {
    Diagnostic::error(
        "tlspol::limit-exceeded",
        format!("{what}: {count}, more than the limit `{constant}` ({max})"),
    )
    .at(file, span, format!("at most {max} allowed"))
    .with_help(format!(
        "the relay is built to hold at most {max} (`policy::limits::{constant}`); shorten the list"
    ))
}

/// A domain name (registered domain, partner, exclusion, trusted name, host).
pub(crate) fn domain_name(
    sink: &mut Sink,
    file: &Arc<SourceFile>,
    w: &Word,
    what: &str,
) -> Option<DomainName> {
    if value::ip(&w.node).is_some() {
        sink.error(
            Diagnostic::error(
                "tlspol::invalid-name",
                format!("`{}` is an IP address, not a {what}", w.node),
            )
            .at(file, w.span, "an IP address")
            .with_help(format!("write the {what} as a DNS name")),
        );
        return None;
    }
    match DomainName::parse(&w.node) {
        Ok(n) => Some(n),
        Err(NameError::TooLong(n)) => {
            sink.error(limit(
                file,
                w.span,
                "name length",
                n,
                "MAX_NAME_LEN",
                MAX_NAME_LEN,
            ));
            None
        }
        Err(e) => {
            sink.error(
                Diagnostic::error(
                    "tlspol::invalid-name",
                    format!("`{}` is not a valid {what}", w.node),
                )
                .at(file, w.span, e.to_string())
                .with_help("a domain name has two or more labels of letters, digits and `-`, e.g. `mail.example.com`"),
            );
            None
        }
    }
}

/// An outbound server: an address or a network in CIDR notation.
pub(crate) fn network(sink: &mut Sink, file: &Arc<SourceFile>, w: &Word) -> Option<IpNet> {
    match IpNet::parse(&w.node) {
        Ok(n) => Some(n),
        Err(NetError::HostBits(p)) => {
            let suggestion = w
                .node
                .split_once('/')
                .and_then(|(a, _)| a.parse().ok())
                .map(|addr| {
                    let net = IpNet { addr, prefix: p };
                    masked(net)
                });
            let d = Diagnostic::error(
                "tlspol::invalid-network",
                format!("`{}` has host bits set below the /{p} prefix", w.node),
            )
            .at(file, w.span, "not a network address");
            let d = match suggestion {
                Some(s) => d.with_help(format!(
                    "did you mean `{s}`? (or write the single address without a prefix)"
                )),
                None => d,
            };
            sink.error(d);
            None
        }
        Err(e) => {
            sink.error(
                Diagnostic::error(
                    "tlspol::invalid-address",
                    format!("`{}` is not an IP address or network", w.node),
                )
                .at(file, w.span, e.to_string())
                .with_help("write an address (`192.0.2.10`, `2001:db8::10`) or a network (`198.51.100.0/24`, `2001:db8:10::/48`)"),
            );
            None
        }
    }
}

/// The network address of `net` written back as text.
fn masked(net: IpNet) -> String {
    use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let bits: u128 = match net.addr {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    };
    let width: u32 = if net.addr.is_ipv4() { 32 } else { 128 };
    let host = width - u32::from(net.prefix);
    let masked = if host >= 128 {
        0
    } else {
        (bits >> host) << host
    };
    let addr = match net.addr {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(u32::try_from(masked).unwrap_or(0))),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(masked)),
    };
    format!("{addr}/{}", net.prefix)
}

/// A route target: `host`, `ip`, `host:port`, `ip:port`, `[ipv6]:port`.
pub(crate) fn target(sink: &mut Sink, file: &Arc<SourceFile>, w: &Word) -> Option<Target> {
    let Some(parts) = value::target(&w.node) else {
        sink.error(
            Diagnostic::error(
                "tlspol::invalid-target",
                format!(
                    "`{}` is not a host, IP address, `host:port` or `[IPv6]:port`",
                    w.node
                ),
            )
            .at(file, w.span, "cannot read this server")
            .with_help("write IPv6 addresses with a port in brackets: `[2001:db8::25]:2525`"),
        );
        return None;
    };
    let port = match parts.port {
        None => Some(25),
        Some(p) => match value::port(p) {
            Some(p) => Some(p),
            None => {
                sink.error(
                    Diagnostic::error("tlspol::invalid-port", format!("`{p}` is not a valid port"))
                        .at(file, w.span, "port must be a number from 1 to 65535")
                        .with_help("leave the port out to use 25"),
                );
                None
            }
        },
    };
    let host = match value::ip(parts.host) {
        Some(ip) if parts.bracketed && ip.is_ipv4() => {
            sink.error(
                Diagnostic::error(
                    "tlspol::invalid-target",
                    format!("`{}` puts an IPv4 address in brackets", w.node),
                )
                .at(file, w.span, "brackets are for IPv6 addresses")
                .with_help(format!("write `{}` without brackets", parts.host)),
            );
            None
        }
        Some(ip) => Some(RouteHost::Ip(ip)),
        None if parts.bracketed => {
            sink.error(
                Diagnostic::error(
                    "tlspol::invalid-address",
                    format!("`{}` is not an IPv6 address", parts.host),
                )
                .at(file, w.span, "expected an IPv6 address in brackets"),
            );
            None
        }
        None => {
            let hw = Word::new(parts.host.to_string(), w.span);
            domain_name(sink, file, &hw, "host name").map(RouteHost::Name)
        }
    };
    Some(Target {
        host: host?,
        port: port?,
    })
}

/// A duration in seconds (`5m`, `1h30m`, `5d`).
pub(crate) fn duration(sink: &mut Sink, file: &Arc<SourceFile>, w: &Word) -> Option<u32> {
    match value::duration(&w.node) {
        Ok(s) => Some(s),
        Err(e) => {
            let label = match e {
                value::DurationError::Syntax => "expected a number and a unit, e.g. `5m`",
                value::DurationError::Zero => "a duration must be longer than zero",
                value::DurationError::TooLong => "too long",
            };
            sink.error(
                Diagnostic::error(
                    "tlspol::invalid-duration",
                    format!("`{}` is not a valid duration", w.node),
                )
                .at(file, w.span, label)
                .with_help("units are `s`, `m`, `h`, `d`, `w`; parts can be combined: `1h30m`"),
            );
            None
        }
    }
}
