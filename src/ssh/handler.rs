//! The russh client handler of one connection: the host key check, and
//! the channels the server opens towards us (reverse-forwarded connections,
//! agent requests). It runs on russh's own task, so it never waits: a
//! forwarded connection takes a slot in a bounded queue or is refused.
//! What a forwarded connection is bridged to is [`super::tunnel`]'s.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use russh::client::{self, Msg};
use russh::keys::PublicKeyOrCertificate;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::agent_filter;
use super::hostkey::{self, HostKeyError, KnownHosts, Verdict};

/// A forwarded connection (reverse tunnel or agent channel) as a byte stream.
pub type Stream = russh::ChannelStream<Msg>;

/// A connection that arrived through the reverse forward.
pub(crate) struct Forwarded {
    pub(crate) stream: Stream,
    /// `address:port` the remote client connected to.
    pub(crate) connected: String,
    /// `address:port` of the remote client.
    pub(crate) originator: String,
}

/// State shared between a [`Session`](super::session::Session) and its [`ClientHandler`], which russh
/// owns and runs on its own task.
#[derive(Default)]
pub(crate) struct Shared {
    /// The host key outcome, set by `check_server_key` and taken by
    /// `connect` to explain a refusal and to tell a reset before the key
    /// from one after.
    pub(crate) hostkey: Mutex<Option<Result<Verdict, HostKeyError>>>,
    /// The known_hosts line appended for this host under `AcceptNew`, if
    /// one was (a gateway reports it to its parent).
    pub(crate) learned: Mutex<Option<String>>,
    /// Where forwarded-tcpip channels go; set by the tunnel module. `None`
    /// means "reject them".
    pub(crate) forwards: Mutex<Option<mpsc::Sender<Forwarded>>>,
    /// Local agent socket to proxy agent channels to; `None` rejects them.
    pub(crate) agent_socket: Mutex<Option<PathBuf>>,
    /// Bytes this process wrote to the TCP connection, SSH framing and all.
    pub(crate) wire_sent: Arc<std::sync::atomic::AtomicU64>,
    /// Proxy tasks for agent channels; closed and awaited by `Session::close`.
    pub(crate) tasks: TaskTracker,
    /// Cancels the proxy tasks.
    pub(crate) cancel: CancellationToken,
    /// Resolves when russh's session task has ended (its handler dropped),
    /// so every byte it will ever write has been counted.
    pub(crate) ended: Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
}

/// The russh client handler: host key check and channels the server opens.
pub(crate) struct ClientHandler {
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) known: KnownHosts,
    /// Dropped with the handler, when the session task ends.
    pub(super) _ended: tokio::sync::oneshot::Sender<()>,
    pub(super) shared: Arc<Shared>,
}

impl client::Handler for ClientHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let outcome = match server_public_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => {
                hostkey::verify(&self.known, &self.host, self.port, key)
            }
            // We never advertise certificate algorithms, so a server cannot
            // legitimately send one.
            PublicKeyOrCertificate::Certificate(c) => Err(HostKeyError::Unknown {
                fingerprint: c
                    .public_key()
                    .fingerprint(russh::keys::HashAlg::Sha256)
                    .to_string(),
                algorithm: "certificate".into(),
                path: self.known.path.clone(),
                entry: hostkey::entry_name(&self.host, self.port),
            }),
        };
        if let (Ok(Verdict::Learned), PublicKeyOrCertificate::PublicKey { key, .. }) =
            (&outcome, server_public_key)
        {
            *super::lock(&self.shared.learned) = hostkey::known_line(&self.host, self.port, key);
        }
        let ok = outcome.is_ok();
        *super::lock(&self.shared.hostkey) = Some(outcome);
        Ok(ok)
    }

    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: russh::Channel<Msg>,
        connected_address: &str,
        connected_port: u32,
        originator_address: &str,
        originator_port: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        let sender = super::lock(&self.shared.forwards).clone();
        // Never wait inside the handler (it runs the whole connection): take
        // a slot in the bounded queue now or refuse the channel.
        let permit = sender.as_ref().map(|s| s.try_reserve());
        match permit {
            Some(Ok(permit)) => {
                reply.accept().await;
                permit.send(Forwarded {
                    stream: channel.into_stream(),
                    connected: format!("{connected_address}:{connected_port}"),
                    originator: format!("{originator_address}:{originator_port}"),
                });
            }
            Some(Err(_)) => {
                tracing::warn!(host = %self.host, "reverse tunnel queue full; refusing a connection");
                reply
                    .reject(russh::ChannelOpenFailure::ResourceShortage)
                    .await;
            }
            None => {
                reply
                    .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                    .await;
            }
        }
        Ok(())
    }

    async fn server_channel_open_agent_forward(
        &mut self,
        channel: russh::Channel<Msg>,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        let socket = super::lock(&self.shared.agent_socket).clone();
        let Some(socket) = socket else {
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        reply.accept().await;
        let cancel = self.shared.cancel.clone();
        let host = self.host.clone();
        self.shared.tasks.spawn(async move {
            tokio::select! {
                r = proxy_agent(channel.into_stream(), &socket) => {
                    if let Err(e) = r {
                        tracing::debug!(host, error = %e, "agent forwarding channel ended");
                    }
                }
                _ = cancel.cancelled() => {}
            }
        });
        Ok(())
    }
}

async fn proxy_agent(channel: Stream, socket: &Path) -> std::io::Result<()> {
    let agent = tokio::net::UnixStream::connect(socket).await?;
    agent_filter::relay(channel, agent).await
}
