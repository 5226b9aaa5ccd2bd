//! The checker: syntax trees → [`policy::Policy`], collecting every error
//! and warning.
//!
//! It walks the top-level file in order, following `include` lines into
//! other files (relative to the including file, cycles and depth bounded),
//! gives every word its meaning ([`values`]), reads trust anchors
//! ([`anchors`]), and checks what a single statement cannot know alone:
//! duplicates across files, a domain that is also a partner, and the rules
//! that depend on a domain's effective settings, which are only known once
//! the `defaults` block has been seen (T10, T14, T17).
//!
//! Settings semantics (documented in `docs/language.md`): a domain written
//! `uses defaults`, or whose block sets none of `inbound tls`,
//! `outbound tls`, `validation`, `trusted names` or `match common-name`,
//! uses the default settings. A block that sets any of them carries its own
//! settings: inbound and outbound enforcement each come from the block when
//! written and from `defaults` otherwise; validation (mode, trusted names
//! and common-name matching together) comes from the block when any of its
//! three lines is written, starting from strong validation with no trusted
//! names, and from `defaults` otherwise.

pub(crate) mod anchors;
pub(crate) mod values;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use policy::limits::*;
use policy::{
    Delivery, Domain, DomainDetails, DomainName, Enforcement, InboundRoute, IpNet, Partner, Policy,
    RetryPolicy, RouteHost, Settings, TrustAnchor, Validation,
};

use crate::ast::{self, Block, Item, Mode, Node, RetrySetting, Setting, ValidationMode, Word};
use crate::diagnostic::Diagnostic;
use crate::source::{Location, SourceFile, Span};

/// How deep `include` may nest.
pub const MAX_INCLUDE_DEPTH: usize = 16;

/// Where diagnostics go: errors and warnings kept apart.
#[derive(Default)]
pub(crate) struct Sink {
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

impl Sink {
    pub fn error(&mut self, d: Diagnostic) {
        self.errors.push(d);
    }

    pub fn warn(&mut self, d: Diagnostic) {
        self.warnings.push(d);
    }
}

/// Checks the policy whose top-level file is `top` (`top_path`: its
/// canonical path when it is a real file, for cycle detection).
pub(crate) fn check(top: Arc<SourceFile>, top_path: Option<PathBuf>) -> (Option<Policy>, Sink) {
    let mut c = Checker::default();
    if let Some(p) = top_path {
        c.stack.push((p, top.name.clone()));
    }
    c.file(&top);
    let policy = c.finish(&top);
    (policy, c.sink)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum BlockKind {
    Defaults,
    Domain,
    Partner,
}

impl BlockKind {
    fn describe(self) -> &'static str {
        match self {
            BlockKind::Defaults => "the `defaults` block",
            BlockKind::Domain => "a `domain` block",
            BlockKind::Partner => "a `partner` block",
        }
    }
}

/// What a settings block says, values checked.
#[derive(Default)]
struct Draft {
    inbound: Option<Enforcement>,
    outbound: Option<Enforcement>,
    validation: Option<Validation>,
    /// Spans of `trusted names` / `match common-name` lines.
    validation_lines: Vec<Span>,
    servers: Vec<IpNet>,
    excluded: Vec<DomainName>,
    delivery: Option<Delivery>,
    static_ip: Option<Span>,
    route_ips: Vec<Span>,
}

/// Checks that need a domain's effective settings, done at the end.
struct Deferred {
    file: Arc<SourceFile>,
    static_ip: Option<Span>,
    route_ips: Vec<Span>,
    validation_lines: Vec<Span>,
}

struct DomainEntry {
    name: DomainName,
    loc: Location,
    inbound: Option<Enforcement>,
    outbound: Option<Enforcement>,
    /// Boxed: a `Validation` holds its trusted names inline (kilobytes).
    validation: Option<Box<Validation>>,
    details: Option<Box<DomainDetails>>,
    deferred: Option<Box<Deferred>>,
}

#[derive(Default)]
struct Checker {
    sink: Sink,
    serial: Option<(u64, Location)>,
    defaults: Option<(Settings, Location)>,
    domains: Vec<DomainEntry>,
    domain_index: HashMap<DomainName, usize>,
    partners: Vec<(Partner, Location)>,
    partner_index: HashMap<DomainName, usize>,
    retry: Option<(RetryPolicy, Location)>,
    always: Option<Location>,
    anchors: Vec<TrustAnchor>,
    anchor_ders: HashSet<Vec<u8>>,
    /// Files being read, outermost first (canonical path, shown name).
    stack: Vec<(PathBuf, String)>,
    included: HashMap<PathBuf, Location>,
}

fn loc(file: &Arc<SourceFile>, span: Span) -> Location {
    Location {
        file: Arc::clone(file),
        span,
    }
}

fn duplicate(
    code: &'static str,
    message: String,
    file: &Arc<SourceFile>,
    span: Span,
    first: &Location,
    help: &str,
) -> Diagnostic {
    Diagnostic::error(code, message)
        .at(file, span, "declared again here")
        .also(first, "first declared here")
        .with_help(help.to_string())
}

impl Checker {
    fn file(&mut self, file: &Arc<SourceFile>) {
        let (ast, syntax_errors) = crate::syntax::parse(file);
        self.sink.errors.extend(syntax_errors);
        for stmt in &ast.items {
            self.item(file, &stmt.node);
        }
    }

