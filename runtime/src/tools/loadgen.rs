//! `tlsgate loadgen`: drives any SMTP server with N concurrent sessions of
//! M messages each and reports messages/s and latency percentiles.
//!
//! For soak tests it can keep the sessions going for a while
//! (`--duration`) and run hostile connections beside them: slow clients
//! that drip one byte at a time (`--slow`, half inside a command line,
//! half inside DATA) and abusive ones (`--abusive`: garbage commands until
//! the error limit, oversized lines, early talkers, connect-and-close, a
//! garbage TLS handshake after STARTTLS). How each hostile connection
//! ended is tallied by the server's reply, and every message the server
//! acknowledged is reported by its `Message-ID`, so a caller can check
//! that none was lost.
//!
//! Like real MTAs, the sessions send MAIL, RCPT and DATA in one write when
//! the server's EHLO offers PIPELINING (RFC 2920); [`LoadgenCmd`]'s
//! `--no-pipelining` measures lockstep clients instead.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::client::{tcp_connect, Client, ClientReply};

/// `tlsgate loadgen` on the command line: [`LoadgenArgs`] and the client
/// behaviour that library callers leave at its default.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadgenCmd {
    #[command(flatten)]
    pub args: LoadgenArgs,
    /// Send MAIL, RCPT and DATA one by one, waiting for each reply, also
    /// when the server offers PIPELINING.
    #[arg(long)]
    pub no_pipelining: bool,
}

/// Runs [`LoadgenCmd`].
pub async fn run_cmd(cmd: LoadgenCmd) -> Result<LoadReport, String> {
    run_with(cmd.args, !cmd.no_pipelining).await
}

/// Options of `tlsgate loadgen`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadgenArgs {
    /// The SMTP server to drive.
    #[arg(long)]
    pub target: SocketAddr,
    /// Concurrent sessions.
    #[arg(long, default_value_t = 20)]
    pub sessions: usize,
    /// Messages per session.
    #[arg(long, default_value_t = 100)]
    pub messages: usize,
    /// Message size in bytes (headers included).
    #[arg(long, default_value_t = 5 * 1024)]
    pub size: usize,
    /// Use STARTTLS (the server's certificate is not checked).
    #[arg(long)]
    pub starttls: bool,
    /// Envelope sender.
    #[arg(long, default_value = "loadgen@loadgen.example")]
    pub from: String,
    /// Envelope recipient.
    #[arg(long, default_value = "sink@example.com")]
    pub to: String,
    /// Name sent in EHLO (and as TLS server name).
    #[arg(long, default_value = "loadgen.example")]
    pub ehlo: String,
    #[command(flatten)]
    pub soak: SoakArgs,
}

/// Soak options of `tlsgate loadgen`: duration, hostile connections,
/// source addresses.
#[derive(Debug, Clone, clap::Args)]
pub struct SoakArgs {
    /// Keep going for this many seconds: each of the `--sessions` workers
    /// opens a new session of `--messages` messages when one ends
    /// (default: one session per worker).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<u64>,
    /// Slow connections held open beside the sessions: each drips one byte
    /// every `--drip-millis` (half of them inside a command line, half
    /// inside DATA) and reconnects when the server cuts it.
    #[arg(long, default_value_t = 0)]
    pub slow: usize,
    /// Interval between the bytes of a slow connection.
    #[arg(long, default_value_t = 500, value_name = "MS")]
    pub drip_millis: u64,
    /// Abusive connections beside the sessions, each cycling through
    /// garbage commands until the error limit, an oversized line, talking
    /// before the greeting, connect-and-close, and a garbage TLS handshake
    /// after STARTTLS.
    #[arg(long, default_value_t = 0)]
    pub abusive: usize,
    /// Pause of an abusive connection between two attacks.
    #[arg(long, default_value_t = 500, value_name = "MS")]
    pub abuse_pause_millis: u64,
    /// Local address to connect from (repeat to spread connections over
    /// several, e.g. 127.0.0.2 … on loopback, round robin).
    #[arg(long = "source", value_name = "IP")]
    pub sources: Vec<IpAddr>,
}

