//! Running unprivileged (`tlsgate run`).
//!
//! Started as root, the relay binds its listening ports first (port 25
//! needs root), makes the spool and state directories belong to the
//! configured `user`/`group`, then drops every privilege for good:
//! `setgroups([])`, `setgid`, `setuid`, and `PR_SET_NO_NEW_PRIVS`. All of
//! this happens on the main thread before the async runtime starts any
//! thread, so every thread inherits the reduced credentials and the
//! no-new-privileges flag. Running on as root needs `allow_root = true`,
//! written out. Right after this, still before any thread exists,
//! `tlsgate run` confines itself to a system-call allow-list
//! ([`crate::sandbox`], key `seccomp`). See `docs/security.md`.

use std::net::TcpListener;
use std::path::Path;

use nix::unistd::{Gid, Group, Uid, User};

use crate::config::Config;

/// Why the relay would not drop (or keep) its privileges.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("running as root needs `user` (or, deliberately, `allow_root = true`)")]
    RootWithoutUser,
    #[error("unknown user `{0}`")]
    UnknownUser(String),
    #[error("unknown group `{0}`")]
    UnknownGroup(String),
    #[error("cannot listen on `{addr}`: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot prepare `{path}` for the relay's user: {source}")]
    Directory {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot drop privileges ({step}): {source}")]
    Drop {
        step: &'static str,
        source: nix::Error,
    },
}

/// The user and group to run as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub uid: Uid,
    pub gid: Gid,
}

/// Resolves `user`/`group` (names or numeric ids); the group defaults to
/// the user's primary group.
pub fn identity(user: &str, group: Option<&str>) -> Result<Identity, PrivilegeError> {
    let (uid, primary) = match user.parse::<u32>() {
        Ok(n) => {
            let uid = Uid::from_raw(n);
            let primary = User::from_uid(uid).ok().flatten().map(|u| u.gid);
            (uid, primary)
        }
        Err(_) => match User::from_name(user) {
            Ok(Some(u)) => (u.uid, Some(u.gid)),
            _ => return Err(PrivilegeError::UnknownUser(user.to_string())),
        },
    };
    let gid = match group {
        Some(g) => match g.parse::<u32>() {
            Ok(n) => Gid::from_raw(n),
            Err(_) => match Group::from_name(g) {
                Ok(Some(gr)) => gr.gid,
                _ => return Err(PrivilegeError::UnknownGroup(g.to_string())),
            },
        },
        None => primary.unwrap_or_else(|| Gid::from_raw(uid.as_raw())),
    };
    Ok(Identity { uid, gid })
}

/// Makes a listening socket's accept queue as long as the system allows
/// (`net.core.somaxconn`, 4096 on current kernels). The standard library
/// listens with 128: a burst of connections beyond that (a flood, or many
/// clients reconnecting at once) overflows the queue, and with SYN cookies
/// a client whose final ACK was dropped believes it is connected and
/// waits for a greeting that never comes.
pub fn deepen_backlog(listener: &impl std::os::fd::AsFd) -> std::io::Result<()> {
    nix::sys::socket::listen(listener, nix::sys::socket::Backlog::MAXALLOWABLE)
        .map_err(std::io::Error::from)
}

/// Binds the listeners, and when running as root hands the spool and
/// state directories to the configured user and drops to it. Must run
/// before any other thread exists.
pub fn bind_and_drop(config: &Config) -> Result<Vec<TcpListener>, PrivilegeError> {
    let root = Uid::effective().is_root();
    let target = match (&config.user, root) {
        (Some(user), true) => Some(identity(user, config.group.as_deref())?),
        (None, true) if !config.allow_root => return Err(PrivilegeError::RootWithoutUser),
        _ => None,
    };
    let mut listeners = Vec::new();
    for addr in &config.listen {
        let l = TcpListener::bind(addr)
            .and_then(|l| deepen_backlog(&l).map(|()| l))
            .map_err(|source| PrivilegeError::Listen {
                addr: *addr,
                source,
            })?;
        listeners.push(l);
    }
    if let Some(id) = target {
        for dir in [&config.spool_dir, &config.state_dir] {
            hand_over(dir, id)?;
        }
        drop_to(id)?;
        tracing::info!(
            uid = id.uid.as_raw(),
            gid = id.gid.as_raw(),
            "privileges dropped"
        );
    } else if root {
        tracing::warn!("running as root (`allow_root = true`)");
    }
    Ok(listeners)
}

/// Creates `dir` if needed and gives it (and what is directly in it, and
/// one level below) to `id`.
fn hand_over(dir: &Path, id: Identity) -> Result<(), PrivilegeError> {
    let err = |source| PrivilegeError::Directory {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    chown_tree(dir, id, 3).map_err(err)
}

fn chown_tree(path: &Path, id: Identity, depth: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(id.uid.as_raw()), Some(id.gid.as_raw()))?;
    let meta = std::fs::symlink_metadata(path)?;
    if depth > 0 && meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), id, depth - 1)?;
        }
    }
    Ok(())
}

/// `setgroups([])`, `setgid`, `setuid`, then no new privileges; checks
/// that root cannot be regained.
pub fn drop_to(id: Identity) -> Result<(), PrivilegeError> {
    let step = |step: &'static str| move |source| PrivilegeError::Drop { step, source };
    nix::unistd::setgroups(&[]).map_err(step("setgroups"))?;
    nix::unistd::setgid(id.gid).map_err(step("setgid"))?;
    nix::unistd::setuid(id.uid).map_err(step("setuid"))?;
    nix::sys::prctl::set_no_new_privs().map_err(step("no_new_privs"))?;
    if !id.uid.is_root() && nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err(PrivilegeError::Drop {
            step: "root could be regained",
            source: nix::Error::EPERM,
        });
    }
    Ok(())
}
