//! The contract between `tlspolc` and `tlsgate`.
//!
//! # Layout
//! - [`limits`]: every size bound of the model, one constant each.
//! - [`bounded`]: `BoundedVec`, the heap-backed bounded list for large
//!   elements (why: see its module doc).
//! - [`model`]: the typed, span-free policy (`Policy`, `Domain`, `Settings`,
//!   `Validation`, routes, retry schedule, trust anchors).
//! - [`decision`]: the one decision function. `CompiledPolicy::decide`
//!   answers, for one recipient of one message, the rule that applies, the
//!   TLS requirement, the validation and the route; `CompiledPolicy::client`
//!   classifies an SMTP client by address (T4, T6).
//! - [`blob`]: the signed binary form. Header (magic, version, key id,
//!   serial, creation time, body length), postcard body, Ed25519 signature
//!   over every preceding byte. Readers verify first, then decode.
//!
//! Data path: compiler builds a `Policy` → `blob::sign` → bytes on disk →
//! relay `blob::verify_and_decode` → `CompiledPolicy::new` → `decide`.

pub mod blob;
pub mod bounded;
pub mod decision;
pub mod limits;
pub mod model;

pub use decision::{
    ClientClass, CompiledPolicy, Decision, DeliveryPlan, MessageContext, RoutePlan, Rule,
    TlsRequirement,
};
pub use model::*;
