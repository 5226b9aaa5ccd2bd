//! The span-free policy model: what a compiled `.tlspol` file means.
//!
//! This is the contract between `tlspolc` (which builds it from text and
//! signs it) and `tlsgate` (which verifies and enforces it). Every bounded
//! field is a `heapless` type whose capacity is a constant of
//! [`crate::limits`], so a blob cannot describe more than the relay is built
//! to hold; the compiler checks each bound with an error naming the limit.
//!
//! Collections are kept sorted by the compiler (domains and partners by
//! name) so that the same source always gives the same bytes.

use core::fmt;
use core::net::IpAddr;
use core::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::bounded::BoundedVec;
use crate::limits::*;

/// A lower-case ASCII DNS name without trailing dot (A-labels for IDNs).
///
/// Deserializing checks the name like [`DomainName::parse`] and refuses a
/// name that is not already in canonical (lower-case) form.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "heapless::String<MAX_NAME_LEN>")]
pub struct DomainName(heapless::String<MAX_NAME_LEN>);

impl TryFrom<heapless::String<MAX_NAME_LEN>> for DomainName {
    type Error = String;
    fn try_from(s: heapless::String<MAX_NAME_LEN>) -> Result<Self, Self::Error> {
        let name = DomainName::parse(&s).map_err(|e| format!("`{s}`: {e}"))?;
        if name.0 != s {
            return Err(format!("`{s}` is not a canonical domain name"));
        }
        Ok(name)
    }
}

/// Why a string is not a [`DomainName`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("a domain name cannot be empty")]
    Empty,
    #[error("a domain name is at most {MAX_NAME_LEN} characters (this one has {0})")]
    TooLong(usize),
    #[error("a label is at most 63 characters")]
    LabelTooLong,
    #[error("empty label (two dots in a row, or a leading dot)")]
    EmptyLabel,
    #[error("`{0}` is not allowed in a domain name (letters, digits and `-`; write IDNs as `xn--` A-labels)")]
    BadChar(char),
    #[error("a label cannot start or end with `-`")]
    Hyphen,
    #[error("a domain name needs at least two labels")]
    SingleLabel,
}

impl DomainName {
    /// Parses and normalises (lower-cases, strips one trailing dot) a name.
    /// Requires at least two labels: policies name real domains.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let s = s.strip_suffix('.').unwrap_or(s);
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong(s.len()));
        }
        let mut labels = 0;
        for label in s.split('.') {
            labels += 1;
            if label.is_empty() {
                return Err(NameError::EmptyLabel);
            }
            if label.len() > 63 {
                return Err(NameError::LabelTooLong);
            }
            if let Some(c) = label
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
            {
                return Err(NameError::BadChar(c));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(NameError::Hyphen);
            }
        }
        if labels < 2 {
            return Err(NameError::SingleLabel);
        }
        let mut out = heapless::String::new();
        for c in s.chars() {
            // Cannot fail: the length was checked above.
            let _ = out.push(c.to_ascii_lowercase());
        }
        Ok(DomainName(out))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// True when `self` is `other` or a sub-domain of it.
    pub fn is_within(&self, other: &DomainName) -> bool {
        is_within(self.as_str(), other.as_str())
    }
}

/// True when the (lower-case) name `name` equals `parent` or is a
/// sub-domain of it, on label boundaries.
pub fn is_within(name: &str, parent: &str) -> bool {
    name == parent
        || (name.len() > parent.len()
            && name.ends_with(parent)
            && name.as_bytes()[name.len() - parent.len() - 1] == b'.')
}

impl FromStr for DomainName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// An IPv4 or IPv6 network (`192.0.2.0/24`, `2001:db8::/32`); a bare
/// address is a network with the full prefix length.
///
/// Deserializing refuses a prefix longer than the address or host bits
/// set below it, like [`IpNet::parse`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "IpNetFields")]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

/// The wire shape of [`IpNet`], before its checks.
#[derive(Deserialize)]
struct IpNetFields {
    addr: IpAddr,
    prefix: u8,
}

