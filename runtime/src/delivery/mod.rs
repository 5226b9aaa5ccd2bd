//! Sending side: routes, SMTP client, STARTTLS, certificate validation, TLS
//! connectivity test.
//!
//! # Layout
//! - [`route`]: the plan's route → ordered next hops (inbound routes T16,
//!   static route T17, DNS MX T18 with hickory-resolver).
//! - [`client`]: one SMTP client connection, generic over the stream
//!   (replies parsed by [`crate::smtp::reply`], body streamed by [`data`]).
//! - [`tls`]: rustls client configurations and the strong verifier
//!   (T13, T14); [`danger`]: the verifiers that skip certificate checks
//!   (relaxed T15, opportunistic T2).
//! - [`session`]: one attempt on one address: banner, EHLO, STARTTLS per
//!   the plan's TLS requirement, MAIL/RCPT/DATA, per-recipient outcomes.
//! - [`pool`]: idle connections kept for reuse with the same next hop and
//!   the same TLS/validation inputs (`RSET` before reuse).
//! - [`checktls`]: the TLS connectivity test (T8).
//!
//! Data path: queue → [`Deliverer::deliver`] (through
//! [`crate::transport::Transport`]) → route → for each hop and address,
//! a pooled connection (checked with `RSET`) or `session::open`, until one
//! reaches a mail transaction → report; a healthy connection goes back to
//! the pool.

pub mod checktls;
pub mod client;
pub mod danger;
pub mod data;
pub mod pool;
pub mod route;
pub mod session;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use policy::{TlsRequirement, Validation};
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

use crate::transport::{DeliveryJob, DeliveryReport, RecipientOutcome, Transport};
pub use pool::PoolSettings;
use pool::{Pool, PoolKey, Pooled};
use route::{Dns, Hop, RouteError};
use session::{AttemptError, Done, FailureKind, TlsMode};
use tls::CertCheck;

/// Which DNS servers MX routing asks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ResolverSettings {
    /// `/etc/resolv.conf`.
    #[default]
    System,
    /// A resolv.conf at another path.
    ResolvConf(std::path::PathBuf),
    /// These servers (UDP, then TCP), e.g. a test server on loopback.
    NameServers(Vec<SocketAddr>),
}

/// Time limits of one delivery attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect.
    pub connect: Duration,
    /// The banner, and each command's reply (RFC 5321 §4.5.3.2 suggests
    /// minutes; the whole reply must arrive within it).
    pub command: Duration,
    /// The TLS handshake.
    pub tls_handshake: Duration,
    /// Each write of message data, and the reply to the final `.`.
    pub data: Duration,
    /// DNS queries.
    pub dns: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(30),
            command: Duration::from_secs(300),
            tls_handshake: Duration::from_secs(60),
            data: Duration::from_secs(600),
            dns: Duration::from_secs(5),
        }
    }
}

/// Everything the delivering side needs from the machine configuration.
#[derive(Clone, Debug)]
pub struct DeliveryConfig {
    /// The name given in EHLO/HELO.
    pub helo_name: String,
    pub resolver: ResolverSettings,
    pub timeouts: Timeouts,
    /// Most next-hop hosts tried in one attempt.
    pub max_hosts: usize,
    /// Most addresses tried per host.
    pub max_addresses_per_host: usize,
    /// The port MX hosts are reached on (25; tests may change it).
    pub mx_port: u16,
    /// Extra roots trusted for strong validation besides webpki-roots
    /// (test PKIs).
    pub extra_roots_for_tests: Vec<CertificateDer<'static>>,
    /// Connection reuse ([`pool`]).
    pub pool: PoolSettings,
    /// This relay's names and listening addresses: a next hop that is
    /// one of them is a mail loop (permanent failure).
    pub myself: route::Myself,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            helo_name: "localhost".into(),
            resolver: ResolverSettings::System,
            timeouts: Timeouts::default(),
            max_hosts: 5,
            max_addresses_per_host: 3,
            mx_port: 25,
            extra_roots_for_tests: Vec::new(),
            pool: PoolSettings::default(),
            myself: route::Myself::default(),
        }
    }
}

