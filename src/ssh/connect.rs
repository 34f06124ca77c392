//! Dialling one host: [`connect`] resolves, connects with a timeout,
//! verifies the host key through the client handler, retries a handshake
//! that the server resets before it showed its key (sshd's `MaxStartups`
//! drops connections beyond ~10 pending ones) with a bounded, jittered
//! back-off, then authenticates and returns a [`Session`]. The settings
//! shared by every connection of a run ([`ClientSettings`], the per-address
//! [`Pacer`]) live here too; what a session does once open is
//! [`super::session`]'s.
//!
//! Algorithm choice: key exchange stays russh's default
//! (`mlkem768x25519-sha256` first, then `curve25519-sha256`). The OpenSSH
//! client's expensive default was sntrup761 (~80 ms CPU per connection, see
//! shared/reference/peers-measured.md); russh has no sntrup, and ML-KEM-768
//! is a fast lattice KEM (RustCrypto's ml-kem), so there is no known CPU
//! reason to drop the post-quantum hybrid. Not measured here: OpenSSH 9.2
//! doesn't offer it and negotiates curve25519. Ciphers:
//! `aes256-gcm@openssh.com` is put before `chacha20-poly1305@openssh.com`
//! ([`CIPHERS`]): measured here on a 32 MiB upload it cost 39-50 ms of client
//! CPU against 68-87 ms (then aws-lc's AES-GCM, constant-time, AES-NI), and
//! OpenSSH's side is cheaper with AES-GCM too (peers-measured.md: 0.34 vs
//! 0.45 CPU-s per 100 MiB for sshd). Both are AEADs from OpenSSH's own
//! default list, so nothing weaker is offered; the CTR+ETM modes stay last
//! as in russh's default. The AEADs now come from ring (russh's `ring`
//! backend, smaller than aws-lc, see Cargo.toml): seal+open of 32 KiB
//! packets measured here at ~1.8-3.0 GB/s for AES-256-GCM (aws-lc 1.1-1.3)
//! and ~0.25 GB/s for chacha20-poly1305 (aws-lc ~0.37), so the preferred
//! cipher got faster and the fallback stays far above any link's rate.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use russh::client::{self, Handle};

use super::auth::Credentials;
use super::handler::{ClientHandler, Shared};
use super::hostkey::{HostKeyError, KnownHosts};
use super::session::{ConnectTimings, Session};
use super::target::Target;
use super::{Hint, HostError};

/// Cipher preference, most preferred first (see the module doc).
pub const CIPHERS: &[russh::cipher::Name] = &[
    russh::cipher::AES_256_GCM,
    russh::cipher::CHACHA20_POLY1305,
    russh::cipher::AES_256_CTR,
    russh::cipher::AES_192_CTR,
    russh::cipher::AES_128_CTR,
];

/// Settings shared by every connection of a run.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    /// known_hosts file and policy.
    pub known_hosts: KnownHosts,
    /// Agent, keys, prompting; shared across hosts.
    pub credentials: Credentials,
    /// Bound on TCP connect plus SSH handshake, per attempt.
    pub connect_timeout: Duration,
    /// Bound on authentication when prompting is off.
    pub auth_timeout: Duration,
    /// How many times a handshake reset is retried.
    pub handshake_retries: u32,
    /// First back-off; doubles per retry, with full jitter.
    pub retry_base: Duration,
    /// Keepalive interval; after `keepalive_max` unanswered ones the
    /// connection is closed.
    pub keepalive: Option<Duration>,
    /// See `keepalive`.
    pub keepalive_max: usize,
    /// Algorithm preferences (see the module doc for the choice).
    pub preferred: russh::Preferred,
    /// Caps unauthenticated connections per address (sshd's `MaxStartups`
    /// counts those); `None` means no cap, only the retry.
    pub pacer: Option<Arc<Pacer>>,
}

/// Limits how many connections to one address may be between TCP connect
/// and the end of authentication at once, so that a fleet behind one sshd
/// (a bastion, or the test emulation) is not pushed past `MaxStartups`.
/// Shared by every connect of a run.
#[derive(Debug)]
pub struct Pacer {
    per_addr: usize,
    /// One semaphore per address; std mutex, never held across an await.
    slots: Mutex<std::collections::HashMap<std::net::SocketAddr, Arc<tokio::sync::Semaphore>>>,
}

impl Pacer {
    /// At most `per_addr` (at least 1) pending connections per address.
    /// OpenSSH starts dropping at 10 by default; 8 leaves room for others.
    pub fn new(per_addr: usize) -> Arc<Self> {
        Arc::new(Self {
            per_addr: per_addr.max(1),
            slots: Mutex::new(std::collections::HashMap::new()),
        })
    }

