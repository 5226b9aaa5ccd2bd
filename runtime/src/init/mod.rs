//! PID 1 of the appliance image.
//!
//! The appliance boots a stock kernel with an initramfs holding only this
//! init, the static `tlsgate` binary, CA roots, the trusted policy signing
//! keys and a handful of kernel modules. [`run`] does, in order:
//!
//! 1. mount proc, sys, devtmpfs, tmpfs on `/run` and `/tmp`; reopen
//!    `/dev/console` as stdin/stdout/stderr;
//! 2. load the kernel modules listed in [`MODULE_LIST`] (`finit_module`,
//!    virtio chain, vfat);
//! 3. find the GPT partitions `tlsgate-config` (vfat, mounted read-only on
//!    `/config`) and `tlsgate-data` (ext4, `/data`; laid out on first boot);
//! 4. keep the clock at or above a floor: the build time baked into the
//!    image, or the last time saved on the data partition (the kernel reads
//!    the RTC itself);
//! 5. configure the network from `/config/appliance.toml` (static) or by
//!    DHCP ([`net`]);
//! 6. install `/config/policy.blob` when it is newer than the one in force
//!    (the same check as a push over the management listener);
//! 7. start the relay (`tlsgate run --config …`) and the management
//!    listener (`tlsgate-init manage …`) as children, unprivileged, and
//!    restart them with back-off when they die;
//! 8. on SIGTERM/SIGINT/SIGPWR, the management listener's `poweroff` or a
//!    press of the power button ([`button`]: ACPI `Power Button`, or any
//!    input device with `KEY_POWER`), stop the children (SIGTERM, then
//!    SIGKILL after [`settings::stop_window`]: 12 s with the appliance's
//!    grace of 5 s), kill what is left, save the clock,
//!    sync, unmount (or remount read-only), power off.
//!
//! The children start with an empty signal mask: the init blocks the
//! signals it reads through its signalfd, a blocked mask survives fork and
//! exec, and `std::process::Command` does not reset it, so without
//! [`service_command`]'s reset the relay never saw SIGTERM or SIGHUP.
//!
//! # Privileges
//! The children run as uid/gid [`SERVICE_UID`]/[`SERVICE_GID`] with no
//! supplementary groups and `no_new_privs` (set on PID 1 itself, inherited).
//! The relay may bind port 25 because the init lowers
//! `net.ipv4.ip_unprivileged_port_start` to 25: on an appliance that runs
//! only our own processes this grants exactly "bind ports ≥ 25" and no
//! capability at all, with no capability syscalls.

pub mod button;
pub mod net;
pub mod settings;
pub mod system;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::mount::MsFlags;
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use settings::ApplianceSettings;
use system::log;

/// Uid of the relay and the management listener.
pub const SERVICE_UID: u32 = 64025;
/// Gid of the relay and the management listener.
pub const SERVICE_GID: u32 = 64025;
/// Exit code with which the management listener asks the init to power off.
pub const POWEROFF_EXIT_CODE: i32 = 91;

/// Ordered list of kernel modules to load (absolute paths).
pub const MODULE_LIST: &str = "/etc/tlsgate/modules.list";
/// Unix time of the build (the clock floor).
pub const BUILD_EPOCH_FILE: &str = "/etc/tlsgate/build-epoch";
/// Trusted policy signing keys, one `tlsgate-ed25519 <hex>` per line.
pub const TRUSTED_KEYS_FILE: &str = "/etc/tlsgate/trusted-keys";
/// Template of the relay's configuration.
pub const RELAY_CONFIG_TEMPLATE: &str = "/etc/tlsgate/tlsgate.toml.in";
/// The relay binary.
pub const RELAY_BIN: &str = "/bin/tlsgate";
/// Where the configuration partition is mounted.
pub const CONFIG_MNT: &str = "/config";
/// Where the data partition is mounted.
pub const DATA_MNT: &str = "/data";
/// Run-time directory (tmpfs).
pub const RUN_DIR: &str = "/run/tlsgate";

