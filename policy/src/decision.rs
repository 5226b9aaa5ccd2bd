//! The decision function: the one place that answers policy questions.
//!
//! `tlsgate` (when it receives and when it delivers) and `tlspolc explain`
//! both call [`CompiledPolicy::decide`] and [`CompiledPolicy::client`];
//! nothing else in the codebase may decide which TLS requirement, which
//! validation or which route applies to a message.
//!
//! A [`CompiledPolicy`] is a [`Policy`] plus lookup indexes built once when
//! the policy is loaded, so a decision is a few hash lookups (one per label
//! of the recipient domain) and never a scan of the tables.

use core::fmt;
use core::net::IpAddr;

use hashbrown::{HashMap, HashTable};
use serde::Serialize;

use crate::limits::MAX_NAME_LEN;
use crate::model::*;

/// A rule of the behaviour contract (`spec/behaviour.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Rule {
    T1,
    T2,
    T3,
    /// The policy's `always attempt tls` option, which replaces T3.
    AlwaysAttemptTls,
    T4,
    T5,
    T6,
    T7,
    T10,
    T11,
    T12,
    T16,
    T17,
    T18,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::AlwaysAttemptTls => f.write_str("always-attempt-tls"),
            other => write!(f, "{other:?}"),
        }
    }
}

/// What the gateway must do about TLS on the onward connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsRequirement {
    /// Clear text; STARTTLS is not attempted (T3).
    None,
    /// STARTTLS when offered, clear text otherwise (T2).
    Opportunistic,
    /// TLS or no delivery, validated as the plan says (T5, T7).
    Required,
}

impl fmt::Display for TlsRequirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsRequirement::None => "none",
            TlsRequirement::Opportunistic => "opportunistic",
            TlsRequirement::Required => "required",
        })
    }
}

/// Where the onward connection goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RoutePlan<'p> {
    /// DNS MX of the recipient's domain (T18).
    Mx,
    /// The registered domain's inbound servers, in priority order (T16).
    InboundRoutes(&'p [InboundRoute]),
    /// One specific server (T16, T17).
    Static(&'p Target),
}

/// How to deliver one recipient's copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct DeliveryPlan<'p> {
    pub tls: TlsRequirement,
    /// Set exactly when `tls` is [`TlsRequirement::Required`].
    pub validation: Option<&'p Validation>,
    pub route: RoutePlan<'p>,
}

/// The answer for one recipient of one message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision<'p> {
    /// The rule that settled the question.
    pub rule: Rule,
    /// The rules that led there, outermost first (e.g. T11, T10, T7).
    pub trail: heapless::Vec<Rule, 6>,
    /// The registered domain or partner whose entry matched, if any.
    pub matched: Option<&'p DomainName>,
    /// `None` when the recipient must be refused (T6: not an open relay).
    pub plan: Option<DeliveryPlan<'p>>,
}

impl Decision<'_> {
    /// True when the recipient must be refused with `550 5.7.1` (T6).
    pub fn is_refused(&self) -> bool {
        self.plan.is_none()
    }
}

/// What the gateway knows about a message when it decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageContext<'a> {
    /// Envelope sender (`""` for the null sender).
    pub sender: &'a str,
    /// One envelope recipient, `local@domain`.
    pub recipient: &'a str,
    pub client_ip: IpAddr,
    pub received_over_tls: bool,
}

/// What the gateway knows about an SMTP client from its address alone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClientClass<'p> {
    /// Registered domains that list this address among their outbound
    /// servers. Non-empty means the client may relay to anyone (T6).
    pub outbound_for: Vec<&'p DomainName>,
    /// T4: at least one of those domains enforces outbound TLS, so a mail
    /// transaction before STARTTLS gets `530 5.7.0`.
    pub tls_required: bool,
}

impl ClientClass<'_> {
    pub fn may_relay(&self) -> bool {
        !self.outbound_for.is_empty()
    }
}

/// Why a recipient address could not be decided at all.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("`{0}` is not an address of the form local@domain")]
    NoDomain(String),
    #[error("the domain of `{0}` is not a valid domain name")]
    BadDomain(String),
}

/// A policy with its lookup indexes.
#[derive(Clone, Debug)]
pub struct CompiledPolicy {
    policy: Policy,
    /// Indexes into `policy.domains`, hashed with [`NameHasher`].
    domains: HashTable<u32>,
    /// Indexes into `policy.partners`, hashed with [`NameHasher`].
    partners: HashTable<u32>,
    hasher: NameHasher,
    /// Outbound server networks, one group per (family, prefix length),
    /// longest prefixes first, each keyed by the network bits with the
    /// indexes of the domains that list it.
    outbound: Vec<OutboundGroup>,
}

