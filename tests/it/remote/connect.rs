//! Reaching a host: refused and black-holed addresses fail within the
//! connect timeout with a hint, an ssh_config supplies HostName, Port, User
//! and IdentityFile, and an IPv6 literal URL connects.

use std::time::{Duration, Instant};

use mgmt::ssh::auth::AuthMethod;
use mgmt::ssh::target::{SshConfigFile, Target};
use mgmt::ssh::{connect, ConnectError};

use super::{credentials, guard, target};
use crate::util::sshd::{FleetOptions, SshdFleet};

#[tokio::test]
async fn unreachable_fails_within_the_connect_timeout() {
    let fleet = SshdFleet::start(1);
    guard(async {
        let mut settings = fleet.settings();
        settings.connect_timeout = Duration::from_millis(800);
        // Nothing listens on .200 of the fleet's block: refused at once.
        let ip = fleet
            .ip(1)
            .rsplit_once('.')
            .map(|(p, _)| format!("{p}.200"))
            .expect("ip");
        let t = target(&format!("ssh://root@{ip}:{}", fleet.port()));
        let e = connect(&t, &settings).await.expect_err("refused");
        assert!(matches!(e.kind, ConnectError::Tcp(_)), "{e}");
        // A black hole (TEST-NET-1, RFC 5737): fails by the timeout at the
        // latest, or earlier if there is no route.
        let t = target("ssh://root@192.0.2.1:22");
        let start = Instant::now();
        let e = connect(&t, &settings).await.expect_err("unreachable");
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
        assert!(
            matches!(e.kind, ConnectError::Timeout(_) | ConnectError::Tcp(_)),
            "{e}"
        );
        assert!(e.hint().is_some());
    })
    .await;
}

#[tokio::test]
async fn ssh_config_supplies_hostname_port_user_and_key() {
    let fleet = SshdFleet::start(1);
    guard(async {
        let cfg = fleet.dir().join("ssh_config");
        std::fs::write(
            &cfg,
            format!(
                "Host web1\n  HostName {}\n  Port {}\n  User root\n  IdentityFile {}\n",
                fleet.ip(1),
                fleet.port(),
                fleet.client_key.display()
            ),
        )
        .expect("config");
        let config = SshConfigFile::load(&cfg).expect("parse");
        let target = Target::parse("ssh://web1", &config, Some("nobody")).expect("target");
        let mut settings = fleet.settings();
        // No default key files: only the config's IdentityFile can work.
        settings.credentials = credentials(None, fleet.dir().join("absent"));
        let s = connect(&target, &settings)
            .await
            .expect("connect via ssh config");
        assert_eq!(
            s.host().to_string(),
            format!("web1 ({}:{})", fleet.ip(1), fleet.port())
        );
        assert_eq!(s.auth_method, AuthMethod::KeyFile(fleet.client_key.clone()));
        s.close().await;
    })
    .await;
}

#[tokio::test]
async fn ipv6_literal_url() {
    let fleet = SshdFleet::start_with(
        1,
        FleetOptions {
            ipv6: true,
            ..Default::default()
        },
    );
    guard(async {
        let url = format!("ssh://root@[::1]:{}", fleet.port());
        let s = connect(&target(&url), &fleet.settings())
            .await
            .expect("connect over IPv6");
        assert_eq!(s.host().addr, format!("[::1]:{}", fleet.port()));
        assert!(s.run("true").await.expect("run").status.success());
        s.close().await;
    })
    .await;
}
