//! `tlsgate-init`: PID 1 of the appliance image, and (when not PID 1) the
//! management listener and its client, so the image needs no other binary
//! than this one and `tlsgate`.
//!
//! - as PID 1: [`tlsgate::init::run`];
//! - `tlsgate-init manage …`: [`tlsgate::manage::cli`] (started by the init);
//! - `tlsgate-init remote …`: [`tlsgate::manage::remote::cli`].

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
    }
}