    fn item(&mut self, file: &Arc<SourceFile>, item: &Node<Item>) {
        match &item.node {
            Item::Serial(w) => self.serial(file, w, item.span),
            Item::Defaults(block) => {
                if let Some((_, first)) = &self.defaults {
                    let d = duplicate(
                        "tlspol::duplicate-setting",
                        "`defaults` is declared twice".to_string(),
                        file,
                        item.span,
                        first,
                        "keep one `defaults` block",
                    );
                    self.sink.error(d);
                    return;
                }
                let draft = self.settings_block(file, block, BlockKind::Defaults, None);
                let settings = Settings {
                    inbound: draft.inbound.unwrap_or_default(),
                    outbound: draft.outbound.unwrap_or_default(),
                    validation: draft.validation.unwrap_or_default(),
                };
                self.defaults = Some((settings, loc(file, item.span)));
            }
            Item::Domain { name, body } => self.domain(file, name, body),
            Item::Partner { name, body } => self.partner(file, name, body),
            Item::Retry(block) => self.retry(file, block, item.span),
            Item::AlwaysAttemptTls => {
                if let Some(first) = &self.always {
                    let d = duplicate(
                        "tlspol::duplicate-setting",
                        "`always attempt tls` is written twice".to_string(),
                        file,
                        item.span,
                        first,
                        "remove one of them",
                    );
                    self.sink.error(d);
                } else {
                    self.always = Some(loc(file, item.span));
                }
            }
            Item::TrustAnchor(path) => self.trust_anchor(file, path),
            Item::Include(path) => self.include(file, path),
        }
    }

    fn serial(&mut self, file: &Arc<SourceFile>, w: &Word, span: Span) {
        if let Some((_, first)) = &self.serial {
            let d = duplicate(
                "tlspol::duplicate-serial",
                "the policy serial is given twice".to_string(),
                file,
                span,
                first,
                "a policy has exactly one `policy serial` line",
            );
            self.sink.error(d);
            return;
        }
        match crate::syntax::value::number::<u64>(&w.node) {
            Some(n) if n > 0 => self.serial = Some((n, loc(file, span))),
            _ => self.sink.error(
                Diagnostic::error(
                    "tlspol::invalid-serial",
                    format!("`{}` is not a valid policy serial", w.node),
                )
                .at(
                    file,
                    w.span,
                    "expected a whole number from 1 to 18446744073709551615",
                )
                .with_help("a date and a counter make a good serial: `2026112301`"),
            ),
        }
    }

