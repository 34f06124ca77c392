//! Connection pacing and the handshake retry: a handshake sshd drops past
//! `MaxStartups` is retried until it gets through (made certain by holding
//! sshd's only unauthenticated slot), and thirty parallel connects to one
//! sshd with OpenSSH's default `MaxStartups 10:30:100`, paced (`Pacer`),
//! hardly ever need a retry.

use std::time::{Duration, Instant};

use mgmt::ssh::{connect, ConnectError, Pacer};

use super::guard;
use crate::util::eventually;
use crate::util::sshd::{FleetOptions, SshdFleet};

/// One host behind an sshd with OpenSSH's default `MaxStartups`, which drops
/// handshakes beyond ten pending ones.
fn default_max_startups() -> SshdFleet {
    SshdFleet::start_with(
        1,
        FleetOptions {
            max_startups: "10:30:100".into(),
            ..Default::default()
        },
    )
}

/// 30 parallel connects + exec to one sshd with OpenSSH's default
/// `MaxStartups 10:30:100`; returns how many needed a retry.
async fn thirty_parallel(fleet: &SshdFleet, pacer: Option<std::sync::Arc<Pacer>>) -> usize {
    let mut settings = fleet.settings();
    settings.pacer = pacer;
    let target = fleet.target(1);
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..30 {
        let (t, st) = (target.clone(), settings.clone());
        set.spawn(async move {
            let s = connect(&t, &st).await?;
            let o = s.run("echo ok").await.map_err(|e| e.to_string());
            let attempts = s.timings.attempts;
            s.close().await;
            Ok::<_, mgmt::ssh::HostError<ConnectError>>((attempts, o))
        });
    }
    let mut attempts = Vec::new();
    while let Some(r) = set.join_next().await {
        let (a, o) = r.expect("join").unwrap_or_else(|e| panic!("connect: {e}"));
        assert_eq!(o.expect("run").stdout, ["ok"]);
        attempts.push(a);
    }
    let retried = attempts.iter().filter(|a| **a > 1).count();
    eprintln!(
        "30 connects+exec in {:?}; {retried} needed retries; max attempts {:?}",
        start.elapsed(),
        attempts.iter().max()
    );
    retried
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_sshd_drops_is_retried_until_it_gets_through() {
    // `MaxStartups 1`: while one connection is unauthenticated, sshd drops
    // every other one. A raw TCP connection that never speaks holds that
    // slot, so every handshake is dropped, for certain, until it closes.
    let fleet = SshdFleet::start_with(
        1,
        FleetOptions {
            max_startups: "1".into(),
            ..Default::default()
        },
    );
    let addr = format!("{}:{}", fleet.ip(1), fleet.port());
    let held = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("hold the slot");
    let mut settings = fleet.settings();
    settings.handshake_retries = 1_000;
    settings.retry_base = Duration::from_millis(10);
    let target = fleet.target(1);
    let connecting = tokio::spawn(async move { connect(&target, &settings).await });
    // Synchronised on sshd's own word that it dropped one of ours.
    let dropped = tokio::task::spawn_blocking(move || {
        let seen = eventually(Duration::from_secs(60), || {
            fleet.log().contains("past MaxStartups")
        });
        (seen, fleet)
    });
    let (seen, fleet) = guard(dropped).await.expect("join");
    assert!(seen, "sshd never dropped a handshake:\n{}", fleet.log());
    assert!(
        !connecting.is_finished(),
        "connected while the slot was held"
    );
    drop(held);
    let s = guard(connecting)
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("connect: {e}\n{}", fleet.log()));
    assert!(s.timings.attempts >= 2, "{} attempt(s)", s.timings.attempts);
    let out = s.run("echo ok").await.expect("run");
    assert_eq!(out.stdout, ["ok"]);
    s.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_parallel_connects_paced_need_no_retry() {
    let fleet = default_max_startups();
    let retried = guard(thirty_parallel(&fleet, Some(Pacer::new(8)))).await;
    // sshd counts a connection as pending until its main process has read
    // the child's "authenticated" note, a little after the client knows; on
    // a loaded machine that lag lets an odd reset through. Unpaced, about a
    // third of the thirty are reset; paced, at most a stray one or two.
    assert!(retried <= 2, "{retried} of 30 paced connects were reset");
}