    async fn acquire(
        &self,
        addr: std::net::SocketAddr,
    ) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let sem = {
            let mut slots = super::lock(&self.slots);
            slots
                .entry(addr)
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.per_addr)))
                .clone()
        };
        sem.acquire_owned().await.ok()
    }
}

impl ClientSettings {
    /// Defaults: 10 s connect timeout, 30 s auth timeout, 6 retries from
    /// 50 ms, keepalive every 15 s, 3 missed ones close the connection.
    pub fn new(known_hosts: KnownHosts, credentials: Credentials) -> Self {
        Self {
            known_hosts,
            credentials,
            connect_timeout: Duration::from_secs(10),
            auth_timeout: Duration::from_secs(30),
            handshake_retries: 6,
            retry_base: Duration::from_millis(50),
            keepalive: Some(Duration::from_secs(15)),
            keepalive_max: 3,
            preferred: russh::Preferred {
                cipher: std::borrow::Cow::Borrowed(CIPHERS),
                ..russh::Preferred::default()
            },
            pacer: None,
        }
    }

    fn russh_config(&self) -> client::Config {
        client::Config {
            // What a host may send before we read it (its output, store
            // traffic) is bounded by this window per channel; a slow
            // terminal slows the host down instead of growing memory.
            window_size: CHANNEL_WINDOW,
            nodelay: true,
            keepalive_interval: self.keepalive,
            keepalive_max: self.keepalive_max,
            preferred: self.preferred.clone(),
            ..Default::default()
        }
    }
}

/// The receive window of each channel: the most a host can have in
/// flight towards this process on one channel.
pub const CHANNEL_WINDOW: u32 = 1 << 20;