impl TryFrom<IpNetFields> for IpNet {
    type Error = NetError;
    fn try_from(f: IpNetFields) -> Result<Self, Self::Error> {
        let max = if f.addr.is_ipv4() { 32 } else { 128 };
        if f.prefix > max {
            return Err(NetError::Prefix(max));
        }
        let net = IpNet {
            addr: f.addr,
            prefix: f.prefix,
        };
        if net.network_bits() != bits(f.addr) {
            return Err(NetError::HostBits(f.prefix));
        }
        Ok(net)
    }
}

/// Why a string is not an [`IpNet`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    #[error("not an IP address")]
    Addr,
    #[error("prefix length must be a number from 0 to {0}")]
    Prefix(u8),
    #[error("host bits are set below the /{0} prefix (did you mean the network address?)")]
    HostBits(u8),
}

impl IpNet {
    pub fn parse(s: &str) -> Result<Self, NetError> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| NetError::Addr)?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && !p.starts_with('+') => n,
                _ => return Err(NetError::Prefix(max)),
            },
        };
        let net = IpNet { addr, prefix };
        if net.network_bits() != bits(addr) {
            return Err(NetError::HostBits(prefix));
        }
        Ok(net)
    }

    fn network_bits(&self) -> u128 {
        let b = bits(self.addr);
        let width = if self.addr.is_ipv4() { 32 } else { 128 };
        let host = width - u32::from(self.prefix);
        if host >= 128 {
            0
        } else {
            (b >> host) << host
        }
    }

    /// True when `ip` lies in this network. IPv4-mapped IPv6 addresses are
    /// treated as the IPv4 address they carry.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        if ip.is_ipv4() != self.addr.is_ipv4() {
            return false;
        }
        IpNet {
            addr: ip,
            prefix: self.prefix,
        }
        .network_bits()
            == self.network_bits()
    }
}

/// `::ffff:192.0.2.1` → `192.0.2.1`; anything else unchanged.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let full = if self.addr.is_ipv4() { 32 } else { 128 };
        if self.prefix == full {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

/// Whether TLS is enforced on a leg.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Enforcement {
    /// Mirror rules (T1–T3): TLS when it can be had.
    #[default]
    Opportunistic,
    /// TLS or nothing (T4, T5, T7).
    Required,
}

/// Certificate validation for required TLS (T13–T15).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[allow(
    clippy::large_enum_variant,
    reason = "inline heapless storage is the point: the bound is in the type; these live behind `Box`ed settings/details"
)]
pub enum Validation {
    /// T13/T14: dates, chain to a trusted root, and a name match against the
    /// host connected to or one of `trusted_names`.
    Strong {
        trusted_names: BoundedVec<DomainName, MAX_TRUSTED_NAMES>,
        /// Also compare names against the subject CN (not only the SAN).
        match_common_name: bool,
    },
    /// T15: no certificate checks (handshake signatures still verified).
    Relaxed,
}

impl Default for Validation {
    fn default() -> Self {
        Validation::Strong {
            trusted_names: BoundedVec::new(),
            match_common_name: false,
        }
    }
}

/// The host part of a route: a name, or an address (which has no name a
/// certificate could match and gets no SNI).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[allow(
    clippy::large_enum_variant,
    reason = "inline heapless storage is the point: the bound is in the type; these live behind `Box`ed settings/details"
)]
pub enum RouteHost {
    Name(DomainName),
    Ip(IpAddr),
}

impl fmt::Display for RouteHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteHost::Name(n) => write!(f, "{n}"),
            RouteHost::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// A next hop: host and TCP port (25 unless written).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Target {
    pub host: RouteHost,
    pub port: u16,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.host, self.port) {
            (h, 25) => write!(f, "{h}"),
            (RouteHost::Ip(IpAddr::V6(v6)), p) => write!(f, "[{v6}]:{p}"),
            (h, p) => write!(f, "{h}:{p}"),
        }
    }
}

/// One of a registered domain's inbound servers (T16).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct InboundRoute {
    /// Lower is tried first, like an MX preference.
    pub priority: u16,
    pub target: Target,
}