/// Paths derived from the data partition.
#[derive(Clone, Debug)]
pub struct Layout {
    pub state_dir: PathBuf,
    pub spool_dir: PathBuf,
    pub policy: PathBuf,
    pub clock: PathBuf,
    pub relay_config: PathBuf,
    pub relay_pid: PathBuf,
}

impl Layout {
    pub fn new(data: &Path, run: &Path) -> Self {
        Layout {
            state_dir: data.join("state"),
            spool_dir: data.join("spool"),
            policy: data.join("state/policy.blob"),
            clock: data.join("clock"),
            relay_config: run.join("tlsgate.toml"),
            relay_pid: run.join("relay.pid"),
        }
    }
}

/// Entry point when running as PID 1. Never returns.
pub fn run() -> ! {
    system::mount_pseudo_filesystems();
    system::reopen_console();
    log("starting");
    let _ = nix::sys::reboot::set_cad_enabled(false);
    let mut signals = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGPWR,
        Signal::SIGHUP,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGCHLD,
    ] {
        signals.add(s);
    }
    if let Err(e) = signals.thread_block() {
        log(&format!("cannot block signals: {e}"));
    }
    let sigfd = SignalFd::with_flags(&signals, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC);

    let loaded = system::load_modules(Path::new(MODULE_LIST));
    log(&format!("loaded {loaded} kernel modules"));

    // Configuration partition (read-only vfat, readable by the service group).
    let settings = mount_config();
    if let Some(h) = &settings.hostname {
        let _ = nix::unistd::sethostname(h);
    }

    // Data partition.
    let data_ok = mount_data();
    let layout = Layout::new(Path::new(DATA_MNT), Path::new(RUN_DIR));
    prepare_data(&layout);

    // Clock floor.
    let build_epoch = system::read_epoch(Path::new(BUILD_EPOCH_FILE)).unwrap_or(0);
    let saved = system::read_epoch(&layout.clock).unwrap_or(0);
    let now = system::enforce_clock_floor(build_epoch.max(saved));
    log(&format!(
        "clock {now} (floor: build {build_epoch}, saved {saved})"
    ));
    if data_ok {
        system::save_clock(&layout.clock);
    }

    configure_network(&settings);

    // Unprivileged bind of port 25 (see the module docs).
    if let Err(e) = std::fs::write("/proc/sys/net/ipv4/ip_unprivileged_port_start", "25\n") {
        log(&format!("cannot lower ip_unprivileged_port_start: {e}"));
    }
    if let Err(e) = nix::sys::prctl::set_no_new_privs() {
        log(&format!("cannot set no_new_privs: {e}"));
    }

    let keys = crate::manage::read_trusted_keys(Path::new(TRUSTED_KEYS_FILE)).unwrap_or_default();
    install_config_policy(&layout, &keys);
    if let Err(e) =
        settings::write_relay_config(&settings, &layout, Path::new(RELAY_CONFIG_TEMPLATE))
    {
        log(&format!("cannot write the relay configuration: {e}"));
    }

    let mut children = vec![Supervised::new("relay", relay_command(&layout))];
    match manage_command(&settings, &layout) {
        Some(cmd) => children.push(Supervised::new("manage", cmd)),
        None => log("management listener disabled: no /config/manage-token"),
    }
    let reason = supervise(&mut children, sigfd.ok().as_ref(), &layout);
    shutdown(&mut children, &layout, data_ok, reason)
}

fn mount_config() -> ApplianceSettings {
    let Some(dev) = system::find_partition("tlsgate-config", Duration::from_secs(10)) else {
        log("no partition named tlsgate-config: using defaults (DHCP)");
        return ApplianceSettings::default();
    };
    let ro = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let opts = format!("uid=0,gid={SERVICE_GID},fmask=0137,dmask=0027");
    if let Err(e) = system::mount_device(&dev, CONFIG_MNT, "vfat", ro, Some(&opts)) {
        log(&format!(
            "cannot mount {} on {CONFIG_MNT}: {e}",
            dev.display()
        ));
        return ApplianceSettings::default();
    }
    match settings::load(Path::new(CONFIG_MNT)) {
        Ok(s) => s,
        Err(e) => {
            log(&format!("{e}; using defaults"));
            ApplianceSettings::default()
        }
    }
}

