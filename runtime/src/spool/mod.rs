//! Durable message storage: nothing is acknowledged before it is on disk.
//!
//! # Layout of a spool directory
//! ```text
//! lock                 flock held by the process that has the spool open
//! incoming/<id>.msg    message being received (removed if never committed)
//! incoming/<id>.env    its envelope, written at commit
//! queue/<id>.msg       the message as received: CRLF lines, not dot-stuffed
//! queue/<id>.env       envelope (JSON); its presence is the commit marker
//! queue/<id>.state     per-recipient delivery state (JSON), once attempted
//! control.sock         the queue runner's control socket (see `queue::control`)
//! ```
//!
//! # Commit (like OpenSMTPD)
//! [`Incoming::commit`] fsyncs the body, writes and fsyncs the envelope,
//! renames the body and then the envelope from `incoming/` into `queue/`,
//! and fsyncs `queue/`. Only then does it return the [`MessageId`]; any
//! write, fsync or rename error is returned as an error (and the half-moved
//! files are removed), never as a success. With [`SyncMode::Grouped`]
//! (the default) concurrent commits share one fsync of `queue/`: a committer
//! task takes every request waiting while the previous flush ran and serves
//! them with a single `fsync`.
//!
//! At [`Spool::open`] everything in `incoming/` is removed (interrupted
//! receptions that were never acknowledged), as are bodies or state files
//! in `queue/` without an envelope.
//!
//! # Disk space
//! [`SpaceFloor`]: below it [`Spool::begin`] fails with
//! [`SpoolError::DiskFull`] and [`Spool::has_room`] says no, while queued
//! mail keeps draining. Notifications (bounces) are written through
//! [`Spool::begin_notification`], which ignores the floor and only stops at
//! the smaller hard reserve.
//!
//! Submodules: [`id`] (message ids), [`state`] (what the queue remembers
//! per recipient).

pub mod id;
pub mod state;

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::fcntl::{Flock, FlockArg};
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::envelope::Envelope;
pub use id::{BadMessageId, MessageId};
pub use state::{MessageKind, MessageState, RecipientState, RecipientStatus, StoredEnvelope};

/// Why the spool could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// Free space is below the floor (or the disk is actually full).
    #[error("insufficient spool space")]
    DiskFull,
    #[error("spool i/o error: {0}")]
    Io(#[source] io::Error),
    /// Another process has this spool open.
    #[error("the spool `{0}` is in use by another process")]
    Locked(PathBuf),
    #[error("message `{0}` is not in the queue")]
    NotFound(MessageId),
    #[error("`{path}` is damaged: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

impl SpoolError {
    /// True when trying again later may succeed (SMTP `4xx`); false for
    /// errors that will not go away by themselves.
    pub fn is_temporary(&self) -> bool {
        matches!(
            self,
            SpoolError::DiskFull | SpoolError::Io(_) | SpoolError::Locked(_)
        )
    }
}

impl From<io::Error> for SpoolError {
    fn from(e: io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => SpoolError::DiskFull,
            _ => SpoolError::Io(e),
        }
    }
}

/// Free space below which new mail is refused: the larger of `bytes` and
/// `percent` % of the file system. The default is an absolute 64 MiB: a
/// percentage of a large shared disk can be many gigabytes, and on the
/// appliance's small data partition 64 MiB is already a generous reserve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpaceFloor {
    pub bytes: u64,
    pub percent: u8,
}

impl Default for SpaceFloor {
    fn default() -> Self {
        SpaceFloor {
            bytes: 64 * 1024 * 1024,
            percent: 0,
        }
    }
}

/// How commits reach the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncMode {
    /// Each commit fsyncs `queue/` itself.
    PerMessage,
    /// Concurrent commits share one fsync of `queue/`.
    #[default]
    Grouped,
}

/// Tunables of a spool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpoolOptions {
    pub floor: SpaceFloor,
    /// Free space kept even from notifications (bounces) and from messages
    /// already being received.
    pub hard_reserve_bytes: u64,
    pub sync: SyncMode,
}

