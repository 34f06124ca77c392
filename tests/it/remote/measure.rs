//! Not tests: measurements for the report, `#[ignore]`d and run by hand with
//! `cargo test --release --test it remote::measure -- --ignored --nocapture`
//! (connect and upload per cipher, the first exec, a 50-host fleet).

use std::time::{Duration, Instant};

use mgmt::ssh::sftp::{sha256_file, Sftp};
use mgmt::ssh::CacheOptions;
use mgmt::ssh::{connect, ExecOptions};

use super::{payload, session};
use crate::util::sshd::SshdFleet;

/// User plus system CPU time of this process so far.
fn cpu_time() -> Duration {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        .expect("getrusage");
    let tv = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
    };
    tv(u.user_time()) + tv(u.system_time())
}

/// Not a test: numbers for the report. Run with
/// `cargo test --release --test it remote::measure -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "measurement, not a check"]
async fn measure_connect_and_upload() {
    use std::borrow::Cow;
    let fleet = SshdFleet::start(1);
    let local = fleet.dir().join("payload");
    payload(&local, 32 * 1024 * 1024, false);
    let hash = sha256_file(&local).await.expect("hash");
    for cipher in [russh::cipher::CHACHA20_POLY1305, russh::cipher::AES_256_GCM] {
        let mut settings = fleet.settings();
        settings.preferred.cipher = Cow::Owned(vec![cipher]);
        let mut connects = Vec::new();
        for _ in 0..10 {
            let t = Instant::now();
            let s = connect(&fleet.target(1), &settings).await.expect("connect");
            connects.push((t.elapsed(), s.timings));
            s.close().await;
        }
        connects.sort_by_key(|c| c.0);
        let (median, timings) = connects[connects.len() / 2];
        let s = connect(&fleet.target(1), &settings).await.expect("connect");
        let t = Instant::now();
        let o = s.run("true").await.expect("exec");
        assert!(o.status.success());
        let mut exec = vec![t.elapsed()];
        for _ in 0..5 {
            let t = Instant::now();
            assert!(s.run("true").await.expect("exec").status.success());
            exec.push(t.elapsed());
        }
        let sftp = Sftp::open(&s).await.expect("sftp");
        let mut rates = Vec::new();
        let cpu0 = cpu_time();
        for _ in 0..3 {
            // Only the binaries: this SFTP session remembers the prefix it
            // checked, as a run's does, and a run never sees it vanish.
            let _ = std::fs::remove_dir_all(fleet.home(1).join(".cache/mgmt/bin"));
            let t = Instant::now();
            let c = sftp
                .ensure_binary(&s, &local, &hash, &CacheOptions::default())
                .await
                .expect("upload");
            rates.push(c.bytes_sent as f64 / 1048576.0 / t.elapsed().as_secs_f64());
        }
        let client_cpu = (cpu_time() - cpu0) / 3;
        let t = Instant::now();
        let hit = sftp
            .ensure_binary(&s, &local, &hash, &CacheOptions::default())
            .await
            .expect("hit");
        assert!(hit.hit);
        let hit_time = t.elapsed();
        let t = Instant::now();
        let o = hit
            .launch(&s, &["x"], ExecOptions::default())
            .await
            .expect("launch")
            .collect()
            .await;
        assert!(o.status.success());
        let launch = t.elapsed();
        eprintln!(
            "{cipher:?}: connect+auth median {median:?} ({timings:?}); exec true {exec:?}; \
             upload 32 MiB: {rates:.0?} MiB/s, client CPU {client_cpu:?} per upload; cache hit check {hit_time:?}; \
             verified launch of the 32 MiB file {launch:?}"
        );
        s.close().await;
    }
}

/// Not a test: where the first exec's time goes.
#[tokio::test]
#[ignore = "measurement, not a check"]
async fn measure_first_exec() {
    let fleet = SshdFleet::start(1);
    for pause in [0u64, 200] {
        let s = session(&fleet, 1).await;
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let t = Instant::now();
        let child = s.exec("true", ExecOptions::default()).await.expect("exec");
        let started = t.elapsed();
        let o = child.collect().await;
        assert!(o.status.success());
        eprintln!(
            "pause {pause} ms: exec request answered after {started:?}, done after {:?}",
            t.elapsed()
        );
        s.close().await;
    }
}

/// Not a test: connect + `true` + close on 50 emulated hosts at once (four
/// sshd processes), the peers benchmark's "true" case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, not a check"]
async fn measure_fleet_true() {
    let n = 50;
    let fleet = SshdFleet::start(n);
    let settings = fleet.settings();
    for round in 0..3 {
        let (t, c) = (Instant::now(), cpu_time());
        let mut set = tokio::task::JoinSet::new();
        for i in 1..=n {
            let (target, st) = (fleet.target(i), settings.clone());
            set.spawn(async move {
                let s = connect(&target, &st).await.expect("connect");
                assert!(s.run("true").await.expect("run").status.success());
                s.close().await;
            });
        }
        while let Some(r) = set.join_next().await {
            r.expect("join");
        }
        eprintln!(
            "round {round}: {n} hosts connect+true in {:?}, client CPU {:?} per host",
            t.elapsed(),
            (cpu_time() - c) / n as u32
        );
    }
}
