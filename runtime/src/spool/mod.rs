//! Durable message storage: nothing is acknowledged before it is on disk.
//!
//! # Layout of a spool directory
//! ```text
//! lock                 flock held by the process that has the spool open
//! incoming/<id>.qm     message being written (removed if never committed)
//! queue/<id>.qm        a queued message: envelope, body and state records
//!                      in one file (format in [`file`])
//! journal/<seq>.log    messages committed through the journal (format in
//!                      [`journal`]), until they are finished or deferred
//! control.sock         the queue runner's control socket (see `queue::control`)
//! ```
//!
//! # Commit
//! A message up to [`MEMORY_BODY_LIMIT`] is kept in memory while it is
//! received. With [`SyncMode::Journal`] (the default) [`Incoming::commit`]
//! appends it to the [`journal`], where concurrent commits share one
//! `write` and one `fdatasync`; the message gets a file of its own only if
//! its first attempt leaves something to retry. Otherwise (a larger
//! message, streamed to `incoming/` as it arrives, or another
//! [`SyncMode`]) the commit fills in the body length of the file in
//! `incoming/`, `fdatasync`s it, renames it into `queue/` and fsyncs
//! `queue/`.
//! Only then does it return the [`MessageId`]; any write, fsync or rename
//! error is returned as an error (and the file is removed), never as a
//! success. The whole commit is one trip to the blocking pool. With
//! [`SyncMode::Grouped`] (the default) concurrent commits share one fsync
//! of `queue/`: a commit that finds a flush running waits for the next one,
//! which the first of the waiters runs for all of them ([`DirSync`]). A committed message is handed to the queue runner in memory
//! ([`Spool::take_arrivals`]), with its body while the spool's memory budget
//! ([`CACHE_BUDGET`]) allows, so the first attempt reads nothing back.
//!
//! # State
//! A message that was never deferred has no state on disk (every recipient
//! is pending). [`Spool::save_state`] of a journaled message writes it out
//! as `queue/<id>.qm` with the state (and marks it done in the journal);
//! otherwise it appends a record to the message's file and `fdatasync`s
//! it; a crash during the append leaves the previous
//! state. When the records grow past [`COMPACT_AFTER`] the file is
//! rewritten (temp file, fsync, rename, fsync of `queue/`).
//!
//! # Removal
//! [`Spool::remove_done`] (after delivery) unlinks the file without a
//! directory fsync (a journaled message: a `D` record without an
//! `fdatasync`): a crash may bring a finished message back, which is
//! delivered again (at-least-once), never lost. [`Spool::remove`] (the
//! operator's `delete`) is durable.
//!
//! # Recovery at [`Spool::open`]
//! Everything in `incoming/` is removed (interrupted receptions that were
//! never acknowledged). Messages still queued in the journal are written
//! out as `queue/<id>.qm` and the segments removed ([`journal::recover`]).
//! Files of the previous layout (`queue/<id>.env`, `.msg`, `.state`) are
//! converted into `queue/<id>.qm`; their leftovers without an envelope are
//! removed, as is anything else unknown in `queue/`. A damaged file is
//! never removed: loading it fails with [`SpoolError::Corrupt`], which the
//! queue runner and `tlsgate queue list` report, and it stays for the
//! operator.
//!
//! # Disk space
//! [`SpaceFloor`]: below it [`Spool::begin`] fails with
//! [`SpoolError::DiskFull`] and [`Spool::has_room`] says no, while queued
//! mail keeps draining. Notifications (bounces) are written through
//! [`Spool::begin_notification`], which ignores the floor and only stops at
//! the smaller hard reserve.
//!
//! Submodules: [`file`] (the file format), [`journal`] (the intake
//! journal), [`id`] (message ids), [`state`] (what the queue remembers per
//! recipient).

pub mod file;
pub mod id;
pub mod journal;
mod legacy;
pub mod state;

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use nix::fcntl::{Flock, FlockArg};
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::sync::Notify;

