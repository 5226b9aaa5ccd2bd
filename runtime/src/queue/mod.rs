//! The retry queue: attempts, back-off, bounces (T9, T21).
//!
//! # Wiring
//! ```ignore
//! let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
//! let runner: tokio::task::JoinHandle<()> =
//!     queue::Runner::spawn(spool.clone(), policy.clone(), transport, QueueSettings::new(hostname), stop_rx);
//! // ... on shutdown:
//! let _ = stop_tx.send(true);
//! let _ = runner.await;
//! ```
//! `Runner::spawn(spool: Spool, policy: PolicyHandle, transport:
//! Arc<dyn Transport>, settings: QueueSettings, shutdown:
//! watch::Receiver<bool>) -> JoinHandle<()>`. The runner stops when the
//! watched value becomes `true` (or its sender is dropped), letting running
//! attempts finish for up to [`QueueSettings::shutdown_grace`].
//!
//! # What it does
//! - At start it takes every message the spool found in `queue/` (their
//!   state files carry the schedule), then wakes on every new commit.
//! - When a message is due it chooses the recipients that are due and whose
//!   destination is not backing off, and hands them to an [`attempt`] task
//!   (at most [`QueueSettings::concurrency`] at once). The attempt decides
//!   each recipient under the policy in force at that moment
//!   (`policy.current()`, T21), groups them by (domain, plan), calls the
//!   transport, records the outcomes durably and writes bounces ([`dsn`]).
//! - Per-destination back-off: after an attempt to domain D ends with only
//!   temporary failures, other messages for D wait until D's next slot;
//!   then a single attempt probes D while the rest wait for its outcome
//!   (success wakes them at once, failure sets the next slot).
//! - Retry schedule, retry period and delay notices come from the policy's
//!   `retry` block, with ±[`QueueSettings::jitter_percent`] jitter.
//! - [`control`]: the operator's control socket (`<spool>/control.sock`),
//!   served here; [`cli`]: `tlsgate queue ...`.

pub mod attempt;
pub mod cli;
pub mod control;
pub mod dsn;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

use attempt::{domain_of, now_ms, DomainOutcome, Mode, Outcome};
use control::{MessageDetail, MessageSummary, Request, Response, RetryTarget};

use crate::policy_store::PolicyHandle;
use crate::spool::{MessageId, RecipientStatus, Spool, SpoolError, StoredMessage};
use crate::transport::Transport;

/// Tunables of the queue runner (the schedule itself is policy).
#[derive(Clone, Debug)]
pub struct QueueSettings {
    /// The gateway's host name, used in notifications.
    pub hostname: String,
    /// Delivery attempts running at once.
    pub concurrency: usize,
    /// Each retry delay is moved by up to this many percent either way.
    pub jitter_percent: u8,
    /// Serve the control socket in the spool directory.
    pub control_socket: bool,
    /// How long running attempts may finish after shutdown is asked.
    pub shutdown_grace: Duration,
}

