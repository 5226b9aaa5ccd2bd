//! One delivery attempt on one address.
//!
//! [`open`] connects, reads the banner, says EHLO (HELO when EHLO is
//! refused) and applies the plan's TLS mode: never STARTTLS (T3), STARTTLS
//! when offered (T2), or TLS or nothing (T5, T7: a missing STARTTLS, a
//! refused STARTTLS, bytes injected after the `220`, a failed handshake or
//! a failed validation end the attempt before any message byte is sent).
//! [`attempt`] then runs the mail transaction and gives one outcome per
//! recipient. The TLS connectivity test reuses [`open`] with a step log.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::RootCertStore;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::client::{Conn, SessionError};
use super::route::{Hop, HopHost};
use super::tls::{self, CertCheck, ChainRecorder};
use super::DeliveryConfig;
use crate::smtp::reply::Reply;
use crate::transport::{DeliveryJob, RecipientOutcome};

/// What to do about STARTTLS on one connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TlsMode {
    /// T3: never attempt STARTTLS.
    Never,
    /// T2: STARTTLS when offered, no certificate checks.
    IfOffered,
    /// T5/T7: TLS or no delivery, with this certificate check.
    Required(CertCheck),
}

/// Which stage failed, which decides what the caller does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// Connect, banner or EHLO: try the next address or host.
    Connect,
    /// STARTTLS, the handshake or the certificate: next host; for
    /// opportunistic TLS, once more in clear.
    Tls,
}

/// An attempt that did not reach a mail transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptError {
    pub kind: FailureKind,
    pub reason: String,
    /// The certificate verdict, when validation failed.
    pub certificate: Option<String>,
}

/// The negotiated TLS parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsInfo {
    pub protocol: String,
    pub cipher: String,
    /// `strong-ok (mx1.example.com)`, `relaxed`, `unverified`.
    pub verdict: String,
}

/// A finished mail transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Done {
    pub outcomes: Vec<(String, RecipientOutcome)>,
    pub tls: Option<TlsInfo>,
}

/// One step of a connection, for the TLS connectivity test.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Step {
    pub step: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// A connection ready for a mail transaction.
#[derive(Debug)]
pub enum Established {
    Clear(Conn<TcpStream>, Reply),
    Tls(Box<Conn<TlsStream<TcpStream>>>, Reply, TlsInfo),
}

impl Established {
    /// `RSET` before reusing a pooled connection: true when the server
    /// answered `250` (a closed or broken connection answers nothing).
    pub async fn rset(&mut self, limit: Duration) -> bool {
        let reply = match self {
            Established::Clear(c, _) => c.command("RSET", limit, "the reply to RSET").await,
            Established::Tls(c, _, _) => c.command("RSET", limit, "the reply to RSET").await,
        };
        matches!(reply, Ok(r) if r.code == 250)
    }

    /// `QUIT` and close (errors ignored).
    pub async fn quit(self, limit: Duration) {
        match self {
            Established::Clear(c, _) => c.quit(limit).await,
            Established::Tls(c, _, _) => c.quit(limit).await,
        }
    }

    /// The TLS parameters, when the connection is TLS.
    pub fn tls(&self) -> Option<&TlsInfo> {
        match self {
            Established::Clear(..) => None,
            Established::Tls(_, _, info) => Some(info),
        }
    }
}

struct Steps<'s>(Option<&'s mut Vec<Step>>);

impl Steps<'_> {
    fn push(&mut self, step: &'static str, ok: bool, detail: impl Into<String>) {
        if let Some(v) = self.0.as_deref_mut() {
            v.push(Step {
                step,
                ok,
                detail: detail.into(),
            });
        }
    }
}

fn fail(kind: FailureKind, reason: String) -> AttemptError {
    AttemptError {
        kind,
        reason,
        certificate: None,
    }
}

