//! The intake journal: messages received in memory are committed by
//! appending them to a shared segment file, many commits per `fdatasync`.
//!
//! ```text
//! journal/<seq>.log    segments (16 hex digits), written in order
//! J K <id> LLLLLLLL CCCCCCCCCCCCCCCC\n<payload, L bytes>     one record
//! ```
//! `K = M`: a committed message; the payload is the image of its spool
//! file ([`super::file`] format: first line, envelope, body; no state
//! records). `K = D`: the message left the journal (finished, deleted, or
//! moved to its own file `queue/<id>.qm` at its first deferral); no
//! payload. `C` is FNV-1a 64 of the payload.
//!
//! # Group commit
//! One thread (`spool-journal`) owns the active segment. Commits queue up
//! while it writes; it takes every waiting request (up to
//! [`MAX_BATCH_BYTES`]), writes them with one `pwrite`, runs one
//! `fdatasync`, and only then answers each commit, which then answers
//! `250`. A message costs no file creation, rename, directory fsync or
//! unlink: those were most of the kernel time of a commit.
//!
//! # Segments
//! A segment is sealed when it reaches [`SEGMENT_BYTES`] (or
//! [`IDLE_ROTATE_BYTES`] with nothing in it still queued); the next one is
//! created and `journal/` fsynced before anything is written to it. The
//! thread counts the messages of each segment still queued and unlinks
//! sealed segments whose count reached zero, oldest first (so a `D` record
//! is never gone while the `M` record it cancels is still on disk). `D`
//! records are written without their own `fdatasync` (the next commit's
//! covers them): a crash may bring a finished message back, which is then
//! delivered again, never lost. The operator's `delete` waits for one.
//!
//! # Failure
//! When a write or `fdatasync` fails, the segment is cut back to where the
//! batch began, every commit of the batch gets the error (the clients get
//! a `4xx` and send again) and the next batch goes to a fresh segment.
//!
//! # Recovery
//! At open ([`recover`]), every message of the journal without a `D`
//! record is written out as `queue/<id>.qm` (unless that file exists: a
//! message moved out just before a crash), `queue/` is fsynced, and the
//! segments are removed. A record cut short at the end of a segment is an
//! interrupted commit that was never acknowledged. Damage in the middle of
//! a segment is skipped (scanning on for the next intact record), reported,
//! and the segment is kept as `journal/<seq>.damaged` for the operator.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use tokio::sync::oneshot;

use super::file::{fnv1a, hex, write_then_rename};
use super::MessageId;

/// A segment is sealed once it holds this many bytes.
pub const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;
/// A segment with no queued message left is sealed past this size (so an
/// idle relay does not keep up to [`SEGMENT_BYTES`] of finished mail).
pub const IDLE_ROTATE_BYTES: u64 = 1024 * 1024;
/// Most bytes one batch writes (more requests wait for the next one).
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Bytes before a record's payload.
pub const HEAD_LEN: usize = 55;
/// Longest payload a record may claim (a damaged length field beyond it
/// is not believed).
const MAX_PAYLOAD: usize = 64 * 1024 * 1024;
const ID_LEN: usize = 25;

/// Where a journaled message's spool-file image lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    pub segment: u64,
    /// Offset of the payload (the image) in the segment.
    pub offset: u64,
    pub len: u64,
}

/// Path of segment `seq` in `dir`.
pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.log"))
}

fn segment_seq(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".log")?;
    if hex.len() != 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Message,
    Done,
}

/// The head of a record.
pub fn head(kind: Kind, id: &MessageId, payload: &[u8]) -> [u8; HEAD_LEN] {
    let k = match kind {
        Kind::Message => 'M',
        Kind::Done => 'D',
    };
    let text = format!("J{k} {id} {:08x} {:016x}\n", payload.len(), fnv1a(payload));
    let mut out = [0u8; HEAD_LEN];
    out.copy_from_slice(text.as_bytes());
    out
}

/// One intact record of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub kind: Kind,
    pub id: MessageId,
    /// Offset of the payload in the segment.
    pub offset: u64,
    pub len: u64,
}

