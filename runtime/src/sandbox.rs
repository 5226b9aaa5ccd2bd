//! The relay's system-call allow-list (seccomp-bpf, `tlsgate run`).
//!
//! After binding its ports and dropping root ([`crate::privilege`]), the
//! relay installs a seccomp filter built here with the `seccompiler` crate
//! (rust-vmm). Every system call not on the list fails with `EPERM`; none
//! kills the process (a system call that a new libc or kernel starts using
//! must not take the mail relay down in the middle of a transaction; an
//! attacker gains nothing from an `EPERM`). The list is the union of what
//! the glibc and the static musl builds use, measured on x86_64 with
//! `strace -f -c` over the relay's whole life (see `docs/security.md`),
//! plus the calls the other libc or a rare path may use; aarch64 gets the
//! same list without the legacy calls only x86_64 has.
//!
//! Restricted by argument:
//! - `socket`: only `AF_INET`, `AF_INET6`, `AF_UNIX` (no netlink, no raw
//!   packet sockets); `socketpair`: only `AF_UNIX`;
//! - `clone`: only with `CLONE_THREAD` (new threads, no new processes);
//!   `clone3`, whose flags sit in memory a filter cannot read, answers
//!   `ENOSYS` from a second filter so glibc falls back to `clone`;
//! - `mmap`, `mprotect`: never `PROT_EXEC` (no new executable memory);
//! - `ioctl`: only `FIONBIO`, `FIOCLEX`, `FIONCLEX`, `FIONREAD`, `TCGETS`,
//!   `TIOCGWINSZ`;
//! - `prctl`: only `PR_SET_NAME`, `PR_GET_NAME` (thread names);
//! - `tgkill`: only to the relay's own threads.
//!
//! Not on the list, so refused: `execve`/`execveat`, `fork`/`vfork`,
//! `ptrace`, `process_vm_readv`/`writev`, the mount family, `bpf`,
//! `kexec_*`, module loading, the set-id family, `chroot`/`pivot_root`,
//! `unshare`/`setns`, `keyctl`, `personality`, `userfaultfd`,
//! `perf_event_open`, `io_uring_*`, `memfd_create`, `kill`, `tkill`, the
//! chown family, `seccomp` itself. (Without `tkill`, musl's `abort` ends
//! in its crash instruction rather than `SIGABRT`: the process still
//! stops at once.)
//!
//! The filter is installed with `SECCOMP_FILTER_FLAG_TSYNC`, so it covers
//! every thread of the process, including any started before it.

/// Why the filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("seccomp is not supported on this platform (`{0}`)")]
    Unsupported(&'static str),
    #[error("cannot build the seccomp filter: {0}")]
    Build(String),
    #[error("cannot install the seccomp filter: {0}")]
    Install(String),
}

/// Builds and installs the relay's filters on every thread of the
/// process. Irreversible. Returns the number of system calls allowed.
pub fn install_relay_filter() -> Result<usize, SandboxError> {
    imp::install_relay_filter()
}

/// The names of the system calls the relay may make on this platform
/// (some only with the argument restrictions above).
pub fn allowed_syscalls() -> Vec<&'static str> {
    imp::allowed().iter().map(|(name, _)| *name).collect()
}

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
mod imp {
    use std::collections::BTreeMap;

    use seccompiler::{
        BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule, TargetArch,
    };

    use super::SandboxError;

    macro_rules! sys {
        ($($name:ident),* $(,)?) => {
            &[$((stringify!($name), libc::$name)),*]
        };
    }

