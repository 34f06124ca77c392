//! One SSH connection to one host: [`connect`] and the [`Session`] it returns.
//!
//! `connect` dials with a timeout, verifies the host key through the
//! client handler, retries a handshake that the server resets before it
//! showed its key (sshd's `MaxStartups` drops connections beyond ~10 pending
//! ones) with a bounded, jittered back-off, then authenticates. A [`Session`]
//! runs commands ([`Session::exec`]) whose output comes back whole line by
//! whole line through a bounded channel, can report the remote pid so that
//! the process can be stopped by pid ([`Session::kill`]), and keeps stdin
//! open until the caller closes it. SFTP and tunnels live in their own
//! modules; fleets, caps and progress are the caller's.
//!
//! Backpressure: russh 0.65 re-opens a channel's window as soon as data
//! arrives and then awaits room in that channel's 100-message buffer inside
//! the connection's single read loop. A consumer that stops reading one
//! channel (output lines, a tunnel stream, SFTP) therefore stalls the whole
//! connection, tunnel included, until it reads again. Callers must keep
//! draining [`RemoteChild::next_line`] and tunnel streams.
//!
//! Algorithm choice: key exchange stays russh's default
//! (`mlkem768x25519-sha256` first, then `curve25519-sha256`). The OpenSSH
//! client's expensive default was sntrup761 (~80 ms CPU per connection, see
//! shared/reference/peers-measured.md); russh has no sntrup, and ML-KEM-768
//! is a fast lattice KEM (aws-lc), so there is no known CPU reason to drop
//! the post-quantum hybrid. Not measured here: OpenSSH 9.2 doesn't offer
//! it and negotiates curve25519. Ciphers:
//! `aes256-gcm@openssh.com` is put before `chacha20-poly1305@openssh.com`
//! ([`CIPHERS`]): measured here on a 32 MiB upload it cost 39-50 ms of client
//! CPU against 68-87 ms (aws-lc's AES-GCM, constant-time, AES-NI), and
//! OpenSSH's side is cheaper with AES-GCM too (peers-measured.md: 0.34 vs
//! 0.45 CPU-s per 100 MiB for sshd). Both are AEADs from OpenSSH's own
//! default list, so nothing weaker is offered; the CTR+ETM modes stay last
//! as in russh's default.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use russh::client::{self, Handle, Msg};
use russh::keys::PublicKeyOrCertificate;
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};

use super::auth::{AuthMethod, Credentials};
use super::hostkey::{self, HostKeyError, KnownHosts, Verdict};
use super::target::Target;
use super::{Hint, HostError, HostId};

/// A forwarded connection (reverse tunnel or agent channel) as a byte stream.
pub type Stream = russh::ChannelStream<Msg>;

/// The longest line passed on in one piece; longer output is split at this
/// size so that a remote that never prints a newline cannot grow our memory.
pub const MAX_LINE: usize = 64 * 1024;

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