    fn domain(&mut self, file: &Arc<SourceFile>, name: &Word, body: &ast::DomainBody) {
        let parsed = values::domain_name(&mut self.sink, file, name, "domain name");
        let draft = match body {
            ast::DomainBody::UsesDefaults => Draft::default(),
            ast::DomainBody::Block(b) => {
                self.settings_block(file, b, BlockKind::Domain, parsed.as_ref())
            }
        };
        let Some(name_parsed) = parsed else { return };
        if let Some(&i) = self.domain_index.get(&name_parsed) {
            let first = self.domains.get(i).map(|d| d.loc.clone());
            if let Some(first) = first {
                let d = duplicate(
                    "tlspol::duplicate-domain",
                    format!("domain `{name_parsed}` is declared twice"),
                    file,
                    name.span,
                    &first,
                    "merge the two blocks into one",
                );
                self.sink.error(d);
            }
            return;
        }
        let details = if draft.servers.is_empty()
            && draft.excluded.is_empty()
            && matches!(draft.delivery, None | Some(Delivery::Mx))
        {
            None
        } else {
            let mut det = DomainDetails::default();
            for s in &draft.servers {
                let _ = det.outbound_servers.push(*s);
            }
            for e in &draft.excluded {
                let _ = det.excluded.push(e.clone());
            }
            det.delivery = draft.delivery.clone().unwrap_or_default();
            Some(Box::new(det))
        };
        let deferred = if draft.static_ip.is_some()
            || !draft.route_ips.is_empty()
            || !draft.validation_lines.is_empty()
        {
            Some(Box::new(Deferred {
                file: Arc::clone(file),
                static_ip: draft.static_ip,
                route_ips: draft.route_ips,
                validation_lines: draft.validation_lines,
            }))
        } else {
            None
        };
        self.domain_index
            .insert(name_parsed.clone(), self.domains.len());
        self.domains.push(DomainEntry {
            name: name_parsed,
            loc: loc(file, name.span),
            inbound: draft.inbound,
            outbound: draft.outbound,
            validation: draft.validation.map(Box::new),
            details,
            deferred,
        });
    }

    fn partner(&mut self, file: &Arc<SourceFile>, name: &Word, body: &Block<Setting>) {
        let parsed = values::domain_name(&mut self.sink, file, name, "domain name");
        let draft = self.settings_block(file, body, BlockKind::Partner, None);
        let Some(name_parsed) = parsed else { return };
        if let Some(&i) = self.partner_index.get(&name_parsed) {
            if let Some((_, first)) = self.partners.get(i) {
                let d = duplicate(
                    "tlspol::duplicate-partner",
                    format!("partner `{name_parsed}` is declared twice"),
                    file,
                    name.span,
                    first,
                    "merge the two blocks into one",
                );
                self.sink.error(d);
            }
            return;
        }
        let outbound = draft.outbound.unwrap_or_default();
        if outbound == Enforcement::Opportunistic {
            self.sink.warn(
                Diagnostic::warning(
                    "tlspol::partner-no-effect",
                    format!("partner `{name_parsed}` does not enforce TLS"),
                )
                .at(file, name.span, "this partner changes nothing")
                .with_help("add `outbound tls required` to enforce TLS to this partner (T5), or remove the block"),
            );
        }
        self.partner_index
            .insert(name_parsed.clone(), self.partners.len());
        self.partners.push((
            Partner {
                name: name_parsed,
                outbound,
                validation: draft.validation.unwrap_or_default(),
            },
            loc(file, name.span),
        ));
    }

