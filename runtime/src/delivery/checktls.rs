//! The TLS connectivity test (T8): `tlsgate check-tls DOMAIN`.
//!
//! It connects to a registered domain's inbound server(s) the way delivery
//! would — the route the policy's decision gives for `postmaster@DOMAIN`,
//! the same SMTP client code ([`super::session::open`]) — but always asks
//! for TLS validated under the domain's own settings, even while inbound
//! enforcement is still off: the point is to know whether switching it on
//! would work. Every next hop (each address of each host, up to the
//! configured bound) is tested; the verdict is `pass` only when all of
//! them pass, because delivery may use any of them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use policy::{CompiledPolicy, MessageContext, TlsRequirement, Validation};
use rustls::pki_types::CertificateDer;
use serde::Serialize;

use super::route;
use super::session::{self, Established, Step, TlsMode};
use super::tls::{self, CertCheck, ChainRecorder};
use super::{cert_check, Deliverer, DeliveryConfig, ResolverSettings};

/// Output format of the CLI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Human,
    Json,
}

/// `tlsgate check-tls`: test TLS to a registered domain's inbound servers.
#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// The registered domain to test.
    #[arg(value_name = "DOMAIN")]
    pub domain: String,
    /// A signed policy blob (with `--pubkey`).
    #[arg(
        long,
        value_name = "BLOB",
        requires = "pubkey",
        conflicts_with = "config"
    )]
    pub policy: Option<PathBuf>,
    /// The trusted signing key: `tlsgate-ed25519 <hex>` or a file holding it.
    #[arg(long, value_name = "PUB")]
    pub pubkey: Option<String>,
    /// The relay's configuration file (policy path, trusted keys, DNS).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "human")]
    pub format: Format,
    /// DNS server to ask instead of the configured one (tests).
    #[arg(long, value_name = "IP:PORT")]
    pub resolver: Option<SocketAddr>,
    /// Extra trusted root certificates, PEM (test PKIs).
    #[arg(long, value_name = "PEM")]
    pub ca: Vec<PathBuf>,
    /// Port MX hosts are reached on.
    #[arg(long, value_name = "PORT", default_value_t = 25)]
    pub mx_port: u16,
    /// Seconds to wait for each step.
    #[arg(long, value_name = "SECS", default_value_t = 15)]
    pub timeout: u64,
}

/// One certificate of the presented chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    pub not_before: String,
    pub not_after: String,
    pub san: Vec<String>,
}

/// The test of one next hop (one address).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HostReport {
    pub next_hop: String,
    pub steps: Vec<Step>,
    pub tls_protocol: Option<String>,
    pub tls_cipher: Option<String>,
    pub chain: Vec<CertInfo>,
    /// `strong-ok (mx1.example.com)`, `relaxed`, or the failure.
    pub certificate: Option<String>,
    pub pass: bool,
    pub reason: Option<String>,
}

/// The whole test.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    pub domain: String,
    /// The rule the decision function applied to `postmaster@DOMAIN`.
    pub rule: String,
    /// `required` when inbound enforcement is on now.
    pub tls_requirement: String,
    /// The validation tested (`strong`, `strong (trusted names: …)`, `relaxed`).
    pub validation: String,
    pub hosts: Vec<HostReport>,
    pub pass: bool,
    /// Why the test failed before any host was tried, if it did.
    pub error: Option<String>,
}

fn describe_validation(v: &Validation) -> String {
    match v {
        Validation::Relaxed => "relaxed".into(),
        Validation::Strong {
            trusted_names,
            match_common_name,
        } => {
            let mut s = String::from("strong");
            if !trusted_names.is_empty() {
                let names: Vec<&str> = trusted_names.iter().map(|n| n.as_str()).collect();
                s.push_str(&format!(" (trusted names: {})", names.join(", ")));
            }
            if *match_common_name {
                s.push_str(" (CN matched too)");
            }
            s
        }
    }
}

fn cert_info(der: &CertificateDer<'_>) -> Option<CertInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let (san, _) = tls::cert_names(der);
    Some(CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        not_before: cert.validity().not_before.to_string(),
        not_after: cert.validity().not_after.to_string(),
        san,
    })
}

