//! `check`, `build`, `verify`, `inspect` and `fmt`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use policy::blob::{self, Header};
use serde_json::json;

use super::keys::{read_public_keys, read_signing_key};
use super::report::{self, count};
use super::{Failure, Format, Outcome};

/// `tlspolc check FILE…`.
pub fn check(files: &[PathBuf], format: Format, deny_warnings: bool) -> Outcome {
    let colour = report::colour(std::io::stdout().is_terminal());
    let mut all_ok = true;
    let mut json_files = Vec::new();
    for file in files {
        let (errors, warnings) = match tlspolc::compile_file(file) {
            Ok(c) => (Vec::new(), c.warnings),
            Err(f) => (f.errors, f.warnings),
        };
        let ok = errors.is_empty() && (warnings.is_empty() || !deny_warnings);
        all_ok &= ok;
        match format {
            Format::Human => {
                let mut text = String::new();
                for d in warnings.iter().chain(&errors) {
                    text.push_str(&report::render(d, colour));
                }
                text.push_str(&format!(
                    "{}: {}, {}{}\n",
                    file.display(),
                    count(errors.len(), "error"),
                    count(warnings.len(), "warning"),
                    if !errors.is_empty() {
                        ""
                    } else if !ok {
                        " (warnings denied)"
                    } else {
                        " — ok"
                    }
                ));
                report::print_out(&text);
            }
            Format::Json => json_files.push(json!({
                "file": file.display().to_string(),
                "ok": ok,
                "errors": report::json_list(&errors),
                "warnings": report::json_list(&warnings),
            })),
        }
    }
    if format == Format::Json {
        report::print_out(&format!(
            "{}\n",
            json!({ "ok": all_ok, "files": json_files })
        ));
    }
    if all_ok {
        Ok(())
    } else {
        Err(Failure::quiet())
    }
}

/// The creation time for `build`: flag, else `SOURCE_DATE_EPOCH`, else 0.
fn creation_time(flag: Option<u64>) -> Result<u64, Failure> {
    if let Some(t) = flag {
        return Ok(t);
    }
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().map_err(|_| Failure {
            message: format!("SOURCE_DATE_EPOCH `{v}` is not a number of seconds"),
            code: 2,
        }),
        _ => Ok(0),
    }
}

/// Writes `bytes` to a temporary file beside `path`, then renames it into
/// place, so `path` is never half-written.
fn write_atomically(path: &Path, bytes: &[u8]) -> Outcome {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let fail = |e: std::io::Error| Failure::new(format!("cannot write `{}`: {e}", path.display()));
    let result = (|| {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(fail)
}

/// `tlspolc build FILE --key KEY -o OUT`.
pub fn build(
    file: &Path,
    key: &Path,
    output: &Path,
    created: Option<u64>,
    deny_warnings: bool,
) -> Outcome {
    let created = creation_time(created)?;
    let key = read_signing_key(key)?;
    let compiled = match tlspolc::compile_file(file) {
        Ok(c) => c,
        Err(f) => {
            report::eprint_all(&f.errors, &f.warnings);
            return Err(Failure::new(format!(
                "`{}` has {}; nothing written",
                file.display(),
                count(f.errors.len(), "error")
            )));
        }
    };
    report::eprint_all(&[], &compiled.warnings);
    if deny_warnings && !compiled.warnings.is_empty() {
        return Err(Failure::new(format!(
            "`{}` has {} and --deny-warnings is set; nothing written",
            file.display(),
            count(compiled.warnings.len(), "warning")
        )));
    }
    let bytes =
        blob::sign(&compiled.policy, created, &key).map_err(|e| Failure::new(e.to_string()))?;
    write_atomically(output, &bytes)?;
    eprintln!(
        "wrote `{}`: serial {}, {} domains, {} partners, key id {}, created {}, {} bytes",
        output.display(),
        compiled.policy.serial,
        compiled.policy.domains.len(),
        compiled.policy.partners.len(),
        blob::hex(&key.public_key().key_id()),
        created,
        bytes.len()
    );
    Ok(())
}

fn read_blob(path: &Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|e| Failure::new(format!("cannot read `{}`: {e}", path.display())))
}

/// `tlspolc verify BLOB --pubkey PUB…`.
pub fn verify(path: &Path, pubkeys: &[PathBuf]) -> Outcome {
    let trusted = read_public_keys(pubkeys)?;
    let bytes = read_blob(path)?;
    match blob::verify_and_decode(&bytes, &trusted) {
        Ok((h, p)) => {
            println!(
                "`{}` is authentic: serial {}, key id {}, created {}, {} domains, {} partners",
                path.display(),
                h.serial,
                h.key_id_hex(),
                h.created,
                p.domains.len(),
                p.partners.len()
            );
            Ok(())
        }
        Err(e) => Err(Failure::new(format!("`{}` refused: {e}", path.display()))),
    }
}

pub fn header_json(h: &Header) -> serde_json::Value {
    json!({
        "format_version": h.version,
        "key_id": h.key_id_hex(),
        "serial": h.serial,
        "created": h.created,
        "body_len": h.body_len,
    })
}

/// `tlspolc inspect BLOB [--pubkey PUB…]`.
pub fn inspect(path: &Path, pubkeys: &[PathBuf]) -> Outcome {
    let bytes = read_blob(path)?;
    let verified = !pubkeys.is_empty();
    let decoded = if verified {
        let trusted = read_public_keys(pubkeys)?;
        blob::verify_and_decode(&bytes, &trusted)
    } else {
        blob::danger::decode_unverified(&bytes)
    };
    let (header, policy) =
        decoded.map_err(|e| Failure::new(format!("`{}` refused: {e}", path.display())))?;
    let note = if verified {
        "signature verified with a trusted key"
    } else {
        "NOT VERIFIED: no --pubkey given; anyone could have written these bytes"
    };
    let out = json!({
        "verified": verified,
        "note": note,
        "header": header_json(&header),
        "policy": policy,
    });
    let text = serde_json::to_string_pretty(&out)
        .map_err(|e| Failure::new(format!("cannot print the policy as JSON: {e}")))?;
    report::print_out(&format!("{text}\n"));
    Ok(())
}

/// `tlspolc fmt FILE [--check] [--write]`.
pub fn fmt(file: &Path, check: bool, write: bool) -> Outcome {
    let formatted = match tlspolc::format_source(file) {
        Ok(t) => t,
        Err(f) => {
            report::eprint_all(&f.errors, &f.warnings);
            return Err(Failure::new(format!(
                "`{}` has {}; not formatted",
                file.display(),
                count(f.errors.len(), "syntax error")
            )));
        }
    };
    if !check && !write {
        report::print_out(&formatted);
        return Ok(());
    }
    let current = std::fs::read_to_string(file)
        .map_err(|e| Failure::new(format!("cannot read `{}`: {e}", file.display())))?;
    if current == formatted {
        return Ok(());
    }
    if check {
        return Err(Failure::new(format!(
            "`{}` is not canonically formatted (run `tlspolc fmt --write`)",
            file.display()
        )));
    }
    write_atomically(file, formatted.as_bytes())?;
    eprintln!("formatted `{}`", file.display());
    Ok(())
}
