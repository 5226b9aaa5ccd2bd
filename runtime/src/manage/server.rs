//! `tlsgate manage`: the management listener (TLS + token).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use policy::blob::PublicKey;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use super::protocol::{self, Request, MAX_LINE};

/// Arguments of `tlsgate manage`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:7025")]
    pub listen: SocketAddr,
    /// File holding the shared secret clients must present.
    #[arg(long)]
    pub token_file: PathBuf,
    /// The relay's policy file (where `policy push` installs).
    #[arg(long)]
    pub policy: PathBuf,
    /// Trusted policy signing keys, one `tlsgate-ed25519 <hex>` per line.
    #[arg(long)]
    pub trusted_keys: PathBuf,
    /// Certificate chain (PEM) of the listener; with --tls-key.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of the listener; with --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Directory for the self-signed listener certificate when none is given.
    #[arg(long, default_value = ".")]
    pub state_dir: PathBuf,
    /// The relay's spool directory (for `queue list`).
    #[arg(long)]
    pub spool_dir: Option<PathBuf>,
    /// File holding the relay's process id (for `status` and SIGHUP).
    #[arg(long)]
    pub relay_pid_file: Option<PathBuf>,
    /// The relay's configuration file.
    #[arg(long)]
    pub relay_config: Option<PathBuf>,
}

/// Everything a request handler needs.
#[derive(Debug)]
pub struct Context {
    pub args: Args,
    pub token_digest: ring::digest::Digest,
    pub trusted: Vec<PublicKey>,
    pub started: Instant,
}

/// Runs the management listener until it fails (or `poweroff` exits the
/// process with [`crate::init::POWEROFF_EXIT_CODE`]).
pub async fn cli(args: Args) -> ExitCode {
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tlsgate manage: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on `{}`: {e}", args.listen))?;
    let (acceptor, fingerprint) = tls_acceptor(&args)?;
    eprintln!(
        "tlsgate manage: listening on {} (certificate sha256 {fingerprint})",
        args.listen
    );
    let ctx = Arc::new(context(args)?);
    serve(listener, acceptor, ctx).await
}

/// Builds the shared context (reads the token and the trusted keys).
pub fn context(args: Args) -> Result<Context, String> {
    let token = std::fs::read_to_string(&args.token_file)
        .map_err(|e| format!("{}: {e}", args.token_file.display()))?;
    let token = token.trim();
    if token.len() < 16 {
        return Err(format!(
            "{}: the token must be at least 16 characters",
            args.token_file.display()
        ));
    }
    let trusted = super::read_trusted_keys(&args.trusted_keys)?;
    Ok(Context {
        token_digest: ring::digest::digest(&ring::digest::SHA256, token.as_bytes()),
        trusted,
        started: Instant::now(),
        args,
    })
}

/// Accepts connections until the listener fails; at most four at a time.
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ctx: Arc<Context>,
) -> Result<(), String> {
    let slots = Arc::new(Semaphore::new(4));
    loop {
        let (tcp, peer) = listener
            .accept()
            .await
            .map_err(|e| format!("accept: {e}"))?;
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(tcp);
            continue;
        };
        let acceptor = acceptor.clone();
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let work = async {
                let tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
                handle(tls, &ctx).await
            };
            match tokio::time::timeout(Duration::from_secs(120), work).await {
                Ok(Ok(Some(Request::PowerOff))) => {
                    eprintln!("tlsgate manage: poweroff requested by {peer}");
                    std::process::exit(crate::init::POWEROFF_EXIT_CODE);
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => eprintln!("tlsgate manage: {peer}: {e}"),
                Err(_) => eprintln!("tlsgate manage: {peer}: timed out"),
            }
        });
    }
}

async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> Result<String, String> {
    let mut buf = Vec::new();
    let n = (&mut *r)
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut buf)
        .await
        .map_err(|e| e.to_string())?;
    if n == 0 {
        return Err("connection closed".into());
    }
    if buf.last() != Some(&b'\n') {
        return Err("line too long".into());
    }
    String::from_utf8(buf).map_err(|_| "line is not utf-8".into())
}

