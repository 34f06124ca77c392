//! The binary cache and per-run files over SFTP: upload on a miss, nothing
//! sent on a hit, a launch that verifies the hash (a corrupt or truncated
//! cached binary is replaced, never run), private 0700 directories, clean-up
//! of run files and of the cache, the private /tmp fallback prefix, and a
//! cancelled upload that leaves no partial file.

use std::path::Path;
use std::time::Instant;

use mgmt::ssh::launch::VERIFY_FAILED_EXIT;
use mgmt::ssh::CacheOptions;
use mgmt::ssh::{ExecOptions, ExitStatus};

use super::{guard, mode_of, payload, Upload};
use crate::util::sshd::SshdFleet;

#[tokio::test]
async fn binary_cache_miss_then_hit_and_verified_launch() {
    let fleet = SshdFleet::start(1);
    guard(async {
        let size = 9 * 1024 * 1024;
        let u = Upload::start(&fleet, size).await;
        assert_eq!(
            Path::new(u.sftp.home()),
            fleet.home(1).canonicalize().expect("home")
        );

        let progress = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let p2 = progress.clone();
        let opts = CacheOptions {
            progress: Some(std::sync::Arc::new(move |n, _| {
                p2.store(n, std::sync::atomic::Ordering::Relaxed)
            })),
            ..Default::default()
        };
        let t = Instant::now();
        let first = u.ensure(&opts).await.expect("upload");
        let took = t.elapsed();
        eprintln!(
            "upload {} bytes in {took:?} = {:.0} MiB/s",
            first.bytes_sent,
            first.bytes_sent as f64 / 1048576.0 / took.as_secs_f64()
        );
        assert!(!first.hit);
        assert_eq!(first.bytes_sent, size as u64);
        assert_eq!(
            progress.load(std::sync::atomic::Ordering::Relaxed),
            size as u64
        );
        assert!(!first.fallback);
        let on_disk = u.cache_dir.join("mgmt");
        assert_eq!(
            std::fs::read(&on_disk).expect("cached"),
            std::fs::read(&u.local).expect("local")
        );
        for d in [".cache/mgmt", ".cache/mgmt/bin"] {
            assert_eq!(mode_of(fleet.home(1).join(d)), 0o700, "{d}");
        }
        // No temporary file is left next to it.
        let names: Vec<_> = std::fs::read_dir(&u.cache_dir)
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["mgmt"]);

        let second = u.ensure(&opts).await.expect("hit");
        assert!(second.hit);
        assert_eq!(second.bytes_sent, 0);

        let opts = ExecOptions {
            report_pid: true,
            ..Default::default()
        };
        let child = second
            .launch(&u.s, &["a b", "c"], opts)
            .await
            .expect("launch");
        assert!(child.pid.is_some());
        let o = child.collect().await;
        assert_eq!(o.stdout, ["ran a b c"], "{o:?}");
        assert!(o.status.success());
        u.sftp.close().await;
        u.s.close().await;
    })
    .await;
}

#[tokio::test]
async fn corrupt_or_truncated_cached_binary_is_replaced_never_run() {
    let fleet = SshdFleet::start(1);
    guard(async {
        let size = 64 * 1024;
        let u = Upload::start(&fleet, size).await;
        let opts = CacheOptions::default();
        let cached = u.ensure(&opts).await.expect("upload");
        let on_disk = u.cache_dir.join("mgmt");

        // Same size, different content: a size check cannot see it, the
        // launch check does, and the file is not run.
        payload(&on_disk, size, true);
        let o = u.launch_x(&cached).await;
        assert_eq!(o.status, ExitStatus::Exited(VERIFY_FAILED_EXIT), "{o:?}");
        assert!(
            o.stderr
                .iter()
                .any(|l| l.contains("failed its sha-256 check")),
            "{o:?}"
        );
        assert!(!u.cache_dir.join("corrupt-ran").exists());
        assert!(!fleet.home(1).join("corrupt-ran").exists());

        // With verify_hit, ensure_binary finds and replaces it.
        let verify = CacheOptions {
            verify_hit: true,
            ..Default::default()
        };
        let fixed = u.ensure(&verify).await.expect("replace");
        assert!(!fixed.hit);
        assert_eq!(fixed.bytes_sent, size as u64);
        let o = u.launch_x(&fixed).await;
        assert_eq!(o.stdout, ["ran x"]);

        // Truncated: the size check alone replaces it.
        std::fs::write(&on_disk, b"#!/bin/sh\n").expect("truncate");
        let again = u.ensure(&opts).await.expect("replace");
        assert!(!again.hit);
        assert_eq!(
            std::fs::read(&on_disk).expect("read"),
            std::fs::read(&u.local).expect("read")
        );
        u.s.close().await;
    })
    .await;
}