/// Why a [`Deliverer`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("cannot read the DNS configuration {0}")]
    SystemResolver(String),
    #[error("cannot set up the DNS resolver: {0}")]
    Resolver(String),
    #[error("extra root certificate {0} is not usable: {1}")]
    Root(usize, String),
}

/// The real [`Transport`]: delivers over SMTP with STARTTLS as the plan
/// says.
#[derive(Clone)]
pub struct Deliverer {
    inner: Arc<Inner>,
}

struct Inner {
    config: DeliveryConfig,
    dns: Dns,
    /// webpki-roots plus the configured extra roots.
    base_roots: RootCertStore,
    /// The roots of the latest policy: (serial, anchors fingerprint, roots).
    roots_cache: Mutex<Option<(u64, u64, Arc<RootCertStore>)>>,
    pool: Arc<Pool>,
}

impl std::fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliverer")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// A resolver builder for the name servers of a resolv.conf file.
fn from_resolv_conf(
    path: &Path,
) -> Result<hickory_resolver::ResolverBuilder<TokioRuntimeProvider>, DeliveryError> {
    let data = std::fs::read(path)
        .map_err(|e| DeliveryError::SystemResolver(format!("`{}`: {e}", path.display())))?;
    let (config, _) = hickory_resolver::system_conf::parse_resolv_conf(data)
        .map_err(|e| DeliveryError::SystemResolver(format!("`{}`: {e}", path.display())))?;
    Ok(TokioResolver::builder_with_config(
        config,
        TokioRuntimeProvider::default(),
    ))
}

/// Builds the resolver the settings describe.
pub fn build_resolver(
    settings: &ResolverSettings,
    dns_timeout: Duration,
) -> Result<TokioResolver, DeliveryError> {
    let mut builder = match settings {
        ResolverSettings::System => from_resolv_conf(Path::new("/etc/resolv.conf"))?,
        ResolverSettings::ResolvConf(path) => from_resolv_conf(path)?,
        ResolverSettings::NameServers(servers) => {
            let mut ns = Vec::new();
            for s in servers {
                let mut udp = ConnectionConfig::udp();
                udp.port = s.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = s.port();
                ns.push(NameServerConfig::new(s.ip(), true, vec![udp, tcp]));
            }
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(ns),
                TokioRuntimeProvider::default(),
            )
        }
    };
    let opts: &mut ResolverOpts = builder.options_mut();
    opts.timeout = dns_timeout;
    opts.attempts = 1;
    opts.ndots = 0;
    builder
        .build()
        .map_err(|e| DeliveryError::Resolver(e.to_string()))
}

impl Deliverer {
    /// A deliverer with the configured resolver. When the system's DNS
    /// configuration cannot be read (an appliance without a name server,
    /// a container without `/etc/resolv.conf`) it still starts: static
    /// and IP routes work, lookups fail temporarily with the reason.
    pub fn new(config: DeliveryConfig) -> Result<Deliverer, DeliveryError> {
        let dns = match build_resolver(&config.resolver, config.timeouts.dns) {
            Ok(r) => Dns::Resolver(Box::new(r)),
            Err(DeliveryError::SystemResolver(why)) => {
                tracing::warn!(target: "delivery", error = %why, "no DNS resolver: only static routes and routes by IP address can be delivered");
                Dns::Unavailable(why)
            }
            Err(e) => return Err(e),
        };
        let mut base_roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        for (i, der) in config.extra_roots_for_tests.iter().enumerate() {
            base_roots
                .add(der.clone())
                .map_err(|e| DeliveryError::Root(i, e.to_string()))?;
        }
        let pool = Pool::new(
            config.pool.clone(),
            config.timeouts.command.min(Duration::from_secs(5)),
        );
        Ok(Deliverer {
            inner: Arc::new(Inner {
                config,
                dns,
                base_roots,
                roots_cache: Mutex::new(None),
                pool,
            }),
        })
    }

