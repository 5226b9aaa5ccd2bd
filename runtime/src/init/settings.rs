//! The appliance's own settings, read from `appliance.toml` on the
//! configuration partition, and the relay configuration the init derives
//! from them.
//!
//! ```toml
//! hostname = "mx-gw.example.com"
//! [network]
//! interface = "eth0"            # default: the first interface that is not `lo`
//! address = "192.0.2.10/24"     # absent: DHCP
//! gateway = "192.0.2.1"
//! dns = ["192.0.2.53"]
//! [manage]
//! listen = "0.0.0.0:7025"
//! enabled = true
//! ```
//!
//! Everything that decides where mail goes lives in the signed policy, not
//! here (design decision).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::net::{parse_cidr, Ipv4Config};
use super::Layout;

/// The settings file's name on the configuration partition.
pub const SETTINGS_FILE: &str = "appliance.toml";
/// Default address of the management listener.
pub const DEFAULT_MANAGE_LISTEN: &str = "0.0.0.0:7025";

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ApplianceSettings {
    pub hostname: Option<String>,
    #[serde(default)]
    pub network: NetworkSettings,
    #[serde(default)]
    pub manage: ManageSettings,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NetworkSettings {
    pub interface: Option<String>,
    pub address: Option<String>,
    pub gateway: Option<Ipv4Addr>,
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ManageSettings {
    #[serde(default = "default_manage_listen")]
    pub listen: SocketAddr,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn default_manage_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 7025))
}

fn yes() -> bool {
    true
}

impl Default for ManageSettings {
    fn default() -> Self {
        ManageSettings {
            listen: default_manage_listen(),
            enabled: true,
        }
    }
}