/// Runs the test for `domain` under `policy`, connecting as `deliverer`
/// would.
pub async fn check_domain(
    deliverer: &Deliverer,
    policy: &CompiledPolicy,
    domain: &str,
) -> CheckReport {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let mut report = CheckReport {
        domain: domain.clone(),
        rule: String::new(),
        tls_requirement: String::new(),
        validation: String::new(),
        hosts: Vec::new(),
        pass: false,
        error: None,
    };
    let recipient = format!("postmaster@{domain}");
    let decision = match policy.decide(&MessageContext {
        sender: "",
        recipient: &recipient,
        client_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        received_over_tls: true,
    }) {
        Ok(d) => d,
        Err(e) => {
            report.error = Some(e.to_string());
            return report;
        }
    };
    report.rule = decision.rule.to_string();
    let (Some(plan), Some(matched)) = (decision.plan, decision.matched) else {
        report.error = Some(format!(
            "`{domain}` is not a registered domain of the policy"
        ));
        return report;
    };
    report.tls_requirement = plan.tls.to_string();
    let Some(entry) = policy.policy().domains.iter().find(|d| d.name == *matched) else {
        report.error = Some(format!(
            "`{domain}` is not a registered domain of the policy"
        ));
        return report;
    };
    // The domain's own validation, whether or not enforcement is on yet.
    let validation = match plan.validation {
        Some(v) if plan.tls == TlsRequirement::Required => v,
        _ => &policy.policy().settings_of(entry).validation,
    };
    report.validation = describe_validation(validation);
    let cfg: &DeliveryConfig = deliverer.config();
    let hops = match route::hops(deliverer.dns(), &plan.route, &domain, cfg.mx_port).await {
        Ok(h) => h,
        Err(e) => {
            report.error = Some(e.reason);
            return report;
        }
    };
    let roots = deliverer.roots_for(&policy.policy().trust_anchors);
    for hop in hops.iter().take(cfg.max_hosts.max(1)) {
        let addrs = match route::addresses(deliverer.dns(), hop, cfg.max_addresses_per_host).await {
            Ok(a) => a,
            Err(e) => {
                report.hosts.push(HostReport {
                    next_hop: hop.label(),
                    steps: vec![Step {
                        step: "resolve",
                        ok: false,
                        detail: e.reason.clone(),
                    }],
                    tls_protocol: None,
                    tls_cipher: None,
                    chain: Vec::new(),
                    certificate: None,
                    pass: false,
                    reason: Some(e.reason),
                });
                continue;
            }
        };
        for addr in addrs {
            let check = cert_check(Some(validation), hop);
            let mode = TlsMode::Required(check.clone());
            let recorder = ChainRecorder::default();
            let mut steps = Vec::new();
            let result = session::open(
                cfg,
                hop,
                addr,
                &mode,
                roots.clone(),
                Some(recorder.clone()),
                Some(&mut steps),
            )
            .await;
            let chain: Vec<CertInfo> = recorder.chain().iter().filter_map(cert_info).collect();
            let mut host = HostReport {
                next_hop: format!("{} [{}]", hop.label(), addr.ip()),
                steps,
                tls_protocol: None,
                tls_cipher: None,
                chain,
                certificate: None,
                pass: false,
                reason: None,
            };
            match result {
                Ok(Established::Tls(conn, _, info)) => {
                    host.tls_protocol = Some(info.protocol);
                    host.tls_cipher = Some(info.cipher);
                    host.certificate = Some(info.verdict);
                    host.pass = true;
                    conn.quit(cfg.timeouts.command).await;
                }
                Ok(Established::Clear(conn, _)) => {
                    // Not reachable with a required mode; kept total.
                    host.reason = Some("the connection stayed in clear text".into());
                    conn.quit(cfg.timeouts.command).await;
                }
                Err(e) => {
                    host.certificate = e.certificate;
                    host.reason = Some(e.reason);
                }
            }
            if let CertCheck::Strong { names, .. } = &check {
                if host.pass {
                    host.steps.push(Step {
                        step: "name-match",
                        ok: true,
                        detail: host.certificate.clone().unwrap_or_default(),
                    });
                } else if !host.chain.is_empty() {
                    host.steps.push(Step {
                        step: "name-match",
                        ok: false,
                        detail: format!("wanted {}", names.join(" or ")),
                    });
                }
            }
            if let Some(leaf) = host.chain.first() {
                let detail = format!("{} to {}", leaf.not_before, leaf.not_after);
                let failed_dates = host
                    .reason
                    .as_deref()
                    .is_some_and(|r| r.contains("expired") || r.contains("not valid yet"));
                host.steps.push(Step {
                    step: "validity-dates",
                    ok: !failed_dates,
                    detail,
                });
            }
            report.hosts.push(host);
        }
    }
    report.pass = !report.hosts.is_empty() && report.hosts.iter().all(|h| h.pass);
    if report.hosts.is_empty() {
        report.error = Some("no next hop to test".into());
    }
    report
}

