//! Shared helpers for the queue tests: a scripted transport that records
//! every attempt, policies with a compressed retry schedule, a tiny MIME
//! reader for checking notifications.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::net::IpAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use policy::{
    Delivery, Domain, DomainDetails, DomainName, Enforcement, IpNet, Policy, RetryPolicy, Rule,
    Settings, TlsRequirement, Validation,
};
use tlsgate::envelope::Envelope;
use tlsgate::policy_store::PolicyHandle;
use tlsgate::queue::{QueueSettings, Runner};
use tlsgate::spool::{MessageId, Spool};
use tlsgate::transport::{DeliveryJob, DeliveryReport, RecipientOutcome, Transport};
use tokio::sync::watch;

/// What the transport saw in one attempt (owned copy of a `DeliveryJob`).
#[derive(Clone, Debug)]
pub struct Seen {
    pub message_id: String,
    pub mail_from: String,
    pub domain: String,
    pub recipients: Vec<String>,
    pub tls: TlsRequirement,
    pub rule: Rule,
    pub policy_serial: u64,
    pub body: Vec<u8>,
}

type Script = dyn Fn(&Seen) -> (RecipientOutcome, Option<String>) + Send + Sync;

/// A transport answering every recipient of a job with what the script
/// says, recording each job.
pub struct Scripted {
    pub seen: Mutex<Vec<Seen>>,
    script: Box<Script>,
}

impl Scripted {
    pub fn new(
        script: impl Fn(&Seen) -> (RecipientOutcome, Option<String>) + Send + Sync + 'static,
    ) -> Arc<Scripted> {
        Arc::new(Scripted {
            seen: Mutex::new(Vec::new()),
            script: Box::new(script),
        })
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits (up to a generous limit) until a recorded job matches.
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&Seen) -> bool) -> Seen {
        for _ in 0..600 {
            if let Some(s) = self.seen().into_iter().find(|s| pred(s)) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("timed out waiting for {what}; seen: {:#?}", self.seen());
    }
}

impl Transport for Scripted {
    fn deliver<'a>(
        &'a self,
        job: DeliveryJob<'a>,
    ) -> Pin<Box<dyn Future<Output = DeliveryReport> + Send + 'a>> {
        Box::pin(async move {
            let body = job.body.read_all().await.unwrap_or_default();
            let seen = Seen {
                message_id: job.message_id.to_string(),
                mail_from: job.mail_from.to_string(),
                domain: job.recipient_domain.to_string(),
                recipients: job.recipients.to_vec(),
                tls: job.plan.tls,
                rule: job.rule,
                policy_serial: job.policy_serial,
                body,
            };
            let (outcome, hop) = (self.script)(&seen);
            self.seen.lock().unwrap().push(seen);
            DeliveryReport {
                outcomes: job
                    .recipients
                    .iter()
                    .map(|r| (r.clone(), outcome.clone()))
                    .collect(),
                next_hop: hop,
                ..DeliveryReport::default()
            }
        })
    }
}

pub fn temporary(reason: &str) -> RecipientOutcome {
    RecipientOutcome::Temporary {
        reason: reason.into(),
    }
}

pub fn permanent(reason: &str) -> RecipientOutcome {
    RecipientOutcome::Permanent {
        reason: reason.into(),
    }
}

pub fn name(s: &str) -> DomainName {
    DomainName::parse(s).unwrap()
}

/// A retry block in seconds.
pub fn retry(schedule: &[u32], give_up_after: u32, delay_notice_after: Option<u32>) -> RetryPolicy {
    let mut r = RetryPolicy::default();
    r.schedule.clear();
    for x in schedule {
        r.schedule.push(*x).unwrap();
    }
    r.give_up_after = give_up_after;
    r.delay_notice_after = delay_notice_after;
    r
}

