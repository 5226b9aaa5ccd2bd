//! One attempt for one message: decide, group, deliver, record, notify.
//!
//! Each chosen recipient is decided under the policy in force *now*
//! (T21). A refused decision (the policy no longer allows the relay, T6) or
//! an unusable address is a permanent failure. The rest are grouped by
//! (recipient domain, delivery plan) and each group is one
//! [`Transport::deliver`] call. Outcomes update the per-recipient state:
//! delivered, failed (permanent answer, or temporary past the retry
//! period), or deferred to the next slot of the retry schedule (with
//! jitter, never past the end of the retry period). The state is saved
//! durably; then newly failed recipients are reported to the sender in one
//! notification (never for the null sender), a delay notice is sent when
//! due, and a message with nothing left to do is removed.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use policy::{DeliveryPlan, MessageContext, RoutePlan, Rule, TlsRequirement};

use super::dsn::{self, Dsn, DsnAction, DsnRecipient};
use super::QueueSettings;
use crate::envelope::Envelope;
use crate::policy_store::ActivePolicy;
use crate::spool::{MessageKind, RecipientStatus, Spool, SpoolError, StoredMessage};
use crate::transport::{DeliveryJob, RecipientOutcome, Transport};

/// What an attempt did to a recipient domain, for the per-destination
/// back-off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DomainOutcome {
    /// At least one recipient was accepted: the destination works.
    Reachable,
    /// Only temporary failures: leave the destination alone until then.
    Unreachable { until_ms: u64 },
    /// Nothing that tells about the destination (refused by policy, etc).
    Unknown,
}

/// What the runner asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Deliver the chosen recipients.
    Deliver,
    /// The operator asked to bounce the message now.
    Bounce,
}

/// The result handed back to the runner.
#[derive(Debug)]
pub struct Outcome {
    /// The message with its new state; `None` once removed from the spool.
    pub message: Option<StoredMessage>,
    pub domains: Vec<(String, DomainOutcome)>,
    /// Notifications could not be written (disk full): try again later.
    pub notify_failed: bool,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The lower-case domain of an address, or `None` when it has none.
pub fn domain_of(address: &str) -> Option<String> {
    let (_, d) = address.rsplit_once('@')?;
    let d = d.strip_suffix('.').unwrap_or(d);
    (!d.is_empty()).then(|| d.to_ascii_lowercase())
}

/// Runs one attempt. `chosen` are indexes into the message's recipients.
pub async fn run(
    mut msg: StoredMessage,
    chosen: Vec<usize>,
    mode: Mode,
    policy: Arc<ActivePolicy>,
    transport: Arc<dyn Transport>,
    spool: Spool,
    settings: Arc<QueueSettings>,
) -> Outcome {
    let mut domains = Vec::new();
    match mode {
        Mode::Deliver => {
            domains = deliver(&mut msg, &chosen, &policy, transport.as_ref(), &settings).await;
        }
        Mode::Bounce => {
            let now = now_ms();
            for r in msg.state.recipients.iter_mut().filter(|r| !r.is_final()) {
                let last = r
                    .reason()
                    .map(|s| format!(" (last error: {s})"))
                    .unwrap_or_default();
                r.status = RecipientStatus::Failed {
                    reason: format!("returned to sender by the gateway operator{last}"),
                    at_ms: now,
                };
            }
        }
    }
    let notify_failed = notify(&mut msg, &policy, &spool, &settings).await.is_err();
    // The body is kept in memory for the first attempt only.
    msg.release_body();
    if msg.state.is_done() && !notify_failed {
        // Delivered or failed and reported: no state to record, and the
        // removal need not be durable (a message that comes back after a
        // crash is delivered again, never lost). The operator's bounce is
        // made durable: a crash must not turn it into a delivery.
        let removed = match mode {
            Mode::Deliver => spool.remove_done(&msg.id).await,
            Mode::Bounce => spool.remove(&msg.id).await,
        };
        match removed {
            Ok(()) | Err(SpoolError::NotFound(_)) => {
                tracing::debug!(id = %msg.id, "message done, removed from the queue");
                return Outcome {
                    message: None,
                    domains,
                    notify_failed,
                };
            }
            Err(e) => {
                tracing::error!(id = %msg.id, error = %e, "could not remove a finished message")
            }
        }
    }
    // Something is left to do (or the removal failed): record where each
    // recipient stands.
    if let Err(e) = spool.save_state(&mut msg).await {
        tracing::error!(id = %msg.id, error = %e, "could not save the queue state");
    }
    Outcome {
        message: Some(msg),
        domains,
        notify_failed,
    }
}

struct Group<'p> {
    domain: String,
    plan: DeliveryPlan<'p>,
    rule: Rule,
    recipients: Vec<String>,
    indexes: Vec<usize>,
}

