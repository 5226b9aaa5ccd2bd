//! The policy in force, swappable at run time (T19–T21).
//!
//! Readers take a cheap snapshot with [`PolicyHandle::current`] and use it
//! for the whole of one decision; a reload swaps the pointer atomically, so
//! sessions and queued mail never see half a policy.

use std::sync::Arc;

use arc_swap::ArcSwap;
use policy::{CompiledPolicy, Policy};

/// A verified policy with the facts of its blob.
#[derive(Debug)]
pub struct ActivePolicy {
    pub compiled: CompiledPolicy,
    pub serial: u64,
    /// Key id of the signing key (first 8 bytes of SHA-256 of the public key).
    pub key_id: [u8; 8],
}

/// Shared handle on the policy in force.
#[derive(Clone, Debug)]
pub struct PolicyHandle(Arc<ArcSwap<ActivePolicy>>);

impl PolicyHandle {
    pub fn new(active: ActivePolicy) -> Self {
        PolicyHandle(Arc::new(ArcSwap::from_pointee(active)))
    }

    /// A handle on a policy that did not come from a blob (tests).
    pub fn fixed(policy: Policy) -> Self {
        let serial = policy.serial;
        Self::new(ActivePolicy {
            compiled: CompiledPolicy::new(policy),
            serial,
            key_id: [0; 8],
        })
    }

    /// The policy in force now.
    pub fn current(&self) -> Arc<ActivePolicy> {
        self.0.load_full()
    }

    /// Puts `next` in force for every later `current()`.
    pub fn replace(&self, next: ActivePolicy) {
        self.0.store(Arc::new(next));
    }
}

// ---------------------------------------------------------------------------
// Loading signed blobs (T19), roll-back protection (T20), reloads (T21).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use policy::blob::{self, BlobError, PublicKey};
use ring::digest;

/// File in the state directory holding the highest accepted serial and the
/// digest of the blob that carried it.
pub const SERIAL_STATE_FILE: &str = "policy-serial";

/// Why a blob was not put in force. Each is one log line.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read policy `{path}`: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("policy `{path}` refused: {source}")]
    Blob { path: PathBuf, source: BlobError },
    #[error("policy `{path}` refused: serial {serial} is lower than {highest}, the highest accepted (roll-back protection)")]
    Rollback {
        path: PathBuf,
        serial: u64,
        highest: u64,
    },
    #[error(
        "policy `{path}` refused: serial {serial} was already accepted with different content"
    )]
    SerialReused { path: PathBuf, serial: u64 },
    #[error("cannot use state file `{path}`: {message}")]
    State { path: PathBuf, message: String },
    #[error("bad trusted key `{entry}`: {message}")]
    Key { entry: String, message: String },
}

/// What a reload did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reloaded {
    /// A new policy is in force.
    Replaced { serial: u64 },
    /// The file holds the blob already in force.
    Unchanged { serial: u64 },
}

/// Parses `trusted_keys` entries: `tlsgate-ed25519 <hex>` text, or the path
/// of a file holding such a line.
pub fn parse_trusted_keys(entries: &[String]) -> Result<Vec<PublicKey>, LoadError> {
    let mut keys = Vec::with_capacity(entries.len());
    for entry in entries {
        let text = if entry.trim_start().starts_with(blob::PUBLIC_KEY_PREFIX) {
            entry.clone()
        } else {
            std::fs::read_to_string(entry).map_err(|e| LoadError::Key {
                entry: entry.clone(),
                message: e.to_string(),
            })?
        };
        let key = PublicKey::from_text(text.trim()).map_err(|e| LoadError::Key {
            entry: entry.clone(),
            message: e.to_string(),
        })?;
        keys.push(key);
    }
    Ok(keys)
}

/// The highest accepted serial and the SHA-256 of its blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Highest {
    serial: u64,
    digest: [u8; 32],
}

/// Where signed policies come from: a blob file, the trusted keys, and the
/// persisted roll-back state.
#[derive(Debug)]
pub struct PolicySource {
    path: PathBuf,
    trusted: Vec<PublicKey>,
    state_file: PathBuf,
    /// Serialises loads (SIGHUP and the file poll may race).
    lock: std::sync::Mutex<()>,
}