    /// Checks a `defaults`, `domain` or `partner` block. `owner` is the
    /// domain whose sub-domains `exclude` may name.
    fn settings_block(
        &mut self,
        file: &Arc<SourceFile>,
        block: &Block<Setting>,
        kind: BlockKind,
        owner: Option<&DomainName>,
    ) -> Draft {
        let mut d = Draft::default();
        let mut seen: HashMap<&'static str, Span> = HashMap::new();
        let mut relaxed: Option<Span> = None;
        let mut strong_written = false;
        let mut trusted: Option<(Vec<DomainName>, Span)> = None;
        let mut match_cn: Option<Span> = None;
        for stmt in &block.entries {
            let s = &stmt.node;
            let kw = s.node.keyword();
            let allowed = !matches!(
                (&s.node, kind),
                (
                    Setting::OutboundServers(_) | Setting::Exclude(_) | Setting::Deliver(_),
                    BlockKind::Defaults | BlockKind::Partner,
                ) | (Setting::Inbound(_), BlockKind::Partner)
            );
            if !allowed {
                let help = match kind {
                    BlockKind::Partner if kw == "inbound tls" => "a partner is an external domain: only `outbound tls`, `validation`, `trusted names` and `match common-name` apply to it",
                    BlockKind::Partner => "a partner is an external domain: its servers and routes come from DNS",
                    _ => "outbound servers, exclusions and delivery are facts of one domain: write them in its `domain` block",
                };
                self.sink.error(
                    Diagnostic::error(
                        "tlspol::setting-not-allowed",
                        format!("`{kw}` is not allowed in {}", kind.describe()),
                    )
                    .at(file, s.span, "not allowed here")
                    .with_help(help),
                );
                continue;
            }
            if let Some(first) = seen.get(kw) {
                let d = Diagnostic::error(
                    "tlspol::duplicate-setting",
                    format!("`{kw}` is set twice in the same block"),
                )
                .at(file, s.span, "set again here")
                .also(&loc(file, *first), "first set here")
                .with_help("keep one line per setting; lists take several values separated by `,`");
                self.sink.error(d);
                continue;
            }
            seen.insert(kw, s.span);
            match &s.node {
                Setting::Inbound(m) => d.inbound = Some(enforcement(m)),
                Setting::Outbound(m) => d.outbound = Some(enforcement(m)),
                Setting::Validation(v) => match v.node {
                    ValidationMode::Relaxed => relaxed = Some(v.span),
                    ValidationMode::Strong => strong_written = true,
                },
                Setting::TrustedNames(names) => {
                    let list = self.names(file, names, "certificate name", "trusted names");
                    if list.len() > MAX_TRUSTED_NAMES {
                        self.sink.error(values::limit(
                            file,
                            s.span,
                            "trusted names",
                            list.len(),
                            "MAX_TRUSTED_NAMES",
                            MAX_TRUSTED_NAMES,
                        ));
                    }
                    d.validation_lines.push(s.span);
                    trusted = Some((list, s.span));
                }
                Setting::MatchCommonName => {
                    d.validation_lines.push(s.span);
                    match_cn = Some(s.span);
                }
                Setting::OutboundServers(words) => {
                    let mut set = HashSet::new();
                    for w in words {
                        if let Some(n) = values::network(&mut self.sink, file, w) {
                            if set.insert(n) {
                                d.servers.push(n);
                            } else {
                                self.duplicate_entry(file, w);
                            }
                        }
                    }
                    d.servers.sort();
                    if d.servers.len() > MAX_OUTBOUND_SERVERS {
                        self.sink.error(values::limit(
                            file,
                            s.span,
                            "outbound servers",
                            d.servers.len(),
                            "MAX_OUTBOUND_SERVERS",
                            MAX_OUTBOUND_SERVERS,
                        ));
                        d.servers.truncate(MAX_OUTBOUND_SERVERS);
                    }
                }
                Setting::Exclude(words) => {
                    let list = self.names(file, words, "sub-domain name", "exclude");
                    if let Some(owner) = owner {
                        for w in words {
                            let Ok(n) = DomainName::parse(&w.node) else {
                                continue;
                            };
                            if n == *owner || !n.is_within(owner) {
                                self.sink.error(
                                    Diagnostic::error(
                                        "tlspol::exclude-outside-domain",
                                        format!("`{n}` is not a sub-domain of `{owner}`"),
                                    )
                                    .at(file, w.span, format!("not under `{owner}`"))
                                    .with_help(format!(
                                        "only sub-domains of `{owner}` can be excluded from its enforcement (T12), e.g. `legacy.{owner}`"
                                    )),
                                );
                            }
                        }
                    }
                    let list: Vec<DomainName> = match owner {
                        Some(o) => list
                            .into_iter()
                            .filter(|n| n != o && n.is_within(o))
                            .collect(),
                        None => list,
                    };
                    if list.len() > MAX_EXCLUDED {
                        self.sink.error(values::limit(
                            file,
                            s.span,
                            "excluded sub-domains",
                            list.len(),
                            "MAX_EXCLUDED",
                            MAX_EXCLUDED,
                        ));
                    }
                    d.excluded = list;
                    d.excluded.truncate(MAX_EXCLUDED);
                }
                Setting::Deliver(how) => {
                    d.delivery =
                        self.delivery(file, how, s.span, &mut d.static_ip, &mut d.route_ips);
                }
            }
        }
        // Validation: the three lines are taken together.
        if relaxed.is_some() || strong_written || trusted.is_some() || match_cn.is_some() {
            if let Some(r) = relaxed {
                self.sink.warn(
                    Diagnostic::warning(
                        "tlspol::relaxed-validation",
                        "relaxed validation applies no certificate checks",
                    )
                    .at(file, r, "certificates are not checked")
                    .with_help("relaxed validation lets an attacker masquerade as the domain through DNS poisoning or a man in the middle; prefer `validation strong` with `trusted names` (T15)"),
                );
                if let Some((_, span)) = &trusted {
                    self.sink.error(
                        Diagnostic::error(
                            "tlspol::trusted-names-relaxed",
                            "trusted names only apply with strong validation",
                        )
                        .at(file, *span, "ignored under relaxed validation")
                        .also(&loc(file, r), "validation is relaxed here")
                        .with_help("write `validation strong` to check certificates against these names, or remove `trusted names` (T14)"),
                    );
                }
                if let Some(span) = match_cn {
                    self.sink.error(
                        Diagnostic::error(
                            "tlspol::trusted-names-relaxed",
                            "`match common-name` only applies with strong validation",
                        )
                        .at(file, span, "ignored under relaxed validation")
                        .also(&loc(file, r), "validation is relaxed here")
                        .with_help(
                            "write `validation strong`, or remove `match common-name` (T14)",
                        ),
                    );
                }
                d.validation = Some(Validation::Relaxed);
            } else {
                let mut names = policy::bounded::BoundedVec::new();
                if let Some((list, _)) = trusted {
                    for n in list.into_iter().take(MAX_TRUSTED_NAMES) {
                        let _ = names.push(n);
                    }
                }
                d.validation = Some(Validation::Strong {
                    trusted_names: names,
                    match_common_name: match_cn.is_some(),
                });
            }
        }
        d
    }

