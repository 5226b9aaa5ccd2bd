//! The power button: ACPI (`Power Button`, x86_64 and arm64 booted by
//! UEFI/ACPI) or any other input device that can send `KEY_POWER`
//! (gpio-keys on device-tree machines, keyboards with a power key).
//!
//! There is no udev and no acpid: the init finds the devices itself through
//! `/sys/class/input/eventN/device/capabilities/key` (a bitmap of the key
//! codes the device can send), opens `/dev/input/eventN` (devtmpfs makes
//! the node; the `evdev` module must be loaded) non-blocking, and reads
//! `struct input_event` records from it, parsed by hand: no `unsafe`, no
//! ioctl. A press of `KEY_POWER` starts the same clean shutdown as a
//! `poweroff` over the management listener.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::system::log;

/// `EV_KEY` from `linux/input-event-codes.h`.
pub const EV_KEY: u16 = 0x01;
/// `KEY_POWER` from `linux/input-event-codes.h`.
pub const KEY_POWER: u16 = 116;

/// Size of `struct input_event` on this target: a `struct timeval` (two
/// C longs), then `__u16 type`, `__u16 code`, `__s32 value`. 24 bytes on
/// x86_64 and aarch64.
pub const EVENT_SIZE: usize = 2 * std::mem::size_of::<libc::c_long>() + 8;

/// Bits per word of a sysfs capability bitmap (the kernel prints
/// `unsigned long`s).
const BITMAP_WORD_BITS: usize = 8 * std::mem::size_of::<libc::c_ulong>();

/// How often the input class is scanned again for devices that appeared
/// late (module loaded after the first scan, hot-plugged keyboard).
const RESCAN_EVERY: Duration = Duration::from_secs(2);

/// Whether a sysfs capability bitmap (`capabilities/key`: hex words, most
/// significant first, separated by spaces) has bit `code` set.
pub fn bitmap_has(bitmap: &str, code: u16) -> bool {
    let code = usize::from(code);
    let word = code / BITMAP_WORD_BITS;
    let bit = code % BITMAP_WORD_BITS;
    bitmap
        .split_ascii_whitespace()
        .rev()
        .nth(word)
        .and_then(|w| u64::from_str_radix(w, 16).ok())
        .is_some_and(|w| bit < 64 && (w >> bit) & 1 == 1)
}

/// One `struct input_event`: (type, code, value).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InputEvent {
    pub kind: u16,
    pub code: u16,
    pub value: i32,
}

/// The whole events in `buf` (native byte order, [`EVENT_SIZE`] each); a
/// trailing partial record is ignored (evdev never hands out one).
pub fn parse_events(buf: &[u8]) -> impl Iterator<Item = InputEvent> + '_ {
    buf.chunks_exact(EVENT_SIZE).map(|rec| {
        let t = EVENT_SIZE - 8;
        InputEvent {
            kind: u16::from_ne_bytes([rec[t], rec[t + 1]]),
            code: u16::from_ne_bytes([rec[t + 2], rec[t + 3]]),
            value: i32::from_ne_bytes([rec[t + 4], rec[t + 5], rec[t + 6], rec[t + 7]]),
        }
    })
}

/// Whether `events` hold a press of the power key.
pub fn power_pressed(events: impl IntoIterator<Item = InputEvent>) -> bool {
    events
        .into_iter()
        .any(|e| e.kind == EV_KEY && e.code == KEY_POWER && e.value == 1)
}

/// One open event device.
#[derive(Debug)]
struct Watched {
    /// `eventN`.
    event: String,
    /// `eventN \`Power Button\``, for the log.
    label: String,
    file: File,
}

/// The input devices that can send `KEY_POWER`, watched by the init.
#[derive(Debug, Default)]
pub struct PowerButtons {
    open: Vec<Watched>,
    last_scan: Option<Instant>,
}

impl PowerButtons {
    /// Nothing opened yet; the first [`PowerButtons::poll`] scans.
    pub fn new() -> Self {
        PowerButtons::default()
    }

    /// Number of devices watched.
    pub fn watched(&self) -> usize {
        self.open.len()
    }