impl Default for SpoolOptions {
    fn default() -> Self {
        SpoolOptions {
            floor: SpaceFloor::default(),
            hard_reserve_bytes: 4 * 1024 * 1024,
            sync: SyncMode::default(),
        }
    }
}

/// A message in the queue, as loaded from disk.
#[derive(Clone, Debug)]
pub struct StoredMessage {
    pub id: MessageId,
    pub envelope: Envelope,
    pub kind: MessageKind,
    pub state: MessageState,
    /// Path of the body (for the transport).
    pub body: PathBuf,
    pub body_len: u64,
}

type FlushRequest = oneshot::Sender<Result<(), (io::ErrorKind, String)>>;

struct Inner {
    dir: PathBuf,
    incoming: PathBuf,
    queue: PathBuf,
    options: SpoolOptions,
    committer: Option<mpsc::UnboundedSender<FlushRequest>>,
    /// Ids committed (or found at open) that the queue runner has not taken.
    arrivals: Mutex<Vec<MessageId>>,
    wake: Notify,
    _lock: Flock<File>,
}

/// The spool: cheap to clone, shared by the SMTP server and the queue.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.inner.dir)
            .finish()
    }
}

const BODY: &str = "msg";
const ENV: &str = "env";
const STATE: &str = "state";

impl Spool {
    /// Opens (creating if needed) the spool in `dir` with default options.
    pub async fn open(dir: &Path) -> Result<Spool, SpoolError> {
        Self::open_with(dir, SpoolOptions::default()).await
    }