impl Default for SoakArgs {
    fn default() -> Self {
        SoakArgs {
            duration: None,
            slow: 0,
            drip_millis: 500,
            abusive: 0,
            abuse_pause_millis: 500,
            sources: Vec::new(),
        }
    }
}

/// What a run measured.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadReport {
    pub sent: usize,
    pub failed: usize,
    pub elapsed: Duration,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    /// Sessions that ran to the end (QUIT).
    pub sessions: usize,
    /// Why sessions failed (their messages count as failed).
    pub session_errors: Vec<String>,
    /// `Message-ID` of every message the server answered with `250`.
    pub acknowledged: Vec<String>,
    /// How slow connections ended: `421 4.4.2` (the server's reply code
    /// and enhanced status), `closed`, `reset`, … → count.
    pub slow: BTreeMap<String, usize>,
    /// How abusive connections ended, by kind of attack.
    pub abusive: BTreeMap<String, usize>,
    /// Slow connections still open when the run ended: the server never
    /// cut them.
    pub slow_open_at_end: usize,
}

impl LoadReport {
    pub fn messages_per_second(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sent {} messages ({} failed) in {:.2}s: {:.1} messages/s; latency p50 {:.2}ms p90 {:.2}ms p99 {:.2}ms",
            self.sent,
            self.failed,
            self.elapsed.as_secs_f64(),
            self.messages_per_second(),
            self.p50.as_secs_f64() * 1e3,
            self.p90.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3
        )?;
        write!(
            f,
            "\n{} sessions completed, {} failed",
            self.sessions,
            self.session_errors.len()
        )?;
        if let Some(e) = self.session_errors.first() {
            write!(f, " (first: {e})")?;
        }
        for (what, tally) in [("slow", &self.slow), ("abusive", &self.abusive)] {
            if !tally.is_empty() {
                let parts: Vec<String> = tally.iter().map(|(k, n)| format!("{k}: {n}")).collect();
                write!(f, "\n{what} connections ended: {}", parts.join(", "))?;
            }
        }
        if self.slow_open_at_end > 0 {
            write!(
                f,
                "\n{} slow connections still open at the end (never cut)",
                self.slow_open_at_end
            )?;
        }
        Ok(())
    }
}

/// A message of about `size` bytes: a few headers and 76-character lines.
pub fn make_message(size: usize, from: &str, to: &str) -> Vec<u8> {
    make_message_with_id(size, from, to, "loadgen@tlsgate")
}

/// [`make_message`] with the `Message-ID` `<id>`.
pub fn make_message_with_id(size: usize, from: &str, to: &str, id: &str) -> Vec<u8> {
    let mut m = format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: tlsgate loadgen\r\nMessage-ID: <{id}>\r\n\r\n"
    )
    .into_bytes();
    let line = [b'x'; 76];
    while m.len() + 78 <= size {
        m.extend_from_slice(&line);
        m.extend_from_slice(b"\r\n");
    }
    let rest = size.saturating_sub(m.len() + 2);
    m.extend(std::iter::repeat_n(b'y', rest));
    m.extend_from_slice(b"\r\n");
    m
}

/// What every worker shares.
struct Shared {
    args: LoadgenArgs,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Distinguishes the `Message-ID`s of this run from other runs'.
    run_id: String,
    next_source: AtomicUsize,
    next_message: AtomicUsize,
    /// Pipeline when the server offers it.
    pipelining: bool,
}

impl Shared {
    fn source(&self) -> Option<IpAddr> {
        let s = &self.args.soak.sources;
        if s.is_empty() {
            return None;
        }
        Some(s[self.next_source.fetch_add(1, Ordering::Relaxed) % s.len()])
    }
}

