//! Machine-local configuration (TOML).
//!
//! Only what belongs to the machine: where to listen, the gateway's name and
//! TLS identity, directories, the signed policy's path and the keys trusted
//! to sign it, DNS resolvers and resource limits. Nothing here can change
//! where mail goes or how it is protected — that lives in the signed policy
//! blob. Unknown keys are errors. Every key is documented in
//! `docs/configuration.md`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::server::{ServerLimits, SessionConfig};

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The gateway's host name (SMTP banner, EHLO, `Received:`, self-signed
    /// certificate).
    pub hostname: String,
    /// Addresses the SMTP server listens on.
    #[serde(default = "default_listen")]
    pub listen: Vec<SocketAddr>,
    /// Durable message spool.
    pub spool_dir: PathBuf,
    /// How a message reaches the spool's disk before `250`: `journal`
    /// (default: appended to a shared journal, one `fdatasync` for many
    /// messages), `grouped` (a file per message, shared directory fsync) or
    /// `per-message`. All are durable; they differ in speed.
    #[serde(default)]
    pub spool_commit: crate::spool::SyncMode,
    /// Machine state: highest accepted policy serial, generated identity.
    pub state_dir: PathBuf,
    /// The signed policy blob.
    pub policy: PathBuf,
    /// Keys trusted to sign the policy: `tlsgate-ed25519 <hex>` strings or
    /// paths of files holding one.
    pub trusted_keys: Vec<String>,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub dns: DnsConfig,
    #[serde(default)]
    pub limits: Limits,
    /// Where `RCPT TO:<postmaster>` (without a domain) is delivered;
    /// default `postmaster@` the policy's first registered domain.
    #[serde(default)]
    pub postmaster: Option<String>,
    /// The user to run as after binding the ports, when started as root
    /// (name or numeric id).
    #[serde(default)]
    pub user: Option<String>,
    /// The group to run as (name or numeric id); default the user's
    /// primary group.
    #[serde(default)]
    pub group: Option<String>,
    /// Keep running as root when started as root without `user`. Off:
    /// such a start is refused.
    #[serde(default)]
    pub allow_root: bool,
    /// `tlsgate run` confines itself to a system-call allow-list after
    /// startup (Linux on x86_64 and aarch64; see `crate::sandbox`). Off
    /// only weakens the process's own hardening, for debugging; it never
    /// changes what the policy enforces.
    #[serde(default = "default_seccomp")]
    pub seccomp: bool,
}

fn default_seccomp() -> bool {
    true
}

fn default_listen() -> Vec<SocketAddr> {
    vec![SocketAddr::from(([0, 0, 0, 0], 25))]
}

/// The gateway's own TLS certificate for STARTTLS (receiving side).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain. With `key`; if both are absent a self-signed
    /// certificate is generated in `state_dir` at first start.
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
}

/// How DNS is resolved for delivery (MX, A/AAAA).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// Name servers as `ip:port`; empty means the system's resolver
    /// configuration (`/etc/resolv.conf`).
    #[serde(default)]
    pub name_servers: Vec<SocketAddr>,
    /// Per-query timeout in seconds.
    #[serde(default = "default_dns_timeout")]
    pub timeout_secs: u64,
}

fn default_dns_timeout() -> u64 {
    5
}

