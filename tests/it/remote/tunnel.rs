//! The reverse tunnel: a remote command reaches a local service through it
//! after presenting the secret it read on stdin, and a connection with a
//! wrong preamble is dropped before it reaches the service.

use std::time::Duration;

use mgmt::ssh::tunnel::{check_preamble, PreambleError, TunnelSecret};
use mgmt::ssh::{shell_join, ExecOptions};

use super::{guard, session};
use crate::util::sshd::SshdFleet;

#[tokio::test]
async fn tunnel_reaches_a_local_echo_and_drops_wrong_preambles() {
    let fleet = SshdFleet::start(1);
    guard(async {
        let s = session(&fleet, 1).await;
        let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let echo_addr = echo.local_addr().expect("addr");
        let echo_task = tokio::spawn(async move {
            while let Ok((mut c, _)) = echo.accept().await {
                let (mut r, mut w) = c.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let secret = TunnelSecret::generate();
        let mut tunnel = s.reverse_tunnel(8).await.expect("forward");
        let port = tunnel.port;
        assert!(port > 0);
        let (verdict_tx, mut verdicts) = tokio::sync::mpsc::channel(4);
        let sec = secret.clone();
        // The caller's side: check the preamble, then bridge to the "store".
        let bridge = tokio::spawn(async move {
            while let Some(inc) = tunnel.accept().await {
                match check_preamble(inc.stream, &sec, Duration::from_secs(5)).await {
                    Ok(mut stream) => {
                        let _ = verdict_tx.send(Ok(())).await;
                        let mut local = tokio::net::TcpStream::connect(echo_addr).await.expect("echo");
                        let _ = tokio::io::copy_bidirectional(&mut stream, &mut local).await;
                    }
                    Err(e) => {
                        let _ = verdict_tx.send(Err(e)).await;
                    }
                }
            }
            tunnel
        });

        // The secret travels on stdin, never on the command line.
        let good = shell_join([
            "bash",
            "-c",
            &format!(
                "read -r s; exec 3<>/dev/tcp/127.0.0.1/{port}; printf %s \"$s\" >&3; \
                 echo hello-through-tunnel >&3; head -n1 <&3"
            ),
        ])
        .expect("quote");
        let opts = ExecOptions {
            stdin: Some(secret.stdin_line()),
            ..Default::default()
        };
        let o = s.exec(&good, opts).await.expect("exec").collect().await;
        assert_eq!(o.stdout, ["hello-through-tunnel"], "{o:?}");
        assert!(matches!(verdicts.recv().await, Some(Ok(()))));

        // Wrong secret: the connection is dropped before reaching the echo.
        let bad = shell_join([
            "bash",
            "-c",
            &format!(
                "exec 3<>/dev/tcp/127.0.0.1/{port}; printf %064d 0 >&3; echo hello >&3; cat <&3; echo closed"
            ),
        ])
        .expect("quote");
        let o = s.exec(&bad, ExecOptions::default()).await.expect("exec").collect().await;
        assert_eq!(o.stdout, ["closed"], "{o:?}");
        assert!(matches!(verdicts.recv().await, Some(Err(PreambleError::Mismatch))));

        echo_task.abort();
        s.close().await;
        // The connection is gone, so accept() ends and the bridge returns.
        let _tunnel = bridge.await.expect("bridge");
    })
    .await;
}
