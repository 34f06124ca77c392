//! An authenticated connection to one host, and the commands it runs.
//!
//! A [`Session`] runs commands ([`Session::exec`]) whose output comes back
//! whole line by whole line ([`super::child`]), can report the remote pid so
//! that the process can be stopped by pid ([`Session::kill`]), and keeps
//! stdin open until the caller closes it. Opening one is [`super::connect`]'s
//! job; SFTP and tunnels live in their own modules; fleets, caps and
//! progress are the caller's.
//!
//! Backpressure: russh 0.65 re-opens a channel's window as soon as data
//! arrives and then awaits room in that channel's 100-message buffer inside
//! the connection's single read loop. A consumer that stops reading one
//! channel (output lines, a tunnel stream, SFTP) therefore stalls the whole
//! connection, tunnel included, until it reads again. Callers must keep
//! draining [`RemoteChild::next_line`] and tunnel streams.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use russh::client::{Handle, Msg};
use russh::Channel;
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::AbortOnDropHandle;

use super::auth::AuthMethod;
use super::child::{pid_wrapped, pump, ExecError, Output, RemoteChild};
use super::handler::{ClientHandler, Shared};
use super::hostkey::Verdict;
use super::target::Target;
use super::{HostError, HostId};

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
    pub(super) handle: Handle<ClientHandler>,
    pub(super) id: HostId,
    pub(super) target: Target,
    pub(crate) shared: Arc<Shared>,
    /// How the host key was accepted.
    pub host_key: Verdict,
    /// The known_hosts line this connection appended (`AcceptNew` only).
    pub learned: Option<String>,
    /// How we got in.
    pub auth_method: AuthMethod,
    /// Where the time went.
    pub timings: ConnectTimings,
    /// Bound used for short helper commands (kill, mkdir...).
    pub(crate) command_timeout: Duration,
    /// The login user's uid on the host (`id -u`) and the codecs it can
    /// decompress, asked once per connection by the cache
    /// ([`super::pack::PROBE_COMMAND`]).
    pub(crate) probe: tokio::sync::OnceCell<super::pack::HostProbe>,
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
        self.exec_on(None, command, opts).await
    }

    /// A session channel for a later [`Session::exec_on`]: opened while
    /// something else is asked (its round trip overlaps).
    pub async fn open_channel(&self) -> Result<Channel<Msg>, HostError<ExecError>> {
        self.handle.channel_open_session().await.map_err(|source| {
            HostError::new(
                &self.id,
                ExecError::Start {
                    what: "session".into(),
                    source,
                },
            )
        })
    }

    /// [`Session::exec`] on `channel` when one was opened already.
    pub async fn exec_on(
        &self,
        channel: Option<Channel<Msg>>,
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
        let channel = match channel {
            Some(c) => c,
            None => self.handle.channel_open_session().await.map_err(start)?,
        };
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