/// What a segment holds.
#[derive(Debug, Default)]
pub struct Scan {
    pub records: Vec<Record>,
    /// Bytes in the middle of the segment that hold no intact record
    /// (damage; intact records follow them).
    pub damaged: u64,
    /// Bytes at the end that hold no intact record (an interrupted write).
    pub torn_tail: u64,
}

/// The record at `at`, if an intact one starts there.
fn record_at(seg: &[u8], at: usize) -> Option<Record> {
    let h = seg.get(at..at.checked_add(HEAD_LEN)?)?;
    let kind = match (h[0], h[1], h[2]) {
        (b'J', b'M', b' ') => Kind::Message,
        (b'J', b'D', b' ') => Kind::Done,
        _ => return None,
    };
    let id: MessageId = std::str::from_utf8(&h[3..3 + ID_LEN]).ok()?.parse().ok()?;
    let (sp1, len, sp2, sum, nl) = (h[28], hex(&h[29..37])?, h[37], hex(&h[38..54])?, h[54]);
    if (sp1, sp2, nl) != (b' ', b' ', b'\n') || len as usize > MAX_PAYLOAD {
        return None;
    }
    if kind == Kind::Done && len != 0 {
        return None;
    }
    let start = at + HEAD_LEN;
    let payload = seg.get(start..start.checked_add(len as usize)?)?;
    (fnv1a(payload) == sum).then_some(Record {
        kind,
        id,
        offset: start as u64,
        len,
    })
}

/// Reads every intact record of a segment's bytes. After a bad record the
/// scan looks for the next intact one, so damage costs only what it hit.
pub fn scan(seg: &[u8]) -> Scan {
    let mut out = Scan::default();
    let mut at = 0usize;
    let mut bad_from: Option<usize> = None;
    while at < seg.len() {
        match record_at(seg, at) {
            Some(r) => {
                if let Some(from) = bad_from.take() {
                    out.damaged += (at - from) as u64;
                }
                at = (r.offset + r.len) as usize;
                out.records.push(r);
            }
            None => {
                bad_from.get_or_insert(at);
                // On to the next possible record start.
                at = seg[at + 1..]
                    .iter()
                    .position(|&b| b == b'J')
                    .map_or(seg.len(), |p| at + 1 + p);
            }
        }
    }
    if let Some(from) = bad_from {
        out.torn_tail = (seg.len() - from) as u64;
    }
    out
}

/// Writes every message of the journal in `journal` that has no `D`
/// record to `queue/<id>.qm` (via `incoming/`), fsyncs `queue/`, then
/// removes the segments. Returns the number of messages written out and
/// the sequence number the next segment gets.
pub fn recover(
    journal: &Path,
    incoming: &Path,
    queue: &Path,
    queue_dir: &File,
) -> io::Result<(usize, u64)> {
    let mut segments = Vec::new();
    let mut next_seq = 1u64;
    for entry in std::fs::read_dir(journal)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(seq) = segment_seq(&name) {
            segments.push((seq, entry.path()));
            next_seq = next_seq.max(seq + 1);
        } else if let Some(seq) = name
            .strip_suffix(".damaged")
            .and_then(|s| segment_seq(&format!("{s}.log")))
        {
            next_seq = next_seq.max(seq + 1);
        }
    }
    segments.sort();
    // Pass 1: which messages are still queued, and where.
    let mut messages: BTreeMap<MessageId, (PathBuf, Record)> = BTreeMap::new();
    let mut done: HashSet<MessageId> = HashSet::new();
    let mut damaged = Vec::new();
    for (seq, path) in &segments {
        let bytes = std::fs::read(path)?;
        let s = scan(&bytes);
        if s.torn_tail > 0 {
            tracing::info!(segment = %path.display(), bytes = s.torn_tail, "ignoring the end of a journal segment: an interrupted commit, never acknowledged");
        }
        if s.damaged > 0 {
            tracing::error!(segment = %path.display(), bytes = s.damaged, "journal segment damaged: intact records around the damage are recovered; the segment is kept as .damaged");
            damaged.push((*seq, path.clone()));
        }
        for r in s.records {
            match r.kind {
                Kind::Message => {
                    messages.insert(r.id, (path.clone(), r));
                }
                Kind::Done => {
                    done.insert(r.id);
                }
            }
        }
    }
    // Pass 2: write out what is still queued.
    let mut written = 0usize;
    for (id, (path, r)) in &messages {
        if done.contains(id) {
            continue;
        }
        let dest = queue.join(format!("{id}.{}", super::EXT));
        if dest.exists() {
            // Moved out just before the crash; its own file is newer.
            continue;
        }
        let mut image = vec![0u8; r.len as usize];
        File::open(path)?.read_exact_at(&mut image, r.offset)?;
        let tmp = incoming.join(format!("{id}.{}", super::EXT));
        write_then_rename(&tmp, &dest, &[&image])?;
        written += 1;
    }
    if written > 0 {
        queue_dir.sync_all()?;
        tracing::info!(
            messages = written,
            "recovered queued messages from the journal"
        );
    }
    for (seq, path) in &segments {
        if damaged.iter().any(|(d, _)| d == seq) {
            std::fs::rename(path, journal.join(format!("{seq:016x}.damaged")))?;
        } else {
            std::fs::remove_file(path)?;
        }
    }
    if !segments.is_empty() {
        File::open(journal)?.sync_all()?;
    }
    Ok((written, next_seq))
}