/// The report as text for people.
pub fn render_human(r: &CheckReport) -> String {
    let mut s = format!(
        "TLS connectivity test for {}\n  rule: {}  tls now: {}  validation: {}\n",
        r.domain, r.rule, r.tls_requirement, r.validation
    );
    if let Some(e) = &r.error {
        s.push_str(&format!("  error: {e}\n"));
    }
    for h in &r.hosts {
        s.push_str(&format!("\n  next hop {}\n", h.next_hop));
        for st in &h.steps {
            let mark = if st.ok { "ok  " } else { "FAIL" };
            s.push_str(&format!("    [{mark}] {:<16} {}\n", st.step, st.detail));
        }
        if let (Some(p), Some(c)) = (&h.tls_protocol, &h.tls_cipher) {
            s.push_str(&format!("    protocol {p}, cipher {c}\n"));
        }
        for (i, c) in h.chain.iter().enumerate() {
            s.push_str(&format!(
                "    cert {i}: subject {} / issuer {} / valid {} to {} / SAN [{}]\n",
                c.subject,
                c.issuer,
                c.not_before,
                c.not_after,
                c.san.join(", ")
            ));
        }
        if let Some(c) = &h.certificate {
            s.push_str(&format!("    certificate: {c}\n"));
        }
        if let Some(reason) = &h.reason {
            s.push_str(&format!("    reason: {reason}\n"));
        }
        s.push_str(&format!(
            "    result: {}\n",
            if h.pass { "pass" } else { "fail" }
        ));
    }
    s.push_str(&format!(
        "\nverdict: {}\n",
        if r.pass { "PASS" } else { "FAIL" }
    ));
    s
}

/// Reads the PEM certificates of `path`.
fn read_pem_certs(path: &PathBuf) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let mut reader = std::io::BufReader::new(bytes.as_slice());
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut reader).collect();
    let certs = certs.map_err(|e| format!("`{}` is not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("`{}` holds no certificate", path.display()));
    }
    Ok(certs)
}

/// Loads the policy and builds the deliverer the arguments describe.
fn setup(args: &Args) -> Result<(CompiledPolicy, Deliverer), String> {
    let (blob_path, key_entries, mut config) = match (&args.policy, &args.config) {
        (Some(p), _) => {
            let key = args
                .pubkey
                .clone()
                .ok_or_else(|| "`--policy` needs `--pubkey`".to_string())?;
            (p.clone(), vec![key], DeliveryConfig::default())
        }
        (None, Some(c)) => {
            let cfg = crate::config::Config::load(c).map_err(|e| e.to_string())?;
            let mut d = DeliveryConfig {
                helo_name: cfg.hostname.clone(),
                ..DeliveryConfig::default()
            };
            if !cfg.dns.name_servers.is_empty() {
                d.resolver = ResolverSettings::NameServers(cfg.dns.name_servers.clone());
            }
            (cfg.policy.clone(), cfg.trusted_keys.clone(), d)
        }
        (None, None) => return Err("give `--policy BLOB --pubkey PUB` or `--config FILE`".into()),
    };
    let keys = crate::policy_store::parse_trusted_keys(&key_entries).map_err(|e| e.to_string())?;
    let bytes = std::fs::read(&blob_path)
        .map_err(|e| format!("cannot read `{}`: {e}", blob_path.display()))?;
    let (_, policy) = policy::blob::verify_and_decode(&bytes, &keys)
        .map_err(|e| format!("policy `{}` refused: {e}", blob_path.display()))?;
    if let Some(r) = args.resolver {
        config.resolver = ResolverSettings::NameServers(vec![r]);
    }
    for p in &args.ca {
        config.extra_roots_for_tests.extend(read_pem_certs(p)?);
    }
    config.mx_port = args.mx_port;
    let t = Duration::from_secs(args.timeout.max(1));
    config.timeouts.connect = t;
    config.timeouts.command = t;
    config.timeouts.tls_handshake = t;
    config.timeouts.dns = t;
    let deliverer = Deliverer::new(config).map_err(|e| e.to_string())?;
    Ok((CompiledPolicy::new(policy), deliverer))
}

/// `tlsgate check-tls`: exit 0 on pass, 1 on fail, 2 when the test could
/// not be set up.
pub async fn cli(args: Args) -> ExitCode {
    let (policy, deliverer) = match setup(&args) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let report = check_domain(&deliverer, &policy, &args.domain).await;
    match args.format {
        Format::Human => print!("{}", render_human(&report)),
        Format::Json => match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("error: cannot write the report: {e}");
                return ExitCode::from(2);
            }
        },
    }
    if report.pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