use crate::envelope::Envelope;
use crate::transport::MessageBody;
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncMode {
    /// Each message is its own file; each commit fsyncs `queue/` itself.
    PerMessage,
    /// Each message is its own file; concurrent commits share one fsync
    /// of `queue/`.
    Grouped,
    /// A message received in memory is appended to the [`journal`], many
    /// commits per `fdatasync`; a larger one is its own file as with
    /// [`SyncMode::Grouped`].
    #[default]
    Journal,
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

/// A body up to this size is kept in memory while it is received and
/// written with one `write` at commit; a larger one is streamed to disk.
pub const MEMORY_BODY_LIMIT: usize = 64 * 1024;
/// Bytes of committed bodies the spool keeps in memory for the queue
/// runner's first attempt, all messages together.
pub const CACHE_BUDGET: usize = 32 * 1024 * 1024;
/// State records beyond this many bytes make the next save rewrite the
/// file with only the latest state.
pub const COMPACT_AFTER: u64 = 64 * 1024;
/// Most bytes of state records read at load (more means a damaged file).
const MAX_TAIL: u64 = 64 * 1024 * 1024;

/// A message in the queue, as loaded from disk (or as just committed).
#[derive(Clone, Debug)]
pub struct StoredMessage {
    pub id: MessageId,
    pub envelope: Envelope,
    pub kind: MessageKind,
    pub state: MessageState,
    /// The message's spool file (`queue/<id>.qm`).
    pub path: PathBuf,
    /// Where the body starts in [`StoredMessage::path`].
    pub body_offset: u64,
    pub body_len: u64,
    /// Where the next state record goes (end of the last complete one).
    log_end: u64,
    /// The file holds a torn record after `log_end` (to be overwritten).
    torn: bool,
    /// The whole file's bytes, while the spool still has them from the
    /// commit.
    cached: Option<Arc<CachedBody>>,
    /// The message is in the journal (then `path` is the segment), not in
    /// a file of its own.
    journal: Option<journal::Slot>,
}

impl StoredMessage {
    /// The body for the transport: in memory when the spool still has it,
    /// else the byte range of the spool file.
    pub fn body(&self) -> MessageBody<'_> {
        match &self.cached {
            Some(c) => MessageBody::Memory(c.body()),
            None => MessageBody::FileRange {
                path: &self.path,
                offset: self.body_offset,
                len: self.body_len,
            },
        }
    }

    /// The body is in memory (the first attempt after the commit).
    pub fn body_in_memory(&self) -> bool {
        self.cached.is_some()
    }

    /// Releases the in-memory copy of the body (later attempts read the
    /// file).
    pub fn release_body(&mut self) {
        self.cached = None;
    }

    /// Reads the whole body.
    pub async fn read_body(&self) -> io::Result<Vec<u8>> {
        self.body().read_all().await
    }

    fn body_end(&self) -> u64 {
        self.body_offset.saturating_add(self.body_len)
    }
}

/// The bytes of a just-committed message file, counted against the
/// spool's [`CACHE_BUDGET`] until dropped.
struct CachedBody {
    bytes: Vec<u8>,
    offset: usize,
    budget: Arc<AtomicUsize>,
}

impl CachedBody {
    fn body(&self) -> &[u8] {
        self.bytes.get(self.offset..).unwrap_or_default()
    }

    /// Takes `bytes` into the cache when the budget allows.
    fn admit(bytes: Vec<u8>, offset: usize, budget: &Arc<AtomicUsize>) -> Option<Arc<CachedBody>> {
        let n = bytes.len();
        let mut used = budget.load(Ordering::Relaxed);
        loop {
            if used.saturating_add(n) > CACHE_BUDGET {
                return None;
            }
            match budget.compare_exchange_weak(used, used + n, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => used = now,
            }
        }
        Some(Arc::new(CachedBody {
            bytes,
            offset,
            budget: budget.clone(),
        }))
    }
}

impl Drop for CachedBody {
    fn drop(&mut self) {
        self.budget.fetch_sub(self.bytes.len(), Ordering::AcqRel);
    }
}

