//! The emulated fleet of `util/sshd.rs` behaves like separate machines:
//! each host has its own home (shell and SFTP), and hosts beyond sixteen are
//! served by a further sshd.

use mgmt::ssh::sftp::Sftp;

use super::{guard, session};
use crate::util::sshd::SshdFleet;

#[tokio::test]
async fn each_host_has_its_own_home() {
    let fleet = SshdFleet::start(2);
    guard(async {
        let s1 = session(&fleet, 1).await;
        let s2 = session(&fleet, 2).await;
        let o = s1.run("echo $HOME; pwd").await.expect("run");
        let h1 = fleet.home(1).display().to_string();
        assert_eq!(o.stdout, [h1.clone(), h1]);
        s1.run("echo one > only-on-1").await.expect("write");
        let o = s2
            .run("test -e only-on-1 && echo visible || echo absent")
            .await
            .expect("run");
        assert_eq!(o.stdout, ["absent"]);
        let sftp2 = Sftp::open(&s2).await.expect("sftp");
        assert!(!sftp2.raw().try_exists("only-on-1").await.expect("stat"));
        assert!(fleet.home(1).join("only-on-1").exists());
        s1.close().await;
        s2.close().await;
    })
    .await;
}

#[tokio::test]
async fn more_than_sixteen_hosts_use_several_sshd() {
    // One sshd listens on at most 16 sockets: host 17 is served by a second.
    let fleet = SshdFleet::start(17);
    guard(async {
        for i in [1, 16, 17] {
            let s = session(&fleet, i).await;
            let o = s.run("pwd").await.expect("run");
            assert_eq!(o.stdout, [fleet.home(i).display().to_string()]);
            s.close().await;
        }
    })
    .await;
}
