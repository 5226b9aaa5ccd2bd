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

use hashbrown::HashMap;
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
    domains: HashMap<Box<str>, u32>,
    partners: HashMap<Box<str>, u32>,
    /// Outbound server networks, grouped by (is_v4, prefix length) and keyed
    /// by the network bits, each with the indexes of the domains that list it.
    outbound: HashMap<(bool, u8), HashMap<u128, Vec<u32>>>,
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
        let mut domains = HashMap::with_capacity(policy.domains.len());
        let mut outbound: HashMap<(bool, u8), HashMap<u128, Vec<u32>>> = HashMap::new();
        for (i, d) in policy.domains.iter().enumerate() {
            let i = i as u32;
            domains.insert(Box::from(d.name.as_str()), i);
            if let Some(details) = &d.details {
                for net in &details.outbound_servers {
                    let key = (net.addr.is_ipv4(), net.prefix);
                    let entry = outbound.entry(key).or_default();
                    let list = entry.entry(network_key(net.addr, net.prefix)).or_default();
                    if !list.contains(&i) {
                        list.push(i);
                    }
                }
            }
        }
        let partners = policy
            .partners
            .iter()
            .enumerate()
            .map(|(i, p)| (Box::from(p.name.as_str()), i as u32))
            .collect();
        CompiledPolicy {
            policy,
            domains,
            partners,
            outbound,
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Classifies an SMTP client by its address (T4, T6).
    pub fn client(&self, ip: IpAddr) -> ClientClass<'_> {
        let ip = canonical_ip(ip);
        let mut idx: Vec<u32> = Vec::new();
        for (&(v4, prefix), nets) in &self.outbound {
            if v4 != ip.is_ipv4() {
                continue;
            }
            if let Some(list) = nets.get(&network_key(ip, prefix)) {
                idx.extend_from_slice(list);
            }
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
    /// excluded from it (T12). The flag tells whether a parent matched.
    fn registered(&self, domain: &str) -> Option<(&Domain, Coverage)> {
        let mut name = domain;
        loop {
            if let Some(&i) = self.domains.get(name) {
                let d = &self.policy.domains[i as usize];
                let excluded = d
                    .details
                    .as_ref()
                    .is_some_and(|x| x.excluded.iter().any(|e| is_within(domain, e.as_str())));
                let how = if excluded {
                    Coverage::Excluded
                } else if name.len() == domain.len() {
                    Coverage::Exact
                } else {
                    Coverage::Parent
                };
                return Some((d, how));
            }
            name = name.split_once('.')?.1;
        }
    }

    fn partner(&self, domain: &str) -> Option<&Partner> {
        let mut name = domain;
        loop {
            if let Some(&i) = self.partners.get(name) {
                return self.policy.partners.get(i as usize);
            }
            name = name.split_once('.')?.1;
        }
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
        let mut trail = heapless::Vec::new();
        let mut push = |r| {
            let _ = trail.push(r);
        };

        if let Some((d, how)) = self.registered(domain) {
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
        if !self.client(ctx.client_ip).may_relay() {
            return Ok(Decision {
                rule: Rule::T6,
                trail,
                matched: None,
                plan: None,
            });
        }
        push(Rule::T18);
        if let Some(p) = self.partner(domain) {
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