fn mount_data() -> bool {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_NOATIME;
    if let Some(dev) = system::find_partition("tlsgate-data", Duration::from_secs(5)) {
        match system::mount_device(&dev, DATA_MNT, "ext4", flags, None) {
            Ok(()) => return true,
            Err(e) => log(&format!(
                "cannot mount {} on {DATA_MNT}: {e}",
                dev.display()
            )),
        }
    } else {
        log("no partition named tlsgate-data");
    }
    log("WARNING: spool and state on a tmpfs: queued mail does not survive a power-off");
    let _ = system::mount_device(
        Path::new("tmpfs"),
        DATA_MNT,
        "tmpfs",
        flags,
        Some("mode=0755,size=64m"),
    );
    false
}

/// First-boot layout of the data partition (idempotent).
fn prepare_data(layout: &Layout) {
    let owner = Some(nix::unistd::Uid::from_raw(SERVICE_UID));
    let group = Some(nix::unistd::Gid::from_raw(SERVICE_GID));
    for dir in [
        &layout.state_dir,
        &layout.spool_dir,
        &PathBuf::from(RUN_DIR),
    ] {
        if let Err(e) = std::fs::create_dir_all(dir) {
            log(&format!("cannot create {}: {e}", dir.display()));
        }
        let _ = nix::unistd::chown(dir.as_path(), owner, group);
    }
}

fn configure_network(settings: &ApplianceSettings) {
    if let Err(e) = net::set_address("lo", std::net::Ipv4Addr::LOCALHOST, 8) {
        log(&format!("loopback: {e}"));
    }
    let Some(ifname) = settings.interface(Duration::from_secs(5)) else {
        log("no network interface found");
        return;
    };
    let cfg = match settings.static_ipv4() {
        Ok(Some(cfg)) => cfg,
        Ok(None) => {
            if let Err(e) = net::set_link_up(&ifname) {
                log(&format!("{ifname}: {e}"));
            }
            match net::dhcp(&ifname, Duration::from_secs(20)) {
                Ok(mut lease) => {
                    if !settings.network.dns.is_empty() {
                        lease.dns = settings.network.dns.clone();
                    }
                    log(&format!(
                        "{ifname}: dhcp lease {}/{}",
                        lease.address, lease.prefix_len
                    ));
                    lease
                }
                Err(e) => {
                    log(&format!("{ifname}: dhcp failed: {e}"));
                    return;
                }
            }
        }
        Err(e) => {
            log(&format!("network settings: {e}"));
            return;
        }
    };
    match net::apply(&ifname, &cfg) {
        Ok(()) => log(&format!(
            "{ifname}: {}/{} gateway {}",
            cfg.address,
            cfg.prefix_len,
            cfg.gateway
                .map(|g| g.to_string())
                .unwrap_or_else(|| "none".into())
        )),
        Err(e) => log(&format!("{ifname}: {e}")),
    }
    let resolv: String = cfg
        .dns
        .iter()
        .map(|d| format!("nameserver {d}\n"))
        .collect();
    if let Err(e) = std::fs::write("/run/resolv.conf", resolv) {
        log(&format!("resolv.conf: {e}"));
    }
}

fn install_config_policy(layout: &Layout, keys: &[policy::blob::PublicKey]) {
    let from = Path::new(CONFIG_MNT).join("policy.blob");
    let Ok(bytes) = std::fs::read(&from) else {
        return;
    };
    match crate::manage::install_policy(&bytes, &layout.policy, keys) {
        Ok(outcome) => log(&format!("{}: {outcome}", from.display())),
        Err(e) => log(&format!("{}: not installed: {e}", from.display())),
    }
    let _ = nix::unistd::chown(
        layout.policy.as_path(),
        Some(nix::unistd::Uid::from_raw(SERVICE_UID)),
        Some(nix::unistd::Gid::from_raw(SERVICE_GID)),
    );
}