type CommitReply = oneshot::Sender<io::Result<(Slot, Vec<u8>)>>;

enum Request {
    Commit {
        id: MessageId,
        image: Vec<u8>,
        reply: CommitReply,
    },
    Done {
        id: MessageId,
        segment: u64,
        /// Wait for an `fdatasync` and answer here.
        durable: Option<oneshot::Sender<io::Result<()>>>,
    },
}

impl Request {
    fn bytes(&self) -> usize {
        match self {
            Request::Commit { image, .. } => HEAD_LEN + image.len(),
            Request::Done { .. } => HEAD_LEN,
        }
    }
}

/// Counters of the journal thread (for tests and benchmarks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages committed.
    pub commits: u64,
    /// `fdatasync` calls that succeeded.
    pub flushes: u64,
}

#[derive(Default)]
struct Counters {
    commits: AtomicU64,
    flushes: AtomicU64,
}

/// Handle of the journal thread. Dropping it lets the thread finish what
/// was asked and waits for it.
pub struct Journal {
    dir: PathBuf,
    tx: Option<mpsc::Sender<Request>>,
    thread: Option<std::thread::JoinHandle<()>>,
    counters: Arc<Counters>,
}

fn gone() -> io::Error {
    io::Error::other("the spool journal has stopped")
}