#[derive(Clone, Debug)]
struct OutboundGroup {
    v4: bool,
    prefix: u8,
    nets: HashMap<u128, Vec<u32>>,
}

impl CompiledPolicy {
    pub fn new(mut policy: Policy) -> Self {
        // T16: inbound routes are tried in priority order; keep the written
        // order among equal priorities.
        for d in &mut policy.domains {
            if let Some(Delivery::InboundRoutes(r)) =
                d.details.as_deref_mut().map(|x| &mut x.delivery)
            {
                r.sort_by_key(|route| route.priority);
            }
        }
        let hasher = NameHasher::random();
        let mut domains = HashTable::with_capacity(policy.domains.len());
        let mut outbound: Vec<OutboundGroup> = Vec::new();
        for (i, d) in policy.domains.iter().enumerate() {
            let i = i as u32;
            insert_unique(&mut domains, &hasher, &policy.domains, i, |d| &d.name);
            if let Some(details) = &d.details {
                for net in &details.outbound_servers {
                    let (v4, prefix) = (net.addr.is_ipv4(), net.prefix);
                    let group = match outbound
                        .iter()
                        .position(|g| g.v4 == v4 && g.prefix == prefix)
                    {
                        Some(g) => &mut outbound[g],
                        None => {
                            outbound.push(OutboundGroup {
                                v4,
                                prefix,
                                nets: HashMap::new(),
                            });
                            let last = outbound.len() - 1;
                            &mut outbound[last]
                        }
                    };
                    let list = group
                        .nets
                        .entry(network_key(net.addr, net.prefix))
                        .or_default();
                    if !list.contains(&i) {
                        list.push(i);
                    }
                }
            }
        }
        outbound.sort_by_key(|g| core::cmp::Reverse((g.v4, g.prefix)));
        let mut partners = HashTable::with_capacity(policy.partners.len());
        for i in 0..policy.partners.len() {
            insert_unique(&mut partners, &hasher, &policy.partners, i as u32, |p| {
                &p.name
            });
        }
        CompiledPolicy {
            policy,
            domains,
            partners,
            hasher,
            outbound,
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The outbound groups that can hold `ip` (same family).
    fn outbound_hits(&self, ip: IpAddr) -> impl Iterator<Item = &Vec<u32>> + '_ {
        let v4 = ip.is_ipv4();
        self.outbound
            .iter()
            .filter(move |g| g.v4 == v4)
            .filter_map(move |g| g.nets.get(&network_key(ip, g.prefix)))
    }

    /// True when `ip` is one of a registered domain's outbound servers: the
    /// allocation-free part of [`CompiledPolicy::client`] that T6 needs.
    pub fn may_relay(&self, ip: IpAddr) -> bool {
        self.outbound_hits(canonical_ip(ip)).next().is_some()
    }

    /// Classifies an SMTP client by its address (T4, T6).
    pub fn client(&self, ip: IpAddr) -> ClientClass<'_> {
        let ip = canonical_ip(ip);
        let mut idx: Vec<u32> = Vec::new();
        for list in self.outbound_hits(ip) {
            idx.extend_from_slice(list);
        }
        idx.sort_unstable();
        idx.dedup();
        let mut tls_required = false;
        let outbound_for = idx
            .into_iter()
            .filter_map(|i| self.policy.domains.get(i as usize))
            .map(|d| {
                tls_required |= self.policy.settings_of(d).outbound == Enforcement::Required;
                &d.name
            })
            .collect();
        ClientClass {
            outbound_for,
            tls_required,
        }
    }

    /// The registered domain covering `domain` (T11), unless `domain` is
    /// excluded from it (T12). The most specific registered name wins.
    fn registered(&self, domain: &str, suffixes: &Suffixes) -> Option<(&Domain, Coverage)> {
        let d = suffixes.find(domain, &self.domains, &self.policy.domains, |d| &d.name)?;
        let excluded = d
            .details
            .as_ref()
            .is_some_and(|x| x.excluded.iter().any(|e| is_within(domain, e.as_str())));
        let how = if excluded {
            Coverage::Excluded
        } else if d.name.as_str().len() == domain.len() {
            Coverage::Exact
        } else {
            Coverage::Parent
        };
        Some((d, how))
    }