async fn deliver(
    msg: &mut StoredMessage,
    chosen: &[usize],
    policy: &ActivePolicy,
    transport: &dyn Transport,
    settings: &QueueSettings,
) -> Vec<(String, DomainOutcome)> {
    let now = now_ms();
    let retry = &policy.compiled.policy().retry;
    let deadline_ms = msg
        .envelope
        .received_at
        .saturating_add(u64::from(retry.give_up_after))
        .saturating_mul(1000);
    let relay_ip = relaying_client(policy);

    // Decide every chosen recipient under the policy in force now (T21).
    let mut groups: Vec<Group<'_>> = Vec::new();
    let mut refusals: Vec<(usize, String)> = Vec::new();
    for &i in chosen {
        let Some(r) = msg.state.recipients.get(i) else {
            continue;
        };
        let address = r.address.clone();
        let Some(domain) = domain_of(&address) else {
            refusals.push((i, format!("`{address}` has no domain")));
            continue;
        };
        match decide(policy, &msg.envelope, msg.kind, &address, relay_ip) {
            Ok((rule, plan)) => {
                match groups
                    .iter_mut()
                    .find(|g| g.domain == domain && g.plan == plan && g.rule == rule)
                {
                    Some(g) => {
                        g.recipients.push(address);
                        g.indexes.push(i);
                    }
                    None => groups.push(Group {
                        domain,
                        plan,
                        rule,
                        recipients: vec![address],
                        indexes: vec![i],
                    }),
                }
            }
            Err(reason) => refusals.push((i, reason)),
        }
    }
    for (i, reason) in refusals {
        if let Some(r) = msg.state.recipients.get_mut(i) {
            tracing::warn!(id = %msg.id, rcpt = %r.address, %reason, "recipient refused by the policy in force");
            r.status = RecipientStatus::Failed { reason, at_ms: now };
        }
    }

    let anchors = policy.compiled.policy().trust_anchors.as_slice();
    let mut domains: Vec<(String, DomainOutcome)> = Vec::new();
    for g in &groups {
        let job = DeliveryJob {
            message_id: &msg.id.to_string(),
            mail_from: &msg.envelope.mail_from,
            recipient_domain: &g.domain,
            recipients: &g.recipients,
            plan: g.plan,
            rule: g.rule,
            trust_anchors: anchors,
            policy_serial: policy.serial,
            body: msg.body(),
        };
        let report = transport.deliver(job).await;
        let done_at = now_ms();
        let mut reachable = false;
        let mut until: Option<u64> = None;
        for (k, &i) in g.indexes.iter().enumerate() {
            let address = &g.recipients[k];
            let outcome = report
                .outcomes
                .iter()
                .find(|(a, _)| a == address)
                .map(|(_, o)| o.clone())
                .unwrap_or_else(|| RecipientOutcome::Temporary {
                    reason: "the delivery attempt reported nothing for this recipient".into(),
                });
            let Some(r) = msg.state.recipients.get_mut(i) else {
                continue;
            };
            r.attempts = r.attempts.saturating_add(1);
            if report.next_hop.is_some() {
                r.last_hop.clone_from(&report.next_hop);
            }
            r.status = match outcome {
                RecipientOutcome::Delivered => {
                    reachable = true;
                    tracing::info!(id = %msg.id, rcpt = %address, hop = ?report.next_hop, tls = ?report.tls_protocol, rule = %g.rule, "delivered");
                    RecipientStatus::Delivered { at_ms: done_at }
                }
                RecipientOutcome::Permanent { reason } => {
                    tracing::warn!(id = %msg.id, rcpt = %address, %reason, "permanent failure");
                    RecipientStatus::Failed {
                        reason,
                        at_ms: done_at,
                    }
                }
                RecipientOutcome::Temporary { reason } => {
                    if done_at >= deadline_ms {
                        tracing::warn!(id = %msg.id, rcpt = %address, %reason, "retry period over");
                        RecipientStatus::Failed {
                            reason,
                            at_ms: done_at,
                        }
                    } else {
                        let delay_ms =
                            u64::from(retry.delay_after_attempt(r.attempts)).saturating_mul(1000);
                        let next = done_at
                            .saturating_add(jittered(delay_ms, settings.jitter_percent))
                            .min(deadline_ms);
                        until = Some(until.map_or(next, |u: u64| u.min(next)));
                        tracing::info!(id = %msg.id, rcpt = %address, %reason, next_in_ms = next - done_at, "deferred");
                        RecipientStatus::Deferred {
                            reason,
                            next_attempt_ms: next,
                        }
                    }
                }
            };
        }
        let outcome = match (reachable, until) {
            (true, _) => DomainOutcome::Reachable,
            (false, Some(until_ms)) => DomainOutcome::Unreachable { until_ms },
            (false, None) => DomainOutcome::Unknown,
        };
        domains.push((g.domain.clone(), outcome));
    }
    domains
}