/// Connects to `addr` and gets as far as a connection ready for MAIL.
#[allow(clippy::too_many_arguments)]
pub async fn open(
    cfg: &DeliveryConfig,
    hop: &Hop,
    addr: SocketAddr,
    mode: &TlsMode,
    roots: Arc<RootCertStore>,
    recorder: Option<ChainRecorder>,
    steps: Option<&mut Vec<Step>>,
) -> Result<Established, AttemptError> {
    let mut steps = Steps(steps);
    let t = &cfg.timeouts;
    let label = hop.label();
    let tcp = match timeout(t.connect, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            steps.push("connect", false, format!("{addr}: {e}"));
            return Err(fail(
                FailureKind::Connect,
                format!("4.4.1 cannot connect to {label} [{}]: {e}", addr.ip()),
            ));
        }
        Err(_) => {
            steps.push("connect", false, format!("{addr}: timed out"));
            return Err(fail(
                FailureKind::Connect,
                format!("4.4.1 cannot connect to {label} [{}]: timed out", addr.ip()),
            ));
        }
    };
    steps.push("connect", true, addr.to_string());
    let _ = tcp.set_nodelay(true);
    let mut conn = Conn::new(tcp);
    let banner = conn
        .read_reply(t.command, "the banner")
        .await
        .map_err(|e| {
            steps.push("banner", false, e.to_string());
            fail(FailureKind::Connect, format!("4.4.2 {label}: {e}"))
        })?;
    if banner.code != 220 {
        steps.push("banner", false, banner.one_line());
        conn.quit(t.command).await;
        return Err(fail(
            FailureKind::Connect,
            format!("4.4.2 {label} greeted with {banner}"),
        ));
    }
    steps.push("banner", true, banner.one_line());
    let ehlo = hello(&mut conn, &cfg.helo_name, t.command, &label)
        .await
        .inspect_err(|e| steps.push("ehlo", false, e.reason.clone()))?;
    steps.push(
        "ehlo",
        true,
        ehlo.lines.first().cloned().unwrap_or_default(),
    );

    let check = match mode {
        TlsMode::Never => return Ok(Established::Clear(conn, ehlo)),
        TlsMode::IfOffered => CertCheck::Unverified,
        TlsMode::Required(c) => c.clone(),
    };
    let required = matches!(mode, TlsMode::Required(_));
    if !ehlo.has_keyword("STARTTLS") {
        steps.push("starttls-offered", false, "STARTTLS not offered");
        if required {
            conn.quit(t.command).await;
            return Err(fail(
                FailureKind::Tls,
                format!("4.7.0 TLS required but not offered by {label}"),
            ));
        }
        return Ok(Established::Clear(conn, ehlo));
    }
    steps.push("starttls-offered", true, "STARTTLS offered");
    let reply = conn
        .command("STARTTLS", t.command, "the reply to STARTTLS")
        .await
        .map_err(|e| {
            steps.push("starttls", false, e.to_string());
            fail(
                FailureKind::Tls,
                format!("4.7.0 STARTTLS with {label} failed: {e}"),
            )
        })?;
    if reply.code != 220 {
        steps.push("starttls", false, reply.one_line());
        if required {
            conn.quit(t.command).await;
            return Err(fail(
                FailureKind::Tls,
                format!("4.7.0 TLS required but {label} answered STARTTLS with {reply}"),
            ));
        }
        // Opportunistic: the connection is still usable in clear.
        return Ok(Established::Clear(conn, ehlo));
    }
    if conn.has_unread_bytes() {
        steps.push(
            "starttls",
            false,
            "data after the 220 reply to STARTTLS (response injection)",
        );
        return Err(fail(
            FailureKind::Tls,
            format!("4.7.0 {label} sent data after its reply to STARTTLS (possible response injection); TLS attempt aborted"),
        ));
    }
    steps.push("starttls", true, reply.one_line());

    let (server_name, send_sni) = match &hop.host {
        HopHost::Name(n) => match ServerName::try_from(n.clone()) {
            Ok(sn) => (sn, true),
            Err(_) => (ServerName::IpAddress(addr.ip().into()), false),
        },
        HopHost::Ip(ip) => (ServerName::IpAddress((*ip).into()), false),
    };
    let (config, outcome) = tls::client_config(&check, roots, send_sni, recorder)
        .map_err(|e| fail(FailureKind::Tls, format!("4.7.0 {e}")))?;
    let connector = TlsConnector::from(config);
    let tcp = conn.into_stream();
    let tls_stream = match timeout(t.tls_handshake, connector.connect(server_name, tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            if let Some(why) = outcome.failure() {
                steps.push("handshake", false, format!("certificate: {why}"));
                return Err(AttemptError {
                    kind: FailureKind::Tls,
                    reason: format!(
                        "4.7.5 certificate for {label} failed strong validation: {why}"
                    ),
                    certificate: Some(format!("failed: {why}")),
                });
            }
            steps.push("handshake", false, e.to_string());
            return Err(fail(
                FailureKind::Tls,
                format!("4.7.0 TLS handshake with {label} failed: {e}"),
            ));
        }
        Err(_) => {
            steps.push("handshake", false, "timed out");
            return Err(fail(
                FailureKind::Tls,
                format!("4.7.0 TLS handshake with {label} failed: timed out"),
            ));
        }
    };
    let (_, session) = tls_stream.get_ref();
    let protocol = session
        .protocol_version()
        .and_then(|v| v.as_str())
        .unwrap_or("unknown")
        .to_string();
    let cipher = session
        .negotiated_cipher_suite()
        .and_then(|c| c.suite().as_str())
        .unwrap_or("unknown")
        .to_string();
    let verdict = match &check {
        CertCheck::Strong { .. } => match outcome.matched() {
            Some(m) => format!("strong-ok ({m})"),
            None => "strong-ok".to_string(),
        },
        CertCheck::Relaxed => "relaxed".to_string(),
        CertCheck::Unverified => "unverified".to_string(),
    };
    steps.push("handshake", true, format!("{protocol} {cipher}"));
    let mut conn = Conn::new(tls_stream);
    let ehlo = hello(&mut conn, &cfg.helo_name, t.command, &label)
        .await
        .map_err(|e| {
            steps.push("ehlo-tls", false, e.reason.clone());
            AttemptError {
                kind: FailureKind::Tls,
                ..e
            }
        })?;
    steps.push(
        "ehlo-tls",
        true,
        ehlo.lines.first().cloned().unwrap_or_default(),
    );
    Ok(Established::Tls(
        Box::new(conn),
        ehlo,
        TlsInfo {
            protocol,
            cipher,
            verdict,
        },
    ))
}