/// Serves one request on an established stream; returns the request when
/// it was carried out.
pub async fn handle<S>(stream: S, ctx: &Context) -> Result<Option<Request>, String>
where
    S: tokio::io::AsyncRead + AsyncWrite + Unpin,
{
    let mut stream = BufReader::new(stream);
    let greeting = read_line(&mut stream).await?;
    let token = match protocol::parse_greeting(greeting.trim_end()) {
        Ok(t) => t,
        Err(e) => return reply(&mut stream, &[], Err(e)).await.map(|_| None),
    };
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    if digest.as_ref() != ctx.token_digest.as_ref() {
        return reply(&mut stream, &[], Err("authentication failed".into()))
            .await
            .map(|_| None);
    }
    let line = read_line(&mut stream).await?;
    let request = match protocol::parse_request(line.trim_end()) {
        Ok(r) => r,
        Err(e) => return reply(&mut stream, &[], Err(e)).await.map(|_| None),
    };
    let (lines, outcome) = match &request {
        Request::Status => (status_lines(ctx), Ok(String::new())),
        Request::PolicyPush { len } => {
            let mut blob = vec![0u8; *len];
            stream
                .read_exact(&mut blob)
                .await
                .map_err(|e| format!("reading the policy: {e}"))?;
            (Vec::new(), push(ctx, &blob))
        }
        Request::QueueList => queue_list(ctx).await,
        Request::CheckTls { domain } => check_tls(ctx, domain).await,
        Request::PowerOff => (Vec::new(), Ok("powering off".into())),
    };
    let ok = outcome.is_ok();
    reply(&mut stream, &lines, outcome).await?;
    Ok(ok.then_some(request))
}

async fn reply<S: AsyncWrite + Unpin>(
    s: &mut S,
    lines: &[String],
    outcome: Result<String, String>,
) -> Result<(), String> {
    let mut out = String::new();
    for l in lines {
        out.push_str(l);
        out.push('\n');
    }
    match outcome {
        Ok(summary) if summary.is_empty() => out.push_str("ok\n"),
        Ok(summary) => out.push_str(&format!("ok {summary}\n")),
        Err(e) => out.push_str(&format!("error: {e}\n")),
    }
    s.write_all(out.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    s.flush().await.map_err(|e| e.to_string())?;
    s.shutdown().await.map_err(|e| e.to_string())
}

fn relay_pid(ctx: &Context) -> Option<i32> {
    let path = ctx.args.relay_pid_file.as_ref()?;
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn vm_rss_kb(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// The lines of `status`.
pub fn status_lines(ctx: &Context) -> Vec<String> {
    let mut out = Vec::new();
    match super::policy_in_force(&ctx.args.policy, &ctx.trusted) {
        Some(h) => {
            out.push(format!("policy serial {}", h.serial));
            out.push(format!("policy key {}", h.key_id_hex()));
            out.push(format!("policy created {}", h.created));
        }
        None => out.push("policy none".into()),
    }
    match relay_pid(ctx) {
        Some(pid) => {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok();
            match status.as_deref().and_then(vm_rss_kb) {
                Some(kb) => {
                    out.push(format!("relay pid {pid}"));
                    out.push(format!("relay vmrss_kb {kb}"));
                }
                None => out.push(format!("relay not running (last pid {pid})")),
            }
        }
        None => out.push("relay unknown".into()),
    }
    if let Some(kb) = std::fs::read_to_string("/proc/self/status")
        .ok()
        .as_deref()
        .and_then(vm_rss_kb)
    {
        out.push(format!("manage vmrss_kb {kb}"));
    }
    if let Ok(up) = std::fs::read_to_string("/proc/uptime") {
        if let Some(secs) = up.split_ascii_whitespace().next() {
            out.push(format!("uptime_s {secs}"));
        }
    }
    out.push(format!("clock {}", crate::init::system::now_secs()));
    out
}

fn push(ctx: &Context, blob: &[u8]) -> Result<String, String> {
    let installed =
        super::install_policy(blob, &ctx.args.policy, &ctx.trusted).map_err(|e| e.to_string())?;
    if let Some(pid) = relay_pid(ctx) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGHUP,
        );
    }
    Ok(installed.to_string())
}

/// Runs this same binary (`tlsgate-init queue …` / `tlsgate-init
/// check-tls …`, which call `queue::cli` and `delivery::checktls::cli`)
/// as a child and returns its output lines and whether it succeeded. A
/// child keeps the listener small and isolates a slow or failing test.
async fn run_tool(args: &[&str], limit: Duration) -> (Vec<String>, Result<String, String>) {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return (Vec::new(), Err(format!("cannot find this program: {e}"))),
    };
    let child = tokio::process::Command::new(exe)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(limit, child).await {
        Err(_) => (Vec::new(), Err(format!("`{}` timed out", args.join(" ")))),
        Ok(Err(e)) => (
            Vec::new(),
            Err(format!("cannot run `{}`: {e}", args.join(" "))),
        ),
        Ok(Ok(out)) => {
            let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(String::from)
                .collect();
            lines.extend(
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .map(String::from),
            );
            let outcome = if out.status.success() {
                Ok(String::new())
            } else {
                Err(format!("`{}` failed ({})", args.join(" "), out.status))
            };
            (lines, outcome)
        }
    }
}