impl QueueSettings {
    pub fn new(hostname: impl Into<String>) -> Self {
        QueueSettings {
            hostname: hostname.into(),
            concurrency: 32,
            jitter_percent: 10,
            control_socket: true,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// The queue runner (see the module docs).
pub struct Runner {
    spool: Spool,
    policy: PolicyHandle,
    transport: Arc<dyn Transport>,
    settings: Arc<QueueSettings>,
    messages: BTreeMap<MessageId, Entry>,
    /// (next attempt in unix ms, id) of every idle message with work left.
    due: BTreeSet<(u64, MessageId)>,
    destinations: HashMap<String, Backoff>,
    attempts: JoinSet<(MessageId, Outcome)>,
    /// Which message each running attempt task works on.
    tasks: HashMap<tokio::task::Id, MessageId>,
    in_flight: usize,
}

struct Entry {
    msg: StoredMessage,
    /// Scheduled time (ms), `u64::MAX` when waiting for a destination.
    next_ms: u64,
    in_flight: bool,
    /// The operator asked for an attempt now, ignoring back-off.
    force: bool,
    /// Destinations the running attempt probes.
    probes: Vec<String>,
    /// When writing a notification last failed.
    notify_failed_at: Option<u64>,
}

#[derive(Default)]
struct Backoff {
    until_ms: u64,
    probing: bool,
    waiters: BTreeSet<MessageId>,
}

/// Never sleep longer than this (the clock may jump).
const MAX_SLEEP: Duration = Duration::from_secs(30);
/// Retry of a message whose notification could not be written.
const NOTIFY_RETRY_MS: u64 = 60_000;

impl Runner {
    /// Starts the runner on the current tokio runtime.
    pub fn spawn(
        spool: Spool,
        policy: PolicyHandle,
        transport: Arc<dyn Transport>,
        settings: QueueSettings,
        shutdown: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        let runner = Runner {
            spool,
            policy,
            transport,
            settings: Arc::new(settings),
            messages: BTreeMap::new(),
            due: BTreeSet::new(),
            destinations: HashMap::new(),
            attempts: JoinSet::new(),
            tasks: HashMap::new(),
            in_flight: 0,
        };
        tokio::spawn(runner.run(shutdown))
    }

    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let (ctl_tx, mut ctl_rx) = mpsc::channel::<(Request, oneshot::Sender<Response>)>(16);
        let control = if self.settings.control_socket {
            match control::serve(self.spool.dir(), ctl_tx.clone()) {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::error!(error = %e, "cannot serve the queue control socket");
                    None
                }
            }
        } else {
            None
        };
        drop(ctl_tx);
        tracing::info!(dir = %self.spool.dir().display(), "queue runner started");
        loop {
            if *shutdown.borrow() {
                break;
            }
            self.take_arrivals().await;
            self.dispatch();
            let sleep = self
                .due
                .first()
                .map(|(t, _)| Duration::from_millis(t.saturating_sub(now_ms())))
                .unwrap_or(MAX_SLEEP)
                .min(MAX_SLEEP);
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() { break; }
                }
                () = self.spool.arrived() => {}
                Some(done) = self.attempts.join_next_with_id(), if self.in_flight > 0 => {
                    match done {
                        Ok((task, (id, outcome))) => {
                            self.tasks.remove(&task);
                            self.finish(id, outcome);
                        }
                        Err(e) => self.lost(e),
                    }
                }
                Some((req, reply)) = ctl_rx.recv() => {
                    let resp = self.control(req).await;
                    let _ = reply.send(resp);
                }
                () = tokio::time::sleep(sleep) => {}
            }
        }
        if let Some(h) = control {
            h.abort();
        }
        let _ = std::fs::remove_file(self.spool.dir().join(control::SOCKET));
        if self.in_flight > 0 {
            tracing::info!(
                running = self.in_flight,
                "queue runner stopping; letting running attempts finish"
            );
            let grace = tokio::time::sleep(self.settings.shutdown_grace);
            tokio::pin!(grace);
            while self.in_flight > 0 {
                tokio::select! {
                    Some(done) = self.attempts.join_next() => {
                        self.in_flight = self.in_flight.saturating_sub(1);
                        if let Err(e) = done { tracing::error!(error = %e, "a delivery attempt task failed"); }
                    }
                    () = &mut grace => break,
                }
            }
            self.attempts.abort_all();
        }
        tracing::info!("queue runner stopped");
    }

    /// Takes messages committed since last time (in memory) and loads the
    /// ones found at open.
    async fn take_arrivals(&mut self) {
        for arrival in self.spool.take_arrivals() {
            let id = arrival.id;
            if self.messages.contains_key(&id) {
                continue;
            }
            let msg = match arrival.message {
                Some(m) => m,
                None => match self.spool.load(&id).await {
                    Ok(m) => m,
                    Err(SpoolError::NotFound(_)) => continue,
                    Err(e) => {
                        tracing::error!(%id, error = %e, "cannot load a queued message; leaving it in the spool");
                        continue;
                    }
                },
            };
            let entry = Entry {
                msg,
                next_ms: 0,
                in_flight: false,
                force: false,
                probes: Vec::new(),
                notify_failed_at: None,
            };
            self.messages.insert(id, entry);
            self.reschedule(id);
        }
    }

    /// Starts attempts for due messages while there is capacity.
    fn dispatch(&mut self) {
        let now = now_ms();
        while self.in_flight < self.settings.concurrency.max(1) {
            let Some(&(t, id)) = self.due.first() else {
                return;
            };
            if t > now {
                return;
            }
            self.due.remove(&(t, id));
            let (chosen, probes) = self.select(id, now);
            if chosen.is_empty() && !self.needs_finishing(id) {
                self.reschedule(id);
                continue;
            }
            self.start(id, chosen, probes, Mode::Deliver);
        }
    }

    fn start(&mut self, id: MessageId, chosen: Vec<usize>, probes: Vec<String>, mode: Mode) {
        let Some(entry) = self.messages.get_mut(&id) else {
            return;
        };
        self.due.remove(&(entry.next_ms, id));
        entry.in_flight = true;
        entry.force = false;
        entry.probes = probes;
        let msg = entry.msg.clone();
        let policy = self.policy.current();
        let transport = self.transport.clone();
        let spool = self.spool.clone();
        let settings = self.settings.clone();
        self.in_flight += 1;
        let task = self.attempts.spawn(async move {
            let outcome = attempt::run(msg, chosen, mode, policy, transport, spool, settings).await;
            (id, outcome)
        });
        self.tasks.insert(task.id(), id);
    }

    /// Which recipients of `id` to attempt now, and the destinations whose
    /// back-off ran out that this attempt probes (marked as probing;
    /// messages finding them so wait for the probe's outcome).
    fn select(&mut self, id: MessageId, now: u64) -> (Vec<usize>, Vec<String>) {
        let Some(entry) = self.messages.get(&id) else {
            return (Vec::new(), Vec::new());
        };
        let force = entry.force;
        let mut chosen = Vec::new();
        let mut probes = Vec::new();
        for (i, r) in entry.msg.state.recipients.iter().enumerate() {
            let due = match &r.status {
                RecipientStatus::Pending => 0,
                RecipientStatus::Deferred {
                    next_attempt_ms, ..
                } => *next_attempt_ms,
                _ => continue,
            };
            if !force && due > now {
                continue;
            }
            let domain = domain_of(&r.address).unwrap_or_default();
            if probes.contains(&domain) {
                // This attempt probes the destination: all its recipients go.
                chosen.push(i);
                continue;
            }
            if let Some(b) = self.destinations.get_mut(&domain) {
                if !force && (b.probing || b.until_ms > now) {
                    if b.probing {
                        b.waiters.insert(id);
                    }
                    continue;
                }
                b.probing = true;
                probes.push(domain);
            }
            chosen.push(i);
        }
        (chosen, probes)
    }

    /// Nothing to deliver, but failed recipients to report or a finished
    /// message to remove (after a crash, an offline `bounce`, or a
    /// notification that could not be written).
    fn needs_finishing(&self, id: MessageId) -> bool {
        self.messages.get(&id).is_some_and(|e| {
            e.msg.state.is_done()
                || e.msg
                    .state
                    .recipients
                    .iter()
                    .any(|r| matches!(r.status, RecipientStatus::Failed { .. }) && !r.notified)
        })
    }

    /// Recomputes when `id` is next due and files it in `due`.
    fn reschedule(&mut self, id: MessageId) {
        let Some(entry) = self.messages.get(&id) else {
            return;
        };
        if entry.in_flight {
            return;
        }
        let old = entry.next_ms;
        let mut next = u64::MAX;
        if entry.force {
            next = 0;
        }
        for r in &entry.msg.state.recipients {
            let due = match &r.status {
                RecipientStatus::Pending => 0,
                RecipientStatus::Deferred {
                    next_attempt_ms, ..
                } => *next_attempt_ms,
                _ => continue,
            };
            let domain = domain_of(&r.address).unwrap_or_default();
            let at = match self.destinations.get_mut(&domain) {
                Some(b) if b.probing => {
                    b.waiters.insert(id);
                    u64::MAX
                }
                Some(b) => due.max(b.until_ms),
                None => due,
            };
            next = next.min(at);
        }
        // Notifications not written yet: now, or a while after the last
        // failure to write one.
        if self.needs_finishing(id) {
            let at = entry.notify_failed_at.map_or(0, |t| t + NOTIFY_RETRY_MS);
            next = next.min(at);
        }
        self.due.remove(&(old, id));
        if let Some(entry) = self.messages.get_mut(&id) {
            entry.next_ms = next;
            if next != u64::MAX {
                self.due.insert((next, id));
            }
        }
    }

    /// An attempt task died without a result: the message keeps its last
    /// saved state and is tried again after a pause.
    fn lost(&mut self, e: tokio::task::JoinError) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let Some(id) = self.tasks.remove(&e.id()) else {
            tracing::error!(error = %e, "a delivery attempt task failed");
            return;
        };
        tracing::error!(%id, error = %e, "a delivery attempt task failed; retrying later");
        let retry_at = now_ms() + NOTIFY_RETRY_MS;
        let probes = match self.messages.get_mut(&id) {
            Some(entry) => {
                entry.in_flight = false;
                std::mem::take(&mut entry.probes)
            }
            None => Vec::new(),
        };
        let mut wake = Vec::new();
        for d in probes {
            if let Some(b) = self.destinations.get_mut(&d) {
                b.probing = false;
                wake.extend(std::mem::take(&mut b.waiters));
            }
        }
        if let Some(entry) = self.messages.get_mut(&id) {
            self.due.remove(&(entry.next_ms, id));
            entry.next_ms = retry_at;
            self.due.insert((retry_at, id));
        }
        for w in wake {
            self.reschedule(w);
        }
    }

    /// Takes the result of an attempt back.
    fn finish(&mut self, id: MessageId, outcome: Outcome) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let now = now_ms();
        let mut wake = BTreeSet::new();
        for (domain, result) in outcome.domains {
            match result {
                DomainOutcome::Reachable => {
                    if let Some(b) = self.destinations.remove(&domain) {
                        wake.extend(b.waiters);
                    }
                }
                DomainOutcome::Unreachable { until_ms } => {
                    let b = self.destinations.entry(domain).or_default();
                    b.until_ms = until_ms;
                    b.probing = false;
                    wake.extend(std::mem::take(&mut b.waiters));
                }
                DomainOutcome::Unknown => {
                    if let Some(b) = self.destinations.get_mut(&domain) {
                        b.probing = false;
                        wake.extend(std::mem::take(&mut b.waiters));
                    }
                }
            }
        }
        // A probe that never reported (e.g. the recipient was refused by
        // the policy) must not keep its destination locked.
        let probes = self
            .messages
            .get_mut(&id)
            .map(|e| std::mem::take(&mut e.probes))
            .unwrap_or_default();
        for d in probes {
            if let Some(b) = self.destinations.get_mut(&d) {
                if b.probing {
                    b.probing = false;
                    wake.extend(std::mem::take(&mut b.waiters));
                }
            }
        }
        match outcome.message {
            Some(msg) => {
                if let Some(entry) = self.messages.get_mut(&id) {
                    entry.msg = msg;
                    entry.in_flight = false;
                    entry.notify_failed_at = outcome.notify_failed.then_some(now);
                }
                self.reschedule(id);
            }
            None => {
                self.messages.remove(&id);
            }
        }
        for w in wake {
            if w != id {
                self.reschedule(w);
            }
        }
    }

    async fn control(&mut self, req: Request) -> Response {
        let now = now_ms();
        match req {
            Request::List => Response::Messages {
                messages: self.messages.values().map(|e| summary(e, now)).collect(),
            },
            Request::Show { id } => match self.messages.get(&id) {
                Some(e) => Response::Message {
                    message: Box::new(MessageDetail {
                        summary: summary(e, now),
                        envelope: e.msg.envelope.clone(),
                        kind: e.msg.kind,
                        recipients: e.msg.state.recipients.clone(),
                        delay_notice_sent: e.msg.state.delay_notice_sent,
                        in_flight: e.in_flight,
                    }),
                },
                None => not_found(id),
            },
            Request::Retry { target } => {
                let ids: Vec<MessageId> = match &target {
                    RetryTarget::Id(id) => {
                        if !self.messages.contains_key(id) {
                            return not_found(*id);
                        }
                        vec![*id]
                    }
                    RetryTarget::All => {
                        self.destinations.clear();
                        self.messages.keys().copied().collect()
                    }
                    RetryTarget::Domain(d) => {
                        let d = d.to_ascii_lowercase();
                        self.destinations.remove(&d);
                        self.messages
                            .iter()
                            .filter(|(_, e)| {
                                e.msg.state.recipients.iter().any(|r| {
                                    !r.is_final()
                                        && domain_of(&r.address).as_deref() == Some(d.as_str())
                                })
                            })
                            .map(|(id, _)| *id)
                            .collect()
                    }
                };
                let mut n = 0;
                for id in ids {
                    if let Some(e) = self.messages.get_mut(&id) {
                        if !e.msg.state.is_done() {
                            e.force = true;
                            n += 1;
                        }
                    }
                    self.reschedule(id);
                }
                Response::Done {
                    affected: n,
                    note: format!("{n} message(s) scheduled for an attempt now"),
                }
            }
            Request::Delete { id } => match self.messages.get(&id) {
                None => not_found(id),
                Some(e) if e.in_flight => busy(id),
                Some(e) => {
                    let next = e.next_ms;
                    match self.spool.remove(&id).await {
                        Ok(()) | Err(SpoolError::NotFound(_)) => {
                            self.due.remove(&(next, id));
                            self.messages.remove(&id);
                            tracing::info!(%id, "message deleted by the operator");
                            Response::Done {
                                affected: 1,
                                note: format!("deleted `{id}`"),
                            }
                        }
                        Err(e) => Response::Error {
                            message: format!("cannot delete `{id}`: {e}"),
                        },
                    }
                }
            },
            Request::Bounce { id } => match self.messages.get(&id) {
                None => not_found(id),
                Some(e) if e.in_flight => busy(id),
                Some(_) => {
                    self.start(id, Vec::new(), Vec::new(), Mode::Bounce);
                    tracing::info!(%id, "message returned to sender by the operator");
                    Response::Done {
                        affected: 1,
                        note: format!("`{id}` is being returned to its sender"),
                    }
                }
            },
        }
    }
}

fn not_found(id: MessageId) -> Response {
    Response::Error {
        message: format!("message `{id}` is not in the queue"),
    }
}

fn busy(id: MessageId) -> Response {
    Response::Error {
        message: format!("message `{id}` is being delivered right now; try again in a moment"),
    }
}

fn summary(e: &Entry, now_ms: u64) -> MessageSummary {
    control::summarize(
        &e.msg,
        now_ms,
        (e.next_ms != u64::MAX).then_some(e.next_ms),
        e.in_flight,
    )
}