/// EHLO, or HELO when EHLO is refused with a 5xx.
async fn hello<S: AsyncRead + AsyncWrite + Unpin + Send>(
    conn: &mut Conn<S>,
    helo_name: &str,
    limit: Duration,
    label: &str,
) -> Result<Reply, AttemptError> {
    let err = |e: SessionError| fail(FailureKind::Connect, format!("4.4.2 {label}: {e}"));
    let ehlo = conn
        .command(&format!("EHLO {helo_name}"), limit, "the reply to EHLO")
        .await
        .map_err(err)?;
    if ehlo.is_positive() {
        return Ok(ehlo);
    }
    if ehlo.is_permanent() {
        let helo = conn
            .command(&format!("HELO {helo_name}"), limit, "the reply to HELO")
            .await
            .map_err(err)?;
        if helo.is_positive() {
            // HELO has no extensions: keep only the greeting line.
            return Ok(Reply {
                lines: helo.lines.into_iter().take(1).collect(),
                ..helo
            });
        }
        return Err(fail(
            FailureKind::Connect,
            format!("4.4.2 {label} refused HELO: {helo}"),
        ));
    }
    Err(fail(
        FailureKind::Connect,
        format!("4.4.2 {label} refused EHLO: {ehlo}"),
    ))
}

/// One attempt: [`open`], then the mail transaction, then `QUIT`.
pub async fn attempt(
    cfg: &DeliveryConfig,
    job: &DeliveryJob<'_>,
    hop: &Hop,
    addr: SocketAddr,
    mode: &TlsMode,
    roots: Arc<RootCertStore>,
) -> Result<Done, AttemptError> {
    let label = format!("{} [{}]", hop.label(), addr.ip());
    let est = open(cfg, hop, addr, mode, roots, None, None).await?;
    let (done, healthy) = run_transaction(est, cfg, job, &label).await;
    if let Some(conn) = healthy {
        conn.quit(cfg.timeouts.command).await;
    }
    Ok(done)
}

/// The mail transaction on an established connection. Gives the
/// connection back when it is still usable for another transaction (every
/// command got a reply, none was `421`); otherwise it has been closed.
pub async fn run_transaction(
    est: Established,
    cfg: &DeliveryConfig,
    job: &DeliveryJob<'_>,
    label: &str,
) -> (Done, Option<Established>) {
    match est {
        Established::Clear(mut conn, ehlo) => {
            let (outcomes, healthy) = transact(&mut conn, &ehlo, cfg, job, label).await;
            let done = Done {
                outcomes,
                tls: None,
            };
            if healthy {
                (done, Some(Established::Clear(conn, ehlo)))
            } else {
                conn.quit(cfg.timeouts.command).await;
                (done, None)
            }
        }
        Established::Tls(mut conn, ehlo, info) => {
            let (outcomes, healthy) = transact(conn.as_mut(), &ehlo, cfg, job, label).await;
            let done = Done {
                outcomes,
                tls: Some(info.clone()),
            };
            if healthy {
                (done, Some(Established::Tls(conn, ehlo, info)))
            } else {
                conn.quit(cfg.timeouts.command).await;
                (done, None)
            }
        }
    }
}