/// State shared between a [`Session`] and its [`ClientHandler`], which russh
/// owns and runs on its own task.
#[derive(Default)]
pub(crate) struct Shared {
    /// The host key outcome, set by `check_server_key` and taken by
    /// `connect` to explain a refusal and to tell a reset before the key
    /// from one after.
    pub(crate) hostkey: Mutex<Option<Result<Verdict, HostKeyError>>>,
    /// Where forwarded-tcpip channels go; set by the tunnel module. `None`
    /// means "reject them".
    pub(crate) forwards: Mutex<Option<mpsc::Sender<super::tunnel::Forwarded>>>,
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
    host: String,
    port: u16,
    known: KnownHosts,
    /// Dropped with the handler, when the session task ends.
    _ended: tokio::sync::oneshot::Sender<()>,
    shared: Arc<Shared>,
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
                permit.send(super::tunnel::Forwarded {
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
                r = super::tunnel::proxy_agent(channel.into_stream(), &socket) => {
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

/// Timings of a connection, for the summary and benchmarks.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnectTimings {
    /// Handshake attempts made (1 without retries).
    pub attempts: u32,
    /// TCP connect, last attempt.
    pub tcp: Duration,
    /// SSH version exchange + key exchange + host key check, last attempt.
    pub handshake: Duration,
    /// Authentication.
    pub auth: Duration,
}

/// An authenticated SSH connection to one host.
pub struct Session {
    handle: Handle<ClientHandler>,
    id: HostId,
    target: Target,
    pub(crate) shared: Arc<Shared>,
    /// How the host key was accepted.
    pub host_key: Verdict,
    /// How we got in.
    pub auth_method: AuthMethod,
    /// Where the time went.
    pub timings: ConnectTimings,
    /// Bound used for short helper commands (kill, mkdir...).
    pub(crate) command_timeout: Duration,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("host", &self.id)
            .field("user", &self.target.user)
            .field("host_key", &self.host_key)
            .field("auth_method", &self.auth_method)
            .finish()
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

    Ok(Session {
        handle,
        id,
        target: target.clone(),
        shared,
        host_key,
        auth_method,
        timings,
        command_timeout: settings.connect_timeout.max(Duration::from_secs(10)),
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
    Ok(Box::new(stream))
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

/// Which stream a line came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputLine {
    /// A line of standard output, without its newline.
    Stdout(String),
    /// A line of standard error, without its newline.
    Stderr(String),
}

/// How a remote command ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Exited(u32),
    /// It was killed by a signal (e.g. `INT`, `KILL`).
    Signaled {
        /// Signal name without `SIG`.
        signal: String,
        /// Whether it dumped core.
        core_dumped: bool,
    },
    /// The channel closed without a status: the exec was refused or the
    /// connection was lost.
    Lost,
}

impl ExitStatus {
    /// Exited with 0.
    pub fn success(&self) -> bool {
        *self == Self::Exited(0)
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exited(c) => write!(f, "exit code {c}"),
            Self::Signaled { signal, .. } => write!(f, "killed by signal {signal}"),
            Self::Lost => f.write_str("no exit status (connection lost)"),
        }
    }
}

/// Options of [`Session::exec`].
#[derive(Clone, Debug)]
pub struct ExecOptions {
    /// Written to stdin right after start (e.g. the tunnel secret: stdin,
    /// never argv or the environment).
    pub stdin: Option<Vec<u8>>,
    /// Send EOF on stdin right after start (after `stdin`, if any).
    pub close_stdin: bool,
    /// Ask the server to forward our agent to this command (the session must
    /// have agent forwarding enabled, see `Session::enable_agent_forwarding`).
    pub agent_forward: bool,
    /// Print the shell's pid first and `exec` the command in its place, so
    /// that [`RemoteChild::pid`] is the command's pid. Needs a POSIX login
    /// shell on the host.
    pub report_pid: bool,
    /// Capacity of the line channel; a full channel stops reading the
    /// channel, which backs up to the remote process.
    pub queue: usize,
}

impl Default for ExecOptions {
    fn default() -> Self {
        Self {
            stdin: None,
            close_stdin: true,
            agent_forward: false,
            report_pid: false,
            queue: 256,
        }
    }
}

/// Why a command could not be started or driven.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// Opening the channel or sending the exec request failed.
    #[error("cannot start {what:?}")]
    Start {
        /// The program (first word) only, never the arguments.
        what: String,
        /// The channel error.
        #[source]
        source: russh::Error,
    },
    /// An argument contains a NUL byte and cannot be passed to a shell.
    #[error("an argument of {what:?} contains a NUL byte; not running it")]
    BadArgument {
        /// The program.
        what: String,
    },
    /// The command did not print its pid before ending.
    #[error("{what:?} ended before reporting its pid")]
    NoPid {
        /// The program.
        what: String,
    },
    /// Writing to or closing stdin failed (the command has exited?).
    #[error("cannot write to the remote command's stdin")]
    Stdin(#[source] russh::Error),
    /// A helper command did not finish in time.
    #[error("{what:?} did not finish within {after:?}")]
    Timeout {
        /// The program.
        what: String,
        /// The bound.
        after: Duration,
    },
}

impl Hint for ExecError {
    fn hint(&self) -> Option<String> {
        match self {
            Self::Start { .. } | Self::NoPid { .. } => Some(
                "the connection may have dropped, or sshd limits sessions (MaxSessions)".into(),
            ),
            Self::Stdin(_) | Self::BadArgument { .. } => None,
            Self::Timeout { .. } => Some("the host may be overloaded; retry".into()),
        }
    }
}

/// Signals [`Session::kill`] can send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KillSignal {
    /// SIGINT: ask to stop cleanly.
    Int,
    /// SIGTERM.
    Term,
    /// SIGKILL: stop now.
    Kill,
}

impl KillSignal {
    fn flag(self) -> &'static str {
        match self {
            Self::Int => "-INT",
            Self::Term => "-TERM",
            Self::Kill => "-KILL",
        }
    }
}

/// The collected result of a short command.
#[derive(Clone, Debug)]
pub struct Output {
    /// How it ended.
    pub status: ExitStatus,
    /// Stdout lines.
    pub stdout: Vec<String>,
    /// Stderr lines.
    pub stderr: Vec<String>,
}

/// A running remote command.
///
/// Output: [`RemoteChild::next_line`] until `None`, then [`RemoteChild::wait`].
/// Dropping it stops reading but does not stop the remote process: close
/// its stdin or [`Session::kill`] it first. The channel goes when the
/// connection does.
pub struct RemoteChild {
    /// The remote pid, when started with `report_pid`.
    pub pid: Option<u32>,
    what: String,
    lines: mpsc::Receiver<OutputLine>,
    stdin: Option<ChannelWriteHalf<Msg>>,
    status: oneshot::Receiver<ExitStatus>,
    /// Reads the channel; aborted if the child is dropped.
    _pump: AbortOnDropHandle<()>,
}

impl std::fmt::Debug for RemoteChild {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteChild")
            .field("what", &self.what)
            .field("pid", &self.pid)
            .finish()
    }
}

