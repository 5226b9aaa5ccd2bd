//! `tlspolc explain`: the decision function on the command line. It calls
//! exactly what the relay calls ([`CompiledPolicy::decide`] and
//! [`CompiledPolicy::client`]) and prints the answer.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use policy::blob;
use policy::{CompiledPolicy, Decision, MessageContext, Policy, RoutePlan, Rule, Validation};
use serde_json::json;

use super::keys::read_public_keys;
use super::{report, Failure, Format, Outcome};

pub struct Query<'a> {
    pub input: &'a Path,
    pub from: &'a str,
    pub to: &'a str,
    pub client_ip: IpAddr,
    pub received_over_tls: bool,
    pub format: Format,
    pub pubkeys: &'a [PathBuf],
}

/// Where the policy came from, said in the output.
enum Provenance {
    Source,
    VerifiedBlob(blob::Header),
    UnverifiedBlob(blob::Header),
}

fn load(input: &Path, pubkeys: &[PathBuf]) -> Result<(Policy, Provenance), Failure> {
    let bytes = std::fs::read(input)
        .map_err(|e| Failure::new(format!("cannot read `{}`: {e}", input.display())))?;
    if bytes.starts_with(&blob::MAGIC) {
        let refused =
            |e: blob::BlobError| Failure::new(format!("`{}` refused: {e}", input.display()));
        if pubkeys.is_empty() {
            let (h, p) = blob::danger::decode_unverified(&bytes).map_err(refused)?;
            Ok((p, Provenance::UnverifiedBlob(h)))
        } else {
            let trusted = read_public_keys(pubkeys)?;
            let (h, p) = blob::verify_and_decode(&bytes, &trusted).map_err(refused)?;
            Ok((p, Provenance::VerifiedBlob(h)))
        }
    } else {
        match tlspolc::compile_file(input) {
            Ok(c) => Ok((c.policy, Provenance::Source)),
            Err(f) => {
                report::eprint_all(&f.errors, &f.warnings);
                Err(Failure::new(format!(
                    "`{}` has {}",
                    input.display(),
                    report::count(f.errors.len(), "error")
                )))
            }
        }
    }
}

/// What a rule means, in one line.
fn rule_text(rule: Rule) -> &'static str {
    match rule {
        Rule::T1 => "no enforcement anywhere: opportunistic TLS",
        Rule::T2 => "mirror rule: received over TLS, so STARTTLS is attempted, clear text if not offered",
        Rule::T3 => "mirror rule: received in clear, so delivered in clear without trying STARTTLS",
        Rule::AlwaysAttemptTls => "policy option `always attempt tls`: STARTTLS attempted even for mail received in clear",
        Rule::T4 => "outbound enforcement: the domain's servers must use TLS towards the gateway",
        Rule::T5 => "business partner with outbound enforcement: TLS required onward",
        Rule::T6 => "not an open relay: recipient domain is not registered and the client is no registered outbound server",
        Rule::T7 => "inbound enforcement: TLS required to the domain's servers",
        Rule::T10 => "the domain uses the default settings",
        Rule::T11 => "a sub-domain inherits its parent domain's settings",
        Rule::T12 => "an excluded sub-domain falls back to the default behaviour",
        Rule::T16 => "delivered by the domain's inbound routes",
        Rule::T17 => "delivered by a TLS static route",
        Rule::T18 => "not registered: routed by DNS MX",
    }
}

fn validation_text(v: &Validation) -> String {
    match v {
        Validation::Relaxed => "relaxed (no certificate checks)".to_string(),
        Validation::Strong {
            trusted_names,
            match_common_name,
        } => {
            let mut s = String::from("strong (dates, chain to a trusted root, name match");
            if *match_common_name {
                s.push_str(" incl. CN");
            }
            if !trusted_names.is_empty() {
                let names: Vec<&str> = trusted_names.iter().map(|n| n.as_str()).collect();
                let _ = write!(s, "; trusted names: {}", names.join(", "));
            }
            s.push(')');
            s
        }
    }
}

