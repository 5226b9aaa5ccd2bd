//! Connection reuse: a small pool of idle SMTP client connections.
//!
//! After a mail transaction that left the connection healthy (every command
//! got a reply, none was `421`), the connection is parked here instead of
//! being closed with `QUIT`. A later job takes it only when its
//! [`PoolKey`] is **identical**: same next-hop address and port, same host
//! (SNI / name checked), same TLS mode including every certificate-check
//! input (strong or relaxed, the names accepted, CN matching), same policy
//! serial and the same trust-anchor set. So a clear connection is never
//! used for a job that requires TLS, and a connection validated under other
//! settings or another policy is never reused. Before reuse the caller
//! sends `RSET`; a connection that does not answer it with `250` (the peer
//! closed it, timed out, ...) is dropped and the next one, or a fresh
//! connection, is used: a dead pooled connection never fails a job.
//!
//! Bounds ([`PoolSettings`]): idle time (a reaper task closes expired
//! connections with `QUIT` while the pool is not empty), idle connections
//! per key and in total, and transactions per connection.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use super::session::{Established, TlsMode};

/// Limits of the idle connection pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolSettings {
    /// How long a connection may wait idle before it is closed.
    pub idle_timeout: Duration,
    /// Most idle connections kept for one [`PoolKey`] (0 disables reuse).
    pub max_idle_per_destination: usize,
    /// Most idle connections kept in total (0 disables reuse).
    pub max_idle_total: usize,
    /// Most mail transactions on one connection.
    pub max_transactions: u32,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            idle_timeout: Duration::from_secs(10),
            max_idle_per_destination: 32,
            max_idle_total: 128,
            max_transactions: 100,
        }
    }
}

impl PoolSettings {
    /// No reuse: every attempt opens and closes its own connections.
    pub fn disabled() -> Self {
        PoolSettings {
            max_idle_per_destination: 0,
            max_idle_total: 0,
            ..PoolSettings::default()
        }
    }

    fn enabled(&self) -> bool {
        self.max_idle_per_destination > 0 && self.max_idle_total > 0 && self.max_transactions > 1
    }
}

/// Everything a pooled connection must match exactly to be reused.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// Next-hop address and port.
    pub addr: SocketAddr,
    /// The hop's host as connected to (name sent as SNI and checked, or IP).
    pub host: String,
    /// STARTTLS mode with the whole certificate check (validation mode,
    /// accepted names, CN matching).
    pub mode: TlsMode,
    /// Serial of the policy the connection was validated under.
    pub policy_serial: u64,
    /// Fingerprint of the trust-anchor set it was validated against.
    pub anchors: u64,
}

/// A fingerprint of a policy's trust anchors (their DER, in order).
pub fn anchors_fingerprint(anchors: &[policy::TrustAnchor]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    anchors.len().hash(&mut h);
    for a in anchors {
        a.der.as_slice().hash(&mut h);
    }
    h.finish()
}

/// A parked connection and how many transactions it has carried.
#[derive(Debug)]
pub struct Pooled {
    pub conn: Established,
    pub transactions: u32,
}

struct Idle {
    pooled: Pooled,
    since: Instant,
}

#[derive(Default)]
struct State {
    idle: HashMap<PoolKey, Vec<Idle>>,
    total: usize,
    reaper_running: bool,
}

/// The idle connection pool of one [`super::Deliverer`].
pub struct Pool {
    settings: PoolSettings,
    /// The limit for each `QUIT` sent to an expired connection.
    quit_limit: Duration,
    state: Mutex<State>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("settings", &self.settings)
            .field("idle", &self.idle_count())
            .finish()
    }
}

impl Pool {
    pub fn new(settings: PoolSettings, quit_limit: Duration) -> Arc<Pool> {
        Arc::new(Pool {
            settings,
            quit_limit,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Idle connections held now.
    pub fn idle_count(&self) -> usize {
        self.lock().total
    }

    /// The most recently parked live-looking connection for `key`, if any
    /// (expired ones are closed on the way). The caller checks it with
    /// `RSET` before use.
    pub fn take(self: &Arc<Self>, key: &PoolKey) -> Option<Pooled> {
        if !self.settings.enabled() {
            return None;
        }
        let mut expired = Vec::new();
        let found = {
            let mut st = self.lock();
            let mut found = None;
            let mut now_empty = false;
            if let Some(list) = st.idle.get_mut(key) {
                while let Some(idle) = list.pop() {
                    if idle.since.elapsed() >= self.settings.idle_timeout {
                        expired.push(idle.pooled);
                    } else {
                        found = Some(idle.pooled);
                        break;
                    }
                }
                now_empty = list.is_empty();
            }
            if now_empty {
                st.idle.remove(key);
            }
            st.total -= expired.len() + usize::from(found.is_some());
            found
        };
        self.close_later(expired);
        found
    }

    /// Parks a healthy connection. Gives it back (`Some`) when it may not
    /// be kept (reuse disabled, too many transactions, pool full): the
    /// caller closes it.
    #[must_use]
    pub fn put(self: &Arc<Self>, key: PoolKey, pooled: Pooled) -> Option<Pooled> {
        if !self.settings.enabled() || pooled.transactions >= self.settings.max_transactions {
            return Some(pooled);
        }
        let start_reaper = {
            let mut st = self.lock();
            if st.total >= self.settings.max_idle_total {
                return Some(pooled);
            }
            let list = st.idle.entry(key).or_default();
            if list.len() >= self.settings.max_idle_per_destination {
                return Some(pooled);
            }
            list.push(Idle {
                pooled,
                since: Instant::now(),
            });
            st.total += 1;
            let start = !st.reaper_running;
            st.reaper_running = true;
            start
        };
        if start_reaper {
            self.spawn_reaper();
        }
        None
    }

    /// Removes and returns the expired connections; says whether the pool
    /// is now empty (the reaper then stops).
    fn expire(&self) -> (Vec<Pooled>, bool) {
        let mut st = self.lock();
        let limit = self.settings.idle_timeout;
        let mut out = Vec::new();
        st.idle.retain(|_, list| {
            let (old, keep): (Vec<Idle>, Vec<Idle>) =
                list.drain(..).partition(|i| i.since.elapsed() >= limit);
            out.extend(old.into_iter().map(|i| i.pooled));
            *list = keep;
            !list.is_empty()
        });
        st.total -= out.len();
        let empty = st.total == 0;
        if empty {
            st.reaper_running = false;
        }
        (out, empty)
    }

    fn spawn_reaper(self: &Arc<Self>) {
        let weak: Weak<Pool> = Arc::downgrade(self);
        let tick = (self.settings.idle_timeout / 2)
            .clamp(Duration::from_millis(50), Duration::from_secs(5));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(tick).await;
                let Some(pool) = weak.upgrade() else { return };
                let (expired, empty) = pool.expire();
                let limit = pool.quit_limit;
                drop(pool);
                for p in expired {
                    p.conn.quit(limit).await;
                }
                if empty {
                    return;
                }
            }
        });
    }

    fn close_later(&self, conns: Vec<Pooled>) {
        if conns.is_empty() {
            return;
        }
        let limit = self.quit_limit;
        tokio::spawn(async move {
            for p in conns {
                p.conn.quit(limit).await;
            }
        });
    }
}