impl std::fmt::Debug for CachedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CachedBody({} bytes)", self.body().len())
    }
}

/// A message the queue runner has not taken yet: loaded when it was just
/// committed, only its id when it was found at open.
#[derive(Debug)]
pub struct Arrival {
    pub id: MessageId,
    pub message: Option<StoredMessage>,
}

struct Inner {
    dir: PathBuf,
    incoming: PathBuf,
    queue: PathBuf,
    /// `queue/`, open for its fsyncs (shared by concurrent commits).
    queue_dir: Arc<DirSync>,
    options: SpoolOptions,
    /// Messages committed (or found at open) that the queue runner has not
    /// taken.
    arrivals: Mutex<Vec<Arrival>>,
    wake: Notify,
    /// Bytes of cached bodies.
    cached: Arc<AtomicUsize>,
    /// The journal thread ([`SyncMode::Journal`]); stopped before the lock
    /// is released.
    journal: Option<journal::Journal>,
    /// Messages in the journal, by id.
    journaled: Mutex<HashMap<MessageId, journal::Slot>>,
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

/// Extension of a message file.
pub const EXT: &str = "qm";

impl Spool {
    /// Opens (creating if needed) the spool in `dir` with default options.
    pub async fn open(dir: &Path) -> Result<Spool, SpoolError> {
        Self::open_with(dir, SpoolOptions::default()).await
    }

