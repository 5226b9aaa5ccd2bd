//! A client's receive buffer through the sans-IO reply parser, reply after
//! reply as the delivery client reads them, plus the accessors the client
//! uses on a reply (class, one-line form, EHLO keywords).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tlsgate::smtp::reply::{parse_reply, MAX_REPLY_LINE, MAX_REPLY_LINES};

fuzz_target!(|data: &[u8]| {
    let mut buf = data;
    loop {
        match parse_reply(buf) {
            Ok(Some((reply, used))) => {
                assert!(used > 0 && used <= buf.len());
                assert_eq!(buf[used - 1], b'\n');
                assert!(used <= MAX_REPLY_LINE * MAX_REPLY_LINES);
                assert!((200..600).contains(&reply.code));
                assert!(!reply.lines.is_empty() && reply.lines.len() <= MAX_REPLY_LINES);
                let classes = [
                    reply.is_positive(),
                    reply.is_intermediate(),
                    reply.is_transient(),
                    reply.is_permanent(),
                ];
                assert_eq!(classes.iter().filter(|c| **c).count(), 1);
                if let Some(e) = reply.enhanced {
                    assert_eq!(u16::from(e.class), reply.code / 100);
                    let _ = e.to_string();
                }
                let one = reply.one_line();
                assert!(one.starts_with(&reply.code.to_string()));
                assert_eq!(reply.to_string(), one);
                for kw in ["STARTTLS", "SIZE", "8BITMIME", "PIPELINING", ""] {
                    let _ = reply.keyword_args(kw);
                    let _ = reply.has_keyword(kw);
                }
                buf = &buf[used..];
            }
            Ok(None) => break,
            Err(e) => {
                let _ = e.to_string();
                break;
            }
        }
    }
});
