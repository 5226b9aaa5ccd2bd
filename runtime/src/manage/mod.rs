//! The management listener: how an operator reaches a running appliance
//! that has no shell.
//!
//! `tlsgate manage` (started by the appliance's init beside the relay, as
//! the same unprivileged user) listens on TCP with TLS and speaks a tiny
//! line protocol ([`protocol`]); `tlsgate remote` ([`remote`]) is its
//! client. Every connection carries one request:
//!
//! ```text
//! C: tlsgate-manage 1 <token>\n
//! C: <command>\n               (policy push <n>: then n raw bytes)
//! S: <lines>…
//! S: ok [<summary>] | error: <reason>
//! ```
//!
//! Commands: `status`, `policy push <n>`, `queue list`, `check-tls DOMAIN`,
//! `poweroff`. A pushed policy is checked with the same verify-then-decode
//! and serial rule the relay applies (T19, T20) before it replaces the
//! relay's policy file atomically, so a refused blob never reaches the
//! disk and the running policy stays; the relay then picks the file up
//! (poll, and SIGHUP sent here) and applies its own checks again.

pub mod protocol;
pub mod remote;
pub mod server;

use std::fmt;
use std::io::Write;
use std::path::Path;

use policy::blob::{verify_and_decode, BlobError, Header, PublicKey};

pub use server::{cli, Args};

/// Reads trusted keys, one `tlsgate-ed25519 <hex>` per line (`#` comments).
pub fn read_trusted_keys(path: &Path) -> Result<Vec<PublicKey>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| PublicKey::from_text(l).map_err(|e| format!("{}: {e}", path.display())))
        .collect()
}

/// What [`install_policy`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Installed {
    /// The blob replaced the one in force (or there was none).
    New { serial: u64, previous: Option<u64> },
    /// The identical blob was already in force.
    Unchanged { serial: u64 },
}

impl fmt::Display for Installed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Installed::New {
                serial,
                previous: Some(p),
            } => {
                write!(f, "policy serial {serial} installed (was {p})")
            }
            Installed::New {
                serial,
                previous: None,
            } => write!(f, "policy serial {serial} installed"),
            Installed::Unchanged { serial } => write!(f, "policy serial {serial} already in force"),
        }
    }
}

/// Why a blob was not installed.
#[derive(thiserror::Error, Debug)]
pub enum InstallError {
    /// Bad signature, unknown key, truncated, unknown version, … (T19).
    #[error("policy refused: {0}")]
    Refused(BlobError),
    /// Roll-back protection (T20).
    #[error("policy refused: serial {offered} is lower than the serial {running} in force")]
    Older { offered: u64, running: u64 },
    #[error("policy refused: serial {0} is already in force with different content")]
    SameSerialDifferent(u64),
    #[error("cannot write `{path}`: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// The verified header of the policy file at `path`, if there is a valid one.
pub fn policy_in_force(path: &Path, trusted: &[PublicKey]) -> Option<Header> {
    let bytes = std::fs::read(path).ok()?;
    verify_and_decode(&bytes, trusted).ok().map(|(h, _)| h)
}

/// Checks `bytes` (signature by a trusted key, then serial not lower than
/// the policy in force at `path`) and, if it passes, replaces `path`
/// atomically (write, fsync, rename, fsync the directory).
pub fn install_policy(
    bytes: &[u8],
    path: &Path,
    trusted: &[PublicKey],
) -> Result<Installed, InstallError> {
    let (header, _) = verify_and_decode(bytes, trusted).map_err(InstallError::Refused)?;
    let current = std::fs::read(path).ok();
    let mut previous = None;
    if let Some(cur) = &current {
        if let Ok((running, _)) = verify_and_decode(cur, trusted) {
            if header.serial < running.serial {
                return Err(InstallError::Older {
                    offered: header.serial,
                    running: running.serial,
                });
            }
            if header.serial == running.serial {
                if cur.as_slice() == bytes {
                    return Ok(Installed::Unchanged {
                        serial: header.serial,
                    });
                }
                return Err(InstallError::SameSerialDifferent(header.serial));
            }
            previous = Some(running.serial);
        }
    }
    let write_err = |source| InstallError::Write {
        path: path.display().to_string(),
        source,
    };
    let tmp = path.with_extension("blob.incoming");
    {
        let mut f = std::fs::File::create(&tmp).map_err(write_err)?;
        f.write_all(bytes).map_err(write_err)?;
        f.sync_all().map_err(write_err)?;
    }
    std::fs::rename(&tmp, path).map_err(write_err)?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(Installed::New {
        serial: header.serial,
        previous,
    })
}