impl RemoteChild {
    /// The next whole line of output, in the order the channel delivered
    /// it; `None` once both streams ended.
    pub async fn next_line(&mut self) -> Option<OutputLine> {
        self.lines.recv().await
    }

    /// Write bytes to the command's stdin.
    pub async fn write_stdin(&mut self, data: &[u8]) -> Result<(), ExecError> {
        match &self.stdin {
            Some(w) => w.data(data).await.map_err(ExecError::Stdin),
            None => Err(ExecError::Stdin(russh::Error::SendError)),
        }
    }

    /// Send EOF on stdin; a child that watches stdin takes this as "stop".
    pub async fn close_stdin(&mut self) -> Result<(), ExecError> {
        match self.stdin.take() {
            Some(w) => w.eof().await.map_err(ExecError::Stdin),
            None => Ok(()),
        }
    }

    /// The exit status, once [`Self::next_line`] has returned `None`
    /// (call it once).
    pub async fn status(&mut self) -> ExitStatus {
        (&mut self.status).await.unwrap_or(ExitStatus::Lost)
    }

    /// Wait for the exit status. Remaining output is discarded.
    pub async fn wait(mut self) -> ExitStatus {
        self.lines.close();
        while self.lines.recv().await.is_some() {}
        self.status.await.unwrap_or(ExitStatus::Lost)
    }

    /// Read all output and the status.
    pub async fn collect(mut self) -> Output {
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        while let Some(l) = self.lines.recv().await {
            match l {
                OutputLine::Stdout(s) => stdout.push(s),
                OutputLine::Stderr(s) => stderr.push(s),
            }
        }
        let status = self.status.await.unwrap_or(ExitStatus::Lost);
        Output {
            status,
            stdout,
            stderr,
        }
    }
}

/// The marker before the pid line of `report_pid`.
pub(crate) const PID_MARKER: &str = "mgmt-pid:";

/// `command` run so that its pid is printed first (`exec` keeps the pid:
/// the one printed is the one that runs the command).
fn pid_wrapped(command: &str) -> String {
    format!(
        "echo {PID_MARKER}$$ && exec /bin/sh -c {}",
        super::shell_quote(command).unwrap_or_default()
    )
}

/// The inverse of [`pid_wrapped`]: the command inside, if `line` is one.
pub(crate) fn pid_unwrapped(line: &str) -> Option<String> {
    let quoted = line.strip_prefix(&format!("echo {PID_MARKER}$$ && exec /bin/sh -c "))?;
    let mut words = shlex::split(quoted)?;
    let command = (words.len() == 1).then(|| words.remove(0))?;
    (pid_wrapped(&command) == line).then_some(command)
}

impl Session {
    /// The host this session is connected to.
    pub fn host(&self) -> &HostId {
        &self.id
    }

    /// A counter of the bytes written to this connection so far (SSH
    /// framing, the binary, graphs, tunnel traffic: everything).
    pub fn wire_sent(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.shared.wire_sent.clone()
    }

    /// The target this session was opened for.
    pub fn target(&self) -> &Target {
        &self.target
    }

    pub(crate) fn handle(&self) -> &Handle<ClientHandler> {
        &self.handle
    }

