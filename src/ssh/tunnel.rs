//! Reverse TCP forwarding back to the initiator, its secret preamble, and
//! agent forwarding.
//!
//! [`Session::reverse_tunnel`] asks the remote sshd to listen on
//! `127.0.0.1:0` (it picks the port, which is returned) and hands every
//! connection made there to the caller as a [`Stream`] through a bounded
//! queue; when the queue is full the connection is refused rather than
//! stalling the SSH connection. Anyone on the remote host's loopback can
//! connect, so the caller must run each stream through [`check_preamble`]
//! (the child writes the run's [`TunnelSecret`] first) before the bytes
//! reach the store. What the stream is bridged to is the caller's business.
//! (Agent channels the server opens are the handler's: see
//! `Session::set_agent_forwarding`.)

use std::fmt;
use std::time::Duration;

use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use super::handler::{Forwarded, Stream};
use super::session::Session;
use super::{Hint, HostError};

/// Bytes of randomness in a [`TunnelSecret`].
const SECRET_BYTES: usize = 32;
/// Length of the preamble on the wire: the secret in lowercase hex.
pub const PREAMBLE_LEN: usize = SECRET_BYTES * 2;

/// Why the forward could not be set up or torn down.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// sshd refused or the request failed.
    #[error("remote port forwarding on {bind} was refused")]
    Refused {
        /// The address asked for.
        bind: String,
        /// russh's error.
        #[source]
        source: russh::Error,
    },
    /// A forward is already active on this session.
    #[error("a reverse tunnel is already open on this connection")]
    AlreadyOpen,
}

impl Hint for TunnelError {
    fn hint(&self) -> Option<String> {
        match self {
            Self::Refused { .. } => Some(
                "allow it in the host's sshd_config: AllowTcpForwarding yes (or remote)".into(),
            ),
            Self::AlreadyOpen => None,
        }
    }
}

/// An active remote port forward.
pub struct ReverseTunnel {
    /// The port sshd listens on, on the remote host's 127.0.0.1.
    pub port: u16,
    bind: String,
    /// Connections, in arrival order. Sender: the client handler.
    rx: mpsc::Receiver<Forwarded>,
}

impl fmt::Debug for ReverseTunnel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReverseTunnel")
            .field("bind", &self.bind)
            .field("port", &self.port)
            .finish()
    }
}

/// A connection made to the remote end of the tunnel.
pub struct Incoming {
    /// The byte stream; unauthenticated until [`check_preamble`] passes.
    pub stream: Stream,
    /// Who connected, `address:port` on the remote host.
    pub originator: String,
    /// Where they connected, `address:port` on the remote host.
    pub connected: String,
}

impl Session {
    /// Ask the host to listen on `127.0.0.1:<any port>` and forward every
    /// connection back here. `queue` bounds the connections not yet taken
    /// with [`ReverseTunnel::accept`]; beyond it they are refused.
    pub async fn reverse_tunnel(
        &self,
        queue: usize,
    ) -> Result<ReverseTunnel, HostError<TunnelError>> {
        let bind = "127.0.0.1".to_owned();
        let (tx, rx) = mpsc::channel(queue.max(1));
        {
            let mut slot = super::lock(&self.shared.forwards);
            if slot.as_ref().is_some_and(|s| !s.is_closed()) {
                return Err(HostError::new(self.host(), TunnelError::AlreadyOpen));
            }
            *slot = Some(tx);
        }
        match self.handle().tcpip_forward(bind.clone(), 0).await {
            Ok(port) => {
                let port = u16::try_from(port).unwrap_or(0);
                tracing::debug!(host = %self.host(), port, "reverse tunnel open");
                Ok(ReverseTunnel { port, bind, rx })
            }
            Err(source) => {
                *super::lock(&self.shared.forwards) = None;
                Err(HostError::new(
                    self.host(),
                    TunnelError::Refused {
                        bind: format!("{bind}:0"),
                        source,
                    },
                ))
            }
        }
    }
}

impl ReverseTunnel {
    /// The next connection; `None` once the connection to the host is gone.
    pub async fn accept(&mut self) -> Option<Incoming> {
        self.rx.recv().await.map(|f| Incoming {
            stream: f.stream,
            originator: f.originator,
            connected: f.connected,
        })
    }

    /// Stop forwarding: sshd closes its listener; connections not yet
    /// accepted are dropped.
    pub async fn close(self, session: &Session) -> Result<(), HostError<TunnelError>> {
        *super::lock(&session.shared.forwards) = None;
        session
            .handle()
            .cancel_tcpip_forward(self.bind.clone(), u32::from(self.port))
            .await
            .map_err(|source| {
                HostError::new(
                    session.host(),
                    TunnelError::Refused {
                        bind: format!("{}:{}", self.bind, self.port),
                        source,
                    },
                )
            })
    }
}

/// The run's tunnel secret. Handed to each child on stdin; the child writes
/// [`TunnelSecret::preamble`] first on every tunnel connection.
#[derive(Clone)]
pub struct TunnelSecret {
    hex: zeroize::Zeroizing<String>,
}

impl fmt::Debug for TunnelSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TunnelSecret(***)")
    }
}

