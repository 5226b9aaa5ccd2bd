//! A server's receive buffer through the sans-IO command parser, the way
//! the session loop uses it: parse, drop `consumed` bytes, skip the rest of
//! an over-long line, repeat. Checks the bookkeeping (progress, bounds) on
//! top of "no panic".
#![no_main]

use libfuzzer_sys::fuzz_target;
use tlsgate::smtp::command::{
    parse_command, skip_line, Command, Parsed, LINE_TOLERANCE, MAX_COMMAND_LINE,
};

fuzz_target!(|data: &[u8]| {
    let mut buf = data;
    let mut skipping = false;
    while !buf.is_empty() {
        if skipping {
            let (used, ended) = skip_line(buf);
            assert!(used > 0 && used <= buf.len());
            buf = &buf[used..];
            skipping = !ended;
            continue;
        }
        match parse_command(buf) {
            Parsed::NeedMore => {
                assert!(!buf.contains(&b'\n'));
                assert!(buf.len() < MAX_COMMAND_LINE + LINE_TOLERANCE);
                break;
            }
            Parsed::Complete { command, consumed } => {
                assert!(consumed > 0 && consumed <= buf.len());
                assert_eq!(buf[consumed - 1], b'\n');
                assert!(consumed <= MAX_COMMAND_LINE + LINE_TOLERANCE);
                let line = &buf[..consumed];
                if let Ok(cmd) = &command {
                    check_command(cmd, line);
                } else if let Err(e) = &command {
                    let _ = e.to_string();
                }
                buf = &buf[consumed..];
            }
            Parsed::TooLong {
                consumed,
                line_ended,
            } => {
                assert!(consumed > 0 && consumed <= buf.len());
                buf = &buf[consumed..];
                skipping = !line_ended;
            }
        }
    }
});

/// What an accepted command promises the session.
fn check_command(cmd: &Command, line: &[u8]) {
    assert!(line.ends_with(b"\r\n"), "accepted without CRLF: {line:?}");
    match cmd {
        Command::Ehlo(name) | Command::Helo(name) => {
            assert!(!name.is_empty());
            assert!(name.bytes().all(|b| b.is_ascii_graphic()));
        }
        Command::Mail { from, .. } => check_path(from),
        Command::Rcpt { to } => {
            check_path(to);
            assert!(!to.is_empty());
        }
        _ => {}
    }
}

/// Envelope addresses go into spool files and logs: no line breaks, no
/// controls, no spaces, bounded.
fn check_path(p: &str) {
    assert!(p.len() <= 254, "address of {} bytes", p.len());
    assert!(
        !p.bytes()
            .any(|b| b.is_ascii_control() || b == b' ' || b == b'<'),
        "address {p:?}"
    );
}