/// What one good worker measured.
#[derive(Default)]
struct GoodResult {
    latencies: Vec<Duration>,
    failed: usize,
    sessions: usize,
    errors: Vec<String>,
    acknowledged: Vec<String>,
}

/// A good session fails when a reply or a handshake takes longer than
/// this (a server that keeps a client waiting a minute has failed it; the
/// load generator never hangs on one).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

async fn one_session(shared: &Shared, out: &mut GoodResult) -> Result<(), String> {
    let args = &shared.args;
    let mut c = Client::connect(args.target, shared.source())
        .await
        .map_err(|e| format!("connect: {e}"))?
        .with_reply_timeout(REPLY_TIMEOUT);
    let greet = c.read_reply().await.map_err(|e| e.to_string())?;
    if greet.code != 220 {
        return Err(format!("greeting {} {}", greet.code, greet.text));
    }
    let ehlo = format!("EHLO {}", args.ehlo);
    let mut offer = c.command(&ehlo).await.map_err(|e| e.to_string())?;
    if let Some(cfg) = shared.tls.clone() {
        c = c
            .starttls(&args.ehlo, cfg)
            .await
            .map_err(|e| format!("starttls: {e}"))?;
        offer = c.command(&ehlo).await.map_err(|e| e.to_string())?;
    }
    let pipelining = shared.pipelining && offers(&offer, "PIPELINING");
    for _ in 0..args.messages {
        let n = shared.next_message.fetch_add(1, Ordering::Relaxed);
        let id = format!("loadgen.{}.{n}@tlsgate", shared.run_id);
        let body = make_message_with_id(args.size, &args.from, &args.to, &id);
        let t = Instant::now();
        let r = if pipelining {
            c.send_mail(&args.from, &[&args.to], &body).await
        } else {
            send_mail_lockstep(&mut c, &args.from, &args.to, &body).await
        }
        .map_err(|e| format!("message {id}: {e}"))?;
        if r.code == 250 {
            out.latencies.push(t.elapsed());
            out.acknowledged.push(format!("<{id}>"));
        } else {
            out.failed += 1;
            let _ = c.command("RSET").await;
        }
    }
    let bye = c.command("QUIT").await.map_err(|e| format!("QUIT: {e}"))?;
    if bye.code != 221 {
        return Err(format!("QUIT answered {} {}", bye.code, bye.text));
    }
    Ok(())
}

/// True when the EHLO reply lists `keyword` (its first line is the
/// greeting).
fn offers(ehlo: &ClientReply, keyword: &str) -> bool {
    ehlo.text.lines().skip(1).any(|l| {
        l.split(' ')
            .next()
            .is_some_and(|w| w.eq_ignore_ascii_case(keyword))
    })
}

/// MAIL, RCPT and DATA one at a time, each waiting for its reply; returns
/// the reply to the end of data (or the first refusal).
async fn send_mail_lockstep(
    c: &mut Client,
    from: &str,
    to: &str,
    body: &[u8],
) -> io::Result<ClientReply> {
    let r = c.command(&format!("MAIL FROM:<{from}>")).await?;
    if !r.is_positive() {
        return Ok(r);
    }
    let r = c.command(&format!("RCPT TO:<{to}>")).await?;
    if !r.is_positive() {
        return Ok(r);
    }
    let r = c.command("DATA").await?;
    if r.code != 354 {
        return Ok(r);
    }
    c.send_data(body).await
}