/// Reads `appliance.toml` from the configuration directory; a missing file
/// gives the defaults (DHCP, management listener on port 7025).
pub fn load(config_dir: &Path) -> Result<ApplianceSettings, String> {
    let path = config_dir.join(SETTINGS_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => parse(&text).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ApplianceSettings::default()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Parses the text of `appliance.toml`.
pub fn parse(text: &str) -> Result<ApplianceSettings, String> {
    let s: ApplianceSettings = toml::from_str(text).map_err(|e| e.message().to_string())?;
    s.static_ipv4()?;
    Ok(s)
}

impl ApplianceSettings {
    /// The static IPv4 configuration, if an address is set.
    pub fn static_ipv4(&self) -> Result<Option<Ipv4Config>, String> {
        let Some(address) = &self.network.address else {
            return Ok(None);
        };
        let (address, prefix_len) = parse_cidr(address)?;
        Ok(Some(Ipv4Config {
            address,
            prefix_len,
            gateway: self.network.gateway,
            dns: self.network.dns.clone(),
        }))
    }

    /// The interface to configure, waiting up to `wait` for the driver.
    pub fn interface(&self, wait: Duration) -> Option<String> {
        if let Some(name) = &self.network.interface {
            return Some(name.clone());
        }
        let deadline = Instant::now() + wait;
        loop {
            if let Ok(rd) = std::fs::read_dir("/sys/class/net") {
                let mut names: Vec<String> = rd
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n != "lo")
                    .collect();
                names.sort();
                if let Some(first) = names.into_iter().next() {
                    return Some(first);
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The relay's own certificate and key on the configuration partition
/// (`tls/cert.pem`, `tls/key.pem`), when both are present.
pub fn tls_files(config_dir: &Path) -> (Option<PathBuf>, Option<PathBuf>) {
    let cert = config_dir.join("tls/cert.pem");
    let key = config_dir.join("tls/key.pem");
    if cert.is_file() && key.is_file() {
        (Some(cert), Some(key))
    } else {
        (None, None)
    }
}

/// TOML string literal.
fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Fills the relay configuration template. Placeholders: `@HOSTNAME@`,
/// `@STATE_DIR@`, `@SPOOL_DIR@`, `@POLICY@`, `@TLS_CERT@`, `@TLS_KEY@`
/// (TOML strings), `@TLS_FILES@` (the `cert`/`key` lines, or
/// nothing so the relay generates a self-signed pair), `@TRUSTED_KEYS@`
/// and `@DNS@` (TOML arrays of strings; name servers as `ip:53`).
pub fn render_relay_config(
    template: &str,
    settings: &ApplianceSettings,
    layout: &Layout,
    tls: (Option<PathBuf>, Option<PathBuf>),
    trusted_keys: &[String],
) -> String {
    let hostname = settings
        .hostname
        .clone()
        .unwrap_or_else(|| "tlsgate.invalid".into());
    let array = |items: &[String]| -> String {
        let inner: Vec<String> = items.iter().map(|s| quoted(s)).collect();
        format!("[{}]", inner.join(", "))
    };
    let dns: Vec<String> = settings
        .network
        .dns
        .iter()
        .map(|d| format!("{d}:53"))
        .collect();
    let tls_lines = match &tls {
        (Some(c), Some(k)) => format!(
            "cert = {}\nkey = {}",
            quoted(&c.to_string_lossy()),
            quoted(&k.to_string_lossy())
        ),
        _ => String::new(),
    };
    let path = |p: &Option<PathBuf>| {
        p.as_ref()
            .map(|p| quoted(&p.to_string_lossy()))
            .unwrap_or_else(|| "\"\"".into())
    };
    template
        .replace("@HOSTNAME@", &quoted(&hostname))
        .replace("@STATE_DIR@", &quoted(&layout.state_dir.to_string_lossy()))
        .replace("@SPOOL_DIR@", &quoted(&layout.spool_dir.to_string_lossy()))
        .replace("@POLICY@", &quoted(&layout.policy.to_string_lossy()))
        .replace("@TLS_FILES@", &tls_lines)
        .replace("@TLS_CERT@", &path(&tls.0))
        .replace("@TLS_KEY@", &path(&tls.1))
        .replace("@TRUSTED_KEYS@", &array(trusted_keys))
        .replace("@DNS@", &array(&dns))
}

/// Writes the relay configuration: `/config/tlsgate.toml` verbatim when the
/// operator put one there, otherwise the image's template filled in.
pub fn write_relay_config(
    settings: &ApplianceSettings,
    layout: &Layout,
    template: &Path,
) -> std::io::Result<()> {
    let config_dir = Path::new(super::CONFIG_MNT);
    let text = match std::fs::read_to_string(config_dir.join("tlsgate.toml")) {
        Ok(own) => own,
        Err(_) => {
            let template = std::fs::read_to_string(template)?;
            let keys: Vec<String> = std::fs::read_to_string(super::TRUSTED_KEYS_FILE)
                .unwrap_or_default()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(String::from)
                .collect();
            render_relay_config(&template, settings, layout, tls_files(config_dir), &keys)
        }
    };
    std::fs::write(&layout.relay_config, text)
}

/// How long the init lets the relay stop after SIGTERM, from the relay
/// configuration's `[limits] shutdown_grace_secs` (the relay's default
/// when unset or unreadable): the relay waits up to the grace for open
/// sessions (its delivery attempts get the same grace, at the same time),
/// then at most 5 s for its tasks to end; two more seconds of margin.
/// 12 s for the appliance's grace of 5 s; capped at two minutes.
pub fn stop_window(relay_config: &str) -> Duration {
    let grace = toml::from_str::<toml::Table>(relay_config)
        .ok()
        .and_then(|t| t.get("limits")?.get("shutdown_grace_secs")?.as_integer())
        .and_then(|g| u64::try_from(g).ok())
        .unwrap_or_else(|| crate::config::Limits::default().shutdown_grace_secs);
    Duration::from_secs((grace + grace.min(5) + 2).min(120))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn the_stop_window_follows_the_relay_grace() {
        let template = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../image/files/tlsgate.toml.in"
        ))
        .unwrap();
        let rendered = render_relay_config(
            &template,
            &ApplianceSettings::default(),
            &Layout::new(Path::new("/data"), Path::new("/run/tlsgate")),
            (None, None),
            &[],
        );
        assert_eq!(stop_window(&rendered), Duration::from_secs(12));
        assert_eq!(
            stop_window("[limits]\nshutdown_grace_secs = 1\n"),
            Duration::from_secs(4)
        );
        assert_eq!(
            stop_window("[limits]\nshutdown_grace_secs = 100000\n"),
            Duration::from_secs(120)
        );
        let default = crate::config::Limits::default().shutdown_grace_secs;
        assert_eq!(
            stop_window("not toml ["),
            Duration::from_secs(default + default.min(5) + 2)
        );
    }

    #[test]
    fn defaults_mean_dhcp_and_manage_on_7025() {
        let s = parse("").unwrap();
        assert_eq!(s.static_ipv4().unwrap(), None);
        assert_eq!(s.manage.listen.to_string(), DEFAULT_MANAGE_LISTEN);
        assert!(s.manage.enabled);
    }

    #[test]
    fn static_network_is_parsed_and_checked() {
        let s = parse(
            "hostname = \"gw.example\"\n[network]\naddress = \"10.0.2.15/24\"\ngateway = \"10.0.2.2\"\ndns = [\"10.0.2.3\"]\n",
        )
        .unwrap();
        let c = s.static_ipv4().unwrap().unwrap();
        assert_eq!(c.address, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(c.prefix_len, 24);
        assert_eq!(c.gateway, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert!(parse("[network]\naddress = \"10.0.2.15\"\n")
            .unwrap_err()
            .contains("prefix length"));
        assert!(parse("[network]\nadress = \"10.0.2.15/24\"\n").is_err());
    }

    #[test]
    fn relay_config_template_is_filled() {
        let s = parse("hostname = \"gw.example\"\n[network]\ndns = [\"10.0.2.3\"]\n").unwrap();
        let layout = Layout::new(Path::new("/data"), Path::new("/run/tlsgate"));
        let out = render_relay_config(
            "hostname = @HOSTNAME@\nstate_dir = @STATE_DIR@\npolicy = @POLICY@\n@TLS_FILES@\ntrusted_keys = @TRUSTED_KEYS@\nnameservers = @DNS@\n",
            &s,
            &layout,
            (None, None),
            &["tlsgate-ed25519 00ff".to_string()],
        );
        let v: toml::Table = toml::from_str(&out).unwrap();
        assert_eq!(v["hostname"].as_str(), Some("gw.example"));
        assert_eq!(v["policy"].as_str(), Some("/data/state/policy.blob"));
        assert_eq!(v["trusted_keys"][0].as_str(), Some("tlsgate-ed25519 00ff"));
        assert_eq!(v["nameservers"][0].as_str(), Some("10.0.2.3:53"));
        assert!(!v.contains_key("cert"));
    }
}
