//! The agent an emulated gateway's child authenticates onward with: a
//! private Unix socket whose every connection becomes an agent channel to
//! the SSH client (as sshd does for `auth-agent-req@openssh.com`).

use std::path::PathBuf;

/// A socket served until dropped, in a `0700` temporary directory.
pub(crate) struct AgentSocket {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
    _task: super::Abort,
}

impl AgentSocket {
    pub fn serve(handle: russh::server::Handle) -> std::io::Result<AgentSocket> {
        let dir = tempfile::Builder::new()
            .prefix("mgmt-emulate-agent-")
            .tempdir()?;
        let path = dir.path().join("agent.sock");
        let listener = tokio::net::UnixListener::bind(&path)?;
        let task = tokio::spawn(async move {
            while let Ok((mut local, _)) = listener.accept().await {
                let handle = handle.clone();
                tokio::spawn(async move {
                    if let Ok(ch) = handle.channel_open_agent().await {
                        let mut remote = ch.into_stream();
                        let _ = tokio::io::copy_bidirectional(&mut local, &mut remote).await;
                    }
                });
            }
        });
        Ok(AgentSocket {
            path,
            _dir: dir,
            _task: super::Abort(task),
        })
    }
}