/// A policy registering `example.com` (inbound TLS as given) whose
/// outbound servers are `10.0.0.0/8`, with the given retry block.
pub fn policy(serial: u64, inbound: Enforcement, retry: RetryPolicy) -> Policy {
    let mut p = Policy::empty(serial);
    let mut details = DomainDetails::default();
    details
        .outbound_servers
        .push(IpNet::parse("10.0.0.0/8").unwrap())
        .unwrap();
    details.delivery = Delivery::Mx;
    p.domains.push(Domain {
        name: name("example.com"),
        settings: Some(Box::new(Settings {
            inbound,
            outbound: Enforcement::Opportunistic,
            validation: Validation::default(),
        })),
        details: Some(Box::new(details)),
    });
    p.retry = retry;
    p
}

pub fn envelope(from: &str, to: &[&str], client: &str, tls: bool) -> Envelope {
    Envelope {
        mail_from: from.into(),
        rcpt_to: to.iter().map(|s| s.to_string()).collect(),
        client_ip: client.parse::<IpAddr>().unwrap(),
        helo: "client.test".into(),
        received_over_tls: tls,
        received_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    }
}

pub fn message(subject: &str) -> Vec<u8> {
    format!(
        "From: <sender@sender.test>\r\nTo: <rcpt@example.com>\r\nSubject: {subject}\r\nMessage-ID: <{subject}@sender.test>\r\n\r\nHello.\r\n.leading dot stays unstuffed\r\n"
    )
    .into_bytes()
}

pub async fn enqueue(spool: &Spool, env: Envelope, body: &[u8]) -> MessageId {
    let mut incoming = spool.begin(env).await.unwrap();
    incoming.write(body).await.unwrap();
    incoming.commit().await.unwrap()
}

pub fn settings() -> QueueSettings {
    let mut s = QueueSettings::new("gw.test");
    s.jitter_percent = 0;
    s.shutdown_grace = Duration::from_secs(2);
    s
}

/// A running queue and the means to stop it.
pub struct Running {
    pub stop: watch::Sender<bool>,
    pub handle: tokio::task::JoinHandle<()>,
}

impl Running {
    pub fn start(spool: &Spool, policy: &PolicyHandle, transport: Arc<dyn Transport>) -> Running {
        let (stop, rx) = watch::channel(false);
        let handle = Runner::spawn(spool.clone(), policy.clone(), transport, settings(), rx);
        Running { stop, handle }
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.handle.await.unwrap();
    }
}

/// Waits (up to a generous limit) until the spool's queue is empty.
pub async fn wait_empty(spool: &Spool) {
    for _ in 0..600 {
        if spool.list().await.unwrap().is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("queue not empty: {:?}", spool.list().await.unwrap());
}

pub fn spool_dir_files(dir: &Path, sub: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join(sub))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A MIME entity: unfolded headers (lower-case names) and body.
#[derive(Debug)]
pub struct Entity {
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Entity {
    pub fn parse(text: &str) -> Entity {
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in head.split("\r\n") {
            if line.starts_with(' ') || line.starts_with('\t') {
                let last = headers.last_mut().expect("continuation without header");
                last.1.push(' ');
                last.1.push_str(line.trim());
            } else if let Some((k, v)) = line.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        Entity {
            headers,
            body: body.to_string(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Parts of a multipart body.
    pub fn parts(&self) -> Vec<Entity> {
        let ct = self.header("content-type").expect("content-type");
        let boundary = ct
            .split(';')
            .find_map(|p| p.trim().strip_prefix("boundary="))
            .expect("boundary")
            .trim_matches('"')
            .to_string();
        let delim = format!("--{boundary}");
        let end = format!("--{boundary}--");
        assert!(self.body.contains(&end), "closing delimiter missing");
        let body = self.body.split(&end).next().unwrap();
        body.split(&delim)
            .skip(1)
            .map(|p| Entity::parse(p.strip_prefix("\r\n").unwrap_or(p)))
            .collect()
    }
}

/// The per-recipient field groups of a `message/delivery-status` body
/// (the first group is the per-message one).
pub fn status_groups(body: &str) -> Vec<Vec<(String, String)>> {
    body.split("\r\n\r\n")
        .filter(|g| !g.trim().is_empty())
        .map(|g| Entity::parse(&format!("{g}\r\n\r\n")).headers)
        .collect()
}