    pub fn config(&self) -> &DeliveryConfig {
        &self.inner.config
    }

    /// DNS for routing.
    pub fn dns(&self) -> &Dns {
        &self.inner.dns
    }

    /// The roots for one job: the base roots plus the policy's trust
    /// anchors (an unusable anchor is logged and skipped).
    pub fn roots_for(&self, anchors: &[policy::TrustAnchor]) -> Arc<RootCertStore> {
        let mut roots = self.inner.base_roots.clone();
        for a in anchors {
            let der = CertificateDer::from(a.der.as_slice().to_vec());
            if let Err(e) = roots.add(der) {
                tracing::warn!(target: "delivery", anchor = %a.label, error = %e, "unusable trust anchor skipped");
            }
        }
        Arc::new(roots)
    }

    /// [`Self::roots_for`], built once per policy (serial and anchor set).
    fn roots_cached(&self, serial: u64, anchors: &[policy::TrustAnchor]) -> Arc<RootCertStore> {
        let fp = pool::anchors_fingerprint(anchors);
        let mut cache = self
            .inner
            .roots_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some((s, f, roots)) = cache.as_ref() {
            if *s == serial && *f == fp {
                return roots.clone();
            }
        }
        let roots = self.roots_for(anchors);
        *cache = Some((serial, fp, roots.clone()));
        roots
    }

    /// Idle connections held for reuse now.
    pub fn idle_connections(&self) -> usize {
        self.inner.pool.idle_count()
    }

    /// A mail transaction on `addr`: on a pooled connection with exactly
    /// this key when one answers `RSET`, else on a new one. A healthy
    /// connection goes back to the pool afterwards.
    async fn attempt_pooled(
        &self,
        job: &DeliveryJob<'_>,
        hop: &Hop,
        addr: SocketAddr,
        mode: &TlsMode,
        anchors_fp: u64,
    ) -> Result<Done, AttemptError> {
        let cfg = &self.inner.config;
        let label = format!("{} [{}]", hop.label(), addr.ip());
        let key = PoolKey {
            addr,
            host: hop.label(),
            mode: mode.clone(),
            policy_serial: job.policy_serial,
            anchors: anchors_fp,
        };
        let rset_limit = cfg.timeouts.command.min(Duration::from_secs(30));
        let mut found = None;
        while let Some(mut p) = self.inner.pool.take(&key) {
            if p.conn.rset(rset_limit).await {
                found = Some(p);
                break;
            }
            tracing::debug!(target: "delivery", message_id = job.message_id, next_hop = %label, "pooled connection did not answer RSET; dropped");
            p.conn.quit(Duration::from_millis(200)).await;
        }
        let (conn, transactions) = match found {
            Some(p) => (p.conn, p.transactions),
            None => {
                let roots = self.roots_cached(job.policy_serial, job.trust_anchors);
                (
                    session::open(cfg, hop, addr, mode, roots, None, None).await?,
                    0,
                )
            }
        };
        let (done, healthy) = session::run_transaction(conn, cfg, job, &label).await;
        if let Some(conn) = healthy {
            let pooled = Pooled {
                conn,
                transactions: transactions + 1,
            };
            if let Some(p) = self.inner.pool.put(key, pooled) {
                p.conn.quit(cfg.timeouts.command).await;
            }
        }
        Ok(done)
    }

    /// One delivery attempt (what [`Transport::deliver`] runs).
    pub async fn deliver_job(&self, job: DeliveryJob<'_>) -> DeliveryReport {
        let report = self.run(&job).await;
        log_attempt(&job, &report);
        report
    }

