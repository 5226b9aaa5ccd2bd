//! `tlsgate`: the TLS-enforcing SMTP relay.
//!
//! # Layout
//! - [`config`]: the machine-local configuration (TOML).
//! - [`policy_store`]: the signed policy in force; loading, verifying,
//!   roll-back protection, atomic swap (T19–T21).
//! - [`smtp`]: sans-IO protocol pieces: command parser, reply parser.
//! - [`server`]: the receiving side (ESMTP, STARTTLS, limits, T4, T6).
//! - [`envelope`]: what is stored about a message besides its bytes.
//! - [`spool`]: durable storage; `250` only after fsync + rename.
//! - [`queue`]: the retry queue: attempts, back-off, bounces (T9, T21).
//! - [`transport`]: the seam between queue and SMTP client.
//! - [`delivery`]: the sending side: routes (T16–T18), STARTTLS, certificate
//!   validation (T13–T15), the TLS connectivity test (T8).
//! - [`init`]: PID 1 of the appliance image.
//! - [`privilege`]: binding, then dropping root (`user`, no new privileges).
//! - [`sandbox`]: the system-call allow-list (seccomp) of `tlsgate run`.
//!
//! Data path: client → `server` → `spool` (durable) → `queue` asks
//! `policy::CompiledPolicy::decide` per recipient → `delivery` → next hop.

pub mod config;
pub mod delivery;
pub mod envelope;
pub mod identity;
pub mod init;
pub mod manage;
pub mod policy_store;
pub mod privilege;
pub mod queue;
pub mod relay;
pub mod sandbox;
pub mod server;
pub mod smtp;
pub mod spool;
pub mod tools;
pub mod transport;