async fn queue_list(ctx: &Context) -> (Vec<String>, Result<String, String>) {
    let Some(spool) = &ctx.args.spool_dir else {
        return (Vec::new(), Err("no spool directory configured".into()));
    };
    let spool = spool.to_string_lossy();
    run_tool(
        &["queue", "--spool", &spool, "list"],
        Duration::from_secs(30),
    )
    .await
}

async fn check_tls(ctx: &Context, domain: &str) -> (Vec<String>, Result<String, String>) {
    let Some(config) = &ctx.args.relay_config else {
        return (Vec::new(), Err("no relay configuration given".into()));
    };
    let config = config.to_string_lossy();
    run_tool(
        &["check-tls", "--config", &config, domain],
        Duration::from_secs(90),
    )
    .await
}

/// Loads the listener's certificate, or makes (once) and keeps a
/// self-signed one in the state directory. Returns the acceptor and the
/// SHA-256 fingerprint of the leaf certificate (for `--fingerprint`).
pub fn tls_acceptor(args: &Args) -> Result<(TlsAcceptor, String), String> {
    let (cert_path, key_path) = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => {
            let c = args.state_dir.join("manage-cert.pem");
            let k = args.state_dir.join("manage-key.pem");
            if !(c.is_file() && k.is_file()) {
                let host = nix::unistd::gethostname()
                    .map(|h| h.to_string_lossy().into_owned())
                    .unwrap_or_else(|_| "tlsgate".into());
                let made =
                    rcgen::generate_simple_self_signed(vec![host]).map_err(|e| e.to_string())?;
                write_private(&k, made.signing_key.serialize_pem().as_bytes())?;
                std::fs::write(&c, made.cert.pem()).map_err(|e| format!("{}: {e}", c.display()))?;
            }
            (c, k)
        }
    };
    let certs = read_certs(&cert_path)?;
    let key = read_key(&key_path)?;
    let fingerprint = certs
        .first()
        .map(|c| {
            policy::blob::hex(ring::digest::digest(&ring::digest::SHA256, c.as_ref()).as_ref())
        })
        .unwrap_or_default();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("{}: {e}", cert_path.display()))?;
    Ok((TlsAcceptor::from(Arc::new(config)), fingerprint))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    std::io::Write::write_all(&mut f, bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads a PEM certificate chain.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut data.as_slice()).collect();
    let certs = certs.map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate", path.display()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    rustls_pemfile::private_key(&mut data.as_slice())
        .map_err(|e| format!("{}: {e}", path.display()))?
        .ok_or_else(|| format!("{}: no private key", path.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn vmrss_is_read_from_proc_status() {
        assert_eq!(vm_rss_kb("Name:\tx\nVmRSS:\t  1234 kB\n"), Some(1234));
        assert_eq!(vm_rss_kb("Name:\tx\n"), None);
    }
}