    /// Proxy agent channels the server opens to the local agent at `socket`
    /// (see [`ExecOptions::agent_forward`]); `None` turns it off.
    pub fn set_agent_forwarding(&self, socket: Option<PathBuf>) {
        *super::lock(&self.shared.agent_socket) = socket;
    }

    /// Start `command` (a shell command line: build it with
    /// [`super::shell_join`] so that every argument is quoted).
    pub async fn exec(
        &self,
        command: &str,
        opts: ExecOptions,
    ) -> Result<RemoteChild, HostError<ExecError>> {
        let what = command.split_whitespace().next().unwrap_or("").to_owned();
        let err = |kind| HostError::new(&self.id, kind);
        let start = |source| {
            err(ExecError::Start {
                what: what.clone(),
                source,
            })
        };
        let channel = self.handle.channel_open_session().await.map_err(start)?;
        if opts.agent_forward {
            channel.agent_forward(false).await.map_err(start)?;
        }
        let line = if opts.report_pid {
            pid_wrapped(command)
        } else {
            command.to_owned()
        };
        channel.exec(true, line).await.map_err(start)?;
        let (read, write) = channel.split();
        let (line_tx, line_rx) = mpsc::channel(opts.queue.max(1));
        let (status_tx, status_rx) = oneshot::channel();
        let (pid_tx, pid_rx) = oneshot::channel();
        let pid_tx = opts.report_pid.then_some(pid_tx);
        let pump = tokio::spawn(pump(read, line_tx, pid_tx, status_tx));
        let mut child = RemoteChild {
            pid: None,
            what: what.clone(),
            lines: line_rx,
            stdin: Some(write),
            status: status_rx,
            _pump: AbortOnDropHandle::new(pump),
        };
        if opts.report_pid {
            match tokio::time::timeout(self.command_timeout, pid_rx).await {
                Ok(Ok(pid)) => child.pid = Some(pid),
                Ok(Err(_)) => return Err(err(ExecError::NoPid { what })),
                Err(_) => {
                    return Err(err(ExecError::Timeout {
                        what,
                        after: self.command_timeout,
                    }))
                }
            }
        }
        if let Some(data) = &opts.stdin {
            child.write_stdin(data).await.map_err(err)?;
        }
        if opts.close_stdin {
            child.close_stdin().await.map_err(err)?;
        }
        Ok(child)
    }

    /// Run a short command to completion, bounded by the session's command
    /// timeout, and collect its output.
    pub async fn run(&self, command: &str) -> Result<Output, HostError<ExecError>> {
        // Opening the channel is bounded too: a connection whose other
        // channels are not being read delivers nothing.
        let run = async {
            let child = self.exec(command, ExecOptions::default()).await?;
            Ok(child.collect().await)
        };
        match tokio::time::timeout(self.command_timeout, run).await {
            Ok(r) => r,
            Err(_) => Err(HostError::new(
                &self.id,
                ExecError::Timeout {
                    what: command.split_whitespace().next().unwrap_or("").to_owned(),
                    after: self.command_timeout,
                },
            )),
        }
    }

    /// Send `signal` to remote process `pid` (from [`RemoteChild::pid`]) with
    /// `kill` in a new channel. Returns whether `kill` succeeded (false: the
    /// process is already gone or not ours). Only call it while the child's
    /// channel is still open: sshd reaps the process when it exits, and a
    /// pid is only ours until then.
    pub async fn kill(&self, pid: u32, signal: KillSignal) -> Result<bool, HostError<ExecError>> {
        let out = self.run(&format!("kill {} {pid}", signal.flag())).await?;
        Ok(out.status.success())
    }

    /// Stop agent proxies and close the connection politely.
    pub async fn close(self) {
        self.shared.cancel.cancel();
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
        if let Err(e) = self
            .handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await
        {
            tracing::debug!(host = %self.id, error = %e, "disconnect");
        }
        // The session task sends its last packets after `disconnect`
        // returns; wait for it so the wire count is final.
        let ended = super::lock(&self.shared.ended).take();
        if let Some(ended) = ended {
            drop(self.handle);
            let _ = tokio::time::timeout(Duration::from_secs(2), ended).await;
        }
    }
}

