//! Signing keys on disk: `keygen`, reading a private key, reading trusted
//! public keys.

use std::io::Write;
use std::path::{Path, PathBuf};

use policy::blob::{hex, PublicKey, SigningKey};

use super::{Failure, Outcome};

fn with_suffix(name: &Path, suffix: &str) -> PathBuf {
    let mut s = name.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Creates `path` (which must not exist) with `mode` and writes `bytes`.
fn create_new(path: &Path, bytes: &[u8], mode: u32) -> Outcome {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts
        .open(path)
        .map_err(|e| Failure::new(format!("cannot create `{}`: {e}", path.display())))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| Failure::new(format!("cannot write `{}`: {e}", path.display())))
}

/// `tlspolc keygen NAME`: writes `NAME.key` (PKCS#8, mode 0600) and
/// `NAME.pub`; refuses to overwrite either.
pub fn keygen(name: &Path) -> Outcome {
    let key_path = with_suffix(name, ".key");
    let pub_path = with_suffix(name, ".pub");
    for p in [&key_path, &pub_path] {
        if p.symlink_metadata().is_ok() {
            return Err(Failure::new(format!(
                "`{}` already exists; refusing to overwrite it",
                p.display()
            )));
        }
    }
    let pkcs8 = SigningKey::generate_pkcs8().map_err(|e| Failure::new(e.to_string()))?;
    let key = SigningKey::from_pkcs8(&pkcs8).map_err(|e| Failure::new(e.to_string()))?;
    let public = key.public_key();
    create_new(&key_path, &pkcs8, 0o600)?;
    create_new(&pub_path, public.to_text().as_bytes(), 0o644)?;
    println!(
        "wrote `{}` (private, keep secret) and `{}` (key id {})",
        key_path.display(),
        pub_path.display(),
        hex(&public.key_id())
    );
    Ok(())
}

pub fn read_signing_key(path: &Path) -> Result<SigningKey, Failure> {
    let der = std::fs::read(path)
        .map_err(|e| Failure::new(format!("cannot read key `{}`: {e}", path.display())))?;
    SigningKey::from_pkcs8(&der).map_err(|e| Failure::new(format!("key `{}`: {e}", path.display())))
}

pub fn read_public_keys(paths: &[PathBuf]) -> Result<Vec<PublicKey>, Failure> {
    paths
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).map_err(|e| {
                Failure::new(format!("cannot read public key `{}`: {e}", p.display()))
            })?;
            PublicKey::from_text(&text)
                .map_err(|e| Failure::new(format!("public key `{}`: {e}", p.display())))
        })
        .collect()
}
