//! The management line protocol: greeting, commands, limits. Sans-IO.

/// First word of the greeting line.
pub const GREETING: &str = "tlsgate-manage";
/// Protocol version in the greeting.
pub const VERSION: &str = "1";
/// Longest greeting or command line accepted, in bytes.
pub const MAX_LINE: usize = 1024;
/// Largest policy blob accepted by `policy push`.
pub const MAX_BLOB: usize = 8 * 1024 * 1024;

/// One request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Status,
    PolicyPush { len: usize },
    QueueList,
    CheckTls { domain: String },
    PowerOff,
}

/// Parses the greeting; returns the token.
pub fn parse_greeting(line: &str) -> Result<&str, String> {
    let mut words = line.split_ascii_whitespace();
    match (words.next(), words.next(), words.next(), words.next()) {
        (Some(GREETING), Some(VERSION), Some(token), None) => Ok(token),
        (Some(GREETING), Some(v), _, _) if v != VERSION => {
            Err(format!("unknown protocol version `{v}`"))
        }
        _ => Err("expected `tlsgate-manage 1 <token>`".into()),
    }
}

/// Parses a command line.
pub fn parse_request(line: &str) -> Result<Request, String> {
    let words: Vec<&str> = line.split_ascii_whitespace().collect();
    match words.as_slice() {
        ["status"] => Ok(Request::Status),
        ["queue", "list"] => Ok(Request::QueueList),
        ["poweroff"] => Ok(Request::PowerOff),
        ["check-tls", domain] => {
            let ok = !domain.is_empty()
                && domain.len() <= 253
                && domain
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
            if ok {
                Ok(Request::CheckTls {
                    domain: domain.to_ascii_lowercase(),
                })
            } else {
                Err(format!("`{domain}` is not a domain name"))
            }
        }
        ["policy", "push", n] => match n.parse::<usize>() {
            Ok(len) if len <= MAX_BLOB => Ok(Request::PolicyPush { len }),
            Ok(len) => Err(format!(
                "a policy of {len} bytes is larger than the limit of {MAX_BLOB}"
            )),
            Err(_) => Err(format!("`{n}` is not a length")),
        },
        [] => Err("empty command".into()),
        _ => Err(format!(
            "unknown command `{}` (status, policy push, queue list, check-tls, poweroff)",
            line.trim()
        )),
    }
}

/// The command line a client sends for `request`.
pub fn request_line(request: &Request) -> String {
    match request {
        Request::Status => "status".into(),
        Request::PolicyPush { len } => format!("policy push {len}"),
        Request::QueueList => "queue list".into(),
        Request::CheckTls { domain } => format!("check-tls {domain}"),
        Request::PowerOff => "poweroff".into(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn requests_parse_and_print_back() {
        for (line, req) in [
            ("status", Request::Status),
            ("queue list", Request::QueueList),
            ("poweroff", Request::PowerOff),
            (
                "check-tls Example.COM",
                Request::CheckTls {
                    domain: "example.com".into(),
                },
            ),
            ("policy push 1234", Request::PolicyPush { len: 1234 }),
        ] {
            let parsed = parse_request(line).unwrap();
            assert_eq!(parsed, req);
            assert_eq!(parse_request(&request_line(&parsed)).unwrap(), req);
        }
        for bad in [
            "",
            "stat",
            "policy push x",
            "policy push 999999999999",
            "check-tls a;b",
            "queue",
        ] {
            assert!(parse_request(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn greeting_carries_the_token() {
        assert_eq!(parse_greeting("tlsgate-manage 1 s3cret").unwrap(), "s3cret");
        assert!(parse_greeting("tlsgate-manage 2 s3cret")
            .unwrap_err()
            .contains("version"));
        assert!(parse_greeting("hello").is_err());
        assert!(parse_greeting("tlsgate-manage 1").is_err());
    }
}
