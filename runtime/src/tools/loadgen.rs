//! `tlsgate loadgen`: drives any SMTP server with N concurrent sessions of
//! M messages each and reports messages/s and latency percentiles.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::client::Client;

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
        )
    }
}

/// A message of about `size` bytes: a few headers and 76-character lines.
pub fn make_message(size: usize, from: &str, to: &str) -> Vec<u8> {
    let mut m = format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: tlsgate loadgen\r\nMessage-ID: <loadgen@tlsgate>\r\n\r\n"
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

async fn one_session(
    args: &LoadgenArgs,
    body: &[u8],
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
) -> Result<(Vec<Duration>, usize), String> {
    let mut c = Client::connect(args.target, None)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let greet = c.read_reply().await.map_err(|e| e.to_string())?;
    if greet.code != 220 {
        return Err(format!("greeting {} {}", greet.code, greet.text));
    }
    let ehlo = format!("EHLO {}", args.ehlo);
    c.command(&ehlo).await.map_err(|e| e.to_string())?;
    if let Some(cfg) = tls {
        c = c
            .starttls(&args.ehlo, cfg)
            .await
            .map_err(|e| format!("starttls: {e}"))?;
        c.command(&ehlo).await.map_err(|e| e.to_string())?;
    }
    let mut lat = Vec::with_capacity(args.messages);
    let mut failed = 0;
    for _ in 0..args.messages {
        let t = Instant::now();
        let r = c
            .send_mail(&args.from, &[&args.to], body)
            .await
            .map_err(|e| e.to_string())?;
        if r.code == 250 {
            lat.push(t.elapsed());
        } else {
            failed += 1;
            let _ = c.command("RSET").await;
        }
    }
    let _ = c.command("QUIT").await;
    Ok((lat, failed))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs the load and returns the figures.
pub async fn run(args: LoadgenArgs) -> Result<LoadReport, String> {
    let tls = if args.starttls {
        Some(super::danger::accept_any_certificate().map_err(|e| e.to_string())?)
    } else {
        None
    };
    let body = std::sync::Arc::new(make_message(args.size, &args.from, &args.to));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.sessions {
        let args = args.clone();
        let body = body.clone();
        let tls = tls.clone();
        tasks.spawn(async move { one_session(&args, &body, tls).await });
    }
    let mut all = Vec::new();
    let mut failed = 0;
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok((lat, f))) => {
                all.extend(lat);
                failed += f;
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "session failed");
                failed += args.messages;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    let elapsed = start.elapsed();
    all.sort_unstable();
    Ok(LoadReport {
        sent: all.len(),
        failed,
        elapsed,
        p50: percentile(&all, 0.50),
        p90: percentile(&all, 0.90),
        p99: percentile(&all, 0.99),
    })
}