/// The decision for one recipient; `Err(reason)` when it must fail.
fn decide<'p>(
    policy: &'p ActivePolicy,
    envelope: &Envelope,
    kind: MessageKind,
    recipient: &str,
    relay_ip: Option<IpAddr>,
) -> Result<(Rule, DeliveryPlan<'p>), String> {
    let ctx = MessageContext {
        sender: &envelope.mail_from,
        recipient,
        client_ip: envelope.client_ip,
        received_over_tls: envelope.received_over_tls,
    };
    let decision = policy
        .compiled
        .decide(&ctx)
        .map_err(|e| format!("policy refused the recipient: {e}"))?;
    if let Some(plan) = decision.plan {
        return Ok((decision.rule, plan));
    }
    if kind != MessageKind::Notification {
        return Err(format!(
            "relaying to `{recipient}` is not allowed by the policy in force (serial {}, rule {})",
            policy.serial, decision.rule
        ));
    }
    // The gateway's own notifications go back to whoever sent the
    // original, anywhere: decide them as mail from a registered outbound
    // server (so business-partner enforcement still applies), or by the
    // mirror rule for mail received over TLS when no such server exists.
    if let Some(ip) = relay_ip {
        let ctx = MessageContext {
            client_ip: ip,
            ..ctx
        };
        if let Ok(d) = policy.compiled.decide(&ctx) {
            if let Some(plan) = d.plan {
                return Ok((d.rule, plan));
            }
        }
    }
    Ok((
        Rule::T2,
        DeliveryPlan {
            tls: TlsRequirement::Opportunistic,
            validation: None,
            route: RoutePlan::Mx,
        },
    ))
}

/// An address the policy lets relay (the first registered outbound server).
fn relaying_client(policy: &ActivePolicy) -> Option<IpAddr> {
    policy
        .compiled
        .policy()
        .domains
        .iter()
        .filter_map(|d| d.details.as_ref())
        .find_map(|d| d.outbound_servers.first().map(|n| n.addr))
}

fn jittered(delay_ms: u64, percent: u8) -> u64 {
    let spread = delay_ms / 100 * u64::from(percent.min(50));
    if spread == 0 {
        return delay_ms;
    }
    let offset = rand::random_range(0..=2 * spread);
    delay_ms - spread + offset
}