fn outcome_of(reply: &Reply, label: &str) -> RecipientOutcome {
    let reason = format!("{label} said: {reply}");
    if reply.is_permanent() {
        RecipientOutcome::Permanent { reason }
    } else {
        RecipientOutcome::Temporary { reason }
    }
}

type Slots = Vec<(String, Option<RecipientOutcome>)>;

/// The outcome of an I/O failure at `stage`.
fn io_fail(label: &str, e: SessionError, stage: &str) -> RecipientOutcome {
    RecipientOutcome::Temporary {
        reason: format!("4.4.2 {label}: {e} ({stage})"),
    }
}

/// Every recipient without an outcome yet gets `rest`.
fn finish(
    outcomes: Slots,
    rest: RecipientOutcome,
    healthy: bool,
) -> (Vec<(String, RecipientOutcome)>, bool) {
    let v = outcomes
        .into_iter()
        .map(|(r, o)| (r, o.unwrap_or_else(|| rest.clone())))
        .collect::<Vec<_>>();
    (v, healthy)
}

/// 421: the server is closing the connection.
fn usable(r: &Reply) -> bool {
    r.code != 421
}

/// MAIL, RCPT per recipient, DATA with the streamed body: in one write
/// when the server offers PIPELINING (RFC 2920), else command by command.
/// The flag says whether the connection can carry another transaction.
async fn transact<S: AsyncRead + AsyncWrite + Unpin + Send>(
    conn: &mut Conn<S>,
    ehlo: &Reply,
    cfg: &DeliveryConfig,
    job: &DeliveryJob<'_>,
    label: &str,
) -> (Vec<(String, RecipientOutcome)>, bool) {
    let outcomes: Slots = job.recipients.iter().map(|r| (r.clone(), None)).collect();
    let mut mail = format!("MAIL FROM:<{}>", job.mail_from);
    if ehlo.has_keyword("SIZE") {
        if let Ok(len) = job.body.len().await {
            mail.push_str(&format!(" SIZE={len}"));
        }
    }
    if ehlo.has_keyword("PIPELINING") {
        transact_pipelined(conn, mail, outcomes, cfg, job, label).await
    } else {
        transact_lockstep(conn, mail, outcomes, cfg, job, label).await
    }
}

/// The transaction one command at a time.
async fn transact_lockstep<S: AsyncRead + AsyncWrite + Unpin + Send>(
    conn: &mut Conn<S>,
    mail: String,
    mut outcomes: Slots,
    cfg: &DeliveryConfig,
    job: &DeliveryJob<'_>,
    label: &str,
) -> (Vec<(String, RecipientOutcome)>, bool) {
    let t = &cfg.timeouts;
    match conn.command(&mail, t.command, "the reply to MAIL").await {
        Ok(r) if r.is_positive() => {}
        Ok(r) => return finish(outcomes, outcome_of(&r, label), usable(&r)),
        Err(e) => return finish(outcomes, io_fail(label, e, "MAIL"), false),
    }
    let mut accepted = 0usize;
    let mut healthy = true;
    for (rcpt, slot) in outcomes.iter_mut() {
        match conn
            .command(&format!("RCPT TO:<{rcpt}>"), t.command, "the reply to RCPT")
            .await
        {
            Ok(r) if r.is_positive() => accepted += 1,
            Ok(r) => {
                healthy &= usable(&r);
                *slot = Some(outcome_of(&r, label));
            }
            Err(e) => return finish(outcomes, io_fail(label, e, "RCPT"), false),
        }
    }
    if accepted == 0 {
        return finish(outcomes, none_accepted(label), healthy);
    }
    match conn.command("DATA", t.command, "the reply to DATA").await {
        Ok(r) if r.code == 354 => {}
        Ok(r) => return finish(outcomes, outcome_of(&r, label), healthy && usable(&r)),
        Err(e) => return finish(outcomes, io_fail(label, e, "DATA"), false),
    }
    let (rest, ok) = body_outcome(conn, cfg, job, label).await;
    finish(outcomes, rest, healthy && ok)
}