    /// Allowed with any arguments, on both architectures. Names keep the
    /// `SYS_` prefix of the `libc` constants.
    const COMMON: &[(&str, libc::c_long)] = sys!(
        // memory
        SYS_brk,
        SYS_munmap,
        SYS_mremap,
        SYS_madvise,
        SYS_membarrier,
        // threads and synchronisation
        SYS_futex,
        SYS_set_robust_list,
        SYS_rseq,
        SYS_set_tid_address,
        SYS_sched_yield,
        SYS_sched_getaffinity,
        SYS_exit,
        SYS_exit_group,
        SYS_gettid,
        SYS_getpid,
        // signals
        SYS_rt_sigaction,
        SYS_rt_sigprocmask,
        SYS_rt_sigreturn,
        SYS_sigaltstack,
        // time, randomness, identity
        SYS_clock_gettime,
        SYS_clock_getres,
        SYS_gettimeofday,
        SYS_nanosleep,
        SYS_clock_nanosleep,
        SYS_getrandom,
        SYS_getuid,
        SYS_geteuid,
        SYS_getgid,
        SYS_getegid,
        SYS_uname,
        SYS_prlimit64,
        // descriptors and readiness
        SYS_read,
        SYS_write,
        SYS_readv,
        SYS_writev,
        SYS_pread64,
        SYS_pwrite64,
        SYS_preadv,
        SYS_pwritev,
        SYS_lseek,
        SYS_close,
        SYS_dup,
        SYS_dup3,
        SYS_fcntl,
        SYS_pipe2,
        SYS_eventfd2,
        SYS_epoll_create1,
        SYS_epoll_ctl,
        SYS_epoll_pwait,
        SYS_epoll_pwait2,
        SYS_ppoll,
        SYS_pselect6,
        // files (spool, state directory, policy, resolv.conf)
        SYS_openat,
        SYS_newfstatat,
        SYS_fstat,
        SYS_statx,
        SYS_faccessat,
        SYS_faccessat2,
        SYS_getdents64,
        SYS_mkdirat,
        SYS_unlinkat,
        SYS_renameat,
        SYS_renameat2,
        SYS_readlinkat,
        SYS_getcwd,
        SYS_fsync,
        SYS_fdatasync,
        SYS_ftruncate,
        SYS_fallocate,
        SYS_flock,
        SYS_statfs,
        SYS_fstatfs,
        SYS_fchmod,
        SYS_fchmodat,
        SYS_fadvise64,
        // network (SMTP in and out, DNS over UDP and TCP, control socket)
        SYS_bind,
        SYS_listen,
        SYS_accept,
        SYS_accept4,
        SYS_connect,
        SYS_sendto,
        SYS_recvfrom,
        SYS_sendmsg,
        SYS_recvmsg,
        SYS_sendmmsg,
        SYS_recvmmsg,
        SYS_shutdown,
        SYS_setsockopt,
        SYS_getsockopt,
        SYS_getsockname,
        SYS_getpeername,
    );

    /// The legacy calls x86_64 still has and libcs still use there
    /// (aarch64 only has the `*at` forms).
    #[cfg(target_arch = "x86_64")]
    const LEGACY: &[(&str, libc::c_long)] = sys!(
        SYS_open,
        SYS_stat,
        SYS_lstat,
        SYS_access,
        SYS_readlink,
        SYS_rename,
        SYS_unlink,
        SYS_mkdir,
        SYS_rmdir,
        SYS_chmod,
        SYS_pipe,
        SYS_dup2,
        SYS_poll,
        SYS_epoll_wait,
        SYS_arch_prctl,
    );
    #[cfg(target_arch = "aarch64")]
    const LEGACY: &[(&str, libc::c_long)] = &[];

    /// Allowed only with the argument conditions of [`restricted`].
    const RESTRICTED: &[(&str, libc::c_long)] = sys!(
        SYS_socket,
        SYS_socketpair,
        SYS_clone,
        SYS_mmap,
        SYS_mprotect,
        SYS_ioctl,
        SYS_prctl,
        SYS_tgkill,
    );

    pub(super) fn allowed() -> Vec<(&'static str, libc::c_long)> {
        let mut v: Vec<_> = COMMON
            .iter()
            .chain(LEGACY)
            .chain(RESTRICTED)
            .map(|(n, nr)| (n.trim_start_matches("SYS_"), *nr))
            .collect();
        v.sort_unstable();
        v
    }

    fn arch() -> TargetArch {
        #[cfg(target_arch = "x86_64")]
        {
            TargetArch::x86_64
        }
        #[cfg(target_arch = "aarch64")]
        {
            TargetArch::aarch64
        }
    }

    fn build_err(e: impl std::fmt::Display) -> SandboxError {
        SandboxError::Build(e.to_string())
    }

    /// `arg` (32 bits) equals `value`.
    fn eq(arg: u8, value: u64) -> Result<SeccompRule, SandboxError> {
        let c = SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
            .map_err(build_err)?;
        SeccompRule::new(vec![c]).map_err(build_err)
    }

    /// `arg` (64 bits) masked with `mask` equals `value`.
    fn masked(arg: u8, mask: u64, value: u64) -> Result<SeccompRule, SandboxError> {
        let c = SeccompCondition::new(
            arg,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(mask),
            value,
        )
        .map_err(build_err)?;
        SeccompRule::new(vec![c]).map_err(build_err)
    }

    fn u(v: impl TryInto<u64>) -> Result<u64, SandboxError> {
        v.try_into()
            .map_err(|_| SandboxError::Build("negative constant".into()))
    }

