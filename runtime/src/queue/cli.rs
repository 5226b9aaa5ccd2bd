//! `tlsgate queue`: look at and act on the queue (like mailq/postqueue).
//!
//! With a relay running, every command goes through the runner's control
//! socket ([`super::control`]), so the runner stays the only writer. With
//! no relay running the command opens the spool itself (taking its lock,
//! so a relay started meanwhile waits for nothing and corrupts nothing: it
//! fails to open the spool until the command is done).

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::attempt::now_ms;
use super::control::{self, MessageDetail, MessageSummary, Request, Response, RetryTarget};
use crate::spool::{MessageId, RecipientStatus, Spool, SpoolError};

/// `tlsgate queue [--spool DIR] <command>`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The spool directory of the relay.
    #[arg(long, default_value = "/var/spool/tlsgate")]
    pub spool: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Text,
    Json,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum Command {
    /// List queued messages: id, age, sender, recipients, next attempt, last reason.
    List {
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Show one message and the state of each recipient.
    Show {
        id: MessageId,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Attempt delivery now, ignoring the schedule and destination back-off.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["id", "domain", "all"])))]
    Retry {
        id: Option<MessageId>,
        /// Every message with recipients at this domain.
        #[arg(long)]
        domain: Option<String>,
        /// Every message.
        #[arg(long)]
        all: bool,
    },
    /// Remove a message from the queue without notifying anyone.
    Delete { id: MessageId },
    /// Return a message to its sender now (a bounce naming every recipient
    /// not yet delivered).
    Bounce { id: MessageId },
}

/// Runs `tlsgate queue ...`.
pub async fn cli(args: Args) -> ExitCode {
    let request = match &args.command {
        Command::List { .. } => Request::List,
        Command::Show { id, .. } => Request::Show { id: *id },
        Command::Retry { id, domain, all } => Request::Retry {
            target: match (id, domain, all) {
                (Some(id), _, _) => RetryTarget::Id(*id),
                (None, Some(d), _) => RetryTarget::Domain(d.clone()),
                _ => RetryTarget::All,
            },
        },
        Command::Delete { id } => Request::Delete { id: *id },
        Command::Bounce { id } => Request::Bounce { id: *id },
    };
    let response = match control::request(&args.spool, &request).await {
        Ok(r) => r,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            match offline(&args.spool, &request).await {
                Ok(r) => r,
                Err(SpoolError::Locked(_)) => Response::Error {
                    message: format!(
                        "the relay has the spool `{}` open but its control socket does not answer",
                        args.spool.display()
                    ),
                },
                Err(e) => Response::Error {
                    message: e.to_string(),
                },
            }
        }
        Err(e) => Response::Error {
            message: format!("cannot talk to the relay: {e}"),
        },
    };
    print(&args.command, response)
}

