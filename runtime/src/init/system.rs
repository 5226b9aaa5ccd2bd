//! The kernel-facing chores of PID 1: pseudo file systems, the console,
//! kernel modules, finding partitions by GPT name, the clock floor, and the
//! final power-off. All through `nix`; nothing here needs `unsafe`.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Mounts proc, sys, devtmpfs and a tmpfs on `/run` and `/tmp`; errors for
/// mounts that already exist are ignored.
pub fn mount_pseudo_filesystems() {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    let table: [(&str, &str, &str, MsFlags, Option<&str>); 5] = [
        ("proc", "/proc", "proc", nosuid, None),
        ("sysfs", "/sys", "sysfs", nosuid, None),
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        ),
        ("tmpfs", "/run", "tmpfs", nosuid, Some("mode=0755,size=16m")),
        ("tmpfs", "/tmp", "tmpfs", nosuid, Some("mode=1777,size=16m")),
    ];
    for (src, target, fstype, flags, data) in table {
        let _ = fs::create_dir_all(target);
        if let Err(e) = mount(Some(src), target, Some(fstype), flags, data) {
            if e != nix::errno::Errno::EBUSY {
                log(&format!("mount {target}: {e}"));
            }
        }
    }
}

/// Makes `/dev/console` the standard input, output and error.
pub fn reopen_console() {
    if let Ok(console) = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        let _ = nix::unistd::dup2_stdin(&console);
        let _ = nix::unistd::dup2_stdout(&console);
        let _ = nix::unistd::dup2_stderr(&console);
    }
}

/// One line to the console, prefixed so it stands out from the relay's log.
pub fn log(msg: &str) {
    eprintln!("tlsgate-init: {msg}");
}

/// Loads each module named in `list` (one absolute path per line, in
/// dependency order) with `finit_module`. Already-loaded and built-in
/// modules are fine; other failures are logged and skipped, so one missing
/// driver does not stop the boot.
pub fn load_modules(list: &Path) -> usize {
    let Ok(text) = fs::read_to_string(list) else {
        log(&format!("no module list at {}", list.display()));
        return 0;
    };
    let mut loaded = 0;
    for path in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) => {
                log(&format!("module {path}: {e}"));
                continue;
            }
        };
        match nix::kmod::finit_module(&file, c"", nix::kmod::ModuleInitFlags::empty()) {
            Ok(()) => loaded += 1,
            Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => log(&format!("module {path}: {e}")),
        }
    }
    loaded
}