    /// Names of a list, checked, sorted and without duplicates.
    fn names(
        &mut self,
        file: &Arc<SourceFile>,
        words: &[Word],
        what: &str,
        _list: &str,
    ) -> Vec<DomainName> {
        let mut set = HashSet::new();
        let mut out = Vec::new();
        for w in words {
            if let Some(n) = values::domain_name(&mut self.sink, file, w, what) {
                if set.insert(n.clone()) {
                    out.push(n);
                } else {
                    self.duplicate_entry(file, w);
                }
            }
        }
        out.sort();
        out
    }

    fn duplicate_entry(&mut self, file: &Arc<SourceFile>, w: &Word) {
        self.sink.warn(
            Diagnostic::warning(
                "tlspol::duplicate-entry",
                format!("`{}` is listed twice", w.node),
            )
            .at(file, w.span, "already in this list")
            .with_help("remove the repeated entry"),
        );
    }

    fn delivery(
        &mut self,
        file: &Arc<SourceFile>,
        how: &ast::Deliver,
        span: Span,
        static_ip: &mut Option<Span>,
        route_ips: &mut Vec<Span>,
    ) -> Option<Delivery> {
        match how {
            ast::Deliver::Mx => Some(Delivery::Mx),
            ast::Deliver::Static(w) => {
                let t = values::target(&mut self.sink, file, w)?;
                if matches!(t.host, RouteHost::Ip(_)) {
                    *static_ip = Some(w.span);
                }
                Some(Delivery::Static(t))
            }
            ast::Deliver::Routes(block) => {
                if block.entries.is_empty() {
                    self.sink.error(
                        Diagnostic::error(
                            "tlspol::empty-routes",
                            "`deliver routes` lists no route",
                        )
                        .at(file, block.span, "no routes in this block")
                        .with_help(
                            "add routes such as `10 mx1.example.com`, or write `deliver mx`",
                        ),
                    );
                    return None;
                }
                let mut routes: Vec<InboundRoute> = Vec::new();
                let mut seen = HashSet::new();
                let mut ok = true;
                for stmt in &block.entries {
                    let r = &stmt.node.node;
                    let priority = crate::syntax::value::number::<u16>(&r.priority.node);
                    if priority.is_none() {
                        ok = false;
                        self.sink.error(
                            Diagnostic::error(
                                "tlspol::invalid-priority",
                                format!("`{}` is not a valid route priority", r.priority.node),
                            )
                            .at(file, r.priority.span, "expected a number from 0 to 65535")
                            .with_help("lower priorities are tried first, like MX preferences: `10 mx1.example.com`"),
                        );
                    }
                    let target = values::target(&mut self.sink, file, &r.target);
                    let (Some(priority), Some(target)) = (priority, target) else {
                        ok = false;
                        continue;
                    };
                    if !seen.insert(target.clone()) {
                        self.duplicate_entry(file, &r.target);
                        continue;
                    }
                    if matches!(target.host, RouteHost::Ip(_)) {
                        route_ips.push(r.target.span);
                    }
                    routes.push(InboundRoute { priority, target });
                }
                // Stable: equal priorities keep their written order.
                routes.sort_by_key(|r| r.priority);
                if routes.len() > MAX_ROUTES {
                    self.sink.error(values::limit(
                        file,
                        span,
                        "inbound routes",
                        routes.len(),
                        "MAX_ROUTES",
                        MAX_ROUTES,
                    ));
                    return None;
                }
                if !ok {
                    return None;
                }
                let mut v = policy::bounded::BoundedVec::new();
                for r in routes {
                    let _ = v.push(r);
                }
                Some(Delivery::InboundRoutes(v))
            }
        }
    }