#[tokio::test]
async fn run_dir_cleanup_and_no_caching_leave_nothing_behind() {
    let fleet = SshdFleet::start(1);
    guard(async {
        let u = Upload::start(&fleet, 4096).await;
        let (s, sftp) = (&u.s, &u.sftp);
        let cached = u.ensure(&CacheOptions::default()).await.expect("upload");
        let path = sftp
            .put_run_file(s, None, "run-42", "graph.yaml", b"graph: g\n")
            .await
            .expect("graph");
        let home = fleet.home(1);
        let run_dir = home.join(".cache/mgmt/run/run-42");
        assert_eq!(
            Path::new(&path),
            run_dir.canonicalize().expect("dir").join("graph.yaml")
        );
        assert_eq!(
            std::fs::read_to_string(run_dir.join("graph.yaml")).expect("graph"),
            "graph: g\n"
        );
        assert_eq!(mode_of(&run_dir), 0o700);
        // Names that could escape the directory are refused.
        assert!(sftp.put_run_file(s, None, "..", "x", b"").await.is_err());
        assert!(sftp.put_run_file(s, None, "r", "../x", b"").await.is_err());

        sftp.remove_run_dir(&cached.prefix, "run-42")
            .await
            .expect("cleanup");
        assert!(!home.join(".cache/mgmt/run").exists());
        assert!(u.cache_dir.join("mgmt").exists(), "cache kept");
        sftp.remove_binary(&cached)
            .await
            .expect("no-caching cleanup");
        assert!(!home.join(".cache/mgmt").exists());
        // ~/.cache did not exist: the upload made it, the clean-up removed
        // it (#18).
        assert_eq!(cached.created.len(), 1, "{:?}", cached.created);
        assert!(
            cached.created[0].ends_with("/.cache"),
            "{:?}",
            cached.created
        );
        assert!(!home.join(".cache").exists());
        u.s.close().await;
    })
    .await;
}

// See: #18 (--no-caching removes only the directories it created: a
// ~/.cache that was there before stays, even empty)
#[tokio::test]
async fn no_caching_keeps_a_cache_dir_it_did_not_create() {
    let fleet = SshdFleet::start(1);
    guard(async {
        let home = fleet.home(1);
        std::fs::create_dir(home.join(".cache")).expect("mkdir");
        let u = Upload::start(&fleet, 4096).await;
        let cached = u.ensure(&CacheOptions::default()).await.expect("upload");
        assert!(cached.created.is_empty(), "{:?}", cached.created);
        u.sftp.remove_binary(&cached).await.expect("cleanup");
        assert!(!home.join(".cache/mgmt").exists());
        assert!(
            home.join(".cache").is_dir(),
            "a directory mgmt did not create was removed"
        );
        u.s.close().await;
    })
    .await;
}

#[tokio::test]
async fn unusable_prefix_falls_back_to_a_private_tmp_dir() {
    let fleet = SshdFleet::start(1);
    guard(async {
        let u = Upload::start(&fleet, 4096).await;
        let opts = CacheOptions {
            prefix: Some("/proc/mgmt-cannot-exist".into()),
            ..Default::default()
        };
        let first = u.ensure(&opts).await.expect("fallback");
        assert!(first.fallback);
        assert!(
            first.prefix.starts_with("/tmp/mgmt-root-"),
            "{}",
            first.prefix
        );
        assert_eq!(mode_of(&first.prefix), 0o700);
        // Our own 0700 directory is found again: a cache hit.
        let second = u.ensure(&opts).await.expect("fallback again");
        assert!(second.hit, "{second:?}");
        u.sftp.remove_binary(&second).await.expect("cleanup");
        assert!(!Path::new(&first.prefix).exists());
        u.s.close().await;
    })
    .await;
}

#[tokio::test]
async fn cancelled_upload_leaves_no_partial_file() {
    let fleet = SshdFleet::start(1);
    guard(async {
        let u = Upload::start(&fleet, 4 * 1024 * 1024).await;
        let cancel = tokio_util::sync::CancellationToken::new();
        let c2 = cancel.clone();
        let opts = CacheOptions {
            // ^C arrives after the first chunk.
            progress: Some(std::sync::Arc::new(move |_, _| c2.cancel())),
            cancel: Some(cancel),
            ..Default::default()
        };
        let e = u.ensure(&opts).await.expect_err("cancelled");
        assert!(matches!(e.kind, mgmt::ssh::UploadError::Cancelled), "{e}");
        let left: Vec<_> = std::fs::read_dir(&u.cache_dir).expect("ls").collect();
        assert!(left.is_empty(), "{left:?}");
        u.s.close().await;
    })
    .await;
}
