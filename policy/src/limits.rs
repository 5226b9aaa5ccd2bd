//! Every size bound of the policy model, in one place.
//!
//! The relay is built to hold exactly this much; `tlspolc` refuses a policy
//! that exceeds any of them with an error naming the constant.

/// Longest domain name (RFC 1035, without trailing dot).
pub const MAX_NAME_LEN: usize = 253;
/// Trusted certificate names per validation block (T14).
pub const MAX_TRUSTED_NAMES: usize = 16;
/// Inbound routes per registered domain (T16).
pub const MAX_ROUTES: usize = 16;
/// Outbound server addresses or networks per registered domain (T4).
pub const MAX_OUTBOUND_SERVERS: usize = 64;
/// Excluded sub-domains per registered domain (T12).
pub const MAX_EXCLUDED: usize = 64;
/// Registered domains per policy.
pub const MAX_DOMAINS: usize = 1_000_000;
/// Business partners per policy.
pub const MAX_PARTNERS: usize = 1_000_000;
/// Steps in the retry schedule (T9).
pub const MAX_RETRY_STEPS: usize = 32;
/// Extra trust anchors per policy.
pub const MAX_TRUST_ANCHORS: usize = 32;
/// Size of one trust anchor certificate, DER bytes.
pub const MAX_ANCHOR_DER: usize = 16 * 1024;
/// Length of a trust anchor's label.
pub const MAX_LABEL_LEN: usize = 255;
/// Longest retry period the relay accepts (30 days, in seconds).
pub const MAX_GIVE_UP_AFTER: u32 = 30 * 24 * 3600;

/// Default retry schedule in seconds: 5m, 10m, 20m, 40m, then hourly.
pub const DEFAULT_RETRY_SCHEDULE: &[u32] = &[300, 600, 1200, 2400, 3600];
/// Default retry period: 5 days (RFC 5321 §4.5.4.1 suggests 4–5 days).
pub const DEFAULT_GIVE_UP_AFTER: u32 = 5 * 24 * 3600;
