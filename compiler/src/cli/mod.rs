//! The `tlspolc` sub-commands (clap) and their exit codes.
//!
//! # Layout
//! - [`report`]: diagnostics as miette graphics or JSON.
//! - [`keys`]: `keygen`, reading signing keys and trusted public keys.
//! - [`commands`]: `check`, `build`, `verify`, `inspect`, `fmt`.
//! - [`explain`]: `explain`, the decision function on the command line.
//!
//! Exit codes: 0 success; 1 the policy has errors, a blob is refused, or a
//! file cannot be read or written; 2 the command line is wrong.

mod commands;
mod explain;
mod keys;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// A failure that ends the command: a one-line message and an exit code.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub code: u8,
}

impl Failure {
    /// Exit code 1 with a message for stderr.
    pub fn new(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            code: 1,
        }
    }

    /// Exit code 1 with nothing more to say (already reported).
    pub fn quiet() -> Self {
        Failure {
            message: String::new(),
            code: 1,
        }
    }
}

pub type Outcome = Result<(), Failure>;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Human,
    Json,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Received {
    Tls,
    Clear,
}

#[derive(Parser, Debug)]
#[command(
    name = "tlspolc",
    version,
    about = "tlsgate policy compiler: .tlspol text to a checked, signed policy blob",
    after_help = "Exit codes: 0 success; 1 policy errors, refused blob, or an unreadable or unwritable file; 2 wrong command line."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check policy files and report errors and warnings
    #[command(after_help = "\
Exit codes: 0 no errors (and no warnings with --deny-warnings); 1 errors; 2 wrong command line.

JSON output (--format json) is one document on stdout:
  {\"ok\": bool, \"files\": [{\"file\": PATH, \"ok\": bool, \"errors\": [D...], \"warnings\": [D...]}]}
where each D is {severity, code, message, file, line, column, offset, length, label, help}.")]
    Check {
        /// Policy files (.tlspol); each is compiled with its includes
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
        /// Treat warnings as errors (exit 1)
        #[arg(long)]
        deny_warnings: bool,
    },
    /// Compile, check and sign a policy into a blob
    #[command(after_help = "\
Reproducible output: the blob's creation time is --created if given, else the
SOURCE_DATE_EPOCH environment variable, else 0. The same source, key and
creation time always give byte-identical blobs.

Refuses to write anything when the policy has errors (or warnings, with
--deny-warnings). The output is written to a temporary file beside OUT and
renamed into place.")]
    Build {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// PKCS#8 Ed25519 signing key (as written by `tlspolc keygen`)
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
        /// Where to write the signed blob
        #[arg(short = 'o', long = "output", value_name = "OUT")]
        output: PathBuf,
        /// Creation time in unix seconds (overrides SOURCE_DATE_EPOCH)
        #[arg(long, value_name = "UNIX_SECONDS")]
        created: Option<u64>,
        /// Treat warnings as errors
        #[arg(long)]
        deny_warnings: bool,
    },
    /// Create a signing key pair: NAME.key (private, mode 0600) and NAME.pub
    #[command(
        after_help = "Refuses to overwrite existing files. Keep NAME.key out of git; \
give NAME.pub to the appliances that must trust the blobs it signs."
    )]
    Keygen {
        #[arg(value_name = "NAME")]
        name: PathBuf,
    },
    /// Check that a blob is authentic (signed by one of the given keys)
    #[command(
        after_help = "Exit codes: 0 authentic; 1 refused (one-line reason on stderr); 2 wrong command line."
    )]
    Verify {
        #[arg(value_name = "BLOB")]
        blob: PathBuf,
        /// Trusted public key file (repeatable)
        #[arg(long = "pubkey", value_name = "PUB", required = true)]
        pubkeys: Vec<PathBuf>,
    },
    /// Print a blob's header and policy as JSON
    #[command(
        after_help = "Without --pubkey the contents are NOT verified and the output says \
so (\"verified\": false). With --pubkey a blob that does not verify is refused (exit 1)."
    )]
    Inspect {
        #[arg(value_name = "BLOB")]
        blob: PathBuf,
        /// Trusted public key file (repeatable)
        #[arg(long = "pubkey", value_name = "PUB")]
        pubkeys: Vec<PathBuf>,
    },
    /// Show what the policy decides for one message
    #[command(after_help = "\
INPUT is a .tlspol file (compiled first) or a signed blob (recognised by its
magic). A blob is verified when --pubkey is given; otherwise the output says
it is unverified.

--client-ip defaults to 0.0.0.0, a client that is no registered outbound
server; give one of a domain's outbound servers to ask about mail relayed
from it (T4, T5, T6). --received-over defaults to tls.")]
    Explain {
        #[arg(value_name = "INPUT")]
        input: PathBuf,
        /// Envelope sender (empty for the null sender)
        #[arg(long, value_name = "ADDR")]
        from: String,
        /// Envelope recipient
        #[arg(long, value_name = "ADDR")]
        to: String,
        /// Address of the SMTP client that handed the message over
        #[arg(long, value_name = "IP", default_value = "0.0.0.0")]
        client_ip: std::net::IpAddr,
        /// How the message arrived at the gateway
        #[arg(long, value_enum, default_value_t = Received::Tls)]
        received_over: Received,
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
        /// Trusted public key file for a blob input (repeatable)
        #[arg(long = "pubkey", value_name = "PUB")]
        pubkeys: Vec<PathBuf>,
    },
    /// Print a policy file in canonical formatting
    #[command(
        after_help = "Exit codes: 0 done (with --check: already formatted); 1 syntax errors, \
or with --check: the file would change; 2 wrong command line."
    )]
    Fmt {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Print nothing; exit 1 when the file is not canonically formatted
        #[arg(long, conflicts_with = "write")]
        check: bool,
        /// Rewrite the file in place (only if it changes)
        #[arg(long)]
        write: bool,
    },
}

/// Parses the command line, runs the command, maps the outcome to an exit
/// code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let outcome = match cli.command {
        Command::Check {
            files,
            format,
            deny_warnings,
        } => commands::check(&files, format, deny_warnings),
        Command::Build {
            file,
            key,
            output,
            created,
            deny_warnings,
        } => commands::build(&file, &key, &output, created, deny_warnings),
        Command::Keygen { name } => keys::keygen(&name),
        Command::Verify { blob, pubkeys } => commands::verify(&blob, &pubkeys),
        Command::Inspect { blob, pubkeys } => commands::inspect(&blob, &pubkeys),
        Command::Explain {
            input,
            from,
            to,
            client_ip,
            received_over,
            format,
            pubkeys,
        } => explain::explain(&explain::Query {
            input: &input,
            from: &from,
            to: &to,
            client_ip,
            received_over_tls: received_over == Received::Tls,
            format,
            pubkeys: &pubkeys,
        }),
        Command::Fmt { file, check, write } => commands::fmt(&file, check, write),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if !f.message.is_empty() {
                eprintln!("error: {}", f.message);
            }
            ExitCode::from(f.code)
        }
    }
}