    async fn run(&self, job: &DeliveryJob<'_>) -> DeliveryReport {
        let cfg = &self.inner.config;
        let mut report = DeliveryReport::default();
        let hops = match route::hops(
            &self.inner.dns,
            &job.plan.route,
            job.recipient_domain,
            cfg.mx_port,
        )
        .await
        {
            Ok(h) => h,
            Err(e) => {
                report.outcomes = all(job, route_outcome(&e));
                return report;
            }
        };
        let anchors_fp = pool::anchors_fingerprint(job.trust_anchors);
        // What each recipient of the job became: set for good by a
        // delivery or a permanent reply; a temporary reply is kept (and
        // the recipient tried again on the next host) until another host
        // gives a better answer.
        let mut outcomes: Vec<Option<RecipientOutcome>> = vec![None; job.recipients.len()];
        // The recipients still to try, with their index in the job.
        let mut pending: Vec<(usize, String)> =
            job.recipients.iter().cloned().enumerate().collect();
        let mut last: Option<(String, bool)> = None;
        let mut all_permanent = true;
        'hops: for hop in hops.iter().take(cfg.max_hosts.max(1)) {
            let addrs = match route::addresses(&self.inner.dns, hop, cfg.max_addresses_per_host)
                .await
                .and_then(|a| cfg.myself.check(hop, a, job.recipient_domain))
            {
                Ok(a) => a,
                Err(e) => {
                    all_permanent &= e.permanent;
                    last = Some((e.reason, e.permanent));
                    continue;
                }
            };
            all_permanent = false;
            for addr in addrs {
                let recipients: Vec<String> = pending.iter().map(|(_, r)| r.clone()).collect();
                let sub = DeliveryJob {
                    recipients: &recipients,
                    ..*job
                };
                let mode = tls_mode(&sub, hop);
                let label = format!("{} [{}]", hop.label(), addr.ip());
                report.next_hop = Some(label.clone());
                let result = self
                    .attempt_pooled(&sub, hop, addr, &mode, anchors_fp)
                    .await;
                let result = match result {
                    Err(AttemptError {
                        kind: FailureKind::Tls,
                        reason,
                        ..
                    }) if matches!(mode, TlsMode::IfOffered) => {
                        // Opportunistic TLS failed: once more on a new
                        // connection, in clear (docs/delivery.md).
                        tracing::info!(target: "delivery", message_id = job.message_id, next_hop = %label, %reason, "opportunistic TLS failed; retrying in clear");
                        self.attempt_pooled(&sub, hop, addr, &TlsMode::Never, anchors_fp)
                            .await
                    }
                    other => other,
                };
                match result {
                    Ok(done) => {
                        report.tls_protocol = done.tls.as_ref().map(|t| t.protocol.clone());
                        report.tls_cipher = done.tls.as_ref().map(|t| t.cipher.clone());
                        report.certificate = done.tls.map(|t| t.verdict);
                        let mut still = Vec::new();
                        for ((index, rcpt), (_, outcome)) in pending.into_iter().zip(done.outcomes)
                        {
                            if matches!(outcome, RecipientOutcome::Temporary { .. }) {
                                still.push((index, rcpt));
                            }
                            outcomes[index] = Some(outcome);
                        }
                        pending = still;
                        if pending.is_empty() {
                            break 'hops;
                        }
                        // A temporary reply (4xx at MAIL, RCPT or DATA):
                        // the next host may take these recipients now
                        // (RFC 5321 §5.1: try the other MX hosts).
                        tracing::info!(target: "delivery", message_id = job.message_id, next_hop = %label, recipients = pending.len(), "temporary failure; trying the next host for the remaining recipients");
                    }
                    Err(e) => {
                        if e.certificate.is_some() {
                            report.certificate = e.certificate.clone();
                        }
                        last = Some((e.reason, false));
                    }
                }
            }
        }
        let fallback = match last {
            Some((reason, permanent)) if permanent && all_permanent => {
                RecipientOutcome::Permanent { reason }
            }
            Some((reason, _)) => RecipientOutcome::Temporary { reason },
            None => RecipientOutcome::Temporary {
                reason: format!("4.4.4 no next hop for {}", job.recipient_domain),
            },
        };
        report.outcomes = job
            .recipients
            .iter()
            .zip(outcomes)
            .map(|(r, o)| (r.clone(), o.unwrap_or_else(|| fallback.clone())))
            .collect();
        report
    }
}

