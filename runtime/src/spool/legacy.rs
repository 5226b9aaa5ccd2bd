//! Conversion of the previous spool layout at open.
//!
//! Before the one-file format, a queued message was `queue/<id>.msg` (the
//! body), `queue/<id>.env` (the envelope as JSON, the commit marker) and,
//! once attempted, `queue/<id>.state` (JSON). A spool written by such a
//! version (an appliance updated with mail queued) is converted here:
//! each message is written as `incoming/<id>.qm`, fdatasynced, renamed to
//! `queue/<id>.qm`, `queue/` is fsynced, and only then are the old files
//! removed. A crash half-way leaves the old files, or both (the new file
//! wins). Old files that cannot be read (a damaged envelope or state, a
//! missing body) are left in place and reported, never dropped. Body or
//! state files without an envelope were never committed and are removed,
//! as under the old rules, as is anything else unknown in `queue/`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use super::file;
use super::state::{MessageState, StoredEnvelope};
use super::{message_id_of, MessageId, SpoolError, EXT};

const OLD_BODY: &str = "msg";
const OLD_ENV: &str = "env";
const OLD_STATE: &str = "state";

/// Converts every old-layout message in `queue/` and removes leftovers.
pub(super) fn convert(incoming: &Path, queue: &Path, queue_dir: &File) -> Result<(), SpoolError> {
    let mut current = BTreeSet::new();
    // id -> extensions present
    let mut old: BTreeMap<MessageId, Vec<&'static str>> = BTreeMap::new();
    let mut leftovers = Vec::new();
    for entry in std::fs::read_dir(queue)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(id) = message_id_of(&name) {
            if entry.file_type()?.is_file() {
                current.insert(id);
                continue;
            }
        }
        let old_part = name.split_once('.').and_then(|(id, ext)| {
            let ext = [OLD_BODY, OLD_ENV, OLD_STATE]
                .into_iter()
                .find(|e| *e == ext)?;
            Some((id.parse::<MessageId>().ok()?, ext))
        });
        match old_part {
            Some((id, ext)) => old.entry(id).or_default().push(ext),
            None => leftovers.push(entry.path()),
        }
    }
    for path in leftovers {
        tracing::info!(file = %path.display(), "removing leftover in the queue");
        if path.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    if old.is_empty() {
        return Ok(());
    }

    let part = |id: &MessageId, ext: &str| queue.join(format!("{id}.{ext}"));
    let mut converted = Vec::new();
    let mut stale = Vec::new();
    for (id, exts) in &old {
        if current.contains(id) || !exts.contains(&OLD_ENV) {
            // Converted before a crash, or never committed.
            stale.push(*id);
            continue;
        }
        let tmp = incoming.join(format!("{id}.{EXT}"));
        match convert_one(
            &part(id, OLD_ENV),
            &part(id, OLD_BODY),
            exts.contains(&OLD_STATE)
                .then(|| part(id, OLD_STATE))
                .as_deref(),
            &tmp,
        ) {
            Ok(bytes) => {
                std::fs::rename(&tmp, queue.join(format!("{id}.{EXT}")))?;
                tracing::info!(%id, bytes, "converted a queued message of the previous spool layout");
                converted.push(*id);
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                if e.kind() == io::ErrorKind::InvalidData || e.kind() == io::ErrorKind::NotFound {
                    tracing::error!(%id, error = %e, "a queued message of the previous spool layout is damaged; left in place in `queue/` for the operator");
                } else {
                    return Err(e.into());
                }
            }
        }
    }
    if !converted.is_empty() {
        queue_dir.sync_all()?;
    }
    for id in converted.iter().chain(&stale) {
        // Envelope first: without it the rest is a leftover.
        for ext in [OLD_ENV, OLD_STATE, OLD_BODY] {
            match std::fs::remove_file(part(id, ext)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// Writes the one-file form of an old message to `tmp` (fdatasynced);
/// returns its size.
fn convert_one(env: &Path, body: &Path, state: Option<&Path>, tmp: &Path) -> io::Result<u64> {
    let bad = |what: &Path, e: serde_json::Error| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("`{}`: {e}", what.display()),
        )
    };
    let stored: StoredEnvelope =
        serde_json::from_slice(&std::fs::read(env)?).map_err(|e| bad(env, e))?;
    let state: Option<MessageState> = match state {
        Some(p) => Some(serde_json::from_slice(&std::fs::read(p)?).map_err(|e| bad(p, e))?),
        None => None,
    };
    let mut src = File::open(body)?;
    let body_len = src.metadata()?.len();
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(tmp)?;
    out.write_all(&file::header(&stored, body_len)?)?;
    let copied = io::copy(&mut src, &mut out)?;
    if copied != body_len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("`{}` changed while being converted", body.display()),
        ));
    }
    if let Some(s) = state {
        out.write_all(&file::state_record(&s)?)?;
    }
    out.sync_data()?;
    Ok(out.metadata()?.len())
}
