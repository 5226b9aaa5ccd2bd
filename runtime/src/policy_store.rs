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