    /// Opens the spool: creates the layout, takes the lock, removes
    /// leftovers of interrupted writes and lists the queue (the ids are
    /// handed to the queue runner through [`Spool::take_arrivals`]).
    pub async fn open_with(dir: &Path, options: SpoolOptions) -> Result<Spool, SpoolError> {
        let dir = dir.to_path_buf();
        let (lock, found) = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || open_blocking(&dir))
                .await
                .map_err(|e| SpoolError::Io(io::Error::other(e)))??
        };
        let committer = match options.sync {
            SyncMode::Grouped => Some(spawn_committer(dir.join("queue"))),
            SyncMode::PerMessage => None,
        };
        Ok(Spool {
            inner: Arc::new(Inner {
                incoming: dir.join("incoming"),
                queue: dir.join("queue"),
                dir,
                options,
                committer,
                arrivals: Mutex::new(found),
                wake: Notify::new(),
                _lock: lock,
            }),
        })
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub fn options(&self) -> &SpoolOptions {
        &self.inner.options
    }

    /// Starts receiving a message; fails with [`SpoolError::DiskFull`] when
    /// free space is below the floor.
    pub async fn begin(&self, envelope: Envelope) -> Result<Incoming, SpoolError> {
        if !self.has_room() {
            return Err(SpoolError::DiskFull);
        }
        self.start(envelope, MessageKind::Received).await
    }

    /// Starts writing a notification (bounce or delay notice) that the
    /// gateway generated itself. Ignores the floor; stops only at the hard
    /// reserve.
    pub async fn begin_notification(&self, envelope: Envelope) -> Result<Incoming, SpoolError> {
        if self
            .free_bytes()
            .is_none_or(|(avail, _)| avail <= self.inner.options.hard_reserve_bytes)
        {
            return Err(SpoolError::DiskFull);
        }
        self.start(envelope, MessageKind::Notification).await
    }

    async fn start(&self, envelope: Envelope, kind: MessageKind) -> Result<Incoming, SpoolError> {
        let id = MessageId::generate();
        let tmp_body = self.inner.incoming.join(format!("{id}.{BODY}"));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp_body)
            .await?;
        Ok(Incoming {
            spool: self.clone(),
            id,
            envelope: StoredEnvelope { envelope, kind },
            file: Some(BufWriter::with_capacity(64 * 1024, file)),
            tmp_body,
            written: 0,
            done: false,
        })
    }

    /// True when free space is above the floor. One `statvfs` call.
    pub fn has_room(&self) -> bool {
        let Some((avail, total)) = self.free_bytes() else {
            return false;
        };
        let floor = &self.inner.options.floor;
        let pct = total / 100 * u64::from(floor.percent.min(100));
        avail
            > floor
                .bytes
                .max(pct)
                .max(self.inner.options.hard_reserve_bytes)
    }

    /// (available to unprivileged users, total) bytes of the spool's file
    /// system; `None` when `statvfs` fails.
    fn free_bytes(&self) -> Option<(u64, u64)> {
        match nix::sys::statvfs::statvfs(&self.inner.queue) {
            Ok(s) => {
                let unit = s.fragment_size();
                Some((
                    s.blocks_available().saturating_mul(unit),
                    s.blocks().saturating_mul(unit),
                ))
            }
            Err(e) => {
                tracing::warn!(error = %e, "statvfs on the spool failed");
                None
            }
        }
    }

    /// Ids committed since the last call (at first: the whole queue found
    /// at open), oldest first.
    pub fn take_arrivals(&self) -> Vec<MessageId> {
        let mut a = match self.inner.arrivals.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let mut out = std::mem::take(&mut *a);
        out.sort_unstable();
        out
    }

    /// Resolves when something arrived since the last [`Spool::take_arrivals`]
    /// (meant for one waiter, the queue runner).
    pub async fn arrived(&self) {
        self.inner.wake.notified().await;
    }

    /// Path of a queued message's body.
    pub fn body_path(&self, id: &MessageId) -> PathBuf {
        self.inner.queue.join(format!("{id}.{BODY}"))
    }

    fn path(&self, id: &MessageId, ext: &str) -> PathBuf {
        self.inner.queue.join(format!("{id}.{ext}"))
    }

    /// Ids of every committed message, oldest first (reads the directory).
    pub async fn list(&self) -> Result<Vec<MessageId>, SpoolError> {
        let queue = self.inner.queue.clone();
        blocking(move || list_queue(&queue)).await
    }

    /// Loads a committed message's envelope and state.
    pub async fn load(&self, id: &MessageId) -> Result<StoredMessage, SpoolError> {
        let id = *id;
        let env_path = self.path(&id, ENV);
        let state_path = self.path(&id, STATE);
        let body = self.body_path(&id);
        blocking(move || load_blocking(id, &env_path, &state_path, body))
            .await
            .map_err(|e| match e {
                SpoolError::Io(io) if io.kind() == io::ErrorKind::NotFound => {
                    SpoolError::NotFound(id)
                }
                SpoolError::Io(io) if io.kind() == io::ErrorKind::InvalidData => {
                    SpoolError::Corrupt {
                        path: self.path(&id, ENV),
                        reason: io.to_string(),
                    }
                }
                other => other,
            })
    }

    /// Replaces a message's state durably (temp file, fsync, rename, fsync
    /// of `queue/`).
    pub async fn save_state(&self, id: &MessageId, state: &MessageState) -> Result<(), SpoolError> {
        let bytes = serde_json::to_vec(state).map_err(|e| SpoolError::Io(io::Error::other(e)))?;
        let path = self.path(id, STATE);
        let tmp = self.inner.queue.join(format!("{id}.{STATE}.tmp"));
        let env = self.path(id, ENV);
        blocking(move || {
            if !env.exists() {
                return Err(io::Error::new(io::ErrorKind::NotFound, "message gone"));
            }
            write_synced(&tmp, &bytes)?;
            if let Err(e) = std::fs::rename(&tmp, &path) {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
            Ok(())
        })
        .await
        .map_err(|e| match e {
            SpoolError::Io(io) if io.kind() == io::ErrorKind::NotFound => SpoolError::NotFound(*id),
            other => other,
        })?;
        self.sync_queue_dir().await
    }

    /// Removes a message from the queue (envelope first: once it is gone
    /// the message no longer exists, even if a crash leaves the rest).
    pub async fn remove(&self, id: &MessageId) -> Result<(), SpoolError> {
        let env = self.path(id, ENV);
        let others = [self.path(id, STATE), self.body_path(id)];
        let found = blocking(move || {
            let found = match std::fs::remove_file(&env) {
                Ok(()) => true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                Err(e) => return Err(e),
            };
            for p in others {
                match std::fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(found)
        })
        .await?;
        if !found {
            return Err(SpoolError::NotFound(*id));
        }
        self.sync_queue_dir().await
    }

    /// Makes renames in `queue/` durable: a shared flush with
    /// [`SyncMode::Grouped`], a flush of our own otherwise.
    async fn sync_queue_dir(&self) -> Result<(), SpoolError> {
        if let Some(tx) = &self.inner.committer {
            let (reply, rx) = oneshot::channel();
            if tx.send(reply).is_ok() {
                return match rx.await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err((kind, msg))) => Err(io::Error::new(kind, msg).into()),
                    Err(_) => Err(SpoolError::Io(io::Error::other("spool committer stopped"))),
                };
            }
        }
        let queue = self.inner.queue.clone();
        blocking(move || File::open(&queue)?.sync_all()).await
    }

    fn announce(&self, id: MessageId) {
        match self.inner.arrivals.lock() {
            Ok(mut g) => g.push(id),
            Err(p) => p.into_inner().push(id),
        }
        self.inner.wake.notify_one();
    }
}

