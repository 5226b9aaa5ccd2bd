//! The whole relay, wired together (`tlsgate run`).
//!
//! Start order: configuration → TLS identity → signed policy (T19/T20; no
//! policy, no relay) → spool → delivery (`delivery::Deliverer`) → queue
//! runner → SMTP listeners → policy watcher (SIGHUP and file changes,
//! T21). Shutdown: stop accepting, tell sessions, wait for them up to the
//! grace period, stop the queue.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::envelope::Envelope;
use crate::policy_store::{parse_trusted_keys, LoadError, PolicyHandle, PolicySource};
use crate::server::sink::BoxFuture;
use crate::server::{Gate, IncomingMessage, MessageSink, Server, SinkError};
use crate::spool::{Incoming, Spool, SpoolError};

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    #[error("no policy in force, not starting: {0}")]
    Policy(#[from] LoadError),
    #[error("cannot open spool `{path}`: {source}")]
    Spool { path: PathBuf, source: SpoolError },
    #[error("cannot set up delivery: {0}")]
    Delivery(String),
    #[error("cannot listen on `{addr}`: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The durable spool as the SMTP server's message sink.
#[derive(Clone, Debug)]
pub struct SpoolSink(pub Spool);

struct SpoolIncoming(Incoming);

fn sink_error(e: SpoolError) -> SinkError {
    match e {
        SpoolError::DiskFull => SinkError::DiskFull,
        other => SinkError::Failed(other.to_string()),
    }
}

impl MessageSink for SpoolSink {
    fn has_room(&self) -> bool {
        self.0.has_room()
    }

    fn begin(
        &self,
        envelope: Envelope,
    ) -> BoxFuture<'_, Result<Box<dyn IncomingMessage>, SinkError>> {
        Box::pin(async move {
            let incoming = self.0.begin(envelope).await.map_err(sink_error)?;
            Ok(Box::new(SpoolIncoming(incoming)) as Box<dyn IncomingMessage>)
        })
    }
}

impl IncomingMessage for SpoolIncoming {
    fn write<'a>(&'a mut self, chunk: &'a [u8]) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move { self.0.write(chunk).await.map_err(sink_error) })
    }

    fn commit(self: Box<Self>) -> BoxFuture<'static, Result<String, SinkError>> {
        Box::pin(async move {
            self.0
                .commit()
                .await
                .map(|id| id.to_string())
                .map_err(sink_error)
        })
    }
}

/// A running relay.
pub struct Relay {
    pub server: Server,
    pub policy: PolicyHandle,
    pub source: Arc<PolicySource>,
    pub spool: Spool,
    listen: Vec<SocketAddr>,
    grace: Duration,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Relay {
    /// Starts everything; returns once the listeners are bound.
    pub async fn start(config: &Config) -> Result<Relay, RelayError> {
        let mut listeners = Vec::new();
        for addr in &config.listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .and_then(|l| crate::privilege::deepen_backlog(&l).map(|()| l))
                .map_err(|source| RelayError::Listen {
                    addr: *addr,
                    source,
                })?;
            listeners.push(listener);
        }
        Relay::start_on(config, listeners).await
    }