    /// The argument conditions of the [`RESTRICTED`] calls (one rule
    /// matching is enough).
    fn restricted(nr: libc::c_long) -> Result<Vec<SeccompRule>, SandboxError> {
        Ok(match nr {
            libc::SYS_socket => vec![
                eq(0, u(libc::AF_INET)?)?,
                eq(0, u(libc::AF_INET6)?)?,
                eq(0, u(libc::AF_UNIX)?)?,
            ],
            libc::SYS_socketpair => vec![eq(0, u(libc::AF_UNIX)?)?],
            libc::SYS_clone => {
                let thread = u(libc::CLONE_THREAD)?;
                vec![masked(0, thread, thread)?]
            }
            libc::SYS_mmap | libc::SYS_mprotect => vec![masked(2, u(libc::PROT_EXEC)?, 0)?],
            libc::SYS_ioctl => {
                let mut rules = Vec::new();
                for request in [
                    libc::FIONBIO,
                    libc::FIOCLEX,
                    libc::FIONCLEX,
                    libc::FIONREAD,
                    libc::TCGETS,
                    libc::TIOCGWINSZ,
                ] {
                    rules.push(eq(1, u(request)?)?);
                }
                rules
            }
            libc::SYS_prctl => vec![eq(0, u(libc::PR_SET_NAME)?)?, eq(0, u(libc::PR_GET_NAME)?)?],
            libc::SYS_tgkill => vec![eq(0, u(std::process::id())?)?],
            _ => return Err(SandboxError::Build(format!("no rule for system call {nr}"))),
        })
    }

    /// The allow-list: listed calls pass (restricted ones only with their
    /// arguments), everything else gets `EPERM`.
    pub(super) fn relay_filter() -> Result<BpfProgram, SandboxError> {
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        for (_, nr) in COMMON.iter().chain(LEGACY) {
            rules.insert(*nr, Vec::new());
        }
        for (_, nr) in RESTRICTED {
            rules.insert(*nr, restricted(*nr)?);
        }
        // Passed here so that the `ENOSYS` of [`clone3_filter`] decides
        // (an `EPERM` from this later filter would win over it).
        rules.insert(libc::SYS_clone3, Vec::new());
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Errno(u32::try_from(libc::EPERM).map_err(build_err)?),
            SeccompAction::Allow,
            arch(),
        )
        .map_err(build_err)?;
        filter.try_into().map_err(build_err)
    }

    /// `clone3` answers `ENOSYS` (so the C library uses `clone`, whose
    /// flags the allow-list can check); everything else passes on to the
    /// allow-list.
    pub(super) fn clone3_filter() -> Result<BpfProgram, SandboxError> {
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        rules.insert(libc::SYS_clone3, Vec::new());
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(u32::try_from(libc::ENOSYS).map_err(build_err)?),
            arch(),
        )
        .map_err(build_err)?;
        filter.try_into().map_err(build_err)
    }

    pub(super) fn install_relay_filter() -> Result<usize, SandboxError> {
        // Both are built before either is installed: building allocates,
        // installing the first must not leave a half-done sandbox behind
        // an error.
        let clone3 = clone3_filter()?;
        let relay = relay_filter()?;
        // The `clone3` filter first: installing the allow-list needs
        // `prctl(PR_SET_NO_NEW_PRIVS)` and `seccomp`, which it refuses.
        for program in [&clone3, &relay] {
            seccompiler::apply_filter_all_threads(program)
                .map_err(|e| SandboxError::Install(e.to_string()))?;
        }
        Ok(allowed().len())
    }
}

#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
mod imp {
    use super::SandboxError;

    pub(super) fn allowed() -> Vec<(&'static str, i64)> {
        Vec::new()
    }

    pub(super) fn install_relay_filter() -> Result<usize, SandboxError> {
        Err(SandboxError::Unsupported(std::env::consts::ARCH))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    #[test]
    fn the_list_is_built_and_leaves_out_the_dangerous_calls() {
        let names = super::allowed_syscalls();
        assert!(names.len() > 80, "{names:?}");
        for name in [
            "execve",
            "execveat",
            "fork",
            "vfork",
            "ptrace",
            "process_vm_readv",
            "process_vm_writev",
            "mount",
            "umount2",
            "bpf",
            "kexec_load",
            "init_module",
            "finit_module",
            "setuid",
            "setresuid",
            "setgroups",
            "chroot",
            "pivot_root",
            "unshare",
            "setns",
            "keyctl",
            "personality",
            "userfaultfd",
            "perf_event_open",
            "seccomp",
            "kill",
        ] {
            assert!(!names.contains(&name), "`{name}` is allowed");
        }
        #[cfg(all(
            target_os = "linux",
            any(target_arch = "x86_64", target_arch = "aarch64")
        ))]
        {
            assert!(!super::imp::relay_filter().unwrap().is_empty());
            assert!(!super::imp::clone3_filter().unwrap().is_empty());
        }
    }
}
