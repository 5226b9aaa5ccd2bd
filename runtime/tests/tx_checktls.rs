#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The TLS connectivity test (T8) end to end: a signed policy blob, a DNS
//! server, real next hops with and without valid TLS, through the CLI
//! function and the library function.

mod tx_support;

use std::net::Ipv4Addr;
use std::process::ExitCode;

use policy::blob::{sign, SigningKey};
use policy::CompiledPolicy;
use tlsgate::delivery::checktls::{self, Args, Format};
use tx_support::pki::{self, Ca};
use tx_support::smtp::{self, Behaviour};
use tx_support::*;

struct Files {
    _dir: tempfile::TempDir,
    blob: std::path::PathBuf,
    pubkey: String,
    ca: std::path::PathBuf,
}

fn write_files(p: &policy::Policy, ca: &Ca) -> Files {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().unwrap()).unwrap();
    let blob = dir.path().join("policy.blob");
    std::fs::write(&blob, sign(p, 1_700_000_000, &key).unwrap()).unwrap();
    let pubfile = dir.path().join("policy.pub");
    std::fs::write(&pubfile, key.public_key().to_text()).unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    Files {
        blob,
        pubkey: pubfile.to_string_lossy().into_owned(),
        ca: ca_path,
        _dir: dir,
    }
}

fn args(f: &Files, domain: &str, dns: std::net::SocketAddr, format: Format) -> Args {
    Args {
        domain: domain.into(),
        policy: Some(f.blob.clone()),
        pubkey: Some(f.pubkey.clone()),
        config: None,
        format,
        resolver: Some(dns),
        ca: vec![f.ca.clone()],
        mx_port: 25,
        timeout: 5,
    }
}

#[tokio::test]
async fn t8_check_tls_reports_steps_and_passes_a_good_server() {
    // rule T8: the domain is not enforced yet; the test applies its
    // (strong) settings anyway and reports every step.
    let ca = Ca::root("tx root");
    let inter = ca.intermediate("tx intermediate");
    let good = smtp::start(
        "127.0.0.1:0",
        Behaviour {
            tls: Some(inter.leaf_for(&["mx1.example.test"])),
            ..Behaviour::default()
        },
    )
    .await;
    let (dns_addr, zone) = tx_support::dns::start().await;
    zone.a("mx1.example.test", Ipv4Addr::LOCALHOST);
    let p = policy(
        vec![domain(
            "example.test",
            None,
            inbound_routes(&[(10, target("mx1.example.test", good.addr.port()))]),
        )],
        vec![],
    );

    // Library function: the report content.
    let mut c = config(Some(dns_addr), &[&ca.der]);
    c.mx_port = 25;
    let d = deliverer(c);
    let report = checktls::check_domain(&d, &CompiledPolicy::new(p.clone()), "example.test").await;
    assert!(report.pass, "{report:#?}");
    assert_eq!(report.validation, "strong");
    let host = &report.hosts[0];
    let steps: Vec<&str> = host.steps.iter().map(|s| s.step).collect();
    for want in [
        "connect",
        "banner",
        "ehlo",
        "starttls-offered",
        "starttls",
        "handshake",
        "ehlo-tls",
        "name-match",
        "validity-dates",
    ] {
        assert!(steps.contains(&want), "missing step {want}: {steps:?}");
    }
    assert!(host.steps.iter().all(|s| s.ok), "{host:#?}");
    assert!(host.tls_protocol.is_some() && host.tls_cipher.is_some());
    assert_eq!(host.chain.len(), 2, "leaf and intermediate");
    assert!(
        host.chain[0].issuer.contains("tx intermediate"),
        "{:?}",
        host.chain[0]
    );
    assert!(host.chain[0].san.contains(&"mx1.example.test".to_string()));
    assert!(!good.seen_command("MAIL"), "the test sends no mail");
    let text = checktls::render_human(&report);
    assert!(text.contains("verdict: PASS"), "{text}");

    // CLI function: exit code 0 on pass.
    let f = write_files(&p, &ca);
    let code = checktls::cli(args(&f, "example.test", dns_addr, Format::Json)).await;
    assert_eq!(code, ExitCode::SUCCESS);
}

#[tokio::test]
async fn t8_check_tls_fails_servers_without_tls_or_with_bad_certificates() {
    // rule T8: fail verdict, reasons per host, exit code 1
    let ca = Ca::root("tx root");
    let plain = smtp::start("127.0.0.1:0", Behaviour::default()).await;
    let wrong = smtp::start(
        "127.0.0.1:0",
        Behaviour {
            tls: Some(ca.leaf_for(&["someone-else.test"])),
            ..Behaviour::default()
        },
    )
    .await;
    let selfsigned = smtp::start(
        "127.0.0.1:0",
        Behaviour {
            tls: Some(pki::self_signed(&["mx3.example.test"])),
            ..Behaviour::default()
        },
    )
    .await;
    let (dns_addr, zone) = tx_support::dns::start().await;
    for n in ["mx1.example.test", "mx2.example.test", "mx3.example.test"] {
        zone.a(n, Ipv4Addr::LOCALHOST);
    }
    let p = policy(
        vec![domain(
            "example.test",
            Some(required(strong(&[], false))),
            inbound_routes(&[
                (10, target("mx1.example.test", plain.addr.port())),
                (20, target("mx2.example.test", wrong.addr.port())),
                (30, target("mx3.example.test", selfsigned.addr.port())),
            ]),
        )],
        vec![],
    );
    let d = deliverer(config(Some(dns_addr), &[&ca.der]));
    let report = checktls::check_domain(&d, &CompiledPolicy::new(p.clone()), "example.test").await;
    assert!(!report.pass);
    assert_eq!(report.tls_requirement, "required");
    assert_eq!(report.hosts.len(), 3, "{report:#?}");
    assert!(report.hosts.iter().all(|h| !h.pass));
    let r0 = report.hosts[0].reason.clone().unwrap();
    assert!(
        r0.contains("TLS required but not offered by mx1.example.test"),
        "{r0}"
    );
    let r1 = report.hosts[1].reason.clone().unwrap();
    assert!(r1.contains("name mismatch"), "{r1}");
    assert!(
        report.hosts[1]
            .steps
            .iter()
            .any(|s| s.step == "name-match" && !s.ok),
        "{:#?}",
        report.hosts[1]
    );
    assert_eq!(
        report.hosts[1].chain.len(),
        1,
        "the chain is reported even on failure"
    );
    let r2 = report.hosts[2].reason.clone().unwrap();
    assert!(r2.contains("unknown issuer"), "{r2}");

    let f = write_files(&p, &ca);
    let code = checktls::cli(args(&f, "example.test", dns_addr, Format::Human)).await;
    assert_eq!(code, ExitCode::from(1));
    // Not a registered domain: fail, not a crash.
    let code = checktls::cli(args(&f, "unknown.test", dns_addr, Format::Human)).await;
    assert_eq!(code, ExitCode::from(1));
    // A wrong key: the policy is refused, exit 2.
    let mut a = args(&f, "example.test", dns_addr, Format::Human);
    a.pubkey = Some(format!("tlsgate-ed25519 {}", "00".repeat(32)));
    assert_eq!(checktls::cli(a).await, ExitCode::from(2));
}