/// Makes `cmd`'s child start with an empty signal mask (see the module
/// docs: the init's own mask blocks SIGTERM, SIGHUP, SIGCHLD, …).
#[allow(unsafe_code)]
fn reset_signal_mask(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let empty = SigSet::empty();
    // SAFETY: `pre_exec` runs the closure in the child between fork and
    // exec, where only async-signal-safe functions may be called. The
    // closure calls exactly one, pthread_sigmask(3) (sigprocmask(2)), on a
    // set built before the fork and copied into the closure; it neither
    // allocates nor takes locks (an `Errno` converts to `io::Error` without
    // allocating).
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&empty), None)
                .map_err(std::io::Error::from)
        });
    }
}

fn service_command(program: &str) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(program);
    reset_signal_mask(&mut cmd);
    cmd.uid(SERVICE_UID)
        .gid(SERVICE_GID)
        .env_clear()
        .env("PATH", "/bin")
        .env("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .current_dir(RUN_DIR);
    cmd
}

fn relay_command(layout: &Layout) -> Command {
    let mut cmd = service_command(RELAY_BIN);
    cmd.arg("run").arg("--config").arg(&layout.relay_config);
    cmd
}

fn manage_command(settings: &ApplianceSettings, layout: &Layout) -> Option<Command> {
    let token = Path::new(CONFIG_MNT).join("manage-token");
    if !token.exists() || !settings.manage.enabled {
        return None;
    }
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/init"));
    let mut cmd = service_command(&exe.to_string_lossy());
    cmd.arg("manage")
        .arg("--listen")
        .arg(settings.manage.listen.to_string())
        .arg("--token-file")
        .arg(&token)
        .arg("--policy")
        .arg(&layout.policy)
        .arg("--trusted-keys")
        .arg(TRUSTED_KEYS_FILE)
        .arg("--state-dir")
        .arg(&layout.state_dir)
        .arg("--spool-dir")
        .arg(&layout.spool_dir)
        .arg("--relay-pid-file")
        .arg(&layout.relay_pid)
        .arg("--relay-config")
        .arg(&layout.relay_config);
    let (cert, key) = settings::tls_files(Path::new(CONFIG_MNT));
    if let (Some(cert), Some(key)) = (cert, key) {
        cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
    }
    Some(cmd)
}

/// A child process kept running with back-off.
struct Supervised {
    name: &'static str,
    command: Command,
    pid: Option<Pid>,
    started: Instant,
    next_start: Instant,
    backoff: Duration,
    restarts: u32,
}

const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A child that ran this long is considered healthy: its back-off resets.
const HEALTHY_AFTER: Duration = Duration::from_secs(30);

impl Supervised {
    fn new(name: &'static str, command: Command) -> Self {
        let now = Instant::now();
        Supervised {
            name,
            command,
            pid: None,
            started: now,
            next_start: now,
            backoff: MIN_BACKOFF,
            restarts: 0,
        }
    }

    fn start(&mut self, layout: &Layout) {
        match self.command.spawn() {
            Ok(child) => {
                let raw = i32::try_from(child.id()).unwrap_or(0);
                self.pid = Some(Pid::from_raw(raw));
                self.started = Instant::now();
                log(&format!("started {} (pid {raw})", self.name));
                if self.name == "relay" {
                    let _ = std::fs::write(&layout.relay_pid, format!("{raw}\n"));
                }
            }
            Err(e) => {
                log(&format!("cannot start {}: {e}", self.name));
                self.schedule_restart();
            }
        }
    }

    fn schedule_restart(&mut self) {
        if self.started.elapsed() >= HEALTHY_AFTER {
            self.backoff = MIN_BACKOFF;
        }
        self.next_start = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        self.restarts += 1;
    }
}

/// Why the supervisor loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    PowerOff,
    Reboot,
}