/// Sends the bounce for recipients that failed since the last one, and a
/// delay notice when due. Marks what was reported (the caller saves the
/// state).
async fn notify(
    msg: &mut StoredMessage,
    policy: &ActivePolicy,
    spool: &Spool,
    settings: &QueueSettings,
) -> Result<(), SpoolError> {
    let null_sender = msg.envelope.mail_from.is_empty();
    let retry = &policy.compiled.policy().retry;
    let failed: Vec<usize> = msg
        .state
        .recipients
        .iter()
        .enumerate()
        .filter(|(_, r)| matches!(r.status, RecipientStatus::Failed { .. }) && !r.notified)
        .map(|(i, _)| i)
        .collect();
    if !failed.is_empty() {
        if null_sender {
            // Rule T9: mail from <> is never bounced.
            tracing::warn!(id = %msg.id, "undeliverable mail from the null sender dropped without a bounce");
        } else {
            let recipients: Vec<DsnRecipient> = failed
                .iter()
                .filter_map(|&i| msg.state.recipients.get(i))
                .map(|r| DsnRecipient {
                    address: r.address.clone(),
                    reason: r.reason().unwrap_or("undeliverable").to_string(),
                    last_hop: r.last_hop.clone(),
                    permanent: r.attempts == 0 || !reason_is_temporary(r.reason()),
                })
                .collect();
            let id = write_notification(msg, spool, settings, DsnAction::Failed, &recipients, None)
                .await?;
            tracing::info!(id = %msg.id, bounce = %id, "bounce queued for the sender");
        }
        for i in failed {
            if let Some(r) = msg.state.recipients.get_mut(i) {
                r.notified = true;
            }
        }
    }

    if let Some(after) = retry.delay_notice_after {
        let due_ms = msg
            .envelope
            .received_at
            .saturating_add(u64::from(after))
            .saturating_mul(1000);
        let deferred: Vec<DsnRecipient> = msg
            .state
            .recipients
            .iter()
            .filter(|r| matches!(r.status, RecipientStatus::Deferred { .. }))
            .map(|r| DsnRecipient {
                address: r.address.clone(),
                reason: r.reason().unwrap_or("not delivered yet").to_string(),
                last_hop: r.last_hop.clone(),
                permanent: false,
            })
            .collect();
        if !null_sender
            && !msg.state.delay_notice_sent
            && !deferred.is_empty()
            && now_ms() >= due_ms
        {
            let until = msg
                .envelope
                .received_at
                .saturating_add(u64::from(retry.give_up_after));
            write_notification(
                msg,
                spool,
                settings,
                DsnAction::Delayed,
                &deferred,
                Some(until),
            )
            .await?;
            msg.state.delay_notice_sent = true;
        }
    }
    Ok(())
}

/// Temporary reasons that ran out of time are not "permanent" answers.
fn reason_is_temporary(reason: Option<&str>) -> bool {
    reason.is_some_and(|r| !r.starts_with('5'))
}

async fn write_notification(
    msg: &StoredMessage,
    spool: &Spool,
    settings: &QueueSettings,
    action: DsnAction,
    recipients: &[DsnRecipient],
    retry_until: Option<u64>,
) -> Result<crate::spool::MessageId, SpoolError> {
    let headers = read_headers(msg).await;
    let queue_id = msg.id.to_string();
    let now = dsn::now_secs();
    let text = Dsn {
        action,
        reporting_mta: &settings.hostname,
        queue_id: &queue_id,
        original_sender: &msg.envelope.mail_from,
        arrival: msg.envelope.received_at,
        recipients,
        retry_until,
        original_headers: &headers,
    }
    .render(now);
    let envelope = Envelope {
        mail_from: String::new(),
        rcpt_to: vec![msg.envelope.mail_from.clone()],
        client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        helo: settings.hostname.clone(),
        received_over_tls: true,
        received_at: now,
    };
    let mut incoming = spool.begin_notification(envelope).await?;
    incoming.write(&text).await?;
    incoming.commit().await
}

/// The original message's header section (bounded), or nothing if the
/// body cannot be read.
async fn read_headers(msg: &StoredMessage) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    const MAX: usize = 64 * 1024;
    let mut buf = Vec::new();
    match msg.body() {
        crate::transport::MessageBody::Memory(b) => {
            buf.extend_from_slice(b.get(..MAX).unwrap_or(b));
        }
        body => {
            let (path, offset, len) = match body {
                crate::transport::MessageBody::FileRange { path, offset, len } => {
                    (path, offset, len)
                }
                crate::transport::MessageBody::File(path) => (path, 0, u64::MAX),
                crate::transport::MessageBody::Memory(_) => return buf,
            };
            if let Ok(mut f) = tokio::fs::File::open(path).await {
                if f.seek(std::io::SeekFrom::Start(offset)).await.is_ok() {
                    let _ = f.take(len.min(MAX as u64)).read_to_end(&mut buf).await;
                }
            }
        }
    }
    let len = dsn::header_section(&buf, MAX).len();
    buf.truncate(len);
    buf
}