impl PolicySource {
    pub fn new(path: &Path, trusted: Vec<PublicKey>, state_dir: &Path) -> Self {
        PolicySource {
            path: path.to_path_buf(),
            trusted,
            state_file: state_dir.join(SERIAL_STATE_FILE),
            lock: std::sync::Mutex::new(()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read_state(&self) -> Result<Option<Highest>, LoadError> {
        let bad = |message: String| LoadError::State {
            path: self.state_file.clone(),
            message,
        };
        let text = match std::fs::read_to_string(&self.state_file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(bad(e.to_string())),
        };
        let mut serial = None;
        let mut digest_hex = None;
        for line in text.lines() {
            match line.split_once(' ') {
                Some(("serial", v)) => serial = v.trim().parse::<u64>().ok(),
                Some(("sha256", v)) => digest_hex = Some(v.trim().to_string()),
                _ => {}
            }
        }
        let (Some(serial), Some(h)) = (serial, digest_hex) else {
            return Err(bad("unreadable content".into()));
        };
        let mut digest = [0u8; 32];
        if h.len() != 64 {
            return Err(bad("unreadable digest".into()));
        }
        for (i, d) in digest.iter_mut().enumerate() {
            *d = u8::from_str_radix(&h[2 * i..2 * i + 2], 16)
                .map_err(|_| bad("unreadable digest".into()))?;
        }
        Ok(Some(Highest { serial, digest }))
    }

    fn write_state(&self, h: Highest) -> Result<(), LoadError> {
        let text = format!("serial {}\nsha256 {}\n", h.serial, blob::hex(&h.digest));
        write_atomic(&self.state_file, text.as_bytes()).map_err(|e| LoadError::State {
            path: self.state_file.clone(),
            message: e.to_string(),
        })
    }

    /// Reads, verifies and checks the blob against the roll-back state;
    /// on success persists the new highest serial. Returns the policy and
    /// whether it is the blob accepted last time (same serial, same bytes).
    fn accept(&self) -> Result<(ActivePolicy, bool), LoadError> {
        let bytes = std::fs::read(&self.path).map_err(|source| LoadError::Read {
            path: self.path.clone(),
            source,
        })?;
        let (header, policy) =
            blob::verify_and_decode(&bytes, &self.trusted).map_err(|source| LoadError::Blob {
                path: self.path.clone(),
                source,
            })?;
        let mut digest = [0u8; 32];
        digest.copy_from_slice(digest::digest(&digest::SHA256, &bytes).as_ref());
        let highest = self.read_state()?;
        let mut same = false;
        if let Some(h) = highest {
            if header.serial < h.serial {
                return Err(LoadError::Rollback {
                    path: self.path.clone(),
                    serial: header.serial,
                    highest: h.serial,
                });
            }
            if header.serial == h.serial {
                if h.digest != digest {
                    return Err(LoadError::SerialReused {
                        path: self.path.clone(),
                        serial: header.serial,
                    });
                }
                same = true;
            }
        }
        if !same {
            self.write_state(Highest {
                serial: header.serial,
                digest,
            })?;
        }
        Ok((
            ActivePolicy {
                compiled: CompiledPolicy::new(policy),
                serial: header.serial,
                key_id: header.key_id,
            },
            same,
        ))
    }

    /// Loads the policy at start. The relay must not serve without it.
    pub fn load(&self) -> Result<PolicyHandle, LoadError> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let (active, _) = self.accept()?;
        tracing::info!(path = %self.path.display(), serial = active.serial, key_id = %blob::hex(&active.key_id), "policy loaded");
        Ok(PolicyHandle::new(active))
    }

    /// Loads the file again and, if it holds a newer acceptable blob, puts
    /// it in force. On error the running policy stays.
    pub fn reload(&self, handle: &PolicyHandle) -> Result<Reloaded, LoadError> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let (active, same) = self.accept()?;
        let serial = active.serial;
        if same && handle.current().serial == serial {
            return Ok(Reloaded::Unchanged { serial });
        }
        handle.replace(active);
        tracing::info!(path = %self.path.display(), serial, "policy replaced");
        Ok(Reloaded::Replaced { serial })
    }

    /// Reloads on SIGHUP (when `hup` is given: create it before the
    /// process can receive the signal) and whenever the file's size, mtime
    /// or inode changes (checked every `poll`), until `shutdown`.
    pub async fn watch(
        self: std::sync::Arc<Self>,
        handle: PolicyHandle,
        poll: Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
        mut hup: Option<tokio::signal::unix::Signal>,
    ) {
        let mut seen = file_stamp(&self.path);
        let mut ticker = tokio::time::interval(poll);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let hangup = async {
                match hup.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let by_signal = tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return,
                _ = hangup => true,
                _ = ticker.tick() => false,
            };
            let stamp = file_stamp(&self.path);
            if !by_signal && stamp == seen {
                continue;
            }
            seen = stamp;
            let source = self.clone();
            let h = handle.clone();
            let result = tokio::task::spawn_blocking(move || source.reload(&h)).await;
            match result {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, running_serial = handle.current().serial, "policy reload refused; keeping the running policy");
                }
                Err(e) => tracing::error!(error = %e, "policy reload failed"),
            }
        }
    }
}

/// (size, mtime, inode) of a file, or `None` when it cannot be read.
fn file_stamp(path: &Path) -> Option<(u64, std::time::SystemTime, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?, m.ino()))
}

/// Writes `bytes` to `path` durably: temp file, fsync, rename, fsync of the
/// directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(&dir)?.sync_all()
}