fn route_text(r: &RoutePlan<'_>) -> String {
    match r {
        RoutePlan::Mx => "DNS MX of the recipient's domain".to_string(),
        RoutePlan::InboundRoutes(routes) => {
            let list: Vec<String> = routes
                .iter()
                .map(|r| format!("{} {}", r.priority, r.target))
                .collect();
            format!("inbound routes, in order: {}", list.join(", "))
        }
        RoutePlan::Static(t) => format!("static route to {t}"),
    }
}

fn human(
    q: &Query<'_>,
    provenance: &Provenance,
    d: &Decision<'_>,
    client: &policy::ClientClass<'_>,
) -> String {
    let mut s = String::new();
    let _ = match provenance {
        Provenance::Source => writeln!(
            s,
            "policy      {} (compiled from source)",
            q.input.display()
        ),
        Provenance::VerifiedBlob(h) => writeln!(
            s,
            "policy      {} (blob, verified, serial {}, key id {})",
            q.input.display(),
            h.serial,
            h.key_id_hex()
        ),
        Provenance::UnverifiedBlob(h) => writeln!(
            s,
            "policy      {} (blob, NOT VERIFIED: no --pubkey given; serial {})",
            q.input.display(),
            h.serial
        ),
    };
    let _ = writeln!(
        s,
        "message     from <{}> to <{}>, client {}, received over {}",
        q.from,
        q.to,
        q.client_ip,
        if q.received_over_tls {
            "TLS"
        } else {
            "clear text"
        }
    );
    let names: Vec<&str> = client.outbound_for.iter().map(|n| n.as_str()).collect();
    let _ = if names.is_empty() {
        writeln!(s, "client      not a registered outbound server")
    } else {
        writeln!(
            s,
            "client      outbound server of {}; TLS required before MAIL: {}{}",
            names.join(", "),
            if client.tls_required { "yes" } else { "no" },
            if client.tls_required { " (T4)" } else { "" }
        )
    };
    let _ = writeln!(s, "rule        {} — {}", d.rule, rule_text(d.rule));
    if !d.trail.is_empty() {
        let _ = writeln!(s, "trail");
        for r in &d.trail {
            let _ = writeln!(s, "  {:<9} {}", r.to_string(), rule_text(*r));
        }
    }
    let _ = writeln!(
        s,
        "matched     {}",
        d.matched
            .map_or("(no registered domain or partner)", |m| m.as_str())
    );
    match &d.plan {
        None => {
            let _ = writeln!(s, "verdict     refused: 550 5.7.1 relaying denied");
        }
        Some(plan) => {
            let _ = writeln!(s, "tls         {}", plan.tls);
            if let Some(v) = plan.validation {
                let _ = writeln!(s, "validation  {}", validation_text(v));
            }
            let _ = writeln!(s, "route       {}", route_text(&plan.route));
        }
    }
    s
}

pub fn explain(q: &Query<'_>) -> Outcome {
    let (policy, provenance) = load(q.input, q.pubkeys)?;
    let compiled = CompiledPolicy::new(policy);
    let ctx = MessageContext {
        sender: q.from,
        recipient: q.to,
        client_ip: q.client_ip,
        received_over_tls: q.received_over_tls,
    };
    let decision = compiled.decide(&ctx).map_err(|e| Failure {
        message: e.to_string(),
        code: 2,
    })?;
    let client = compiled.client(q.client_ip);
    match q.format {
        Format::Human => report::print_out(&human(q, &provenance, &decision, &client)),
        Format::Json => {
            let source = match &provenance {
                Provenance::Source => json!({"kind": "source", "verified": null}),
                Provenance::VerifiedBlob(h) => {
                    json!({"kind": "blob", "verified": true, "header": super::commands::header_json(h)})
                }
                Provenance::UnverifiedBlob(h) => {
                    json!({"kind": "blob", "verified": false, "header": super::commands::header_json(h)})
                }
            };
            let out = json!({
                "policy": source,
                "message": {
                    "from": q.from,
                    "to": q.to,
                    "client_ip": q.client_ip.to_string(),
                    "received_over_tls": q.received_over_tls,
                },
                "client": client,
                "decision": decision,
                "refused": decision.is_refused(),
            });
            report::print_out(&format!("{out}\n"));
        }
    }
    Ok(())
}