    /// Opens the spool: creates the layout, takes the lock, removes
    /// leftovers of interrupted writes, converts files of the previous
    /// layout and lists the queue (the ids are handed to the queue runner
    /// through [`Spool::take_arrivals`]).
    pub async fn open_with(dir: &Path, options: SpoolOptions) -> Result<Spool, SpoolError> {
        let dir = dir.to_path_buf();
        let (lock, queue_dir, found, next_segment) = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || open_blocking(&dir))
                .await
                .map_err(|e| SpoolError::Io(io::Error::other(e)))??
        };
        let journal = match options.sync {
            SyncMode::Journal => Some(journal::Journal::start(&dir.join("journal"), next_segment)?),
            _ => None,
        };
        let queue_dir = Arc::new(DirSync::new(queue_dir, options.sync));
        Ok(Spool {
            inner: Arc::new(Inner {
                incoming: dir.join("incoming"),
                queue: dir.join("queue"),
                queue_dir,
                dir,
                options,
                arrivals: Mutex::new(
                    found
                        .into_iter()
                        .map(|id| Arrival { id, message: None })
                        .collect(),
                ),
                wake: Notify::new(),
                cached: Arc::new(AtomicUsize::new(0)),
                journal,
                journaled: Mutex::new(HashMap::new()),
                _lock: lock,
            }),
        })
    }

    /// The journal's counters ([`SyncMode::Journal`] only).
    pub fn journal_stats(&self) -> Option<journal::Stats> {
        self.inner.journal.as_ref().map(journal::Journal::stats)
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
        self.start(envelope, MessageKind::Received)
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
        self.start(envelope, MessageKind::Notification)
    }

    fn start(&self, envelope: Envelope, kind: MessageKind) -> Result<Incoming, SpoolError> {
        let id = MessageId::generate();
        let envelope = StoredEnvelope { envelope, kind };
        let buf = file::header(&envelope, 0)?;
        Ok(Incoming {
            spool: self.clone(),
            id,
            body_offset: buf.len(),
            buf,
            envelope,
            file: None,
            tmp: self.inner.incoming.join(format!("{id}.{EXT}")),
            on_disk: false,
            written: 0,
            failed: false,
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
        match nix::sys::statvfs::fstatvfs(&self.inner.queue_dir.dir) {
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

    /// Messages committed since the last call (at first: the ids of the
    /// whole queue found at open), oldest first.
    pub fn take_arrivals(&self) -> Vec<Arrival> {
        let mut a = match self.inner.arrivals.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let mut out = std::mem::take(&mut *a);
        out.sort_unstable_by_key(|a| a.id);
        out
    }

    /// Resolves when something arrived since the last [`Spool::take_arrivals`]
    /// (meant for one waiter, the queue runner).
    pub async fn arrived(&self) {
        self.inner.wake.notified().await;
    }

    /// Path of a queued message's file.
    pub fn message_path(&self, id: &MessageId) -> PathBuf {
        self.inner.queue.join(format!("{id}.{EXT}"))
    }

    /// Ids of every committed message, oldest first (reads the directory).
    pub async fn list(&self) -> Result<Vec<MessageId>, SpoolError> {
        let queue = self.inner.queue.clone();
        let mut ids = blocking(move || list_queue(&queue)).await?;
        ids.extend(lock(&self.inner.journaled).keys().copied());
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    /// Loads a committed message: envelope, layout and latest state.
    pub async fn load(&self, id: &MessageId) -> Result<StoredMessage, SpoolError> {
        let id = *id;
        let slot = lock(&self.inner.journaled).get(&id).copied();
        let path = match (slot, &self.inner.journal) {
            (Some(slot), Some(j)) => j.segment_path(slot.segment),
            _ => self.message_path(&id),
        };
        let p = path.clone();
        blocking(move || match slot {
            Some(slot) => load_journaled(id, p, slot),
            None => load_blocking(id, p),
        })
        .await
        .map_err(|e| classify(e, id, &path))
    }

    /// Records a message's state durably: appends a record to its file and
    /// `fdatasync`s it (no directory change). Past [`COMPACT_AFTER`] bytes
    /// of records the file is rewritten with only this state.
    pub async fn save_state(&self, msg: &mut StoredMessage) -> Result<(), SpoolError> {
        let record = file::state_record(&msg.state)?;
        if msg.journal.is_some() {
            return self.move_out(msg, record).await;
        }
        let id = msg.id;
        let path = msg.path.clone();
        let (log_end, torn, body_end) = (msg.log_end, msg.torn, msg.body_end());
        let n = record.len() as u64;
        if log_end.saturating_sub(body_end) + n > COMPACT_AFTER {
            let tmp = self.inner.incoming.join(format!("{id}.{EXT}"));
            let p = path.clone();
            blocking(move || rewrite_blocking(&p, &tmp, body_end, &record))
                .await
                .map_err(|e| classify(e, id, &path))?;
            self.sync_queue_dir().await?;
            msg.log_end = body_end + n;
            msg.torn = false;
            return Ok(());
        }
        let p = path.clone();
        blocking(move || {
            let f = std::fs::OpenOptions::new().write(true).open(&p)?;
            if torn {
                f.set_len(log_end)?;
            }
            f.write_all_at(&record, log_end)?;
            f.sync_data()
        })
        .await
        .map_err(|e| classify(e, id, &path))?;
        msg.log_end = log_end + n;
        msg.torn = false;
        Ok(())
    }

    /// A journaled message's first saved state: it leaves the journal for
    /// a file of its own (image and state record written to `incoming/`,
    /// fdatasynced, renamed into `queue/`, `queue/` fsynced), then a `D`
    /// record goes to the journal. A crash in between leaves both; the
    /// file wins at recovery.
    async fn move_out(&self, msg: &mut StoredMessage, record: Vec<u8>) -> Result<(), SpoolError> {
        let (Some(slot), Some(journal)) = (msg.journal, &self.inner.journal) else {
            return Err(SpoolError::Io(io::Error::other("not a journaled message")));
        };
        let id = msg.id;
        let segment = msg.path.clone();
        let dest = self.message_path(&id);
        let tmp = self.inner.incoming.join(format!("{id}.{EXT}"));
        let cached = msg.cached.clone();
        let dir = self.inner.queue_dir.clone();
        let to = dest.clone();
        blocking(move || {
            let image = match cached {
                Some(c) => c.bytes.clone(),
                None => {
                    let mut image = vec![0u8; slot.len as usize];
                    File::open(&segment)?.read_exact_at(&mut image, slot.offset)?;
                    image
                }
            };
            file::write_then_rename(&tmp, &to, &[&image, &record])?;
            dir.sync()?;
            Ok(image.len() as u64 + record.len() as u64)
        })
        .await
        .map_err(|e| classify(e, id, &dest))
        .map(|end| {
            msg.body_offset -= slot.offset;
            msg.log_end = end;
        })?;
        msg.path = dest;
        msg.torn = false;
        msg.journal = None;
        lock(&self.inner.journaled).remove(&id);
        journal.done(id, slot.segment);
        Ok(())
    }

    /// Removes a message from the queue durably (the operator's `delete`:
    /// unlink, then fsync of `queue/`; or a `D` record in the journal and
    /// its `fdatasync`).
    pub async fn remove(&self, id: &MessageId) -> Result<(), SpoolError> {
        if let Some((slot, journal)) = self.take_journaled(id) {
            return Ok(journal.done_durably(*id, slot.segment).await?);
        }
        self.remove_done(id).await?;
        self.sync_queue_dir().await
    }

    /// Takes a message out of the journal index.
    fn take_journaled(&self, id: &MessageId) -> Option<(journal::Slot, &journal::Journal)> {
        let journal = self.inner.journal.as_ref()?;
        let slot = lock(&self.inner.journaled).remove(id)?;
        Some((slot, journal))
    }

    /// Removes a finished message: unlinks its file (or writes its `D`
    /// record to the journal) without waiting for the disk. A crash may
    /// bring it back; it is then delivered again (at-least-once), never
    /// lost.
    pub async fn remove_done(&self, id: &MessageId) -> Result<(), SpoolError> {
        if let Some((slot, journal)) = self.take_journaled(id) {
            journal.done(*id, slot.segment);
            return Ok(());
        }
        // One unlink: done in place rather than paying a blocking-pool
        // round trip (as `Incoming`'s drop does).
        match std::fs::remove_file(self.message_path(id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(SpoolError::NotFound(*id)),
            Err(e) => Err(e.into()),
        }
    }

    /// Makes renames in `queue/` durable (see [`DirSync`]).
    async fn sync_queue_dir(&self) -> Result<(), SpoolError> {
        let dir = self.inner.queue_dir.clone();
        blocking(move || dir.sync()).await
    }

    fn announce(&self, arrival: Arrival) {
        match self.inner.arrivals.lock() {
            Ok(mut g) => g.push(arrival),
            Err(p) => p.into_inner().push(arrival),
        }
        self.inner.wake.notify_one();
    }
}

/// Maps "no such file" to [`SpoolError::NotFound`] and "bad data" to
/// [`SpoolError::Corrupt`].
fn classify(e: SpoolError, id: MessageId, path: &Path) -> SpoolError {
    match e {
        SpoolError::Io(io) if io.kind() == io::ErrorKind::NotFound => SpoolError::NotFound(id),
        SpoolError::Io(io) if io.kind() == io::ErrorKind::InvalidData => SpoolError::Corrupt {
            path: path.to_path_buf(),
            reason: io.to_string(),
        },
        other => other,
    }
}

/// A message being received. Dropping it without [`Incoming::commit`]
/// removes its temporary file.
pub struct Incoming {
    spool: Spool,
    id: MessageId,
    envelope: StoredEnvelope,
    /// The file's first line and envelope, then the body while it fits in
    /// [`MEMORY_BODY_LIMIT`] (emptied once the message spills to disk).
    buf: Vec<u8>,
    body_offset: usize,
    /// The file in `incoming/`, once the body outgrew memory.
    file: Option<BufWriter<tokio::fs::File>>,
    tmp: PathBuf,
    /// `tmp` was created (remove it unless committed).
    on_disk: bool,
    written: u64,
    failed: bool,
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
        if self.failed {
            return Err(SpoolError::Io(io::Error::other("message already failed")));
        }
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
        if self.file.is_none()
            && self.buf.len() + chunk.len() <= self.body_offset + MEMORY_BODY_LIMIT
        {
            self.buf.extend_from_slice(chunk);
            self.written += chunk.len() as u64;
            return Ok(());
        }
        if let Err(e) = self.spill_and_write(chunk).await {
            self.failed = true;
            self.file = None;
            return Err(e.into());
        }
        self.written += chunk.len() as u64;
        Ok(())
    }

    async fn spill_and_write(&mut self, chunk: &[u8]) -> io::Result<()> {
        if self.file.is_none() {
            let mut f = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&self.tmp)
                .await?;
            self.on_disk = true;
            f.write_all(&self.buf).await?;
            self.buf = Vec::new();
            self.file = Some(BufWriter::with_capacity(64 * 1024, f));
        }
        match self.file.as_mut() {
            Some(f) => f.write_all(chunk).await,
            None => Err(io::Error::other("message already failed")),
        }
    }

    /// Makes the message durable and queues it; returns its id only once
    /// the file and its directory entry are on disk.
    pub async fn commit(mut self) -> Result<MessageId, SpoolError> {
        let result = self.commit_inner().await;
        self.done = true;
        if result.is_err() {
            self.cleanup_everywhere().await;
        }
        let message = result?;
        let id = message.id;
        self.spool.announce(Arrival {
            id,
            message: Some(message),
        });
        Ok(id)
    }

    async fn commit_inner(&mut self) -> Result<StoredMessage, SpoolError> {
        if self.failed {
            return Err(SpoolError::Io(io::Error::other("message already failed")));
        }
        let id = self.id;
        let dest = self.spool.message_path(&id);
        let tmp = self.tmp.clone();
        let len_field = file::body_len_field(self.written);
        let cached = match self.file.take() {
            None if self.spool.inner.journal.is_some() => {
                let mut bytes = std::mem::take(&mut self.buf);
                bytes[file::BODY_LEN_AT..file::BODY_LEN_AT + 16].copy_from_slice(&len_field);
                return self.commit_to_journal(bytes).await;
            }
            None => {
                // Everything is in memory: one write.
                let mut bytes = std::mem::take(&mut self.buf);
                bytes[file::BODY_LEN_AT..file::BODY_LEN_AT + 16].copy_from_slice(&len_field);
                let to = dest.clone();
                let dir = self.spool.inner.queue_dir.clone();
                let bytes = blocking(move || {
                    file::write_then_rename(&tmp, &to, &[&bytes])?;
                    dir.sync()?;
                    Ok(bytes)
                })
                .await?;
                CachedBody::admit(bytes, self.body_offset, &self.spool.inner.cached)
            }
            Some(mut f) => {
                f.flush().await?;
                let f = f.into_inner().into_std().await;
                let to = dest.clone();
                let dir = self.spool.inner.queue_dir.clone();
                blocking(move || {
                    f.write_all_at(&len_field, file::BODY_LEN_AT as u64)?;
                    f.sync_data()?;
                    drop(f);
                    std::fs::rename(&tmp, &to)?;
                    dir.sync()
                })
                .await?;
                None
            }
        };
        let body_offset = self.body_offset as u64;
        let log_end = body_offset + self.written;
        Ok(StoredMessage {
            id,
            state: MessageState::fresh(&self.envelope.envelope),
            envelope: self.envelope.envelope.clone(),
            kind: self.envelope.kind,
            path: dest,
            body_offset,
            body_len: self.written,
            log_end,
            torn: false,
            cached,
            journal: None,
        })
    }

    /// Appends the message's image to the journal (group commit).
    async fn commit_to_journal(&mut self, image: Vec<u8>) -> Result<StoredMessage, SpoolError> {
        let inner = &self.spool.inner;
        let Some(journal) = inner.journal.as_ref() else {
            return Err(SpoolError::Io(io::Error::other("no journal")));
        };
        let (slot, image) = journal.commit(self.id, image).await?;
        lock(&inner.journaled).insert(self.id, slot);
        let body_offset = slot.offset + self.body_offset as u64;
        Ok(StoredMessage {
            id: self.id,
            state: MessageState::fresh(&self.envelope.envelope),
            envelope: self.envelope.envelope.clone(),
            kind: self.envelope.kind,
            path: journal.segment_path(slot.segment),
            body_offset,
            body_len: self.written,
            log_end: slot.offset + slot.len,
            torn: false,
            cached: CachedBody::admit(image, self.body_offset, &inner.cached),
            journal: Some(slot),
        })
    }

    /// After a failed commit: nothing of the message may stay anywhere.
    async fn cleanup_everywhere(&self) {
        let paths = [self.tmp.clone(), self.spool.message_path(&self.id)];
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
        if !self.done && self.on_disk {
            // The message spilled to a file. An unlink; not worth a
            // blocking-pool round trip.
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Locks a mutex, recovering it if a holder panicked.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
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

/// fsyncs of `queue/`, shared by concurrent commits with
/// [`SyncMode::Grouped`]: a caller needs a flush that *starts* after its
/// rename; if one is running it waits for it to end, then the first waiter
/// runs the next flush for everyone who arrived meanwhile. Runs on
/// blocking-pool threads (it waits on a condition variable).
pub struct DirSync {
    dir: File,
    mode: SyncMode,
    state: Mutex<DirSyncState>,
    done: std::sync::Condvar,
}

#[derive(Default)]
struct DirSyncState {
    /// Flushes started / finished (a generation counter).
    started: u64,
    finished: u64,
    running: bool,
    /// The last generation that failed, and how.
    failed: Option<(u64, io::ErrorKind, String)>,
}

impl DirSync {
    fn new(dir: File, mode: SyncMode) -> DirSync {
        DirSync {
            dir,
            mode,
            state: Mutex::new(DirSyncState::default()),
            done: std::sync::Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DirSyncState> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Returns once a flush of the directory that started after this call
    /// has succeeded.
    pub fn sync(&self) -> io::Result<()> {
        if self.mode == SyncMode::PerMessage {
            return self.dir.sync_all();
        }
        let mut st = self.lock();
        let want = st.started + 1;
        loop {
            if st.finished >= want {
                return match &st.failed {
                    Some((generation, kind, msg)) if *generation >= want => {
                        Err(io::Error::new(*kind, msg.clone()))
                    }
                    _ => Ok(()),
                };
            }
            if st.running {
                st = match self.done.wait(st) {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                continue;
            }
            st.running = true;
            st.started += 1;
            let generation = st.started;
            drop(st);
            let result = self.dir.sync_all();
            st = self.lock();
            st.running = false;
            st.finished = generation;
            if let Err(e) = &result {
                st.failed = Some((generation, e.kind(), e.to_string()));
            }
            self.done.notify_all();
        }
    }
}

type Opened = (Flock<File>, File, Vec<MessageId>, u64);

fn open_blocking(dir: &Path) -> Result<Opened, SpoolError> {
    let incoming = dir.join("incoming");
    let queue = dir.join("queue");
    let journal_dir = dir.join("journal");
    std::fs::create_dir_all(&incoming)?;
    std::fs::create_dir_all(&queue)?;
    std::fs::create_dir_all(&journal_dir)?;
    let lock_file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join("lock"))?;
    let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock)
        .map_err(|_| SpoolError::Locked(dir.to_path_buf()))?;

    // Interrupted receptions: never acknowledged, so never wanted.
    let mut removed = false;
    for entry in std::fs::read_dir(&incoming)? {
        let entry = entry?;
        tracing::info!(file = %entry.path().display(), "removing leftover of an interrupted reception");
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
        removed = true;
    }
    if removed {
        File::open(&incoming)?.sync_all()?;
    }

    let queue_dir = File::open(&queue)?;
    legacy::convert(&incoming, &queue, &queue_dir)?;
    let (_, next_segment) = journal::recover(&journal_dir, &incoming, &queue, &queue_dir)?;
    let ids = list_queue(&queue)?;
    Ok((lock, queue_dir, ids, next_segment))
}

/// The id of a message file name (`<id>.qm`).
fn message_id_of(name: &str) -> Option<MessageId> {
    name.strip_suffix(".qm")?.parse().ok()
}

fn list_queue(queue: &Path) -> io::Result<Vec<MessageId>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(queue)? {
        let entry = entry?;
        if let Some(id) = entry.file_name().to_str().and_then(message_id_of) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

fn load_blocking(id: MessageId, path: PathBuf) -> io::Result<StoredMessage> {
    let f = File::open(&path)?;
    let len = f.metadata()?.len();
    let mut first = [0u8; file::HEADER_LEN];
    f.read_exact_at(&mut first, 0).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            io::Error::new(io::ErrorKind::InvalidData, "truncated first line")
        } else {
            e
        }
    })?;
    let layout = file::parse_first_line(&first)?;
    if len < layout.body_end() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "truncated: {len} bytes, the header says the body ends at {}",
                layout.body_end()
            ),
        ));
    }
    let mut env = vec![0u8; layout.envelope_len + 1];
    f.read_exact_at(&mut env, layout.envelope_offset())?;
    let stored = file::parse_envelope(&env)?;
    let tail_len = len - layout.body_end();
    if tail_len > MAX_TAIL {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{tail_len} bytes of state records"),
        ));
    }
    let mut tail = Vec::new();
    if tail_len > 0 {
        let mut r = &f;
        io::Seek::seek(&mut r, io::SeekFrom::Start(layout.body_end()))?;
        r.take(tail_len).read_to_end(&mut tail)?;
    }
    let records = file::parse_records(&tail);
    if records.torn {
        tracing::warn!(file = %path.display(), "ignoring an incomplete state record (interrupted save); the previous state stands");
    }
    let state = records
        .state
        .unwrap_or_else(|| MessageState::fresh(&stored.envelope));
    if state.recipients.len() != stored.envelope.rcpt_to.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the state does not match the envelope's recipients",
        ));
    }
    Ok(StoredMessage {
        id,
        envelope: stored.envelope,
        kind: stored.kind,
        state,
        path,
        body_offset: layout.body_offset(),
        body_len: layout.body_len,
        log_end: layout.body_end() + records.valid as u64,
        torn: records.torn,
        cached: None,
        journal: None,
    })
}