    fn partner(&self, domain: &str, suffixes: &Suffixes) -> Option<&Partner> {
        suffixes.find(domain, &self.partners, &self.policy.partners, |p| &p.name)
    }

    /// The mirror rules (T2/T3, or the always-attempt option).
    fn mirror(&self, received_over_tls: bool) -> (Rule, TlsRequirement) {
        if received_over_tls {
            (Rule::T2, TlsRequirement::Opportunistic)
        } else if self.policy.always_attempt_tls {
            (Rule::AlwaysAttemptTls, TlsRequirement::Opportunistic)
        } else {
            (Rule::T3, TlsRequirement::None)
        }
    }

    /// Decides how one recipient of one message is handled.
    pub fn decide(&self, ctx: &MessageContext<'_>) -> Result<Decision<'_>, AddressError> {
        let mut buf = heapless::String::<MAX_NAME_LEN>::new();
        let domain = recipient_domain(ctx.recipient, &mut buf)?;
        let suffixes = Suffixes::of(domain, &self.hasher);
        let mut trail = heapless::Vec::new();
        let mut push = |r| {
            let _ = trail.push(r);
        };

        if let Some((d, how)) = self.registered(domain, &suffixes) {
            let details = d.details.as_deref();
            let route = match details.map(|x| &x.delivery) {
                None | Some(Delivery::Mx) => RoutePlan::Mx,
                Some(Delivery::InboundRoutes(r)) => {
                    push(Rule::T16);
                    RoutePlan::InboundRoutes(r.as_slice())
                }
                Some(Delivery::Static(t)) => {
                    push(Rule::T17);
                    RoutePlan::Static(t)
                }
            };
            match how {
                Coverage::Excluded => push(Rule::T12),
                Coverage::Parent => push(Rule::T11),
                Coverage::Exact => {}
            }
            // An excluded name takes nothing from the domain's settings, so
            // it does not follow the defaults either (T12, not T10).
            if d.settings.is_none() && how != Coverage::Excluded {
                push(Rule::T10);
            }
            let settings = self.policy.settings_of(d);
            let (rule, tls, validation) =
                if how != Coverage::Excluded && settings.inbound == Enforcement::Required {
                    (
                        Rule::T7,
                        TlsRequirement::Required,
                        Some(&settings.validation),
                    )
                } else {
                    let (rule, tls) = self.mirror(ctx.received_over_tls);
                    (rule, tls, None)
                };
            return Ok(Decision {
                rule,
                trail,
                matched: Some(&d.name),
                plan: Some(DeliveryPlan {
                    tls,
                    validation,
                    route,
                }),
            });
        }

        // Not a registered domain: only registered outbound servers relay.
        if !self.may_relay(ctx.client_ip) {
            return Ok(Decision {
                rule: Rule::T6,
                trail,
                matched: None,
                plan: None,
            });
        }
        push(Rule::T18);
        if let Some(p) = self.partner(domain, &suffixes) {
            if p.outbound == Enforcement::Required {
                return Ok(Decision {
                    rule: Rule::T5,
                    trail,
                    matched: Some(&p.name),
                    plan: Some(DeliveryPlan {
                        tls: TlsRequirement::Required,
                        validation: Some(&p.validation),
                        route: RoutePlan::Mx,
                    }),
                });
            }
        }
        let (rule, tls) = self.mirror(ctx.received_over_tls);
        Ok(Decision {
            rule,
            trail,
            matched: None,
            plan: Some(DeliveryPlan {
                tls,
                validation: None,
                route: RoutePlan::Mx,
            }),
        })
    }
}

/// Inserts entry `i` of `entries` into `table` unless its name is there
/// already (the compiler keeps names unique; the first one wins).
fn insert_unique<T>(
    table: &mut HashTable<u32>,
    hasher: &NameHasher,
    entries: &[T],
    i: u32,
    name: impl Fn(&T) -> &DomainName,
) {
    let Some(entry) = entries.get(i as usize) else {
        return;
    };
    let key = name(entry).as_str();
    let hash = hasher.hash(key);
    let eq = |&j: &u32| {
        entries
            .get(j as usize)
            .is_some_and(|e| name(e).as_str() == key)
    };
    if table.find(hash, eq).is_none() {
        table.insert_unique(hash, i, |&j| {
            entries
                .get(j as usize)
                .map_or(0, |e| hasher.hash(name(e).as_str()))
        });
    }
}

/// A seeded hash of domain names, computed right to left so that one pass
/// over a name yields the hash of every suffix that starts at a label
/// boundary (`a.b.example` → `example`, `b.example`, `a.b.example`). The
/// seed is random per load: recipients are chosen by strangers.
#[derive(Clone, Copy, Debug)]
struct NameHasher {
    seed: u64,
}

const HASH_MUL: u64 = 0x9E37_79B9_7F4A_7C15;

impl NameHasher {
    fn random() -> Self {
        use core::hash::BuildHasher;
        let seed = std::collections::hash_map::RandomState::new().hash_one(0x746c_7367_u64);
        NameHasher { seed }
    }