/// Resource limits.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub idle_timeout_secs: u64,
    pub session_timeout_secs: u64,
    pub max_errors: u32,
    /// How often the policy file is checked for changes, in milliseconds.
    pub policy_poll_millis: u64,
    /// How long sessions may take to finish at shutdown, in seconds.
    pub shutdown_grace_secs: u64,
    /// Wait before the SMTP greeting, in milliseconds; clients that talk
    /// during it are refused with `554 5.5.0`. Zero: no wait, no check.
    pub greeting_delay_millis: u64,
    /// Free space on the spool's file system below which new mail gets
    /// `452 4.3.1` while queued mail keeps draining: the larger of
    /// `spool_floor_bytes` and `spool_floor_percent` % of the file system.
    pub spool_floor_bytes: u64,
    pub spool_floor_percent: u8,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 100,
            max_connections: 1000,
            max_connections_per_ip: 50,
            idle_timeout_secs: 300,
            session_timeout_secs: 1800,
            max_errors: 10,
            policy_poll_millis: 1000,
            shutdown_grace_secs: 30,
            greeting_delay_millis: 0,
            spool_floor_bytes: crate::spool::SpaceFloor::default().bytes,
            spool_floor_percent: crate::spool::SpaceFloor::default().percent,
        }
    }
}

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read `{path}`: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration in `{path}`: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text).map_err(|message| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses and checks configuration text.
    pub fn parse(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| e.message().to_string())?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        if self.hostname.is_empty() || policy::DomainName::parse(&self.hostname).is_err() {
            return Err(format!(
                "`hostname` `{}` is not a valid host name",
                self.hostname
            ));
        }
        if self.listen.is_empty() {
            return Err("`listen` needs at least one address".into());
        }
        if self.trusted_keys.is_empty() {
            return Err("`trusted_keys` needs at least one key".into());
        }
        if let Some(p) = &self.postmaster {
            if p.rsplit_once('@')
                .is_none_or(|(l, d)| l.is_empty() || d.is_empty())
            {
                return Err(format!("`postmaster` `{p}` is not local@domain"));
            }
        }
        if self.group.is_some() && self.user.is_none() {
            return Err("`group` needs `user`".into());
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err("`tls.cert` and `tls.key` go together".into());
        }
        let l = &self.limits;
        if l.spool_floor_percent > 90 {
            return Err(format!(
                "`limits.spool_floor_percent` {} would refuse mail on an almost empty disk (at most 90)",
                l.spool_floor_percent
            ));
        }
        if l.max_message_size == 0
            || l.max_recipients == 0
            || l.max_connections == 0
            || l.max_connections_per_ip == 0
            || l.idle_timeout_secs == 0
            || l.session_timeout_secs == 0
            || l.max_errors == 0
            || l.policy_poll_millis == 0
        {
            return Err("limits must be greater than zero".into());
        }
        if l.max_recipients > 1000 {
            return Err("`limits.max_recipients` is at most 1000".into());
        }
        Ok(())
    }

    pub fn session_config(&self) -> SessionConfig {
        SessionConfig {
            hostname: self.hostname.clone(),
            max_message_size: self.limits.max_message_size,
            max_recipients: self.limits.max_recipients,
            max_errors: self.limits.max_errors,
            postmaster: self.postmaster.clone(),
        }
    }

    pub fn server_limits(&self) -> ServerLimits {
        ServerLimits {
            max_connections: self.limits.max_connections,
            max_connections_per_ip: self.limits.max_connections_per_ip,
            idle_timeout: Duration::from_secs(self.limits.idle_timeout_secs),
            session_timeout: Duration::from_secs(self.limits.session_timeout_secs),
            greeting_delay: Duration::from_millis(self.limits.greeting_delay_millis),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../examples/tlsgate.toml");

    #[test]
    fn example_parses() {
        let c = Config::parse(EXAMPLE).unwrap();
        assert_eq!(c.hostname, "gw.example.net");
        assert_eq!(c.trusted_keys.len(), 2);
    }

    #[test]
    fn unknown_keys_are_errors() {
        let text = format!("{EXAMPLE}\nallow_clear_text = true\n");
        assert!(Config::parse(&text).is_err());
    }

    #[test]
    fn minimal() {
        let c = Config::parse(
            "hostname = \"gw.example.net\"\nspool_dir = \"/s\"\nstate_dir = \"/t\"\npolicy = \"/p\"\ntrusted_keys = [\"/k\"]\n",
        )
        .unwrap();
        assert_eq!(c.listen, default_listen());
        assert_eq!(c.limits, Limits::default());
        assert!(c.dns.name_servers.is_empty());
        assert!(c.seccomp, "seccomp is on by default");
        let off = Config::parse(
            "hostname = \"gw.example.net\"\nspool_dir = \"/s\"\nstate_dir = \"/t\"\npolicy = \"/p\"\ntrusted_keys = [\"/k\"]\nseccomp = false\n",
        )
        .unwrap();
        assert!(!off.seccomp);
    }
}
