//! Remote commands on a session: stdout and stderr streamed line by line in
//! order with the exit status, argument quoting, stdin kept open until
//! closed, kill by the reported pid, and a lost connection ending every
//! child with `ExitStatus::Lost`.

use mgmt::ssh::auth::AuthMethod;
use mgmt::ssh::hostkey::Verdict;
use mgmt::ssh::KillSignal;
use mgmt::ssh::{shell_join, ExecOptions, ExitStatus, OutputLine};

use super::{guard, session, stdin_open_with_pid};
use crate::util::sshd::SshdFleet;

#[tokio::test]
async fn key_file_auth_and_exec_streams_lines_in_order() {
    let fleet = SshdFleet::start(1);
    guard(async {
        let s = session(&fleet, 1).await;
        assert_eq!(s.auth_method, AuthMethod::KeyFile(fleet.client_key.clone()));
        assert_eq!(s.host_key, Verdict::Known);
        eprintln!("connect timings: {:?}", s.timings);
        let cmd = "for i in 1 2 3; do echo out$i; echo err$i >&2; done; printf partial; exit 3";
        let mut child = s.exec(cmd, ExecOptions::default()).await.expect("exec");
        let mut out = Vec::new();
        let mut err = Vec::new();
        while let Some(l) = child.next_line().await {
            match l {
                OutputLine::Stdout(l) => out.push(l),
                OutputLine::Stderr(l) => err.push(l),
            }
        }
        assert_eq!(out, ["out1", "out2", "out3", "partial"]);
        assert_eq!(err, ["err1", "err2", "err3"]);
        assert_eq!(child.wait().await, ExitStatus::Exited(3));

        // Arguments are quoted: nothing is interpreted by the remote shell.
        let line = shell_join(["printf", "%s\\n", "a b", "$(touch pwned)", "it's"]).expect("quote");
        let o = s.run(&line).await.expect("run");
        assert_eq!(o.stdout, ["a b", "$(touch pwned)", "it's"]);
        assert!(!fleet.home(1).join("pwned").exists());
        s.close().await;
    })
    .await;
}

#[tokio::test]
async fn stdin_stays_open_until_closed_and_kill_by_pid() {
    let fleet = SshdFleet::start(1);
    guard(async {
        let s = session(&fleet, 1).await;
        // A child that echoes stdin and exits when it closes.
        let opts = stdin_open_with_pid();
        let mut child = s.exec("cat", opts.clone()).await.expect("cat");
        child.write_stdin(b"ping\n").await.expect("write");
        assert_eq!(
            child.next_line().await,
            Some(OutputLine::Stdout("ping".into()))
        );
        child.close_stdin().await.expect("eof");
        assert_eq!(child.wait().await, ExitStatus::Exited(0));

        // Stopped by its own pid.
        let mut child = s
            .exec("echo started; exec sleep 300", opts)
            .await
            .expect("sleep");
        let pid = child.pid.expect("pid");
        assert_eq!(
            child.next_line().await,
            Some(OutputLine::Stdout("started".into()))
        );
        let o = s.run(&format!("cat /proc/{pid}/comm")).await.expect("comm");
        assert_eq!(o.stdout, ["sleep"]);
        assert!(s.kill(pid, KillSignal::Int).await.expect("kill"));
        let status = child.wait().await;
        assert!(
            matches!(&status, ExitStatus::Signaled { signal, .. } if signal == "INT")
                || status == ExitStatus::Exited(130),
            "{status:?}"
        );
        assert!(!s.kill(pid, KillSignal::Kill).await.expect("kill again"));
        s.close().await;
    })
    .await;
}

#[tokio::test]
async fn lost_connection_ends_children_with_lost_status() {
    let fleet = SshdFleet::start(1);
    guard(async {
        let s = session(&fleet, 1).await;
        let long = s
            .exec("exec sleep 300", stdin_open_with_pid())
            .await
            .expect("sleep");
        let pid = long.pid.expect("pid");
        // The command's parent is this connection's sshd: killing it cuts
        // the link as a network failure would.
        let cut = s
            .exec("kill -KILL $PPID", ExecOptions::default())
            .await
            .expect("cut");
        assert_eq!(cut.wait().await, ExitStatus::Lost);
        assert_eq!(long.wait().await, ExitStatus::Lost);
        assert!(s.run("true").await.is_err());
        // Without a pty nothing signals the orphaned command (the real child
        // watches its stdin); this test started it, so it stops it.
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("orphan still there");
    })
    .await;
}