fn copy_err(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

impl Journal {
    /// Starts the thread; segments begin at `next_seq`.
    pub fn start(dir: &Path, next_seq: u64) -> io::Result<Journal> {
        let dir_file = File::open(dir)?;
        let (tx, rx) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let mut writer = Writer {
            counters: counters.clone(),
            dir: dir.to_path_buf(),
            dir_file,
            seq: next_seq.saturating_sub(1),
            file: None,
            len: 0,
            live: BTreeMap::new(),
            buf: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("spool-journal".into())
            .spawn(move || writer.run(rx))?;
        Ok(Journal {
            dir: dir.to_path_buf(),
            tx: Some(tx),
            thread: Some(thread),
            counters,
        })
    }

    pub fn stats(&self) -> Stats {
        Stats {
            commits: self.counters.commits.load(Ordering::Relaxed),
            flushes: self.counters.flushes.load(Ordering::Relaxed),
        }
    }

    pub fn segment_path(&self, seq: u64) -> PathBuf {
        segment_path(&self.dir, seq)
    }

    fn send(&self, req: Request) -> io::Result<()> {
        self.tx
            .as_ref()
            .ok_or_else(gone)?
            .send(req)
            .map_err(|_| gone())
    }

    /// Appends a message's image; resolves once it is on disk, giving the
    /// image back.
    pub async fn commit(&self, id: MessageId, image: Vec<u8>) -> io::Result<(Slot, Vec<u8>)> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Commit { id, image, reply })?;
        rx.await.map_err(|_| gone())?
    }

    /// Records that a message left the journal. Not waited for.
    pub fn done(&self, id: MessageId, segment: u64) {
        // A stopped journal: nothing to record it in; the message comes
        // back at the next open and is delivered again (never lost).
        let _ = self.send(Request::Done {
            id,
            segment,
            durable: None,
        });
    }

    /// Records that a message left the journal; resolves once that is on
    /// disk.
    pub async fn done_durably(&self, id: MessageId, segment: u64) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.send(Request::Done {
            id,
            segment,
            durable: Some(tx),
        })?;
        rx.await.map_err(|_| gone())?
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The journal thread's state.
struct Writer {
    counters: Arc<Counters>,
    dir: PathBuf,
    dir_file: File,
    /// The active segment's number (0: none yet).
    seq: u64,
    file: Option<File>,
    /// Bytes written to the active segment.
    len: u64,
    /// Queued messages per segment (every segment still on disk).
    live: BTreeMap<u64, usize>,
    buf: Vec<u8>,
}

impl Writer {
    fn run(&mut self, rx: mpsc::Receiver<Request>) {
        while let Ok(first) = rx.recv() {
            let mut size = first.bytes();
            let mut batch = vec![first];
            while size < MAX_BATCH_BYTES {
                match rx.try_recv() {
                    Ok(r) => {
                        size += r.bytes();
                        batch.push(r);
                    }
                    Err(_) => break,
                }
            }
            self.write_batch(batch);
        }
        // Stopping: a segment with nothing queued is not needed again.
        if self.live.get(&self.seq) == Some(&0) {
            self.file = None;
            self.seq += 1;
            self.remove_finished();
        }
    }

    fn active_live(&self) -> usize {
        self.live.get(&self.seq).copied().unwrap_or(0)
    }

    /// Seals the active segment when it is full and opens the next one.
    fn rotate_if_needed(&mut self) -> io::Result<()> {
        let full =
            self.len >= SEGMENT_BYTES || (self.len >= IDLE_ROTATE_BYTES && self.active_live() == 0);
        if self.file.is_some() && !full {
            return Ok(());
        }
        self.file = None;
        self.seq += 1;
        self.len = 0;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(segment_path(&self.dir, self.seq))?;
        self.dir_file.sync_all()?;
        self.live.insert(self.seq, 0);
        self.file = Some(f);
        self.remove_finished();
        Ok(())
    }

    /// Unlinks sealed segments with nothing queued, oldest first.
    fn remove_finished(&mut self) {
        while let Some((&seq, &n)) = self.live.first_key_value() {
            if seq >= self.seq || n > 0 {
                return;
            }
            self.live.remove(&seq);
            if let Err(e) = std::fs::remove_file(segment_path(&self.dir, seq)) {
                tracing::warn!(segment = seq, error = %e, "could not remove a finished journal segment");
            }
        }
    }

    fn write_batch(&mut self, batch: Vec<Request>) {
        let result = self.append(&batch);
        let start = self.len;
        let mut at = start;
        let mut committed = 0usize;
        let mut finished = Vec::new();
        for req in batch {
            let n = req.bytes() as u64;
            match req {
                Request::Commit {
                    id: _,
                    image,
                    reply,
                } => {
                    let r = match &result {
                        Ok(()) => {
                            committed += 1;
                            let slot = Slot {
                                segment: self.seq,
                                offset: at + HEAD_LEN as u64,
                                len: image.len() as u64,
                            };
                            Ok((slot, image))
                        }
                        Err(e) => Err(copy_err(e)),
                    };
                    let _ = reply.send(r);
                }
                Request::Done {
                    segment, durable, ..
                } => {
                    finished.push(segment);
                    if let Some(tx) = durable {
                        let _ = tx.send(match &result {
                            Ok(()) => Ok(()),
                            Err(e) => Err(copy_err(e)),
                        });
                    }
                }
            }
            at += n;
        }
        if result.is_ok() {
            self.len = at;
            *self.live.entry(self.seq).or_insert(0) += committed;
            self.counters
                .commits
                .fetch_add(committed as u64, Ordering::Relaxed);
        }
        // A message leaves its segment whether or not its D record made it
        // (without the segment the record is not needed).
        for seg in finished {
            if let Some(n) = self.live.get_mut(&seg) {
                *n = n.saturating_sub(1);
            }
        }
        self.remove_finished();
    }

    /// Writes the batch's records at the end of the active segment and
    /// syncs when a request needs it. On failure the segment is cut back
    /// and sealed.
    fn append(&mut self, batch: &[Request]) -> io::Result<()> {
        self.rotate_if_needed()?;
        self.buf.clear();
        let mut sync = false;
        for req in batch {
            match req {
                Request::Commit { id, image, .. } => {
                    self.buf.extend_from_slice(&head(Kind::Message, id, image));
                    self.buf.extend_from_slice(image);
                    sync = true;
                }
                Request::Done { id, durable, .. } => {
                    self.buf.extend_from_slice(&head(Kind::Done, id, &[]));
                    sync |= durable.is_some();
                }
            }
        }
        let Some(f) = self.file.as_ref() else {
            return Err(gone());
        };
        let result = f.write_all_at(&self.buf, self.len).and_then(|()| {
            if sync {
                f.sync_data()?;
                self.counters.flushes.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        });
        if let Err(e) = &result {
            tracing::error!(segment = self.seq, error = %e, "journal write failed; the batch is refused and the next one starts a new segment");
            let _ = f.set_len(self.len);
            // Seal it: the failed bytes may still reach the disk later.
            self.len = SEGMENT_BYTES;
        }
        if self.buf.capacity() > 2 * MAX_BATCH_BYTES {
            self.buf = Vec::new();
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> MessageId {
        format!("00000000000000{n:02x}-0000{n:04x}")
            .parse()
            .unwrap_or_else(|_| MessageId::generate())
    }

    fn record(kind: Kind, id: &MessageId, payload: &[u8]) -> Vec<u8> {
        let mut out = head(kind, id, payload).to_vec();
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn records_round_trip() {
        let mut seg = record(Kind::Message, &id(1), b"first image");
        seg.extend(record(Kind::Done, &id(1), b""));
        seg.extend(record(Kind::Message, &id(2), b"second"));
        let s = scan(&seg);
        assert_eq!((s.damaged, s.torn_tail), (0, 0));
        let kinds: Vec<_> = s.records.iter().map(|r| (r.kind, r.id)).collect();
        assert_eq!(
            kinds,
            vec![
                (Kind::Message, id(1)),
                (Kind::Done, id(1)),
                (Kind::Message, id(2))
            ]
        );
        let r = s.records[2];
        assert_eq!(
            &seg[r.offset as usize..(r.offset + r.len) as usize],
            b"second"
        );
    }

    #[test]
    fn torn_tail_and_damage_in_the_middle() {
        let a = record(Kind::Message, &id(1), b"aaaa");
        let b = record(Kind::Message, &id(2), b"bbbb");
        let c = record(Kind::Message, &id(3), b"cccc");
        // Torn: the last record cut short.
        let mut seg = [a.clone(), b.clone()].concat();
        seg.extend_from_slice(&c[..c.len() - 2]);
        let s = scan(&seg);
        assert_eq!(s.records.len(), 2);
        assert_eq!((s.damaged, s.torn_tail), (0, c.len() as u64 - 2));
        // A flipped byte in b's payload: a and c still come back.
        let mut seg = [a.clone(), b.clone(), c.clone()].concat();
        seg[a.len() + HEAD_LEN + 1] ^= 0x01;
        let s = scan(&seg);
        let ids: Vec<_> = s.records.iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![id(1), id(3)]);
        assert_eq!((s.damaged, s.torn_tail), (b.len() as u64, 0));
        // A payload that happens to contain `J` does not confuse it.
        let d = record(Kind::Message, &id(4), b"JM JD J");
        let s = scan(&[d, c].concat());
        assert_eq!(s.records.len(), 2);
    }
}