fn supervise(children: &mut [Supervised], sigfd: Option<&SignalFd>, layout: &Layout) -> Stop {
    let mut last_clock_save = Instant::now();
    let mut buttons = button::PowerButtons::new();
    loop {
        if buttons.poll() {
            log("power button: powering off");
            return Stop::PowerOff;
        }
        let now = Instant::now();
        for c in children.iter_mut() {
            if c.pid.is_none() && now >= c.next_start {
                c.start(layout);
            }
        }
        if let Some(fd) = sigfd {
            while let Ok(Some(info)) = fd.read_signal() {
                let signo = i32::try_from(info.ssi_signo).unwrap_or(0);
                match Signal::try_from(signo) {
                    Ok(Signal::SIGTERM | Signal::SIGINT | Signal::SIGPWR | Signal::SIGUSR2) => {
                        log(&format!("signal {signo}: powering off"));
                        return Stop::PowerOff;
                    }
                    Ok(Signal::SIGUSR1) => {
                        log("signal SIGUSR1: rebooting");
                        return Stop::Reboot;
                    }
                    Ok(Signal::SIGHUP) => {
                        if let Some(pid) = children
                            .iter()
                            .find(|c| c.name == "relay")
                            .and_then(|c| c.pid)
                        {
                            let _ = kill(pid, Signal::SIGHUP);
                        }
                    }
                    _ => {}
                }
            }
        }
        // Reap every child (and any orphan re-parented to PID 1).
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => {
                    if let Some(stop) =
                        on_exit(children, pid, &format!("exited with {code}"), Some(code))
                    {
                        return stop;
                    }
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    let _ = on_exit(children, pid, &format!("killed by {sig}"), None);
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
        if last_clock_save.elapsed() >= Duration::from_secs(3600) {
            system::save_clock(&layout.clock);
            last_clock_save = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn on_exit(children: &mut [Supervised], pid: Pid, how: &str, code: Option<i32>) -> Option<Stop> {
    let c = children.iter_mut().find(|c| c.pid == Some(pid))?;
    c.pid = None;
    if c.name == "manage" && code == Some(POWEROFF_EXIT_CODE) {
        log("power-off requested over the management listener");
        return Some(Stop::PowerOff);
    }
    c.schedule_restart();
    log(&format!(
        "{} (pid {pid}) {how}; restart {} in {}s",
        c.name,
        c.restarts,
        c.next_start
            .saturating_duration_since(Instant::now())
            .as_secs()
    ));
    None
}

fn shutdown(children: &mut [Supervised], layout: &Layout, data_ok: bool, stop: Stop) -> ! {
    let began = Instant::now();
    for c in children.iter() {
        if let Some(pid) = c.pid {
            let _ = kill(pid, Signal::SIGTERM);
        }
    }
    let window = std::fs::read_to_string(&layout.relay_config)
        .map(|text| settings::stop_window(&text))
        .unwrap_or_else(|_| settings::stop_window(""));
    let deadline = began + window;
    while children.iter().any(|c| c.pid.is_some()) && Instant::now() < deadline {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, _)) | Ok(WaitStatus::Signaled(pid, _, _)) => {
                for c in children.iter_mut().filter(|c| c.pid == Some(pid)) {
                    c.pid = None;
                    log(&format!(
                        "{} stopped after {} ms",
                        c.name,
                        began.elapsed().as_millis()
                    ));
                }
            }
            Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(20)),
            Ok(_) => {}
            // No child left at all (ECHILD): nothing to wait for.
            Err(_) => break,
        }
    }
    for c in children.iter() {
        if let Some(pid) = c.pid {
            log(&format!(
                "{} did not stop within {}s: killing it",
                c.name,
                window.as_secs()
            ));
            let _ = kill(pid, Signal::SIGKILL);
        }
    }
    // Whatever is left (a check-tls or queue tool started by the management
    // listener, an orphan): killed and reaped, so nothing holds /data open.
    system::kill_all_and_reap(Duration::from_secs(2));
    if data_ok {
        system::save_clock(&layout.clock);
    }
    nix::unistd::sync();
    system::unmount_or_read_only(DATA_MNT);
    system::unmount_or_read_only(CONFIG_MNT);
    log(&format!(
        "{} ({} ms after the request)",
        match stop {
            Stop::PowerOff => "powering off",
            Stop::Reboot => "rebooting",
        },
        began.elapsed().as_millis()
    ));
    system::power_off(stop == Stop::Reboot)
}