/// A message being received. Dropping it without [`Incoming::commit`]
/// removes its temporary file.
pub struct Incoming {
    spool: Spool,
    id: MessageId,
    envelope: StoredEnvelope,
    file: Option<BufWriter<tokio::fs::File>>,
    tmp_body: PathBuf,
    written: u64,
    done: bool,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("id", &self.id)
            .field("written", &self.written)
            .finish()
    }
}

/// Every this many bytes a message being written checks the hard reserve.
const RESERVE_CHECK_EVERY: u64 = 1024 * 1024;

impl Incoming {
    /// The id the message will have once committed.
    pub fn id(&self) -> MessageId {
        self.id
    }

    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Appends bytes of the message (as received: CRLF, not dot-stuffed).
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), SpoolError> {
        let before = self.written / RESERVE_CHECK_EVERY;
        let after = (self.written + chunk.len() as u64) / RESERVE_CHECK_EVERY;
        if before != after
            && self
                .spool
                .free_bytes()
                .is_none_or(|(avail, _)| avail <= self.spool.inner.options.hard_reserve_bytes)
        {
            return Err(SpoolError::DiskFull);
        }
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| SpoolError::Io(io::Error::other("message already failed")))?;
        if let Err(e) = file.write_all(chunk).await {
            self.file = None;
            return Err(e.into());
        }
        self.written += chunk.len() as u64;
        Ok(())
    }

    /// Makes the message durable and queues it; returns its id only once
    /// the body, the envelope and the directory entries are on disk.
    pub async fn commit(mut self) -> Result<MessageId, SpoolError> {
        let result = self.commit_inner().await;
        self.done = true;
        if result.is_err() {
            self.cleanup_everywhere().await;
        }
        let id = result?;
        self.spool.announce(id);
        Ok(id)
    }

    async fn commit_inner(&mut self) -> Result<MessageId, SpoolError> {
        let mut file = self
            .file
            .take()
            .ok_or_else(|| SpoolError::Io(io::Error::other("message already failed")))?;
        file.flush().await?;
        let file = file.into_inner();
        file.sync_all().await?;
        drop(file);

        let id = self.id;
        let env_bytes =
            serde_json::to_vec(&self.envelope).map_err(|e| SpoolError::Io(io::Error::other(e)))?;
        let incoming = &self.spool.inner.incoming;
        let tmp_env = incoming.join(format!("{id}.{ENV}"));
        let tmp_body = self.tmp_body.clone();
        let body = self.spool.body_path(&id);
        let env = self.spool.path(&id, ENV);
        blocking(move || {
            write_synced(&tmp_env, &env_bytes)?;
            // Body first: the envelope's arrival in queue/ is the commit.
            std::fs::rename(&tmp_body, &body)?;
            std::fs::rename(&tmp_env, &env)
        })
        .await?;
        self.spool.sync_queue_dir().await?;
        Ok(id)
    }

    /// After a failed commit: nothing of the message may stay anywhere.
    async fn cleanup_everywhere(&self) {
        let id = self.id;
        let paths = [
            self.tmp_body.clone(),
            self.spool.inner.incoming.join(format!("{id}.{ENV}")),
            self.spool.path(&id, ENV),
            self.spool.body_path(&id),
        ];
        let _ = blocking(move || {
            for p in paths {
                let _ = std::fs::remove_file(p);
            }
            Ok(())
        })
        .await;
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if !self.done {
            // An unlink; not worth a blocking-pool round trip.
            let _ = std::fs::remove_file(&self.tmp_body);
        }
    }
}

