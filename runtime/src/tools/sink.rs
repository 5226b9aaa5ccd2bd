//! `tlsgate sink`: an SMTP server that accepts any recipient and stores
//! messages in a maildir (or only counts them). For tests, the demo and
//! benchmarks; it uses the relay's own parser and session code, with
//! [`Gate::AcceptAll`] instead of a policy.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::envelope::Envelope;
use crate::server::sink::BoxFuture;
use crate::server::{
    Gate, IncomingMessage, MemorySink, MessageSink, Server, ServerLimits, SessionConfig, SinkError,
};

/// Stores each message as one file in `DIR/new` (maildir style: written to
/// `DIR/tmp`, fsynced, renamed), with the envelope as `X-Sink-*` headers.
#[derive(Clone, Debug)]
pub struct MaildirSink {
    dir: Arc<PathBuf>,
    seq: Arc<AtomicU64>,
}

impl MaildirSink {
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir.join("tmp"))?;
        std::fs::create_dir_all(dir.join("new"))?;
        std::fs::create_dir_all(dir.join("cur"))?;
        Ok(MaildirSink {
            dir: Arc::new(dir.to_path_buf()),
            seq: Arc::new(AtomicU64::new(0)),
        })
    }
}

struct MaildirIncoming {
    file: Option<tokio::fs::File>,
    tmp: PathBuf,
    new: PathBuf,
    id: String,
}

impl Drop for MaildirIncoming {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

fn failed(e: std::io::Error) -> SinkError {
    SinkError::Failed(e.to_string())
}

impl MessageSink for MaildirSink {
    fn has_room(&self) -> bool {
        true
    }

    fn begin(
        &self,
        envelope: Envelope,
    ) -> BoxFuture<'_, Result<Box<dyn IncomingMessage>, SinkError>> {
        Box::pin(async move {
            let n = self.seq.fetch_add(1, Ordering::Relaxed);
            let id = format!(
                "{}.{}_{}.tlsgate-sink",
                envelope.received_at,
                std::process::id(),
                n
            );
            let tmp = self.dir.join("tmp").join(&id);
            let new = self.dir.join("new").join(&id);
            let mut file = tokio::fs::File::create(&tmp).await.map_err(failed)?;
            let mut head = format!("X-Sink-Mail-From: <{}>\r\n", envelope.mail_from);
            for r in &envelope.rcpt_to {
                head.push_str(&format!("X-Sink-Rcpt-To: <{r}>\r\n"));
            }
            head.push_str(&format!(
                "X-Sink-Client: [{}] tls={}\r\n",
                envelope.client_ip, envelope.received_over_tls
            ));
            file.write_all(head.as_bytes()).await.map_err(failed)?;
            Ok(Box::new(MaildirIncoming {
                file: Some(file),
                tmp,
                new,
                id,
            }) as Box<dyn IncomingMessage>)
        })
    }
}

impl IncomingMessage for MaildirIncoming {
    fn write<'a>(&'a mut self, chunk: &'a [u8]) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            match self.file.as_mut() {
                Some(f) => f.write_all(chunk).await.map_err(failed),
                None => Err(SinkError::Failed("message already closed".into())),
            }
        })
    }

    fn commit(mut self: Box<Self>) -> BoxFuture<'static, Result<String, SinkError>> {
        Box::pin(async move {
            let Some(mut f) = self.file.take() else {
                return Err(SinkError::Failed("message already closed".into()));
            };
            let result = async {
                f.flush().await?;
                f.sync_all().await?;
                drop(f);
                tokio::fs::rename(&self.tmp, &self.new).await
            }
            .await;
            if let Err(e) = result {
                let _ = std::fs::remove_file(&self.tmp);
                return Err(failed(e));
            }
            Ok(self.id.clone())
        })
    }
}

/// Options of `tlsgate sink`.
#[derive(Debug, clap::Args)]
pub struct SinkArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:2525")]
    pub listen: SocketAddr,
    /// PEM certificate chain for STARTTLS.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for STARTTLS.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Offer STARTTLS with a freshly generated self-signed certificate.
    #[arg(long, conflicts_with = "tls_cert")]
    pub self_signed: bool,
    /// Store messages in this maildir; without it they are only counted.
    #[arg(long)]
    pub maildir: Option<PathBuf>,
    /// Host name in the banner.
    #[arg(long, default_value = "sink.localhost")]
    pub hostname: String,
    /// Largest message accepted, in bytes.
    #[arg(long, default_value_t = 50 * 1024 * 1024)]
    pub max_message_size: u64,
    #[arg(long, default_value_t = 20_000)]
    pub max_connections: usize,
}

/// Runs the sink until SIGINT/SIGTERM.
pub async fn run(args: SinkArgs) -> Result<(), String> {
    let tls = if let (Some(c), Some(k)) = (&args.tls_cert, &args.tls_key) {
        let cert = std::fs::read(c).map_err(|e| format!("cannot read `{}`: {e}", c.display()))?;
        let key = std::fs::read(k).map_err(|e| format!("cannot read `{}`: {e}", k.display()))?;
        Some(
            crate::identity::server_config(&cert, &key, &c.display().to_string())
                .map_err(|e| e.to_string())?,
        )
    } else if args.self_signed {
        let (cert, key) =
            crate::identity::self_signed(&args.hostname).map_err(|e| e.to_string())?;
        Some(
            crate::identity::server_config(
                cert.as_bytes(),
                key.as_bytes(),
                "generated certificate",
            )
            .map_err(|e| e.to_string())?,
        )
    } else {
        None
    };
    let counter = MemorySink::counting();
    let sink: Arc<dyn MessageSink> = match &args.maildir {
        Some(dir) => Arc::new(
            MaildirSink::open(dir)
                .map_err(|e| format!("cannot open maildir `{}`: {e}", dir.display()))?,
        ),
        None => Arc::new(counter.clone()),
    };
    let session = SessionConfig {
        hostname: args.hostname.clone(),
        max_message_size: args.max_message_size,
        max_recipients: 1000,
        max_errors: 20,
        postmaster: None,
    };
    let limits = ServerLimits {
        max_connections: args.max_connections,
        max_connections_per_ip: args.max_connections,
        ..ServerLimits::default()
    };
    let server = Server::new(session, limits, Gate::AcceptAll, sink, tls);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on `{}`: {e}", args.listen))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(listen = %local, "sink listening");
    println!("listening on {local}");
    let (tx, rx) = tokio::sync::watch::channel(false);
    let serving = {
        let server = server.clone();
        tokio::spawn(async move { server.serve(listener, rx).await })
    };
    crate::relay::wait_for_stop_signal().await;
    let _ = tx.send(true);
    let _ = serving.await;
    server.drain(Duration::from_secs(5)).await;
    if args.maildir.is_none() {
        println!(
            "received {} messages, {} bytes",
            counter.count(),
            counter.bytes()
        );
    }
    Ok(())
}