fn none_accepted(label: &str) -> RecipientOutcome {
    RecipientOutcome::Temporary {
        reason: format!("4.4.2 {label}: no recipient accepted"),
    }
}

/// MAIL, every RCPT and DATA in one write (one TLS record), then the
/// replies in order. Every command of the group is answered, also after a
/// refused MAIL (RCPT and DATA then get `503`), so all replies are read to
/// keep the connection in step. A `354` to DATA although MAIL or every
/// RCPT was refused gets an empty message (`.` alone, RFC 2920 §3.1)
/// and the transaction counts as failed.
async fn transact_pipelined<S: AsyncRead + AsyncWrite + Unpin + Send>(
    conn: &mut Conn<S>,
    mail: String,
    mut outcomes: Slots,
    cfg: &DeliveryConfig,
    job: &DeliveryJob<'_>,
    label: &str,
) -> (Vec<(String, RecipientOutcome)>, bool) {
    let t = &cfg.timeouts;
    let mut group = Vec::with_capacity(outcomes.len() + 2);
    group.push(mail);
    group.extend(outcomes.iter().map(|(rcpt, _)| format!("RCPT TO:<{rcpt}>")));
    group.push("DATA".to_string());
    if let Err(e) = conn.send_group(&group, t.command).await {
        return finish(outcomes, io_fail(label, e, "MAIL"), false);
    }
    let mail_reply = match conn.read_reply(t.command, "the reply to MAIL").await {
        Ok(r) => r,
        Err(e) => return finish(outcomes, io_fail(label, e, "MAIL"), false),
    };
    if !usable(&mail_reply) {
        return finish(outcomes, outcome_of(&mail_reply, label), false);
    }
    let mail_ok = mail_reply.is_positive();
    let mut accepted = 0usize;
    for i in 0..outcomes.len() {
        let r = match conn.read_reply(t.command, "the reply to RCPT").await {
            Ok(r) => r,
            Err(e) => return finish(outcomes, io_fail(label, e, "RCPT"), false),
        };
        if !usable(&r) {
            // The server is going away: no more replies will come.
            let rest = if mail_ok {
                outcome_of(&r, label)
            } else {
                outcome_of(&mail_reply, label)
            };
            if mail_ok {
                outcomes[i].1 = Some(rest.clone());
            }
            return finish(outcomes, rest, false);
        }
        if !mail_ok {
            // `503` after the refused MAIL: the MAIL reply decides.
            continue;
        }
        if r.is_positive() {
            accepted += 1;
        } else {
            outcomes[i].1 = Some(outcome_of(&r, label));
        }
    }
    let data = match conn.read_reply(t.command, "the reply to DATA").await {
        Ok(r) => r,
        Err(e) => return finish(outcomes, io_fail(label, e, "DATA"), false),
    };
    if !mail_ok || accepted == 0 {
        let mut healthy = usable(&data);
        if data.code == 354 {
            let ended = conn
                .send_body(crate::transport::MessageBody::Memory(b""), t.data, t.data)
                .await;
            healthy = matches!(ended, Ok(r) if usable(&r));
        }
        let rest = if mail_ok {
            none_accepted(label)
        } else {
            outcome_of(&mail_reply, label)
        };
        return finish(outcomes, rest, healthy);
    }
    if data.code != 354 {
        return finish(outcomes, outcome_of(&data, label), usable(&data));
    }
    let (rest, ok) = body_outcome(conn, cfg, job, label).await;
    finish(outcomes, rest, ok)
}

/// Streams the body after a `354` and turns the reply to the end of data
/// into the outcome of the accepted recipients.
async fn body_outcome<S: AsyncRead + AsyncWrite + Unpin + Send>(
    conn: &mut Conn<S>,
    cfg: &DeliveryConfig,
    job: &DeliveryJob<'_>,
    label: &str,
) -> (RecipientOutcome, bool) {
    let t = &cfg.timeouts;
    match conn.send_body(job.body, t.data, t.data).await {
        Ok(r) if r.is_positive() => (RecipientOutcome::Delivered, true),
        Ok(r) => (outcome_of(&r, label), usable(&r)),
        Err(SessionError::Spool(e)) => (
            RecipientOutcome::Temporary {
                reason: format!("4.3.0 cannot read the message from the spool: {e}"),
            },
            false,
        ),
        Err(e) => (io_fail(label, e, "end of data"), false),
    }
}
