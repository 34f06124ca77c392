//! An ssh-agent served by this process, holding the key files it loaded,
//! so that gateways can authenticate onward while the keys never leave this
//! machine: the gateway's sshd forwards agent requests back over the SSH
//! connection, and only signatures cross it.
//!
//! It is used when the user's own agent is not forwarded (no
//! `SSH_AUTH_SOCK`, or `-i` keys were named). Its socket lives in a private
//! (`0700`) temporary directory, removed when the [`OwnAgent`] is dropped.
//! Encrypted keys are left out: nothing here may wait on the keyboard.

use std::path::{Path, PathBuf};

use russh::keys::agent::client::AgentClient;
use tokio_util::task::AbortOnDropHandle;

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot create a private directory for the agent socket: {0}")]
    Dir(#[source] std::io::Error),
    #[error("cannot listen on {path}: {source}", path = .path.display())]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot load keys into the agent: {0}")]
    Load(#[source] russh::keys::Error),
}

/// A running agent; stops and removes its socket when dropped.
pub struct OwnAgent {
    socket: PathBuf,
    /// How many keys it holds.
    pub keys: usize,
    _dir: tempfile::TempDir,
    _task: AbortOnDropHandle<()>,
}

impl std::fmt::Debug for OwnAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnAgent")
            .field("socket", &self.socket)
            .field("keys", &self.keys)
            .finish()
    }
}

impl OwnAgent {
    /// Starts an agent holding every unencrypted key of `files`.
    pub async fn start(files: &[PathBuf]) -> Result<OwnAgent, AgentError> {
        let dir = tempfile::Builder::new()
            .prefix("mgmt-agent.")
            .tempdir()
            .map_err(AgentError::Dir)?;
        let socket = dir.path().join("agent.sock");
        let listener =
            tokio::net::UnixListener::bind(&socket).map_err(|source| AgentError::Listen {
                path: socket.clone(),
                source,
            })?;
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        let task = tokio::spawn(async move {
            if let Err(e) = russh::keys::agent::server::serve(incoming, ()).await {
                tracing::warn!("agent: {e}");
            }
        });
        let mut client = AgentClient::connect_uds(&socket)
            .await
            .map_err(AgentError::Load)?;
        let mut keys = 0;
        for path in files {
            match russh::keys::load_secret_key(path, None) {
                Ok(key) => {
                    client
                        .add_identity(&key, &[])
                        .await
                        .map_err(AgentError::Load)?;
                    keys += 1;
                }
                Err(e) => tracing::debug!("agent: {} not offered to gateways: {e}", path.display()),
            }
        }
        Ok(OwnAgent {
            socket,
            keys,
            _dir: dir,
            _task: AbortOnDropHandle::new(task),
        })
    }

    /// The socket to proxy forwarded agent channels to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

/// A fresh unencrypted ed25519 key file in `dir`, made by `ssh-keygen`.
#[cfg(test)]
pub(crate) fn keygen(dir: &Path) -> PathBuf {
    let path = dir.join("id_ed25519");
    let made = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&path)
        .status()
        .expect("run ssh-keygen");
    assert!(made.success(), "ssh-keygen failed");
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_the_loaded_keys_and_cleans_up() {
        let d = tempfile::tempdir().unwrap();
        let path = keygen(d.path());
        let key = russh::keys::load_secret_key(&path, None).unwrap();
        let missing = d.path().join("nope");
        let agent = OwnAgent::start(&[path, missing]).await.unwrap();
        assert_eq!(agent.keys, 1);
        let mut c = AgentClient::connect_uds(agent.socket()).await.unwrap();
        let ids = c.request_identities().await.unwrap();
        assert_eq!(ids.len(), 1);
        assert_eq!(ids[0].public_key().key_data(), key.public_key().key_data());
        let sock = agent.socket().to_owned();
        drop(agent);
        assert!(!sock.exists());
    }
}
