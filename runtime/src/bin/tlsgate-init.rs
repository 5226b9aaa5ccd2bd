//! `tlsgate-init`: PID 1 of the appliance image, and (when not PID 1) the
//! management listener and its client, so the image needs no other binary
//! than this one and `tlsgate`.
//!
//! - as PID 1: [`tlsgate::init::run`];
//! - `tlsgate-init manage …`: [`tlsgate::manage::cli`] (started by the init);
//! - `tlsgate-init remote …`: [`tlsgate::manage::remote::cli`];
//! - `tlsgate-init queue …`, `tlsgate-init check-tls …` (hidden): the
//!   queue tool and the TLS connectivity test, run by the management
//!   listener as children for `queue list` and `check-tls`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "tlsgate-init", about = "PID 1 of the tlsgate appliance")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the management listener.
    Manage(tlsgate::manage::Args),
    /// Talk to a management listener.
    Remote(tlsgate::manage::remote::Args),
    /// The queue tool (run by the management listener for `queue list`).
    #[command(hide = true)]
    Queue(tlsgate::queue::cli::Args),
    /// The TLS connectivity test (run by the management listener, T8).
    #[command(hide = true)]
    CheckTls(tlsgate::delivery::checktls::Args),
}

fn main() -> ExitCode {
    if std::process::id() == 1 {
        tlsgate::init::run()
    }
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tlsgate-init: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Cmd::Manage(args) => rt.block_on(tlsgate::manage::cli(args)),
        Cmd::Remote(args) => rt.block_on(tlsgate::manage::remote::cli(args)),
        Cmd::Queue(args) => rt.block_on(tlsgate::queue::cli::cli(args)),
        Cmd::CheckTls(args) => rt.block_on(tlsgate::delivery::checktls::cli(args)),
    }
}