    /// Opens devices that appeared since the last scan (at most every
    /// [`RESCAN_EVERY`]), then reads what every watched device has queued,
    /// without blocking. True when the power key was pressed.
    pub fn poll(&mut self) -> bool {
        if self.last_scan.is_none_or(|t| t.elapsed() >= RESCAN_EVERY) {
            let first = self.last_scan.is_none();
            self.scan(Path::new("/sys/class/input"), Path::new("/dev/input"));
            self.last_scan = Some(Instant::now());
            if first && self.open.is_empty() {
                log("no power button (no input device with KEY_POWER yet): power off over the management listener");
            }
        }
        let mut pressed = false;
        let mut buf = [0u8; EVENT_SIZE * 32];
        self.open.retain_mut(|w| loop {
            match w.file.read(&mut buf) {
                Ok(0) => return true,
                Ok(n) => {
                    if power_pressed(parse_events(&buf[..n])) {
                        log(&format!("power key pressed on {}", w.label));
                        pressed = true;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log(&format!("{}: {e}; no longer watched", w.label));
                    return false;
                }
            }
        });
        pressed
    }

    /// Opens every `eventN` under `class` whose key bitmap has `KEY_POWER`
    /// and that is not watched yet.
    fn scan(&mut self, class: &Path, dev: &Path) {
        for event in power_devices(class) {
            if self.open.iter().any(|w| w.event == event) {
                continue;
            }
            let name = fs::read_to_string(class.join(&event).join("device/name"))
                .map(|s| s.trim().to_string())
                .unwrap_or_default();
            let label = format!("{event} `{name}`");
            match OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(dev.join(&event))
            {
                Ok(f) => {
                    log(&format!("watching {label} for the power key"));
                    self.open.push(Watched {
                        event,
                        label,
                        file: f,
                    });
                }
                Err(e) => log(&format!("cannot open {}: {e}", dev.join(&event).display())),
            }
        }
    }
}

/// The `eventN` names under `class` (normally `/sys/class/input`) whose
/// device can send `KEY_POWER`, sorted.
pub fn power_devices(class: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(class) else {
        return Vec::new();
    };
    let mut found: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("event"))
        .filter(|n| {
            fs::read_to_string(class.join(n).join("device/capabilities/key"))
                .is_ok_and(|caps| bitmap_has(&caps, KEY_POWER))
        })
        .collect();
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn key_bitmaps_are_read_word_by_word() {
        // The ACPI power button of a qemu q35 guest: only KEY_POWER (bit
        // 116 = word 1, bit 52).
        assert!(bitmap_has("10000000000000 0\n", KEY_POWER));
        // An AT keyboard: many keys, KEY_POWER among them.
        let atkbd = "402000000 3803078f800d001 feffffdfffefffff fffffffffffffffe";
        assert!(bitmap_has(atkbd, KEY_POWER));
        assert!(bitmap_has(atkbd, 1)); // KEY_ESC
                                       // A sleep button (KEY_SLEEP = 142) only.
        assert!(!bitmap_has("4000 0\n", KEY_POWER));
        assert!(!bitmap_has("", KEY_POWER));
        assert!(!bitmap_has("0", KEY_POWER));
        assert!(!bitmap_has("zz 0", KEY_POWER));
    }

    fn record(kind: u16, code: u16, value: i32) -> Vec<u8> {
        let mut r = vec![0xAAu8; EVENT_SIZE - 8];
        r.extend_from_slice(&kind.to_ne_bytes());
        r.extend_from_slice(&code.to_ne_bytes());
        r.extend_from_slice(&value.to_ne_bytes());
        r
    }

    #[test]
    fn input_events_are_parsed_and_the_press_found() {
        assert_eq!(EVENT_SIZE, 24);
        let mut buf = record(EV_KEY, KEY_POWER, 1);
        buf.extend(record(0, 0, 0)); // EV_SYN
        buf.extend(record(EV_KEY, KEY_POWER, 0)); // release
        buf.extend([1, 2, 3]); // partial record: ignored
        let events: Vec<_> = parse_events(&buf).collect();
        assert_eq!(
            events,
            vec![
                InputEvent {
                    kind: EV_KEY,
                    code: KEY_POWER,
                    value: 1
                },
                InputEvent {
                    kind: 0,
                    code: 0,
                    value: 0
                },
                InputEvent {
                    kind: EV_KEY,
                    code: KEY_POWER,
                    value: 0
                },
            ]
        );
        assert!(power_pressed(events));
        // A release alone, an auto-repeat (2), another key: no power-off.
        assert!(!power_pressed(parse_events(&record(EV_KEY, KEY_POWER, 0))));
        assert!(!power_pressed(parse_events(&record(EV_KEY, KEY_POWER, 2))));
        assert!(!power_pressed(parse_events(&record(EV_KEY, 142, 1))));
        assert!(!power_pressed(parse_events(&record(4, KEY_POWER, 1))));
    }

    #[test]
    fn power_devices_are_found_by_capability_and_read() {
        let dir = tempfile::tempdir().unwrap();
        let class = dir.path().join("class");
        let dev = dir.path().join("dev");
        fs::create_dir_all(&dev).unwrap();
        for (ev, name, caps) in [
            ("event0", "Power Button", "10000000000000 0\n"),
            ("event1", "Sleep Button", "4000 0\n"),
            ("event2", "gpio-keys", "10000000000000 0\n"),
        ] {
            let d = class.join(ev).join("device/capabilities");
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("key"), caps).unwrap();
            fs::write(class.join(ev).join("device/name"), format!("{name}\n")).unwrap();
        }
        fs::create_dir_all(class.join("input0")).unwrap();
        assert_eq!(power_devices(&class), vec!["event0", "event2"]);

        // Regular files stand in for the event nodes: a read at the end
        // returns 0, which keeps the device watched.
        fs::write(dev.join("event0"), record(EV_KEY, KEY_POWER, 0)).unwrap();
        fs::write(dev.join("event2"), record(EV_KEY, KEY_POWER, 1)).unwrap();
        let mut buttons = PowerButtons::new();
        buttons.scan(&class, &dev);
        assert_eq!(buttons.watched(), 2);
        buttons.last_scan = Some(Instant::now());
        assert!(buttons.poll());
        // Already watched devices are not opened twice.
        buttons.scan(&class, &dev);
        assert_eq!(buttons.watched(), 2);
        assert!(!buttons.poll());
    }
}