    fn retry(&mut self, file: &Arc<SourceFile>, block: &Block<RetrySetting>, span: Span) {
        if let Some((_, first)) = &self.retry {
            let d = duplicate(
                "tlspol::duplicate-setting",
                "`retry` is declared twice".to_string(),
                file,
                span,
                first,
                "keep one `retry` block",
            );
            self.sink.error(d);
            return;
        }
        let mut policy = RetryPolicy::default();
        let mut seen: HashMap<&'static str, Span> = HashMap::new();
        let mut give_up_span = None;
        let mut notify = None;
        for stmt in &block.entries {
            let s = &stmt.node;
            let kw = s.node.keyword();
            if let Some(first) = seen.get(kw) {
                let d = Diagnostic::error(
                    "tlspol::duplicate-setting",
                    format!("`{kw}` is set twice in the same block"),
                )
                .at(file, s.span, "set again here")
                .also(&loc(file, *first), "first set here")
                .with_help("keep one line per setting");
                self.sink.error(d);
                continue;
            }
            seen.insert(kw, s.span);
            match &s.node {
                RetrySetting::Every(words) => {
                    let steps: Vec<u32> = words
                        .iter()
                        .filter_map(|w| values::duration(&mut self.sink, file, w))
                        .collect();
                    if steps.len() > MAX_RETRY_STEPS {
                        self.sink.error(values::limit(
                            file,
                            s.span,
                            "retry steps",
                            steps.len(),
                            "MAX_RETRY_STEPS",
                            MAX_RETRY_STEPS,
                        ));
                    } else if steps.len() == words.len() {
                        policy.schedule.clear();
                        for st in steps {
                            let _ = policy.schedule.push(st);
                        }
                    }
                }
                RetrySetting::GiveUpAfter(w) => {
                    if let Some(secs) = values::duration(&mut self.sink, file, w) {
                        if secs > MAX_GIVE_UP_AFTER {
                            self.sink.error(
                                values::limit(
                                    file,
                                    w.span,
                                    "retry period in seconds",
                                    secs as usize,
                                    "MAX_GIVE_UP_AFTER",
                                    MAX_GIVE_UP_AFTER as usize,
                                )
                                .with_help("the relay keeps mail at most 30 days (`policy::limits::MAX_GIVE_UP_AFTER`); write `give up after 30d` or less"),
                            );
                        } else {
                            policy.give_up_after = secs;
                            give_up_span = Some(w.span);
                        }
                    }
                }
                RetrySetting::NotifyDelayAfter(w) => {
                    if let Some(secs) = values::duration(&mut self.sink, file, w) {
                        policy.delay_notice_after = Some(secs);
                        notify = Some(w.span);
                    }
                }
            }
        }
        if let (Some(n), Some(notify_span)) = (policy.delay_notice_after, notify) {
            if n >= policy.give_up_after {
                let d = Diagnostic::error(
                    "tlspol::notify-after-give-up",
                    "the delay notice would come after the message bounces",
                )
                .at(file, notify_span, "notice time");
                let d = match give_up_span {
                    Some(g) => d.also(&loc(file, g), "bounce time"),
                    None => d,
                };
                self.sink.error(d.with_help(format!(
                    "`notify delay after` must be shorter than `give up after` ({})",
                    crate::syntax::value::format_duration(policy.give_up_after)
                )));
            }
        }
        self.retry = Some((policy, loc(file, span)));
    }