/// Runs sessions until `until` (or one when `None`).
async fn good_worker(shared: Arc<Shared>, until: Option<Instant>) -> GoodResult {
    let mut out = GoodResult::default();
    loop {
        let before = out.acknowledged.len() + out.failed;
        match one_session(&shared, &mut out).await {
            Ok(()) => out.sessions += 1,
            Err(e) => {
                tracing::warn!(error = %e, "session failed");
                let done = out.acknowledged.len() + out.failed - before;
                out.failed += shared.args.messages.saturating_sub(done);
                out.errors.push(e);
                if until.is_some() {
                    // No hot loop against a server that refuses us.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        if until.is_none_or(|u| Instant::now() >= u) {
            return out;
        }
    }
}

/// A raw connection for the hostile clients: cancel-safe reads (a reply
/// may arrive while a byte is being dripped) and no TLS.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// A reply as `code enhanced-status` (`421 4.4.2`), the label tallies use.
fn label(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    let mut words = text.split_whitespace();
    let code: String = words
        .next()
        .unwrap_or("")
        .chars()
        .take(3)
        .collect::<String>();
    match words.next() {
        Some(w) if w.len() >= 5 && w.chars().all(|c| c.is_ascii_digit() || c == '.') => {
            format!("{code} {w}")
        }
        _ => code,
    }
}

impl Raw {
    async fn connect(target: SocketAddr, source: Option<IpAddr>) -> io::Result<Raw> {
        Ok(Raw {
            stream: tcp_connect(target, source).await?,
            buf: Vec::new(),
        })
    }

    /// The label of the next complete final reply line in the buffer.
    fn take_reply(&mut self) -> Option<String> {
        loop {
            let end = self.buf.iter().position(|&b| b == b'\n')?;
            let line: Vec<u8> = self.buf.drain(..=end).collect();
            if line.get(3) != Some(&b'-') {
                return Some(label(&line));
            }
        }
    }

    /// One read (cancel-safe); `Ok(0)` at the end of the stream.
    async fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 2048];
        let n = self.stream.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// The next reply's label; `None` when the server closed.
    async fn reply(&mut self) -> io::Result<Option<String>> {
        loop {
            if let Some(r) = self.take_reply() {
                return Ok(Some(r));
            }
            if self.buf.len() > 64 * 1024 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "endless reply"));
            }
            if self.fill().await? == 0 {
                return Ok(None);
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Sends a command and returns the reply's label (`closed` at EOF).
    async fn command(&mut self, line: &str) -> io::Result<String> {
        self.send(format!("{line}\r\n").as_bytes()).await?;
        Ok(self.reply().await?.unwrap_or_else(|| "closed".into()))
    }

    /// After the server's last words: the reply it sent, if any, then
    /// whether it closed (`reset` when the connection was reset).
    async fn final_words(&mut self) -> String {
        let r = tokio::time::timeout(Duration::from_secs(30), self.reply()).await;
        match r {
            Ok(Ok(Some(l))) => l,
            Ok(Ok(None)) => "closed".into(),
            Ok(Err(_)) => "reset".into(),
            Err(_) => "hang".into(),
        }
    }

    /// Reads until the server closes (bounded); true if it did.
    async fn until_closed(&mut self, limit: Duration) -> bool {
        let r = tokio::time::timeout(limit, async {
            loop {
                match self.fill().await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => self.buf.clear(),
                }
            }
        })
        .await;
        r.is_ok()
    }
}

fn tally(map: &mut BTreeMap<String, usize>, key: String) {
    *map.entry(key).or_insert(0) += 1;
}

