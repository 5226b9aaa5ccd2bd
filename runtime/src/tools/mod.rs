//! Test and benchmark tools built into the `tlsgate` binary.
//!
//! - [`client`]: a small SMTP client (also speaks STARTTLS), used by the
//!   load generator and by tests.
//! - [`danger`]: a TLS client configuration that accepts any certificate;
//!   for tools that measure or probe, never for delivery.
//! - [`sink`]: `tlsgate sink`, an SMTP server that stores or counts
//!   whatever it is sent.
//! - [`loadgen`]: `tlsgate loadgen`, an SMTP load generator reporting
//!   messages/s and latency percentiles.

pub mod client;
pub mod danger;
pub mod loadgen;
pub mod sink;
