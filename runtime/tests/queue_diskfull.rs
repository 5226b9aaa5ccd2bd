#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Disk space: below the floor new mail is refused with `DiskFull` while
//! queued mail keeps draining and bounces are still written.

mod queue_support;

use std::process::Command;

use policy::Enforcement;
use queue_support::*;
use tlsgate::policy_store::PolicyHandle;
use tlsgate::spool::{SpaceFloor, Spool, SpoolError, SpoolOptions};
use tlsgate::transport::RecipientOutcome;

/// The floor set above the free space of the file system.
#[tokio::test]
async fn below_the_floor_new_mail_is_refused_queued_mail_drains() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).await.unwrap();
    let ok = enqueue(
        &spool,
        envelope("s@example.com", &["ok@example.com"], "10.1.2.3", true),
        &message("ok"),
    )
    .await;
    let bad = enqueue(
        &spool,
        envelope("s@example.com", &["gone@example.com"], "10.1.2.3", true),
        &message("bad"),
    )
    .await;
    drop(spool);

    let full = SpoolOptions {
        floor: SpaceFloor {
            bytes: u64::MAX / 4,
            percent: 0,
        },
        hard_reserve_bytes: 0,
        ..SpoolOptions::default()
    };
    let spool = Spool::open_with(dir.path(), full).await.unwrap();
    assert!(!spool.has_room());
    let refused = spool
        .begin(envelope(
            "s@example.com",
            &["new@example.com"],
            "10.1.2.3",
            true,
        ))
        .await;
    match refused {
        Err(e @ SpoolError::DiskFull) => assert!(e.is_temporary()),
        other => panic!("expected DiskFull, got {other:?}"),
    }

    let policy = PolicyHandle::fixed(policy(
        1,
        Enforcement::Opportunistic,
        retry(&[3600], 86_400, None),
    ));
    let transport = Scripted::new(|s| {
        if s.recipients[0].starts_with("gone") {
            (
                permanent("550 5.1.1 no such user"),
                Some("mx1.example.com:25".into()),
            )
        } else {
            (
                RecipientOutcome::Delivered,
                Some("mx1.example.com:25".into()),
            )
        }
    });
    let q = Running::start(&spool, &policy, transport.clone());
    transport
        .wait_for("the queued message", |s| s.message_id == ok.to_string())
        .await;
    transport
        .wait_for("the failing one", |s| s.message_id == bad.to_string())
        .await;
    let bounce = transport
        .wait_for("its bounce", |s| s.mail_from.is_empty())
        .await;
    assert_eq!(bounce.recipients, vec!["s@example.com".to_string()]);
    wait_empty(&spool).await;
    q.shutdown().await;
}

/// A real small file system (tmpfs of 2 MiB) filled up.
#[tokio::test]
async fn small_tmpfs_fills_up() {
    let dir = tempfile::tempdir().unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(dir.path())
        .output();
    match mounted {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            println!(
                "skipped: cannot mount a tmpfs ({})",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return;
        }
        Err(e) => {
            println!("skipped: cannot run mount ({e})");
            return;
        }
    }
    struct Unmount<'a>(&'a std::path::Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(self.0).status();
        }
    }
    let _unmount = Unmount(dir.path());

    let options = SpoolOptions {
        floor: SpaceFloor {
            bytes: 768 * 1024,
            percent: 0,
        },
        hard_reserve_bytes: 256 * 1024,
        ..SpoolOptions::default()
    };
    let spool = Spool::open_with(dir.path(), options).await.unwrap();
    assert!(spool.has_room());
    let queued = enqueue(
        &spool,
        envelope("s@example.com", &["gone@example.com"], "10.1.2.3", true),
        &message("queued"),
    )
    .await;

    // A big message eats the space: the write fails with DiskFull (the
    // reserve check or ENOSPC), never with a success.
    let mut big = spool
        .begin(envelope(
            "s@example.com",
            &["a@example.com"],
            "10.1.2.3",
            true,
        ))
        .await
        .unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    let mut failed = None;
    for _ in 0..64 {
        if let Err(e) = big.write(&chunk).await {
            failed = Some(e);
            break;
        }
    }
    let outcome = match failed {
        Some(e) => {
            drop(big);
            Err(e)
        }
        None => big.commit().await.map(|_| ()),
    };
    assert!(matches!(outcome, Err(SpoolError::DiskFull)), "{outcome:?}");
    assert!(
        spool_dir_files(dir.path(), "incoming").is_empty(),
        "the failed message left nothing"
    );

    // Fill below the floor but above the reserve.
    // The failed message's temp file is removed when its `Incoming` drops;
    // wait until its space is back before measuring.
    let avail_now = || {
        let free = nix::sys::statvfs::statvfs(dir.path()).unwrap();
        free.blocks_available() * free.fragment_size()
    };
    let mut avail = avail_now();
    for _ in 0..200 {
        if avail > 768 * 1024 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        avail = avail_now();
    }
    assert!(
        avail > 768 * 1024,
        "space of the failed message never came back: {avail}"
    );
    std::fs::write(
        dir.path().join("filler"),
        vec![0u8; (avail - 512 * 1024) as usize],
    )
    .unwrap();
    assert!(!spool.has_room());
    assert!(matches!(
        spool
            .begin(envelope(
                "s@example.com",
                &["a@example.com"],
                "10.1.2.3",
                true
            ))
            .await,
        Err(SpoolError::DiskFull)
    ));

    // Queued mail still drains, and its bounce is written.
    let policy = PolicyHandle::fixed(policy(
        1,
        Enforcement::Opportunistic,
        retry(&[3600], 86_400, None),
    ));
    let transport = Scripted::new(|s| {
        if s.mail_from.is_empty() {
            (RecipientOutcome::Delivered, None)
        } else {
            (
                permanent("550 5.1.1 no such user"),
                Some("mx1.example.com:25".into()),
            )
        }
    });
    let q = Running::start(&spool, &policy, transport.clone());
    transport
        .wait_for("the queued message", |s| s.message_id == queued.to_string())
        .await;
    transport
        .wait_for("its bounce", |s| s.mail_from.is_empty())
        .await;
    wait_empty(&spool).await;
    q.shutdown().await;
    drop(spool);
}
