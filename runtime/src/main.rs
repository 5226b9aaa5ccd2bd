//! `tlsgate`: the relay binary. A thin clap front over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "tlsgate", version, about = "TLS-enforcing SMTP relay")]
struct Cli {
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Plain, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Plain,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the relay.
    Run {
        /// The machine-local configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Check a configuration file and the policy blob it names, then exit.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
    /// Test TLS to a registered domain's inbound servers (T8).
    CheckTls(tlsgate::delivery::checktls::Args),
    /// Inspect and manage the mail queue.
    Queue(tlsgate::queue::cli::Args),
    /// Run the appliance's management listener (policy push, queue, check-tls).
    Manage(tlsgate::manage::Args),
    /// Talk to a running appliance's management listener.
    Remote(tlsgate::manage::remote::Args),
    /// An SMTP sink for tests, demos and benchmarks.
    Sink(tlsgate::tools::sink::SinkArgs),
    /// An SMTP load generator.
    Loadgen(tlsgate::tools::loadgen::LoadgenCmd),
}

/// Colours only on a terminal, and not when `NO_COLOR` is set and not
/// empty (no-color.org; the appliance's serial console sets it).
fn colour_wanted() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::IsTerminal::is_terminal(&std::io::stderr())
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour_wanted());
    match format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the runtime: {e}");
            ExitCode::FAILURE
        })
}

/// Installs the system-call allow-list (`seccomp`, on by default) after
/// the privilege drop and before the runtime starts its threads, so every
/// thread of the relay runs under it (it is installed with TSYNC as well).
/// Unsupported platforms run without it, with a warning; a kernel that
/// refuses it stops the start (set `seccomp = false` to run anyway).
fn confine(config: &tlsgate::config::Config) -> Result<(), ExitCode> {
    use tlsgate::sandbox::{install_relay_filter, SandboxError};
    if !config.seccomp {
        tracing::warn!("`seccomp = false`: running without the system-call allow-list");
        return Ok(());
    }
    match install_relay_filter() {
        Ok(allowed) => {
            tracing::info!(
                allowed,
                default = "EPERM",
                "seccomp filter in force (all threads)"
            );
            Ok(())
        }
        Err(e @ SandboxError::Unsupported(_)) => {
            tracing::warn!("{e}; running without the system-call allow-list");
            Ok(())
        }
        Err(e) => {
            tracing::error!("{e}");
            Err(ExitCode::FAILURE)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    // `run` binds its ports, drops root and installs its seccomp filter
    // before any thread exists, so every runtime thread inherits the
    // reduced credentials and the filter.
    let mut prepared = None;
    if let Command::Run { config } = &cli.command {
        let config = match tlsgate::config::Config::load(config) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        match tlsgate::privilege::bind_and_drop(&config) {
            Ok(listeners) => prepared = Some((config, listeners)),
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        }
        if let Some((config, _)) = &prepared {
            if let Err(code) = confine(config) {
                return code;
            }
        }
    }
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match cli.command {
        Command::Run { .. } => {
            let Some((config, listeners)) = prepared else {
                return ExitCode::FAILURE;
            };
            match rt.block_on(tlsgate::relay::run(config, listeners)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig { config } => {
            let result = tlsgate::config::Config::load(&config)
                .map_err(|e| e.to_string())
                .and_then(|c| {
                    let keys = tlsgate::policy_store::parse_trusted_keys(&c.trusted_keys)
                        .map_err(|e| e.to_string())?;
                    let bytes = std::fs::read(&c.policy)
                        .map_err(|e| format!("cannot read policy `{}`: {e}", c.policy.display()))?;
                    let (header, _) = policy::blob::verify_and_decode(&bytes, &keys)
                        .map_err(|e| format!("policy `{}` refused: {e}", c.policy.display()))?;
                    Ok(header.serial)
                });
            match result {
                Ok(serial) => {
                    println!("configuration ok; policy serial {serial} verifies");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckTls(args) => rt.block_on(tlsgate::delivery::checktls::cli(args)),
        Command::Queue(args) => rt.block_on(tlsgate::queue::cli::cli(args)),
        Command::Manage(args) => rt.block_on(tlsgate::manage::cli(args)),
        Command::Remote(args) => rt.block_on(tlsgate::manage::remote::cli(args)),
        Command::Sink(args) => match rt.block_on(tlsgate::tools::sink::run(args)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Loadgen(args) => match rt.block_on(tlsgate::tools::loadgen::run_cmd(args)) {
            Ok(report) => {
                println!("{report}");
                if report.failed > 0 {
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