/// The TLS mode for one hop under the job's plan.
fn tls_mode(job: &DeliveryJob<'_>, hop: &Hop) -> TlsMode {
    match job.plan.tls {
        TlsRequirement::None => TlsMode::Never,
        TlsRequirement::Opportunistic => TlsMode::IfOffered,
        TlsRequirement::Required => TlsMode::Required(cert_check(job.plan.validation, hop)),
    }
}

/// The certificate check for a hop: strong against the hop's name (if it
/// has one) and the trusted names, or relaxed. A required plan without a
/// validation (which the decision function never produces) is strong.
pub fn cert_check(validation: Option<&Validation>, hop: &Hop) -> CertCheck {
    match validation {
        Some(Validation::Relaxed) => CertCheck::Relaxed,
        Some(Validation::Strong {
            trusted_names,
            match_common_name,
        }) => {
            let mut names: Vec<String> = hop.name().map(str::to_string).into_iter().collect();
            names.extend(trusted_names.iter().map(|n| n.as_str().to_string()));
            CertCheck::Strong {
                names,
                match_cn: *match_common_name,
            }
        }
        None => CertCheck::Strong {
            names: hop.name().map(str::to_string).into_iter().collect(),
            match_cn: false,
        },
    }
}

fn route_outcome(e: &RouteError) -> RecipientOutcome {
    if e.permanent {
        RecipientOutcome::Permanent {
            reason: e.reason.clone(),
        }
    } else {
        RecipientOutcome::Temporary {
            reason: e.reason.clone(),
        }
    }
}

fn all(job: &DeliveryJob<'_>, outcome: RecipientOutcome) -> Vec<(String, RecipientOutcome)> {
    job.recipients
        .iter()
        .map(|r| (r.clone(), outcome.clone()))
        .collect()
}

/// The one structured log line of a delivery attempt.
fn log_attempt(job: &DeliveryJob<'_>, report: &DeliveryReport) {
    let delivered = report
        .outcomes
        .iter()
        .filter(|(_, o)| *o == RecipientOutcome::Delivered)
        .count();
    let first_failure = report.outcomes.iter().find_map(|(_, o)| match o {
        RecipientOutcome::Delivered => None,
        RecipientOutcome::Temporary { reason } => Some(format!("temporary: {reason}")),
        RecipientOutcome::Permanent { reason } => Some(format!("permanent: {reason}")),
    });
    let result = match first_failure {
        None => format!("delivered {delivered}/{}", report.outcomes.len()),
        Some(f) => format!("delivered {delivered}/{}; {f}", report.outcomes.len()),
    };
    tracing::info!(
        target: "delivery",
        message_id = job.message_id,
        sender = job.mail_from,
        recipient_domain = job.recipient_domain,
        rule = %job.rule,
        policy_serial = job.policy_serial,
        tls_requirement = %job.plan.tls,
        tls_protocol = report.tls_protocol.as_deref().unwrap_or("-"),
        tls_cipher = report.tls_cipher.as_deref().unwrap_or("-"),
        certificate = report.certificate.as_deref().unwrap_or("-"),
        next_hop = report.next_hop.as_deref().unwrap_or("-"),
        result = %result,
        "delivery attempt"
    );
}

impl Transport for Deliverer {
    fn deliver<'a>(
        &'a self,
        job: DeliveryJob<'a>,
    ) -> Pin<Box<dyn Future<Output = DeliveryReport> + Send + 'a>> {
        Box::pin(self.deliver_job(job))
    }
}
