//! `tlsgate remote`: the client of the management listener.
//!
//! The listener's certificate is checked either against a CA file
//! (`--ca`, normal WebPKI validation of `--server-name`) or by pinning the
//! SHA-256 fingerprint of its certificate (`--fingerprint`, printed by the
//! appliance on its console at boot). One of the two is required: the
//! token must never go to an unauthenticated server.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::protocol::{self, Request};

/// Arguments of `tlsgate remote`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The appliance's management address (`host:port`).
    #[arg(long)]
    pub addr: String,
    /// File holding the token.
    #[arg(long)]
    pub token_file: PathBuf,
    /// CA certificate(s) (PEM) that issued the listener's certificate.
    #[arg(
        long,
        conflicts_with = "fingerprint",
        required_unless_present = "fingerprint"
    )]
    pub ca: Option<PathBuf>,
    /// SHA-256 fingerprint (hex) of the listener's certificate.
    #[arg(long)]
    pub fingerprint: Option<String>,
    /// Name to validate in the listener's certificate (default: the host of --addr).
    #[arg(long)]
    pub server_name: Option<String>,
    #[command(subcommand)]
    pub command: RemoteCommand,
}

/// What to ask the appliance.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum RemoteCommand {
    /// Policy serial in force, relay process and memory, clock.
    Status,
    /// Policy operations.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Queue operations.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Run the TLS connectivity test (T8) for a registered domain.
    CheckTls { domain: String },
    /// Stop the relay cleanly and power the appliance off.
    Poweroff,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum PolicyCommand {
    /// Upload a signed policy blob.
    Push { file: PathBuf },
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum QueueCommand {
    /// List queued mail.
    List,
}

/// Runs one request, prints the answer; success when the answer is `ok`.
pub async fn cli(args: Args) -> ExitCode {
    match run(&args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("tlsgate remote: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: &Args) -> Result<bool, String> {
    let token = std::fs::read_to_string(&args.token_file)
        .map_err(|e| format!("{}: {e}", args.token_file.display()))?;
    let (request, body) = match &args.command {
        RemoteCommand::Status => (Request::Status, Vec::new()),
        RemoteCommand::Policy(PolicyCommand::Push { file }) => {
            let blob = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
            (Request::PolicyPush { len: blob.len() }, blob)
        }
        RemoteCommand::Queue(QueueCommand::List) => (Request::QueueList, Vec::new()),
        RemoteCommand::CheckTls { domain } => (
            Request::CheckTls {
                domain: domain.clone(),
            },
            Vec::new(),
        ),
        RemoteCommand::Poweroff => (Request::PowerOff, Vec::new()),
    };
    let host = args
        .server_name
        .clone()
        .unwrap_or_else(|| match args.addr.rsplit_once(':') {
            Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']').to_string(),
            None => args.addr.clone(),
        });
    let name =
        ServerName::try_from(host.clone()).map_err(|_| format!("`{host}` is not a server name"))?;
    let connector = connector(args)?;
    let tcp = TcpStream::connect(&args.addr)
        .await
        .map_err(|e| format!("cannot connect to `{}`: {e}", args.addr))?;
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("tls with `{}`: {e}", args.addr))?;
    let mut out = format!(
        "{} {} {}\n{}\n",
        protocol::GREETING,
        protocol::VERSION,
        token.trim(),
        protocol::request_line(&request)
    )
    .into_bytes();
    out.extend_from_slice(&body);
    tls.write_all(&out).await.map_err(|e| e.to_string())?;
    tls.flush().await.map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    // The server closes after its answer; a missing close_notify still
    // leaves a complete answer behind.
    if let Err(e) = tls.read_to_end(&mut answer).await {
        if answer.is_empty() {
            return Err(format!("reading the answer: {e}"));
        }
    }
    let text = String::from_utf8_lossy(&answer);
    print!("{text}");
    let last = text.lines().last().unwrap_or("");
    Ok(last == "ok" || last.starts_with("ok "))
}

fn connector(args: &Args) -> Result<TlsConnector, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let config = if let Some(ca) = &args.ca {
        let mut roots = rustls::RootCertStore::empty();
        for c in super::server::read_certs(ca)? {
            roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        let hex = args
            .fingerprint
            .clone()
            .unwrap_or_default()
            .replace(':', "")
            .to_ascii_lowercase();
        if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err("--fingerprint needs the 64 hex digits of a SHA-256".into());
        }
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCert {
                sha256_hex: hex,
                provider,
            }))
            .with_no_client_auth()
    };
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Accepts exactly the certificate whose SHA-256 is pinned (and still checks
/// the handshake signatures made with its key).
#[derive(Debug)]
struct PinnedCert {
    sha256_hex: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = policy::blob::hex(
            ring::digest::digest(&ring::digest::SHA256, end_entity.as_ref()).as_ref(),
        );
        if got == self.sha256_hex {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "certificate fingerprint {got} is not the pinned one"
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
