//! Readers for the values written inside words (nom): durations (`90s`,
//! `5m`, `1h30m`, `5d`), route targets (`mx.example.com`, `192.0.2.25:2525`,
//! `[2001:db8::25]:2525`), ports and plain numbers.
//!
//! These only split and convert; the checker decides what a value may be
//! and turns a failure into a diagnostic.

use core::net::IpAddr;

use nom::bytes::complete::{tag, take_while1};
use nom::character::complete::{digit1, one_of};
use nom::combinator::{all_consuming, opt, rest};
use nom::multi::many1;
use nom::sequence::{delimited, preceded};
use nom::{IResult, Parser};

/// Why a duration is not valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DurationError {
    Syntax,
    Zero,
    TooLong,
}

fn duration_part(input: &str) -> IResult<&str, (&str, char)> {
    (digit1, one_of("smhdw")).parse(input)
}

/// Seconds in a duration written as one or more `<number><unit>` parts,
/// units `s`, `m`, `h`, `d`, `w` (`1h30m` is 5400).
pub fn duration(s: &str) -> Result<u32, DurationError> {
    let (_, parts) = all_consuming(many1(duration_part))
        .parse(s)
        .map_err(|_| DurationError::Syntax)?;
    let mut total: u64 = 0;
    for (n, unit) in parts {
        let n: u64 = n.parse().map_err(|_| DurationError::TooLong)?;
        let mult: u64 = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => 604_800,
        };
        total = n
            .checked_mul(mult)
            .and_then(|x| total.checked_add(x))
            .ok_or(DurationError::TooLong)?;
    }
    if total == 0 {
        return Err(DurationError::Zero);
    }
    u32::try_from(total).map_err(|_| DurationError::TooLong)
}

/// Writes seconds back the way an author would (`5m`, `1h30m`, `5d`).
pub fn format_duration(mut secs: u32) -> String {
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    if out.is_empty() {
        out.push_str("0s");
    }
    out
}

/// A route target split into host and port, not yet validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetParts<'a> {
    pub host: &'a str,
    /// The host was written in brackets (`[2001:db8::1]`): it must be IPv6.
    pub bracketed: bool,
    pub port: Option<&'a str>,
}

fn bracketed(input: &str) -> IResult<&str, (&str, Option<&str>)> {
    (
        delimited(tag("["), take_while1(|c| c != ']'), tag("]")),
        opt(preceded(tag(":"), rest)),
    )
        .parse(input)
}

/// Splits `host`, `host:port`, `ip`, `ip:port`, `[ipv6]`, `[ipv6]:port`.
/// A bare IPv6 address (two or more colons, no brackets) has no port.
pub fn target(s: &str) -> Option<TargetParts<'_>> {
    if s.starts_with('[') {
        let (left, (host, port)) = all_consuming(bracketed).parse(s).ok()?;
        debug_assert!(left.is_empty());
        return Some(TargetParts {
            host,
            bracketed: true,
            port,
        });
    }
    if s.matches(':').count() >= 2 {
        return Some(TargetParts {
            host: s,
            bracketed: false,
            port: None,
        });
    }
    Some(match s.split_once(':') {
        Some((host, port)) => TargetParts {
            host,
            bracketed: false,
            port: Some(port),
        },
        None => TargetParts {
            host: s,
            bracketed: false,
            port: None,
        },
    })
}

/// A TCP port, 1 to 65535.
pub fn port(s: &str) -> Option<u16> {
    let (_, digits) = all_consuming(digit1::<&str, nom::error::Error<&str>>)
        .parse(s)
        .ok()?;
    match digits.parse::<u16>() {
        Ok(0) | Err(_) => None,
        Ok(p) => Some(p),
    }
}

/// An unsigned number in decimal digits only.
pub fn number<T: core::str::FromStr>(s: &str) -> Option<T> {
    let (_, digits) = all_consuming(digit1::<&str, nom::error::Error<&str>>)
        .parse(s)
        .ok()?;
    digits.parse().ok()
}

/// True when the word looks like an IP address rather than a name (it
/// parses as one).
pub fn ip(s: &str) -> Option<IpAddr> {
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("5m"), Ok(300));
        assert_eq!(duration("1h30m"), Ok(5400));
        assert_eq!(duration("5d"), Ok(432_000));
        assert_eq!(duration("2w"), Ok(1_209_600));
        assert_eq!(duration("0s"), Err(DurationError::Zero));
        assert_eq!(duration("5"), Err(DurationError::Syntax));
        assert_eq!(duration("5x"), Err(DurationError::Syntax));
        assert_eq!(duration("99999999999d"), Err(DurationError::TooLong));
        assert_eq!(format_duration(5400), "1h30m");
        assert_eq!(format_duration(432_000), "5d");
    }

    #[test]
    fn targets() {
        let t = |s| target(s).map(|p| (p.host, p.bracketed, p.port));
        assert_eq!(t("mx.example.com"), Some(("mx.example.com", false, None)));
        assert_eq!(
            t("mx.example.com:2525"),
            Some(("mx.example.com", false, Some("2525")))
        );
        assert_eq!(t("192.0.2.1:25"), Some(("192.0.2.1", false, Some("25"))));
        assert_eq!(
            t("[2001:db8::25]:2525"),
            Some(("2001:db8::25", true, Some("2525")))
        );
        assert_eq!(t("[2001:db8::25]"), Some(("2001:db8::25", true, None)));
        assert_eq!(t("2001:db8::25"), Some(("2001:db8::25", false, None)));
        assert_eq!(t("[2001:db8::25"), None);
    }

    #[test]
    fn ports() {
        assert_eq!(port("25"), Some(25));
        assert_eq!(port("0"), None);
        assert_eq!(port("65536"), None);
        assert_eq!(port("+25"), None);
    }
}