/// Reads a channel: splits stdout and stderr into whole lines, picks off the
/// pid line, and reports the exit status when the channel closes.
async fn pump(
    mut read: ChannelReadHalf,
    lines: mpsc::Sender<OutputLine>,
    mut pid_tx: Option<oneshot::Sender<u32>>,
    status_tx: oneshot::Sender<ExitStatus>,
) {
    let mut out = LineBuf::default();
    let mut err = LineBuf::default();
    let mut status = ExitStatus::Lost;
    let mut deliver = true;
    while let Some(msg) = read.wait().await {
        let (buf, is_err, data) = match msg {
            ChannelMsg::Data { data } => (&mut out, false, data),
            ChannelMsg::ExtendedData { data, ext: 1 } => (&mut err, true, data),
            ChannelMsg::ExitStatus { exit_status } => {
                status = ExitStatus::Exited(exit_status);
                continue;
            }
            ChannelMsg::ExitSignal {
                signal_name,
                core_dumped,
                ..
            } => {
                status = ExitStatus::Signaled {
                    signal: format!("{signal_name:?}"),
                    core_dumped,
                };
                continue;
            }
            ChannelMsg::Close => break,
            _ => continue,
        };
        for l in buf.push(&data) {
            if !is_err {
                if let Some(tx) = pid_tx.take() {
                    match l
                        .strip_prefix(PID_MARKER)
                        .and_then(|p| p.trim().parse().ok())
                    {
                        Some(pid) => {
                            let _ = tx.send(pid);
                            continue;
                        }
                        None => pid_tx = Some(tx),
                    }
                }
            }
            let line = if is_err {
                OutputLine::Stderr(l)
            } else {
                OutputLine::Stdout(l)
            };
            if deliver && lines.send(line).await.is_err() {
                // The reader went away; keep draining for the status.
                deliver = false;
            }
        }
    }
    for (buf, is_err) in [(&mut out, false), (&mut err, true)] {
        if let Some(l) = buf.finish() {
            let line = if is_err {
                OutputLine::Stderr(l)
            } else {
                OutputLine::Stdout(l)
            };
            if deliver && lines.send(line).await.is_err() {
                deliver = false;
            }
        }
    }
    drop(lines);
    let _ = status_tx.send(status);
}

/// Accumulates bytes and hands out whole lines.
#[derive(Default)]
struct LineBuf {
    buf: Vec<u8>,
}

impl LineBuf {
    /// Add bytes; return the lines they completed (without `\n`, and
    /// without a `\r` before it). A line longer than [`MAX_LINE`] is split.
    fn push(&mut self, data: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        for chunk in data.split_inclusive(|b| *b == b'\n') {
            self.buf.extend_from_slice(chunk);
            if self.buf.last() == Some(&b'\n') {
                self.buf.pop();
                if self.buf.last() == Some(&b'\r') {
                    self.buf.pop();
                }
                lines.push(String::from_utf8_lossy(&self.buf).into_owned());
                self.buf.clear();
            } else {
                while self.buf.len() >= MAX_LINE {
                    let rest = self.buf.split_off(MAX_LINE);
                    lines.push(String::from_utf8_lossy(&self.buf).into_owned());
                    self.buf = rest;
                }
            }
        }
        lines
    }

    /// The partial last line, if any.
    fn finish(&mut self) -> Option<String> {
        if self.buf.is_empty() {
            None
        } else {
            let l = String::from_utf8_lossy(&self.buf).into_owned();
            self.buf.clear();
            Some(l)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pid_wrapper_unwraps_to_the_command_it_wraps() {
        let cmd = "cd '/a b' && exec ./mgmt run 'x'\''y'";
        let line = pid_wrapped(cmd);
        assert_eq!(pid_unwrapped(&line).as_deref(), Some(cmd));
        assert_eq!(
            pid_unwrapped("echo mgmt-pid:$$ && exec /bin/sh -c ls; rm x"),
            None
        );
        assert_eq!(pid_unwrapped("ls"), None);
    }

    #[test]
    fn lines_are_never_torn() {
        let mut b = LineBuf::default();
        assert!(b.push(b"hel").is_empty());
        assert_eq!(b.push(b"lo\nwor"), vec!["hello"]);
        assert_eq!(b.push(b"ld\r\n\nx"), vec!["world", ""]);
        assert_eq!(b.finish().as_deref(), Some("x"));
        assert_eq!(b.finish(), None);
    }

    #[test]
    fn huge_lines_are_split() {
        let mut b = LineBuf::default();
        let lines = b.push(&vec![b'a'; MAX_LINE * 2 + 5]);
        assert_eq!(lines.len(), 2);
        assert_eq!(b.finish().map(|s| s.len()), Some(5));
    }
}