impl TunnelSecret {
    /// 32 fresh random bytes from the OS generator.
    pub fn generate() -> Self {
        let mut bytes = zeroize::Zeroizing::new([0u8; SECRET_BYTES]);
        rand::fill(&mut bytes[..]);
        Self {
            hex: zeroize::Zeroizing::new(hex::encode(&bytes[..])),
        }
    }

    /// What the child must send first: [`PREAMBLE_LEN`] ASCII hex bytes.
    pub fn preamble(&self) -> &[u8] {
        self.hex.as_bytes()
    }

    /// The secret a gateway got from its parent, handed down unchanged so
    /// that one secret opens every tunnel of the tree.
    pub fn inherited(secret: &crate::link::Secret) -> Self {
        Self {
            hex: zeroize::Zeroizing::new(secret.expose().to_owned()),
        }
    }

    /// The secret as one line for the child's stdin.
    pub fn stdin_line(&self) -> Vec<u8> {
        let mut v = self.hex.as_bytes().to_vec();
        v.push(b'\n');
        v
    }
}

/// Why a tunnel connection was dropped.
#[derive(Debug, thiserror::Error)]
pub enum PreambleError {
    /// The peer did not send the preamble in time.
    #[error("tunnel client sent no preamble within {0:?}; dropped")]
    Timeout(Duration),
    /// The peer closed or the read failed.
    #[error("tunnel client closed before its preamble; dropped")]
    Io(#[source] std::io::Error),
    /// Wrong secret.
    #[error("tunnel client presented a wrong secret; dropped")]
    Mismatch,
}

/// Read the fixed-length preamble from `stream` within `timeout` and compare
/// it with `secret` in constant time. On success the stream is returned
/// positioned after the preamble; on failure it is dropped (closed).
pub async fn check_preamble<S: AsyncRead + Unpin>(
    mut stream: S,
    secret: &TunnelSecret,
    timeout: Duration,
) -> Result<S, PreambleError> {
    let mut got = zeroize::Zeroizing::new([0u8; PREAMBLE_LEN]);
    match tokio::time::timeout(timeout, stream.read_exact(&mut got[..])).await {
        Err(_) => return Err(PreambleError::Timeout(timeout)),
        Ok(Err(e)) => return Err(PreambleError::Io(e)),
        Ok(Ok(_)) => {}
    }
    if bool::from(got[..].ct_eq(secret.preamble())) {
        Ok(stream)
    } else {
        Err(PreambleError::Mismatch)
    }
}

/// A gateway's side of the tunnel chain: every connection its children
/// made (already past [`check_preamble`]) is carried to the gateway's own
/// tunnel (opened by `upstream`), presenting the secret there first,
/// until `cancel`. One task per connection, all stopped on return.
pub async fn relay(
    mut incoming: impl futures::Stream<Item = Stream> + Unpin,
    upstream: crate::link::Dial,
    secret: TunnelSecret,
    cancel: tokio_util::sync::CancellationToken,
) {
    use tokio::io::AsyncWriteExt;
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let mut stream = tokio::select! {
            _ = cancel.cancelled() => break,
            s = futures::StreamExt::next(&mut incoming) => match s {
                Some(s) => s,
                None => break,
            },
        };
        let (upstream, secret) = (upstream.clone(), secret.clone());
        conns.spawn(async move {
            let mut up = match upstream().await {
                Ok(up) => up,
                Err(e) => {
                    return tracing::warn!("tunnel relay: cannot reach the parent's tunnel: {e}")
                }
            };
            if up.write_all(secret.preamble()).await.is_ok() {
                let _ = tokio::io::copy_bidirectional(&mut stream, &mut up).await;
            }
        });
        while conns.try_join_next().is_some() {}
    }
    conns.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn preamble_accepts_the_secret_and_drops_others() {
        let secret = TunnelSecret::generate();
        assert_eq!(secret.preamble().len(), PREAMBLE_LEN);
        assert!(
            !format!("{secret:?}").contains(std::str::from_utf8(secret.preamble()).unwrap_or(""))
        );

        let mut good = secret.preamble().to_vec();
        good.extend_from_slice(b"rest");
        let mut s = check_preamble(&good[..], &secret, Duration::from_secs(1))
            .await
            .expect("accepted");
        let mut rest = String::new();
        s.read_to_string(&mut rest).await.expect("read");
        assert_eq!(rest, "rest");

        let bad = [b'0'; PREAMBLE_LEN];
        let e = check_preamble(&bad[..], &secret, Duration::from_secs(1)).await;
        assert!(matches!(e, Err(PreambleError::Mismatch)));
        let short = b"abc";
        let e = check_preamble(&short[..], &secret, Duration::from_secs(1)).await;
        assert!(matches!(e, Err(PreambleError::Io(_))));
    }

    #[tokio::test]
    async fn silent_client_times_out() {
        // The client never writes, so the only possible outcome is the
        // timeout (tokio's test-util clock is not enabled in this crate).
        let secret = TunnelSecret::generate();
        let (client, server) = tokio::io::duplex(64);
        let e = check_preamble(server, &secret, Duration::from_millis(50)).await;
        assert!(matches!(e, Err(PreambleError::Timeout(_))));
        drop(client);
    }
}