/// Carries out a request on a spool no relay has open.
async fn offline(dir: &Path, req: &Request) -> Result<Response, SpoolError> {
    if !dir.join("queue").is_dir() {
        return Ok(Response::Error {
            message: format!("`{}` is not a spool directory", dir.display()),
        });
    }
    let spool = Spool::open(dir).await?;
    let now = now_ms();
    Ok(match req {
        Request::List => {
            let mut messages = Vec::new();
            for id in spool.list().await? {
                match spool.load(&id).await {
                    Ok(m) => messages.push(control::summarize(&m, now, None, false)),
                    Err(SpoolError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            Response::Messages { messages }
        }
        Request::Show { id } => {
            let m = spool.load(id).await?;
            Response::Message {
                message: Box::new(MessageDetail {
                    summary: control::summarize(&m, now, None, false),
                    envelope: m.envelope.clone(),
                    kind: m.kind,
                    recipients: m.state.recipients.clone(),
                    delay_notice_sent: m.state.delay_notice_sent,
                    in_flight: false,
                }),
            }
        }
        Request::Retry { target } => {
            let mut n = 0;
            for id in spool.list().await? {
                if matches!(target, RetryTarget::Id(want) if *want != id) {
                    continue;
                }
                let mut m = spool.load(&id).await?;
                let mut changed = false;
                for r in &mut m.state.recipients {
                    let wanted = match target {
                        RetryTarget::Domain(d) => {
                            super::attempt::domain_of(&r.address).as_deref()
                                == Some(d.to_ascii_lowercase().as_str())
                        }
                        _ => true,
                    };
                    if let (
                        true,
                        RecipientStatus::Deferred {
                            next_attempt_ms, ..
                        },
                    ) = (wanted, &mut r.status)
                    {
                        *next_attempt_ms = 0;
                        changed = true;
                    }
                }
                if changed {
                    spool.save_state(&mut m).await?;
                    n += 1;
                }
            }
            Response::Done {
                affected: n,
                note: format!("{n} message(s) will be attempted as soon as the relay starts"),
            }
        }
        Request::Delete { id } => {
            spool.remove(id).await?;
            Response::Done {
                affected: 1,
                note: format!("deleted `{id}`"),
            }
        }
        Request::Bounce { id } => {
            let mut m = spool.load(id).await?;
            for r in m.state.recipients.iter_mut().filter(|r| !r.is_final()) {
                let last = r
                    .reason()
                    .map(|s| format!(" (last error: {s})"))
                    .unwrap_or_default();
                r.status = RecipientStatus::Failed {
                    reason: format!("returned to sender by the gateway operator{last}"),
                    at_ms: now,
                };
            }
            spool.save_state(&mut m).await?;
            Response::Done {
                affected: 1,
                note: format!("`{id}` will be returned to its sender as soon as the relay starts"),
            }
        }
    })
}

fn print(command: &Command, response: Response) -> ExitCode {
    let json = matches!(
        command,
        Command::List {
            format: Format::Json
        } | Command::Show {
            format: Format::Json,
            ..
        }
    );
    match response {
        Response::Error { message } => {
            eprintln!("error: {message}");
            return ExitCode::FAILURE;
        }
        Response::Done { note, .. } => println!("{note}"),
        Response::Messages { messages } if json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&messages).unwrap_or_default()
            )
        }
        Response::Message { message } if json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&message).unwrap_or_default()
            )
        }
        Response::Messages { messages } => {
            let now = now_ms();
            for m in &messages {
                print_summary(m, now);
            }
            println!("-- {} message(s) in the queue", messages.len());
        }
        Response::Message { message } => {
            let now = now_ms();
            print_summary(&message.summary, now);
            let e = &message.envelope;
            println!(
                "    client: {} (helo {}), received over tls: {}",
                e.client_ip, e.helo, e.received_over_tls
            );
            println!("    kind: {:?}", message.kind);
            for r in &message.recipients {
                let what = match &r.status {
                    RecipientStatus::Pending => "pending".to_string(),
                    RecipientStatus::Delivered { .. } => "delivered".to_string(),
                    RecipientStatus::Deferred {
                        reason,
                        next_attempt_ms,
                    } => format!("deferred, next {}: {reason}", when(*next_attempt_ms, now)),
                    RecipientStatus::Failed { reason, .. } => format!("failed: {reason}"),
                };
                let hop = r
                    .last_hop
                    .as_deref()
                    .map(|h| format!(" [last hop {h}]"))
                    .unwrap_or_default();
                println!("    <{}> attempts {}: {what}{hop}", r.address, r.attempts);
            }
        }
    }
    ExitCode::SUCCESS
}

fn print_summary(m: &MessageSummary, now: u64) {
    let next = match m.next_attempt_ms {
        _ if m.in_flight => "being attempted".to_string(),
        Some(t) => format!("next {}", when(t, now)),
        None => "waiting for its destination".to_string(),
    };
    println!(
        "{}  {:>8}  {:>8}  <{}>  {next}  attempts {}",
        m.id,
        age(m.age_secs),
        m.size,
        m.sender,
        m.attempts
    );
    for r in &m.recipients {
        println!("    {r}");
    }
    if let Some(reason) = &m.last_reason {
        println!("    ({reason})");
    }
}

fn when(t_ms: u64, now_ms: u64) -> String {
    if t_ms <= now_ms {
        "now".into()
    } else {
        format!("in {}", age((t_ms - now_ms).div_ceil(1000)))
    }
}

fn age(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h{:02}m", s / 3600, s / 60 % 60),
        s => format!("{}d{:02}h", s / 86_400, s / 3600 % 24),
    }
}
