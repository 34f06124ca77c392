//! Authentication: by agent (and agent forwarding to the remote command),
//! refused wrong or passphrase-protected key files (failing at once with a
//! hint, never a prompt), and a URL password that never shows in errors,
//! hints or logs.

use mgmt::ssh::auth::{AuthMethod, AuthSettings, Credentials};
use mgmt::ssh::{connect, ConnectError, ExecOptions};

use super::{credentials, guard, target};
use crate::util::sshd::{keygen, Agent, SshdFleet};

#[tokio::test]
async fn agent_auth_and_agent_forwarding() {
    let fleet = SshdFleet::start(1);
    let agent = Agent::start(fleet.dir(), &fleet.client_key);
    guard(async {
        let mut settings = fleet.settings();
        settings.credentials =
            credentials(Some(agent.socket.clone()), fleet.dir().join("no-such-key"));
        let s = connect(&fleet.target(1), &settings)
            .await
            .expect("connect via agent");
        assert!(
            matches!(s.auth_method, AuthMethod::Agent(_)),
            "{:?}",
            s.auth_method
        );

        // Forwarded agent: the remote ssh-add sees our key.
        s.set_agent_forwarding(Some(agent.socket.clone()));
        let opts = ExecOptions {
            agent_forward: true,
            ..Default::default()
        };
        let o = s
            .exec("ssh-add -l", opts)
            .await
            .expect("exec")
            .collect()
            .await;
        assert!(o.status.success(), "{o:?}");
        assert!(o.stdout.iter().any(|l| l.contains("mgmt-test")), "{o:?}");
        s.close().await;
    })
    .await;
}

#[tokio::test]
async fn url_password_never_appears_in_errors_or_logs() {
    let fleet = SshdFleet::start(1);
    let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let writer = {
        let logs = logs.clone();
        move || LogWriter(logs.clone())
    };
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(writer)
        .finish();
    let _g = tracing::subscriber::set_default(subscriber);
    guard(async {
        let url = format!("ssh://root:hunter2-s3cret@{}:{}", fleet.ip(1), fleet.port());
        let target = target(&url);
        assert!(!format!("{target:?}").contains("hunter2"));
        let mut settings = fleet.settings();
        settings.credentials = Credentials::new(AuthSettings::default());
        let e = connect(&target, &settings)
            .await
            .expect_err("no valid credential");
        let text = format!("{e} {e:?} {:?}", e.hint());
        assert!(matches!(e.kind, ConnectError::Auth(_)), "{text}");
        assert!(text.contains("the url password"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        // What a caller would log, and a successful connect (key first, the
        // password unused) at trace level.
        tracing::error!(?target, error = %e, "connect failed");
        let s = connect(&target, &fleet.settings()).await.expect("key auth");
        s.close().await;
    })
    .await;
    let logs = String::from_utf8_lossy(&logs.lock().expect("logs")).into_owned();
    assert!(!logs.is_empty());
    assert!(!logs.contains("hunter2"), "{logs}");
    assert!(!fleet.log().contains("hunter2"));
}

#[derive(Clone)]
struct LogWriter(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
impl std::io::Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn wrong_key_fails_auth_with_a_hint() {
    let fleet = SshdFleet::start(1);
    guard(async {
        let wrong = fleet.dir().join("wrong_key");
        keygen(&wrong);
        let mut settings = fleet.settings();
        settings.credentials = credentials(None, wrong.clone());
        let e = connect(&fleet.target(1), &settings)
            .await
            .expect_err("refused");
        let msg = e.to_string();
        assert!(msg.contains("authentication as \"root\" failed"), "{msg}");
        assert!(msg.contains(&wrong.display().to_string()), "{msg}");
        assert!(e.hint().unwrap_or_default().contains("--allow-interactive"));
    })
    .await;
}

#[tokio::test]
async fn encrypted_key_is_skipped_without_prompting() {
    let fleet = SshdFleet::start(1);
    guard(async {
        let key = fleet.dir().join("encrypted_key");
        let out = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "correct horse", "-f"])
            .arg(&key)
            .output()
            .expect("ssh-keygen");
        assert!(out.status.success());
        let mut settings = fleet.settings();
        settings.credentials = credentials(None, key.clone());
        // Nothing reads the terminal: this fails at once with a hint.
        let e = connect(&fleet.target(1), &settings)
            .await
            .expect_err("refused");
        let hint = e.hint().unwrap_or_default();
        assert!(hint.contains(&key.display().to_string()), "{hint}");
        assert!(hint.contains("--allow-interactive"), "{hint}");
    })
    .await;
}
