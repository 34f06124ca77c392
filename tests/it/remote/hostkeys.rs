//! Host keys against known_hosts: an unknown key is refused with its
//! fingerprint, a changed key names the known_hosts line (even under
//! accept-new), accept-new records a new key, and hashed entries match.

use mgmt::ssh::connect;
use mgmt::ssh::hostkey::{HostKeyError, HostKeyPolicy, Verdict};
use mgmt::ssh::ConnectError;

use super::guard;
use crate::util::sshd::{keygen, SshdFleet};

fn fingerprint_of(pub_line: &str) -> String {
    let b64 = pub_line.split_whitespace().nth(1).expect("key");
    let key = russh::keys::parse_public_key_base64(b64).expect("parse");
    key.fingerprint(russh::keys::HashAlg::Sha256).to_string()
}

#[tokio::test]
async fn unknown_host_key_is_refused_with_fingerprint() {
    let fleet = SshdFleet::start(1);
    guard(async {
        let mut settings = fleet.settings();
        settings.known_hosts.path = fleet.dir().join("empty_known_hosts");
        let e = connect(&fleet.target(1), &settings)
            .await
            .expect_err("unknown key");
        let msg = e.to_string();
        assert!(
            matches!(e.kind, ConnectError::HostKey(HostKeyError::Unknown { .. })),
            "{msg}"
        );
        assert!(msg.contains(&fingerprint_of(&fleet.host_pub)), "{msg}");
        assert!(msg.contains(fleet.ip(1)), "{msg}");
        let hint = e.hint().unwrap_or_default();
        assert!(
            hint.contains(&format!("[{}]:{}", fleet.ip(1), fleet.port())),
            "{hint}"
        );
    })
    .await;
}

#[tokio::test]
async fn changed_host_key_names_the_known_hosts_line() {
    let fleet = SshdFleet::start(1);
    guard(async {
        let other = fleet.dir().join("other_host_key");
        keygen(&other);
        let other_pub = std::fs::read_to_string(other.with_extension("pub")).expect("pub");
        let path = fleet.dir().join("changed_known_hosts");
        std::fs::write(
            &path,
            format!(
                "# managed by hand\n[{}]:{} {other_pub}",
                fleet.ip(1),
                fleet.port()
            ),
        )
        .expect("write");
        let mut settings = fleet.settings();
        settings.known_hosts.path = path.clone();
        settings.known_hosts.policy = HostKeyPolicy::AcceptNew; // never overrides a change
        let e = connect(&fleet.target(1), &settings)
            .await
            .expect_err("changed key");
        let msg = e.to_string();
        assert!(msg.contains(&format!("{}:2", path.display())), "{msg}");
        assert!(msg.contains(&fingerprint_of(&fleet.host_pub)), "{msg}");
        assert!(
            e.hint().unwrap_or_default().contains("ssh-keygen -R"),
            "{:?}",
            e.hint()
        );
    })
    .await;
}

#[tokio::test]
async fn accept_new_records_the_key() {
    let fleet = SshdFleet::start(1);
    guard(async {
        let path = fleet.dir().join("tofu_known_hosts");
        let mut settings = fleet.settings();
        settings.known_hosts.path = path.clone();
        settings.known_hosts.policy = HostKeyPolicy::AcceptNew;
        let s = connect(&fleet.target(1), &settings).await.expect("tofu");
        assert_eq!(s.host_key, Verdict::Learned);
        s.close().await;
        let text = std::fs::read_to_string(&path).expect("recorded");
        assert!(
            text.contains(&format!(
                "[{}]:{} {}",
                fleet.ip(1),
                fleet.port(),
                fleet.host_pub
            )),
            "{text}"
        );
        settings.known_hosts.policy = HostKeyPolicy::Strict;
        let s = connect(&fleet.target(1), &settings)
            .await
            .expect("now known");
        assert_eq!(s.host_key, Verdict::Known);
        s.close().await;
    })
    .await;
}

#[tokio::test]
async fn hashed_known_hosts_entries_are_honoured() {
    let fleet = SshdFleet::start(1);
    guard(async {
        let path = fleet.dir().join("hashed_known_hosts");
        std::fs::copy(&fleet.known_hosts, &path).expect("copy");
        let out = std::process::Command::new("ssh-keygen")
            .arg("-H")
            .arg("-f")
            .arg(&path)
            .output()
            .expect("ssh-keygen -H");
        assert!(out.status.success());
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(
            text.starts_with("|1|") && !text.contains(fleet.ip(1)),
            "{text}"
        );
        let mut settings = fleet.settings();
        settings.known_hosts.path = path;
        let s = connect(&fleet.target(1), &settings)
            .await
            .expect("hashed entry matches");
        assert_eq!(s.host_key, Verdict::Known);
        s.close().await;
    })
    .await;
}