    #[inline]
    fn step(h: u64, b: u8) -> u64 {
        (h ^ u64::from(b)).wrapping_mul(HASH_MUL).rotate_left(23)
    }

    #[inline]
    fn finish(h: u64) -> u64 {
        // A final avalanche (from splitmix64) so low bits depend on all input.
        let mut z = h;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn hash(&self, name: &str) -> u64 {
        let mut h = self.seed;
        for &b in name.as_bytes().iter().rev() {
            h = Self::step(h, b);
        }
        Self::finish(h)
    }
}

/// Most labels a name of [`MAX_NAME_LEN`] bytes can have.
const MAX_LABELS: usize = MAX_NAME_LEN.div_ceil(2);

/// The start offset and hash of every label-boundary suffix of a name,
/// longest (the whole name) first, in the tail of fixed arrays.
struct Suffixes {
    starts: [u8; MAX_LABELS],
    hashes: [u64; MAX_LABELS],
    /// Slots `first..` are in use.
    first: usize,
}

impl Suffixes {
    fn of(name: &str, hasher: &NameHasher) -> Self {
        let mut out = Suffixes {
            starts: [0; MAX_LABELS],
            hashes: [0; MAX_LABELS],
            first: MAX_LABELS,
        };
        let bytes = name.as_bytes();
        let mut h = hasher.seed;
        // Filled from the back (shortest suffix) so the front is the longest.
        let mut slot = MAX_LABELS;
        for (i, &b) in bytes.iter().enumerate().rev() {
            if b == b'.' && slot > 0 {
                slot -= 1;
                out.starts[slot] = (i + 1) as u8;
                out.hashes[slot] = NameHasher::finish(h);
            }
            h = NameHasher::step(h, b);
        }
        if slot > 0 {
            slot -= 1;
            out.starts[slot] = 0;
            out.hashes[slot] = NameHasher::finish(h);
        }
        out.first = slot;
        out
    }

    /// The entry of `entries` (indexed by `table`) whose name is the
    /// longest suffix of `name`.
    fn find<'e, T>(
        &self,
        name: &str,
        table: &HashTable<u32>,
        entries: &'e [T],
        key: impl Fn(&T) -> &DomainName,
    ) -> Option<&'e T> {
        for k in self.first..MAX_LABELS {
            let suffix = name.get(usize::from(self.starts[k])..)?;
            let hit = table.find(self.hashes[k], |&j| {
                entries
                    .get(j as usize)
                    .is_some_and(|e| key(e).as_str() == suffix)
            });
            if let Some(&j) = hit {
                return entries.get(j as usize);
            }
        }
        None
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Coverage {
    Exact,
    Parent,
    Excluded,
}

fn network_key(ip: IpAddr, prefix: u8) -> u128 {
    let (bits, width) = match ip {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32u32),
        IpAddr::V6(v6) => (u128::from(v6), 128u32),
    };
    let host = width - u32::from(prefix);
    if host >= 128 {
        0
    } else {
        (bits >> host) << host
    }
}

/// The lower-case domain of `local@domain` (without trailing dot), borrowed
/// when it is already lower-case, else copied into `buf`.
pub fn recipient_domain<'a>(
    addr: &'a str,
    buf: &'a mut heapless::String<MAX_NAME_LEN>,
) -> Result<&'a str, AddressError> {
    let Some((_, domain)) = addr.rsplit_once('@') else {
        return Err(AddressError::NoDomain(addr.to_string()));
    };
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    if domain.is_empty()
        || domain.len() > MAX_NAME_LEN
        || domain.starts_with('.')
        || domain.ends_with('.')
        || domain.contains("..")
        || !domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(AddressError::BadDomain(addr.to_string()));
    }
    if !domain.bytes().any(|b| b.is_ascii_uppercase()) {
        return Ok(domain);
    }
    buf.clear();
    for c in domain.chars() {
        let _ = buf.push(c.to_ascii_lowercase());
    }
    Ok(buf.as_str())
}