    fn trust_anchor(&mut self, file: &Arc<SourceFile>, path: &Node<String>) {
        let found = anchors::read(&mut self.sink, file, &path.node, path.span);
        for a in found {
            if !self.anchor_ders.insert(a.der.to_vec()) {
                self.sink.warn(
                    Diagnostic::warning(
                        "tlspol::duplicate-entry",
                        format!(
                            "`{}` repeats a trust anchor already in the policy",
                            path.node
                        ),
                    )
                    .at(file, path.span, "same certificate as an earlier anchor")
                    .with_help("remove the repeated `trust anchor` line"),
                );
                continue;
            }
            if self.anchors.len() >= MAX_TRUST_ANCHORS {
                self.sink.error(values::limit(
                    file,
                    path.span,
                    "trust anchors",
                    self.anchors.len() + 1,
                    "MAX_TRUST_ANCHORS",
                    MAX_TRUST_ANCHORS,
                ));
                return;
            }
            self.anchors.push(a);
        }
    }

    fn include(&mut self, file: &Arc<SourceFile>, written: &Node<String>) {
        let path = file.base_dir.join(&written.node);
        let io_error = |e: std::io::Error| {
            Diagnostic::error(
                "tlspol::io",
                format!("cannot read `{}`: {e}", path.display()),
            )
            .at(file, written.span, "this file")
            .with_help("paths are relative to the file that names them")
        };
        let canonical = match std::fs::canonicalize(&path) {
            Ok(c) => c,
            Err(e) => {
                self.sink.error(io_error(e));
                return;
            }
        };
        if let Some(i) = self.stack.iter().position(|(p, _)| *p == canonical) {
            let mut chain: Vec<String> = self.stack[i..]
                .iter()
                .map(|(_, n)| format!("`{n}`"))
                .collect();
            chain.push(format!("`{}`", path.display()));
            self.sink.error(
                Diagnostic::error("tlspol::include-cycle", "include cycle")
                    .at(
                        file,
                        written.span,
                        "this includes a file that is already being read",
                    )
                    .with_help(format!(
                        "{} — remove one of these includes",
                        chain.join(" includes ")
                    )),
            );
            return;
        }
        if let Some(first) = self.included.get(&canonical) {
            let d = duplicate(
                "tlspol::duplicate-include",
                format!("`{}` is included twice", path.display()),
                file,
                written.span,
                first,
                "include each file once",
            );
            self.sink.error(d);
            return;
        }
        if self.stack.len() >= MAX_INCLUDE_DEPTH {
            self.sink.error(
                Diagnostic::error(
                    "tlspol::include-depth",
                    format!("includes nest deeper than {MAX_INCLUDE_DEPTH} files"),
                )
                .at(file, written.span, "one include too many")
                .with_help("include the files from a shallower level"),
            );
            return;
        }
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                self.sink.error(io_error(e));
                return;
            }
        };
        let base = path.parent().map(PathBuf::from).unwrap_or_default();
        let name = path.display().to_string();
        let included = SourceFile::new(name.clone(), text, base);
        self.included
            .insert(canonical.clone(), loc(file, written.span));
        self.stack.push((canonical, name));
        self.file(&included);
        self.stack.pop();
    }

    fn finish(&mut self, top: &Arc<SourceFile>) -> Option<Policy> {
        let serial = match &self.serial {
            Some((s, _)) => *s,
            None => {
                self.sink.error(
                    Diagnostic::error("tlspol::missing-serial", "the policy has no serial number")
                        .with_help(format!(
                            "add `policy serial <number>` to `{}`; the relay refuses a policy whose serial is lower than the one it runs (T20)",
                            top.name
                        )),
                );
                0
            }
        };
        let defaults = self
            .defaults
            .as_ref()
            .map(|(s, _)| s.clone())
            .unwrap_or_default();
        for (p, ploc) in &self.partners {
            if let Some(d) = self
                .domain_index
                .get(&p.name)
                .and_then(|&i| self.domains.get(i))
            {
                let diag = Diagnostic::error(
                    "tlspol::domain-and-partner",
                    format!("`{}` is both a registered domain and a partner", p.name),
                )
                .at(&ploc.file, ploc.span, "declared as a partner here")
                .also(&d.loc, "registered here")
                .with_help("a partner is an external domain; a registered domain's mail is governed by its own block: remove one of the two");
                self.sink.errors.push(diag);
            }
        }
        if self.domains.len() > MAX_DOMAINS {
            self.sink.error(Diagnostic::error(
                "tlspol::limit-exceeded",
                format!(
                    "registered domains: {}, more than the limit `MAX_DOMAINS` ({MAX_DOMAINS})",
                    self.domains.len()
                ),
            ));
        }
        if self.partners.len() > MAX_PARTNERS {
            self.sink.error(Diagnostic::error(
                "tlspol::limit-exceeded",
                format!(
                    "partners: {}, more than the limit `MAX_PARTNERS` ({MAX_PARTNERS})",
                    self.partners.len()
                ),
            ));
        }
        let mut domains = Vec::with_capacity(self.domains.len());
        for e in std::mem::take(&mut self.domains) {
            let own = e.inbound.is_some() || e.outbound.is_some() || e.validation.is_some();
            let settings = own.then(|| {
                Box::new(Settings {
                    inbound: e.inbound.unwrap_or(defaults.inbound),
                    outbound: e.outbound.unwrap_or(defaults.outbound),
                    validation: e
                        .validation
                        .map(|v| *v)
                        .unwrap_or_else(|| defaults.validation.clone()),
                })
            });
            if let Some(def) = &e.deferred {
                let effective = settings.as_deref().unwrap_or(&defaults);
                self.deferred(&e.name, def, effective);
            }
            domains.push(Domain {
                name: e.name,
                settings,
                details: e.details,
            });
        }
        if !self.sink.errors.is_empty() {
            return None;
        }
        domains.sort_by(|a, b| a.name.cmp(&b.name));
        let mut partners: Vec<Partner> = std::mem::take(&mut self.partners)
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        partners.sort_by(|a, b| a.name.cmp(&b.name));
        Some(Policy {
            serial,
            defaults,
            domains,
            partners,
            retry: self.retry.take().map(|(r, _)| r).unwrap_or_default(),
            always_attempt_tls: self.always.is_some(),
            trust_anchors: std::mem::take(&mut self.anchors),
        })
    }

    /// Checks that need the effective settings of domain `name`.
    fn deferred(&mut self, name: &DomainName, def: &Deferred, s: &Settings) {
        let unverifiable = matches!(&s.validation, Validation::Strong { trusted_names, .. } if trusted_names.is_empty());
        if let Some(span) = def.static_ip {
            if unverifiable {
                self.sink.error(
                    Diagnostic::error(
                        "tlspol::static-ip-unverifiable",
                        format!("the static route of `{name}` is an IP address, which strong validation can never verify"),
                    )
                    .at(&def.file, span, "no host name to match the certificate against")
                    .with_help(format!(
                        "add `trusted names` with the name on the server's certificate, or route by host name, e.g. `deliver static mx.{name}` (T17)"
                    )),
                );
            }
        }
        if unverifiable && s.inbound == Enforcement::Required {
            for span in &def.route_ips {
                self.sink.error(
                    Diagnostic::error(
                        "tlspol::route-ip-unverifiable",
                        format!("an inbound route of `{name}` is an IP address, which strong validation can never verify"),
                    )
                    .at(&def.file, *span, "no host name to match the certificate against")
                    .with_help("inbound TLS is required: add `trusted names` with the name on the server's certificate, or route by host name (T14, T17)"),
                );
            }
        }
        if s.inbound == Enforcement::Opportunistic {
            for span in &def.validation_lines {
                self.sink.warn(
                    Diagnostic::warning(
                        "tlspol::unused-validation",
                        format!("this setting has no effect: inbound TLS to `{name}` is opportunistic"),
                    )
                    .at(&def.file, *span, "certificates are only checked where TLS is required")
                    .with_help("add `inbound tls required` to enforce TLS with this validation, or remove the line"),
                );
            }
        }
    }
}

fn enforcement(m: &Node<Mode>) -> Enforcement {
    match m.node {
        Mode::Opportunistic => Enforcement::Opportunistic,
        Mode::Required => Enforcement::Required,
    }
}