/// Loads a message from its image in a journal segment.
fn load_journaled(id: MessageId, path: PathBuf, slot: journal::Slot) -> io::Result<StoredMessage> {
    let mut image = vec![0u8; slot.len as usize];
    File::open(&path)?.read_exact_at(&mut image, slot.offset)?;
    let layout = file::parse_first_line(&image)?;
    if image.len() as u64 != layout.body_end() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "journal image does not match its first line",
        ));
    }
    let env_end = layout.body_offset() as usize;
    let stored = file::parse_envelope(&image[file::HEADER_LEN..env_end])?;
    Ok(StoredMessage {
        id,
        state: MessageState::fresh(&stored.envelope),
        envelope: stored.envelope,
        kind: stored.kind,
        path,
        body_offset: slot.offset + layout.body_offset(),
        body_len: layout.body_len,
        log_end: slot.offset + slot.len,
        torn: false,
        cached: None,
        journal: Some(slot),
    })
}

/// Rewrites a message file with its header, body and one state record:
/// temp file in `incoming/`, fdatasync, rename over the old one (the caller
/// fsyncs `queue/`).
fn rewrite_blocking(path: &Path, tmp: &Path, body_end: u64, record: &[u8]) -> io::Result<()> {
    let result = (|| {
        let mut src = File::open(path)?.take(body_end);
        let mut dst = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(tmp)?;
        let copied = io::copy(&mut src, &mut dst)?;
        if copied != body_end {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the message file shrank",
            ));
        }
        dst.write_all(record)?;
        dst.sync_data()?;
        std::fs::rename(tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    result
}