/// One slow connection: greeting, EHLO, (MAIL, RCPT, DATA,) then one byte
/// every `drip` until the server ends it. Returns how it ended.
async fn slow_session(shared: &Shared, in_data: bool, n: usize) -> io::Result<String> {
    let args = &shared.args;
    let mut c = Raw::connect(args.target, shared.source()).await?;
    let greet = c.reply().await?.unwrap_or_else(|| "closed".into());
    if !greet.starts_with("220") {
        return Ok(format!("greeting {greet}"));
    }
    c.command(&format!("EHLO {}", args.ehlo)).await?;
    if in_data {
        for (line, want) in [
            (format!("MAIL FROM:<{}>", args.from), "250"),
            (format!("RCPT TO:<{}>", args.to), "250"),
            ("DATA".to_string(), "354"),
        ] {
            let r = c.command(&line).await?;
            if !r.starts_with(want) {
                return Ok(format!("refused before the drip: {r}"));
            }
        }
        let id = format!("slow.{}.{n}@tlsgate", shared.run_id);
        c.send(format!("Message-ID: <{id}>\r\nSubject: slow\r\n\r\n").as_bytes())
            .await?;
    } else {
        c.send(b"NOOP ").await?;
    }
    let drip = Duration::from_millis(args.soak.drip_millis.max(1));
    loop {
        tokio::select! {
            biased;
            r = c.fill() => match r {
                Ok(0) => return Ok("closed".into()),
                Ok(_) => {
                    if let Some(l) = c.take_reply() {
                        // The server's last words; then it must close.
                        let closed = c.until_closed(Duration::from_secs(30)).await;
                        return Ok(if closed { l } else { format!("{l} but not closed") });
                    }
                }
                Err(_) => return Ok("reset".into()),
            },
            _ = tokio::time::sleep(drip) => {
                if c.send(b"x").await.is_err() {
                    return Ok(c.final_words().await);
                }
            }
        }
    }
}

async fn slow_worker(
    shared: Arc<Shared>,
    i: usize,
    mut stop: watch::Receiver<bool>,
) -> (Tally, usize) {
    let mut t = Tally::new();
    let mut open = 0;
    let mut n = 0;
    while !*stop.borrow() {
        n += 1;
        let session = slow_session(&shared, i % 2 == 1, i * 1_000_000 + n);
        let r = tokio::select! {
            r = session => r,
            _ = stop.wait_for(|s| *s) => {
                open = 1;
                break;
            }
        };
        match r {
            Ok(label) => tally(&mut t, label),
            Err(e) => {
                tally(&mut t, format!("error: {}", e.kind()));
                tokio::time::sleep(Duration::from_millis(args_pause(&shared))).await;
            }
        }
    }
    (t, open)
}

fn args_pause(shared: &Shared) -> u64 {
    shared.args.soak.abuse_pause_millis.max(10)
}

type Tally = BTreeMap<String, usize>;

/// The kinds of abuse, cycled through by each abusive connection.
const ABUSE_KINDS: usize = 5;

/// One abusive session of kind `kind`; returns `kind: how it ended`.
async fn abusive_session(shared: &Shared, kind: usize) -> io::Result<String> {
    let args = &shared.args;
    let mut c = Raw::connect(args.target, shared.source()).await?;
    let ehlo = format!("EHLO {}", args.ehlo);
    match kind {
        0 => {
            // Garbage commands until the server gives up on us.
            c.reply().await?;
            for _ in 0..1000 {
                let r = c.command("XYZZY plugh").await?;
                if !r.starts_with("500") {
                    let closed = c.until_closed(Duration::from_secs(30)).await;
                    let end = if closed { "" } else { " but not closed" };
                    return Ok(format!("garbage: {r}{end}"));
                }
            }
            Ok("garbage: never cut off".into())
        }
        1 => {
            // An oversized command line; the session must go on.
            c.reply().await?;
            c.command(&ehlo).await?;
            let mut line = b"NOOP ".to_vec();
            line.extend(std::iter::repeat_n(b'a', 10_000));
            line.extend_from_slice(b"\r\n");
            c.send(&line).await?;
            let r = c.reply().await?.unwrap_or_else(|| "closed".into());
            let q = c.command("QUIT").await?;
            Ok(format!("long line: {r}, then {q}"))
        }
        2 => {
            // Talks before the greeting (and pipelines past EHLO).
            c.send(format!("{ehlo}\r\nMAIL FROM:<{}>\r\n", args.from).as_bytes())
                .await?;
            let mut replies = Vec::new();
            while let Ok(Some(r)) = c.reply().await {
                replies.push(r);
                if replies.len() > 10 {
                    break;
                }
            }
            Ok(format!("early talker: {}", replies.join(", ")))
        }
        3 => {
            drop(c);
            Ok("connect-and-close".into())
        }
        _ => {
            // STARTTLS, then bytes that are not a TLS handshake.
            c.reply().await?;
            c.command(&ehlo).await?;
            let r = c.command("STARTTLS").await?;
            if !r.starts_with("220") {
                return Ok(format!("tls garbage: STARTTLS {r}"));
            }
            c.send(b"\x16\x03\x01\x00\x10this is not TLS\r\nQUIT\r\n")
                .await?;
            let closed = c.until_closed(Duration::from_secs(30)).await;
            Ok(format!(
                "tls garbage: {}",
                if closed { "closed" } else { "hang" }
            ))
        }
    }
}