/// Finds the block device whose GPT partition name is `name` by scanning
/// `/sys/class/block/*/uevent` for `PARTNAME=` (there is no udev, so no
/// `/dev/disk/by-partlabel`). Waits up to `wait` for the disk to appear.
pub fn find_partition(name: &str, wait: Duration) -> Option<PathBuf> {
    let deadline = Instant::now() + wait;
    loop {
        if let Some(dev) = scan_partitions(Path::new("/sys/class/block"), name) {
            return Some(dev);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One scan of a sysfs-like directory; split out so tests can run it on a
/// fake tree.
pub fn scan_partitions(class_block: &Path, name: &str) -> Option<PathBuf> {
    let mut entries: Vec<_> = fs::read_dir(class_block).ok()?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let Ok(uevent) = fs::read_to_string(entry.path().join("uevent")) else {
            continue;
        };
        let mut devname = None;
        let mut partname = None;
        for line in uevent.lines() {
            if let Some(v) = line.strip_prefix("DEVNAME=") {
                devname = Some(v.to_string());
            } else if let Some(v) = line.strip_prefix("PARTNAME=") {
                partname = Some(v.to_string());
            }
        }
        if partname.as_deref() == Some(name) {
            if let Some(dev) = devname {
                return Some(Path::new("/dev").join(dev));
            }
        }
    }
    None
}

/// Mounts `dev` on `target`.
pub fn mount_device(
    dev: &Path,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> io::Result<()> {
    fs::create_dir_all(target)?;
    mount(Some(dev), target, Some(fstype), flags, data).map_err(io::Error::from)
}

/// Unmounts `target`. When it is busy, remounts it read-only instead (which
/// flushes and marks the file system clean just the same), then detaches
/// it; says on the console what it could do.
pub fn unmount_or_read_only(target: &str) {
    let Err(busy) = umount2(target, MntFlags::empty()) else {
        return;
    };
    if busy == nix::errno::Errno::EINVAL {
        return; // not mounted
    }
    let ro = MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    match mount(None::<&str>, target, None::<&str>, ro, None::<&str>) {
        Ok(()) => log(&format!("{target}: {busy}; remounted read-only")),
        Err(e) => log(&format!(
            "{target}: cannot unmount ({busy}) nor remount read-only ({e})"
        )),
    }
    let _ = umount2(target, MntFlags::MNT_DETACH);
}

/// Sends SIGKILL to every process but PID 1 and reaps them, waiting up to
/// `wait` for the last one.
pub fn kill_all_and_reap(wait: Duration) {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    use nix::unistd::Pid;
    let _ = nix::sys::signal::kill(Pid::from_raw(-1), nix::sys::signal::Signal::SIGKILL);
    let deadline = Instant::now() + wait;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {
                if Instant::now() >= deadline {
                    log("processes left after SIGKILL");
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(_) => {}
            Err(_) => return, // ECHILD: none left
        }
    }
}

/// The clock now, in unix seconds.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Keeps the wall clock sane enough for certificate checks: the kernel reads
/// the RTC at boot (`rtc_cmos` on x86, `rtc-pl031`/`rtc-efi` on arm64); if
/// the clock is still below `floor` (the build time baked into the image, or
/// the last time saved on the data partition), it is set to `floor`.
/// Returns the clock afterwards.
pub fn enforce_clock_floor(floor: u64) -> u64 {
    let now = now_secs();
    if now >= floor {
        return now;
    }
    let Ok(secs) = i64::try_from(floor) else {
        return now;
    };
    let ts = nix::sys::time::TimeSpec::new(secs, 0);
    match nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts) {
        Ok(()) => log(&format!(
            "clock was {now}, below the floor {floor}: set to the floor"
        )),
        Err(e) => log(&format!("cannot set the clock to {floor}: {e}")),
    }
    now_secs()
}

/// Reads a unix time written by [`save_clock`] (or the build epoch file).
pub fn read_epoch(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Saves the clock so the next boot never starts below it.
pub fn save_clock(path: &Path) {
    let tmp = path.with_extension("tmp");
    if fs::write(&tmp, format!("{}\n", now_secs())).is_ok() {
        let _ = fs::rename(&tmp, path);
    }
}

/// Syncs, then powers the machine off (or reboots when `reboot` is set).
/// Never returns; if the kernel refuses, the init has nothing left to do
/// but exit, which panics the kernel (`panic=-1` reboots it).
pub fn power_off(reboot: bool) -> ! {
    nix::unistd::sync();
    let mode = if reboot {
        nix::sys::reboot::RebootMode::RB_AUTOBOOT
    } else {
        nix::sys::reboot::RebootMode::RB_POWER_OFF
    };
    let Err(e) = nix::sys::reboot::reboot(mode);
    log(&format!("power off failed: {e}"));
    std::process::exit(1)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn partitions_are_found_by_gpt_name() {
        let dir = tempfile::tempdir().unwrap();
        for (dev, extra) in [
            ("vda", "DEVTYPE=disk\n"),
            (
                "vda1",
                "DEVTYPE=partition\nPARTN=1\nPARTNAME=tlsgate-boot\n",
            ),
            (
                "vda2",
                "DEVTYPE=partition\nPARTN=2\nPARTNAME=tlsgate-config\n",
            ),
            (
                "vda3",
                "DEVTYPE=partition\nPARTN=3\nPARTNAME=tlsgate-data\n",
            ),
        ] {
            let d = dir.path().join(dev);
            fs::create_dir_all(&d).unwrap();
            fs::write(
                d.join("uevent"),
                format!("MAJOR=254\nMINOR=0\nDEVNAME={dev}\n{extra}"),
            )
            .unwrap();
        }
        assert_eq!(
            scan_partitions(dir.path(), "tlsgate-data"),
            Some(PathBuf::from("/dev/vda3"))
        );
        assert_eq!(
            scan_partitions(dir.path(), "tlsgate-config"),
            Some(PathBuf::from("/dev/vda2"))
        );
        assert_eq!(scan_partitions(dir.path(), "nope"), None);
    }

    #[test]
    fn epochs_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("clock");
        save_clock(&p);
        let saved = read_epoch(&p).unwrap();
        assert!(saved > 1_600_000_000);
        // A floor in the past leaves the clock alone.
        assert!(enforce_clock_floor(1_000) >= saved);
    }
}