    /// Starts everything on listeners bound already, one per
    /// `config.listen` entry (`tlsgate run` binds them before dropping
    /// root, see [`crate::privilege`]).
    pub async fn start_on(
        config: &Config,
        listeners: Vec<tokio::net::TcpListener>,
    ) -> Result<Relay, RelayError> {
        let listen: Vec<SocketAddr> = listeners
            .iter()
            .zip(&config.listen)
            .map(|(l, a)| l.local_addr().unwrap_or(*a))
            .collect();
        let tls = crate::identity::load_or_generate(
            config.tls.cert.as_deref(),
            config.tls.key.as_deref(),
            &config.state_dir,
            &config.hostname,
        )?;
        let trusted = parse_trusted_keys(&config.trusted_keys)?;
        let source = Arc::new(PolicySource::new(
            &config.policy,
            trusted,
            &config.state_dir,
        ));
        let policy = {
            let s = source.clone();
            tokio::task::spawn_blocking(move || s.load())
                .await
                .map_err(|e| RelayError::Delivery(e.to_string()))??
        };
        let spool_options = crate::spool::SpoolOptions {
            floor: crate::spool::SpaceFloor {
                bytes: config.limits.spool_floor_bytes,
                percent: config.limits.spool_floor_percent,
            },
            sync: config.spool_commit,
            ..Default::default()
        };
        let spool = Spool::open_with(&config.spool_dir, spool_options)
            .await
            .map_err(|source| RelayError::Spool {
                path: config.spool_dir.clone(),
                source,
            })?;
        // Listen for SIGHUP before anything can send it.
        let hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; watching the policy file only");
                None
            }
        };
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();

        start_delivery(config, &listen, &spool, &policy, &shutdown_rx, &mut tasks)?;

        let server = Server::new(
            config.session_config(),
            config.server_limits(),
            Gate::Policy(policy.clone()),
            Arc::new(SpoolSink(spool.clone())),
            Some(tls),
        );
        for (listener, local) in listeners.into_iter().zip(&listen) {
            tracing::info!(listen = %local, "SMTP listening");
            let server = server.clone();
            let rx = shutdown_rx.clone();
            tasks.spawn(async move {
                if let Err(e) = server.serve(listener, rx).await {
                    tracing::error!(error = %e, "listener failed");
                }
            });
        }
        {
            let source = source.clone();
            let policy = policy.clone();
            let poll = Duration::from_millis(config.limits.policy_poll_millis);
            let rx = shutdown_rx.clone();
            tasks.spawn(async move { source.watch(policy, poll, rx, hup).await });
        }
        Ok(Relay {
            server,
            policy,
            source,
            spool,
            listen,
            grace: Duration::from_secs(config.limits.shutdown_grace_secs),
            shutdown,
            tasks,
        })
    }

    /// The addresses actually bound (useful with port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.listen
    }

    /// Stops accepting, lets sessions and deliveries in flight finish
    /// within one grace period (counted from now; at most one second
    /// more in all), then stops the background tasks. A delivery cut
    /// short stays queued.
    pub async fn shutdown(mut self) {
        tracing::info!("shutting down");
        let end = tokio::time::Instant::now() + self.grace;
        let _ = self.shutdown.send(true);
        if !self.server.drain(self.grace).await {
            tracing::warn!(
                active = self.server.active(),
                "sessions still open after the grace period"
            );
        }
        // The tasks saw the signal with the sessions and stop within the
        // same grace period (the queue runner's own); one second more lets
        // the runner record what its cut-short deliveries left queued.
        let deadline = tokio::time::sleep_until(end + Duration::from_secs(1));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                next = self.tasks.join_next() => if next.is_none() { break },
                _ = &mut deadline => { self.tasks.abort_all(); break; }
            }
        }
        tracing::info!("stopped");
    }
}

/// The deliverer and the queue runner.
fn start_delivery(
    config: &Config,
    listen: &[SocketAddr],
    spool: &Spool,
    policy: &PolicyHandle,
    shutdown: &watch::Receiver<bool>,
    tasks: &mut JoinSet<()>,
) -> Result<(), RelayError> {
    use crate::delivery::{DeliveryConfig, ResolverSettings, Timeouts};
    let resolver = if config.dns.name_servers.is_empty() {
        ResolverSettings::System
    } else {
        ResolverSettings::NameServers(config.dns.name_servers.clone())
    };
    let delivery = DeliveryConfig {
        helo_name: config.hostname.clone(),
        resolver,
        timeouts: Timeouts {
            dns: Duration::from_secs(config.dns.timeout_secs),
            ..Timeouts::default()
        },
        myself: crate::delivery::route::Myself {
            names: vec![config.hostname.trim_end_matches('.').to_ascii_lowercase()],
            listen: listen.to_vec(),
        },
        ..DeliveryConfig::default()
    };
    let deliverer = crate::delivery::Deliverer::new(delivery)
        .map_err(|e| RelayError::Delivery(e.to_string()))?;
    let transport: Arc<dyn crate::transport::Transport> = Arc::new(deliverer);
    let mut settings = crate::queue::QueueSettings::new(config.hostname.clone());
    settings.shutdown_grace = Duration::from_secs(config.limits.shutdown_grace_secs);
    let runner = crate::queue::Runner::spawn(
        spool.clone(),
        policy.clone(),
        transport,
        settings,
        shutdown.clone(),
    );
    tasks.spawn(async move {
        if let Err(e) = runner.await {
            tracing::error!(error = %e, "queue runner failed");
        }
    });
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn wait_for_stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// `tlsgate run`: starts the relay on listeners bound (and privileges
/// dropped) by [`crate::privilege::bind_and_drop`] and runs it until
/// SIGTERM/SIGINT.
pub async fn run(config: Config, listeners: Vec<std::net::TcpListener>) -> Result<(), RelayError> {
    let mut bound = Vec::new();
    for (l, addr) in listeners.into_iter().zip(&config.listen) {
        let l = l
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(l))
            .map_err(|source| RelayError::Listen {
                addr: *addr,
                source,
            })?;
        bound.push(l);
    }
    let relay = Relay::start_on(&config, bound).await?;
    wait_for_stop_signal().await;
    relay.shutdown().await;
    Ok(())
}