async fn abusive_worker(shared: Arc<Shared>, i: usize, mut stop: watch::Receiver<bool>) -> Tally {
    let mut t = Tally::new();
    let pause = Duration::from_millis(args_pause(&shared));
    let mut round = 0;
    while !*stop.borrow() {
        let kind = (i + round) % ABUSE_KINDS;
        round += 1;
        let session =
            tokio::time::timeout(Duration::from_secs(120), abusive_session(&shared, kind));
        let r = tokio::select! {
            r = session => r,
            _ = stop.wait_for(|s| *s) => break,
        };
        match r {
            Ok(Ok(label)) => tally(&mut t, label),
            Ok(Err(e)) => tally(&mut t, format!("kind {kind}: error: {}", e.kind())),
            Err(_) => tally(&mut t, format!("kind {kind}: hang")),
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    t
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs the load and returns the figures (pipelining when offered).
pub async fn run(args: LoadgenArgs) -> Result<LoadReport, String> {
    run_with(args, true).await
}

/// Runs the load; `pipelining`: pipeline when the server offers it.
pub async fn run_with(args: LoadgenArgs, pipelining: bool) -> Result<LoadReport, String> {
    let tls = if args.starttls {
        Some(super::danger::accept_any_certificate().map_err(|e| e.to_string())?)
    } else {
        None
    };
    let run_id = format!(
        "{}.{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let shared = Arc::new(Shared {
        args: args.clone(),
        tls,
        run_id,
        next_source: AtomicUsize::new(0),
        next_message: AtomicUsize::new(0),
        pipelining,
    });
    let start = Instant::now();
    let until = args.soak.duration.map(|s| start + Duration::from_secs(s));
    let (stop, stop_rx) = watch::channel(false);
    let mut hostile = tokio::task::JoinSet::new();
    for i in 0..args.soak.slow {
        let w = slow_worker(shared.clone(), i, stop_rx.clone());
        hostile.spawn(async move {
            let (t, open) = w.await;
            (true, t, open)
        });
    }
    for i in 0..args.soak.abusive {
        let w = abusive_worker(shared.clone(), i, stop_rx.clone());
        hostile.spawn(async move { (false, w.await, 0) });
    }
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.sessions {
        tasks.spawn(good_worker(shared.clone(), until));
    }
    let mut all = Vec::new();
    let mut report = LoadReport {
        sent: 0,
        failed: 0,
        elapsed: Duration::ZERO,
        p50: Duration::ZERO,
        p90: Duration::ZERO,
        p99: Duration::ZERO,
        sessions: 0,
        session_errors: Vec::new(),
        acknowledged: Vec::new(),
        slow: BTreeMap::new(),
        abusive: BTreeMap::new(),
        slow_open_at_end: 0,
    };
    while let Some(r) = tasks.join_next().await {
        let r = r.map_err(|e| e.to_string())?;
        all.extend(r.latencies);
        report.failed += r.failed;
        report.sessions += r.sessions;
        report.session_errors.extend(r.errors);
        report.acknowledged.extend(r.acknowledged);
    }
    if let Some(u) = until {
        // The hostile connections run for the whole duration, also when
        // there are no (or only quick) sessions.
        tokio::time::sleep_until(u.into()).await;
    }
    report.elapsed = start.elapsed();
    let _ = stop.send(true);
    while let Some(r) = hostile.join_next().await {
        let (slow, t, open) = r.map_err(|e| e.to_string())?;
        report.slow_open_at_end += open;
        let into = if slow {
            &mut report.slow
        } else {
            &mut report.abusive
        };
        for (k, n) in t {
            *into.entry(k).or_insert(0) += n;
        }
    }
    all.sort_unstable();
    report.sent = all.len();
    report.p50 = percentile(&all, 0.50);
    report.p90 = percentile(&all, 0.90);
    report.p99 = percentile(&all, 0.99);
    Ok(report)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use tokio::net::TcpListener;

    /// A minimal SMTP server offering PIPELINING (or not) that records the
    /// command lines each read brought.
    async fn server(pipelining: bool) -> (SocketAddr, Arc<Mutex<Vec<Vec<String>>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let reads = Arc::new(Mutex::new(Vec::new()));
        let r = reads.clone();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"220 test ESMTP\r\n").await.unwrap();
            let mut buf = Vec::new();
            let mut in_data = false;
            loop {
                let mut tmp = [0u8; 65536];
                let n = s.read(&mut tmp).await.unwrap();
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&tmp[..n]);
                let mut out = String::new();
                let mut group = Vec::new();
                while let Some(i) = buf.iter().position(|&c| c == b'\n') {
                    let line: Vec<u8> = buf.drain(..=i).collect();
                    let line = String::from_utf8_lossy(&line).trim_end().to_string();
                    if in_data {
                        if line == "." {
                            in_data = false;
                            out.push_str("250 queued\r\n");
                        }
                        continue;
                    }
                    group.push(line.clone());
                    out.push_str(match line.split(' ').next().unwrap_or("") {
                        "EHLO" if pipelining => "250-test\r\n250 PIPELINING\r\n",
                        "EHLO" => "250-test\r\n250 SIZE 1000000\r\n",
                        "DATA" => {
                            in_data = true;
                            "354 go on\r\n"
                        }
                        "QUIT" => "221 bye\r\n",
                        _ => "250 ok\r\n",
                    });
                }
                if !group.is_empty() {
                    r.lock().unwrap().push(group);
                }
                s.write_all(out.as_bytes()).await.unwrap();
            }
        });
        (addr, reads)
    }

    fn args(target: SocketAddr) -> LoadgenArgs {
        LoadgenArgs {
            target,
            sessions: 1,
            messages: 2,
            size: 1024,
            starttls: false,
            from: "a@gen.test".into(),
            to: "b@sink.test".into(),
            ehlo: "gen.test".into(),
            soak: SoakArgs::default(),
        }
    }

    async fn groups(offer: bool, pipelining: bool) -> Vec<Vec<String>> {
        let (addr, reads) = server(offer).await;
        let report = run_with(args(addr), pipelining).await.unwrap();
        assert_eq!((report.sent, report.failed), (2, 0), "{report}");
        let g = reads.lock().unwrap().clone();
        g
    }

    #[tokio::test]
    async fn pipelines_when_offered() {
        let g = groups(true, true).await;
        let mail: Vec<_> = g.iter().filter(|g| g[0].starts_with("MAIL")).collect();
        assert_eq!(mail.len(), 2, "{g:?}");
        for m in mail {
            assert_eq!(m.len(), 3, "{g:?}");
            assert_eq!(m[2], "DATA");
        }
    }

    #[tokio::test]
    async fn lockstep_when_not_offered_or_not_wanted() {
        for (offer, wanted) in [(false, true), (true, false)] {
            let g = groups(offer, wanted).await;
            assert!(g.iter().all(|g| g.len() == 1), "{g:?}");
            assert_eq!(g.iter().filter(|g| g[0] == "DATA").count(), 2, "{g:?}");
        }
    }
}
