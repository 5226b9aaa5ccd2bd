//! Where accepted messages go: the seam between the SMTP server and storage.
//!
//! The relay plugs in the durable spool (`spool::Spool`, see
//! [`crate::relay`]); the `tlsgate sink` tool and tests plug in a maildir or
//! a counter. A message is answered `250` only after
//! [`IncomingMessage::commit`] returned `Ok`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::envelope::Envelope;

/// A boxed, sendable future (the traits here are object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a message could not be stored.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// Below the disk floor: `452 4.3.1`.
    #[error("not enough storage")]
    DiskFull,
    /// Anything else: `451 4.3.0`, never `250`.
    #[error("storage failed: {0}")]
    Failed(String),
}

/// Storage for accepted messages.
pub trait MessageSink: Send + Sync + 'static {
    /// False when new mail must be refused for lack of room (`452 4.3.1` at
    /// MAIL).
    fn has_room(&self) -> bool;
    /// Starts storing one message.
    fn begin(
        &self,
        envelope: Envelope,
    ) -> BoxFuture<'_, Result<Box<dyn IncomingMessage>, SinkError>>;
}

/// One message being stored. Dropping it without `commit` discards it.
pub trait IncomingMessage: Send {
    fn write<'a>(&'a mut self, chunk: &'a [u8]) -> BoxFuture<'a, Result<(), SinkError>>;
    /// Makes the message durable; returns its id.
    fn commit(self: Box<Self>) -> BoxFuture<'static, Result<String, SinkError>>;
}

/// A stored message, as kept by [`MemorySink`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    pub id: String,
    pub envelope: Envelope,
    pub data: Vec<u8>,
}

/// Keeps messages in memory (tests), or only counts them (benchmarks).
#[derive(Clone, Debug, Default)]
pub struct MemorySink {
    inner: Arc<MemoryInner>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    keep: bool,
    count: AtomicU64,
    bytes: AtomicU64,
    messages: Mutex<Vec<StoredMessage>>,
}

impl MemorySink {
    /// A sink that keeps every message.
    pub fn keeping() -> Self {
        MemorySink {
            inner: Arc::new(MemoryInner {
                keep: true,
                ..MemoryInner::default()
            }),
        }
    }

    /// A sink that only counts messages and bytes.
    pub fn counting() -> Self {
        MemorySink::default()
    }

    pub fn count(&self) -> u64 {
        self.inner.count.load(Ordering::Relaxed)
    }

    pub fn bytes(&self) -> u64 {
        self.inner.bytes.load(Ordering::Relaxed)
    }

    /// The messages kept so far.
    pub fn messages(&self) -> Vec<StoredMessage> {
        match self.inner.messages.lock() {
            Ok(m) => m.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

struct MemoryIncoming {
    sink: Arc<MemoryInner>,
    envelope: Envelope,
    data: Vec<u8>,
    len: u64,
}

impl MessageSink for MemorySink {
    fn has_room(&self) -> bool {
        true
    }

    fn begin(
        &self,
        envelope: Envelope,
    ) -> BoxFuture<'_, Result<Box<dyn IncomingMessage>, SinkError>> {
        let sink = self.inner.clone();
        Box::pin(async move {
            Ok(Box::new(MemoryIncoming {
                sink,
                envelope,
                data: Vec::new(),
                len: 0,
            }) as Box<dyn IncomingMessage>)
        })
    }
}

impl IncomingMessage for MemoryIncoming {
    fn write<'a>(&'a mut self, chunk: &'a [u8]) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            self.len += chunk.len() as u64;
            if self.sink.keep {
                self.data.extend_from_slice(chunk);
            }
            Ok(())
        })
    }

    fn commit(self: Box<Self>) -> BoxFuture<'static, Result<String, SinkError>> {
        Box::pin(async move {
            let n = self.sink.count.fetch_add(1, Ordering::Relaxed) + 1;
            self.sink.bytes.fetch_add(self.len, Ordering::Relaxed);
            let id = format!("mem{n:08}");
            if self.sink.keep {
                let mut m = match self.sink.messages.lock() {
                    Ok(m) => m,
                    Err(poisoned) => poisoned.into_inner(),
                };
                m.push(StoredMessage {
                    id: id.clone(),
                    envelope: self.envelope,
                    data: self.data,
                });
            }
            Ok(id)
        })
    }
}