/// Why a connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The name does not resolve.
    #[error("cannot resolve the host name")]
    Resolve(#[source] std::io::Error),
    /// TCP connect failed (refused, unreachable).
    #[error("cannot connect")]
    Tcp(#[source] std::io::Error),
    /// Nothing happened within the timeout.
    #[error("no ssh handshake within {0:?}")]
    Timeout(Duration),
    /// The server closed or broke the handshake, after retries.
    #[error("ssh handshake failed after {attempts} attempt(s)")]
    Handshake {
        /// Attempts made.
        attempts: u32,
        /// The last error.
        #[source]
        source: russh::Error,
    },
    /// The host key was refused.
    #[error(transparent)]
    HostKey(HostKeyError),
    /// Authentication failed.
    #[error(transparent)]
    Auth(super::auth::AuthError),
    /// Authentication took too long (non-interactive).
    #[error("authentication did not finish within {0:?}")]
    AuthTimeout(Duration),
}

impl Hint for ConnectError {
    fn hint(&self) -> Option<String> {
        match self {
            Self::Resolve(_) => Some("check the host name in the url or ~/.ssh/config".into()),
            Self::Tcp(_) | Self::Timeout(_) => Some(
                "check that the host is up, reachable from here, and that sshd listens on that port"
                    .into(),
            ),
            Self::Handshake { .. } => Some(
                "the server closed the connection during the handshake; if many connections go to \
                 one sshd, raise its MaxStartups or lower --cconns"
                    .into(),
            ),
            Self::HostKey(e) => e.hint(),
            Self::Auth(e) => e.hint(),
            Self::AuthTimeout(_) => Some("check the host's sshd (slow PAM or DNS lookups)".into()),
        }
    }
}

/// Connect to `target`, verify its host key and authenticate.
pub async fn connect(
    target: &Target,
    settings: &ClientSettings,
) -> Result<Session, HostError<ConnectError>> {
    connect_with(target, settings, || {}).await
}

/// [`connect`], calling `authenticating` once the host key is verified and
/// authentication starts (the operator's `authenticating` stage).
pub async fn connect_with(
    target: &Target,
    settings: &ClientSettings,
    authenticating: impl FnOnce(),
) -> Result<Session, HostError<ConnectError>> {
    let id = target.id();
    let err = |kind| HostError::new(&id, kind);
    let config = Arc::new(settings.russh_config());
    let addrs: Vec<std::net::SocketAddr> = tokio::time::timeout(
        settings.connect_timeout,
        tokio::net::lookup_host((target.host.as_str(), target.port)),
    )
    .await
    .map_err(|_| err(ConnectError::Timeout(settings.connect_timeout)))?
    .map_err(|e| err(ConnectError::Resolve(e)))?
    .collect();

    // Held until authentication ends: that is what MaxStartups counts.
    let _slot = match (&settings.pacer, addrs.first()) {
        (Some(p), Some(a)) => p.acquire(*a).await,
        _ => None,
    };
    let mut timings = ConnectTimings::default();
    let mut attempt = 0;
    let (mut handle, shared, host_key) = loop {
        attempt += 1;
        timings.attempts = attempt;
        let shared = Arc::new(Shared::default());
        let (ended_tx, ended_rx) = tokio::sync::oneshot::channel();
        *super::lock(&shared.ended) = Some(ended_rx);
        let handler = ClientHandler {
            host: target.host.clone(),
            port: target.port,
            known: settings.known_hosts.clone(),
            shared: shared.clone(),
            _ended: ended_tx,
        };
        let sent = shared.wire_sent.clone();
        let once = handshake(&addrs, config.clone(), handler, sent, &mut timings);
        let result = match tokio::time::timeout(settings.connect_timeout, once).await {
            Ok(r) => r,
            Err(_) => return Err(err(ConnectError::Timeout(settings.connect_timeout))),
        };
        let outcome = super::lock(&shared.hostkey).take();
        match (result, outcome) {
            (Ok(h), Some(Ok(verdict))) => break (h, shared, verdict),
            (_, Some(Err(hk))) => return Err(err(ConnectError::HostKey(hk))),
            (Err(HandshakeError::Tcp(e)), _) => return Err(err(ConnectError::Tcp(e))),
            (Err(HandshakeError::Ssh(e)), None) if attempt <= settings.handshake_retries => {
                // Reset before the server showed its key: sshd's MaxStartups
                // or a transient failure. Back off with full jitter.
                let cap = settings.retry_base.saturating_mul(1 << attempt.min(10));
                let wait = rand::rng().random_range(Duration::ZERO..=cap);
                tracing::debug!(host = %id, attempt, error = %e, ?wait, "handshake reset; retrying");
                tokio::time::sleep(wait).await;
            }
            (Err(HandshakeError::Ssh(source)), _) => {
                return Err(err(ConnectError::Handshake {
                    attempts: attempt,
                    source,
                }))
            }
            (Ok(_), None) => {
                return Err(err(ConnectError::Handshake {
                    attempts: attempt,
                    source: russh::Error::UnknownKey,
                }))
            }
        }
    };
    authenticating();
    let t = Instant::now();
    let auth = settings.credentials.authenticate(&mut handle, target);
    let auth_method = if settings.credentials.settings().allow_interactive {
        auth.await
    } else {
        tokio::time::timeout(settings.auth_timeout, auth)
            .await
            .map_err(|_| err(ConnectError::AuthTimeout(settings.auth_timeout)))?
    }
    .map_err(|e| err(ConnectError::Auth(e)))?;
    timings.auth = t.elapsed();
    tracing::debug!(host = %id, ?timings, method = ?auth_method, "connected");

    let learned = super::lock(&shared.learned).take();
    Ok(Session {
        handle,
        id,
        target: target.clone(),
        learned,
        shared,
        host_key,
        auth_method,
        timings,
        command_timeout: settings.connect_timeout.max(Duration::from_secs(10)),
        probe: tokio::sync::OnceCell::new(),
    })
}

/// Gives an in-memory stream to a server this process runs itself for
/// that address, or `None` (see [`serve_locally`]).
pub type LocalDial =
    Box<dyn Fn(std::net::SocketAddr) -> Option<crate::link::DialStream> + Send + Sync>;

static LOCAL_DIAL: std::sync::OnceLock<LocalDial> = std::sync::OnceLock::new();

/// Makes connections to the addresses `dial` answers in-memory streams
/// instead of sockets. Only `mgmt emulate` calls it, so that its in-process
/// gateways reach its emulated hosts without two descriptors per
/// connection; a process that never calls it always uses TCP.
pub fn serve_locally(dial: LocalDial) {
    let _ = LOCAL_DIAL.set(dial);
}

async fn open_stream(addrs: &[std::net::SocketAddr]) -> std::io::Result<crate::link::DialStream> {
    if let Some(dial) = LOCAL_DIAL.get() {
        if let Some(s) = addrs.iter().find_map(|a| dial(*a)) {
            return Ok(s);
        }
    }
    let stream = tokio::net::TcpStream::connect(addrs).await?;
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "set_nodelay failed");
    }
    Ok(Box::new(super::tcp::QuickAck::new(stream)))
}

enum HandshakeError {
    Tcp(std::io::Error),
    Ssh(russh::Error),
}

async fn handshake(
    addrs: &[std::net::SocketAddr],
    config: Arc<client::Config>,
    handler: ClientHandler,
    sent: Arc<std::sync::atomic::AtomicU64>,
    timings: &mut ConnectTimings,
) -> Result<Handle<ClientHandler>, HandshakeError> {
    let t = Instant::now();
    let stream = open_stream(addrs).await.map_err(HandshakeError::Tcp)?;
    timings.tcp = t.elapsed();
    let t = Instant::now();
    let stream = super::wire::Counted::new(stream, sent);
    let h = client::connect_stream(config, stream, handler)
        .await
        .map_err(HandshakeError::Ssh)?;
    timings.handshake = t.elapsed();
    Ok(h)
}