/// How a registered domain's mail reaches its servers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[allow(
    clippy::large_enum_variant,
    reason = "inline heapless storage is the point: the bound is in the type; these live behind `Box`ed settings/details"
)]
pub enum Delivery {
    /// The domain's DNS MX records (T18 rules apply).
    #[default]
    Mx,
    /// T16: configured inbound servers in priority order, with fall-through.
    InboundRoutes(BoundedVec<InboundRoute, MAX_ROUTES>),
    /// T16/T17: one specific server, TLS static route.
    Static(Target),
}

/// The settings a domain either takes from `defaults` or carries itself
/// (T10).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Settings {
    /// T7: gateway → the domain's inbound servers.
    pub inbound: Enforcement,
    /// T4: the domain's outbound servers → gateway.
    pub outbound: Enforcement,
    pub validation: Validation,
}

/// A registered domain.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Domain {
    pub name: DomainName,
    /// `None`: uses the default settings and follows changes to them (T10).
    pub settings: Option<Box<Settings>>,
    /// Domain facts that are not inherited from the defaults; `None` when
    /// all of them are empty (keeps 100,000-domain policies small).
    pub details: Option<Box<DomainDetails>>,
}

/// Per-domain facts: who sends for it, how to reach it, what is carved out.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DomainDetails {
    /// The domain's outbound mail servers (T4, T6).
    pub outbound_servers: BoundedVec<IpNet, MAX_OUTBOUND_SERVERS>,
    /// T11/T12: sub-domains outside the domain's enforcement.
    pub excluded: BoundedVec<DomainName, MAX_EXCLUDED>,
    pub delivery: Delivery,
}

/// An external domain whose onward delivery has its own rules (T5).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Partner {
    pub name: DomainName,
    pub outbound: Enforcement,
    pub validation: Validation,
}

/// When undeliverable mail is retried and when it bounces (T9).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Seconds to wait before each retry; the last one repeats.
    pub schedule: heapless::Vec<u32, MAX_RETRY_STEPS>,
    /// Seconds after arrival when undelivered mail bounces.
    pub give_up_after: u32,
    /// Seconds after arrival when a delay notice goes to the sender, if any.
    pub delay_notice_after: Option<u32>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        let mut schedule = heapless::Vec::new();
        for s in DEFAULT_RETRY_SCHEDULE {
            let _ = schedule.push(*s);
        }
        RetryPolicy {
            schedule,
            give_up_after: DEFAULT_GIVE_UP_AFTER,
            delay_notice_after: None,
        }
    }
}

impl RetryPolicy {
    /// Seconds to wait after failed attempt number `attempt` (1-based).
    pub fn delay_after_attempt(&self, attempt: u32) -> u32 {
        let i = (attempt.max(1) - 1) as usize;
        match self.schedule.get(i).or(self.schedule.last()) {
            Some(s) => *s,
            None => DEFAULT_RETRY_SCHEDULE[0],
        }
    }
}

/// An extra trust anchor (private CA), DER bytes read from PEM at compile
/// time.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TrustAnchor {
    /// Where it came from (file name as written in the policy), for logs.
    pub label: heapless::String<MAX_LABEL_LEN>,
    pub der: heapless::Vec<u8, MAX_ANCHOR_DER>,
}

/// A whole compiled policy.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Policy {
    /// Roll-back protection (T20): the relay refuses a lower serial.
    pub serial: u64,
    pub defaults: Settings,
    /// Sorted by name, unique.
    pub domains: Vec<Domain>,
    /// Sorted by name, unique, disjoint from `domains`.
    pub partners: Vec<Partner>,
    pub retry: RetryPolicy,
    /// Opt-in replacement for T3: attempt STARTTLS even for mail received in
    /// clear text.
    pub always_attempt_tls: bool,
    pub trust_anchors: Vec<TrustAnchor>,
}

impl Policy {
    /// An empty policy: no registered domains, no partners, safe defaults.
    pub fn empty(serial: u64) -> Self {
        Policy {
            serial,
            defaults: Settings::default(),
            domains: Vec::new(),
            partners: Vec::new(),
            retry: RetryPolicy::default(),
            always_attempt_tls: false,
            trust_anchors: Vec::new(),
        }
    }

    /// The settings that apply to `domain` (its own, or the defaults: T10).
    pub fn settings_of<'a>(&'a self, domain: &'a Domain) -> &'a Settings {
        domain.settings.as_deref().unwrap_or(&self.defaults)
    }
}