async fn blocking<T, F>(f: F) -> Result<T, SpoolError>
where
    F: FnOnce() -> io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(SpoolError::from),
        Err(e) => Err(SpoolError::Io(io::Error::other(e))),
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// The group committer: one `fsync(queue/)` for every request that queued
/// up while the previous one ran.
fn spawn_committer(queue: PathBuf) -> mpsc::UnboundedSender<FlushRequest> {
    let (tx, mut rx) = mpsc::unbounded_channel::<FlushRequest>();
    tokio::spawn(async move {
        let mut batch = Vec::new();
        while let Some(first) = rx.recv().await {
            batch.push(first);
            while let Ok(more) = rx.try_recv() {
                batch.push(more);
            }
            let dir = queue.clone();
            let result =
                match tokio::task::spawn_blocking(move || File::open(&dir)?.sync_all()).await {
                    Ok(r) => r,
                    Err(e) => Err(io::Error::other(e)),
                };
            let result = result.map_err(|e| (e.kind(), e.to_string()));
            for reply in batch.drain(..) {
                let _ = reply.send(result.clone());
            }
        }
    });
    tx
}

fn open_blocking(dir: &Path) -> Result<(Flock<File>, Vec<MessageId>), SpoolError> {
    let incoming = dir.join("incoming");
    let queue = dir.join("queue");
    std::fs::create_dir_all(&incoming)?;
    std::fs::create_dir_all(&queue)?;
    let lock_file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join("lock"))?;
    let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock)
        .map_err(|_| SpoolError::Locked(dir.to_path_buf()))?;

    // Interrupted receptions: never acknowledged, so never wanted.
    for entry in std::fs::read_dir(&incoming)? {
        let entry = entry?;
        tracing::info!(file = %entry.path().display(), "removing leftover of an interrupted reception");
        std::fs::remove_file(entry.path())?;
    }
    File::open(&incoming)?.sync_all()?;

    // In queue/, only what has an envelope exists.
    let ids = list_queue(&queue)?;
    let mut removed = false;
    for entry in std::fs::read_dir(&queue)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let keep = match name.split_once('.') {
            Some((id, ext)) => match id.parse::<MessageId>() {
                Ok(id) => {
                    (ext == BODY || ext == STATE || ext == ENV) && ids.binary_search(&id).is_ok()
                }
                Err(_) => false,
            },
            None => false,
        };
        if !keep {
            tracing::info!(file = %entry.path().display(), "removing leftover in the queue");
            if entry.file_type()?.is_dir() {
                std::fs::remove_dir_all(entry.path())?;
            } else {
                std::fs::remove_file(entry.path())?;
            }
            removed = true;
        }
    }
    if removed {
        File::open(&queue)?.sync_all()?;
    }
    Ok((lock, ids))
}

fn list_queue(queue: &Path) -> io::Result<Vec<MessageId>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(queue)? {
        let entry = entry?;
        let name = entry.file_name();
        if let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".env"))
            .and_then(|n| n.parse::<MessageId>().ok())
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

fn load_blocking(
    id: MessageId,
    env_path: &Path,
    state_path: &Path,
    body: PathBuf,
) -> io::Result<StoredMessage> {
    let env_bytes = std::fs::read(env_path)?;
    let stored: StoredEnvelope = serde_json::from_slice(&env_bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", env_path.display()),
        )
    })?;
    let state = match std::fs::read(state_path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", state_path.display()),
            )
        })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => MessageState::fresh(&stored.envelope),
        Err(e) => return Err(e),
    };
    let body_len = std::fs::metadata(&body)?.len();
    Ok(StoredMessage {
        id,
        envelope: stored.envelope,
        kind: stored.kind,
        state,
        body,
        body_len,
    })
}
