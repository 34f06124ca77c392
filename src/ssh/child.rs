//! A command running on a host: its output split into whole lines (never
//! torn, never longer than [`MAX_LINE`]), its stdin, and how it ended.
//! [`super::session::Session::exec`] starts one; the pump here reads its
//! channel until the channel closes.

use russh::client::Msg;
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::AbortOnDropHandle;

use std::time::Duration;

use super::{shell_quote, Hint};

/// The longest line passed on in one piece; longer output is split at this
/// size so that a remote that never prints a newline cannot grow our memory.
pub const MAX_LINE: usize = 64 * 1024;

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
    pub(super) what: String,
    pub(super) lines: mpsc::Receiver<OutputLine>,
    pub(super) stdin: Option<ChannelWriteHalf<Msg>>,
    pub(super) status: oneshot::Receiver<ExitStatus>,
    /// Reads the channel; aborted if the child is dropped.
    pub(super) _pump: AbortOnDropHandle<()>,
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

/// Reads a channel: splits stdout and stderr into whole lines, picks off the
/// pid line, and reports the exit status when the channel closes.
pub(super) async fn pump(
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
            deliver_line(&lines, &mut deliver, is_err, l).await;
        }
    }
    for (buf, is_err) in [(&mut out, false), (&mut err, true)] {
        if let Some(l) = buf.finish() {
            deliver_line(&lines, &mut deliver, is_err, l).await;
        }
    }
    drop(lines);
    let _ = status_tx.send(status);
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

/// The marker before the pid line of `report_pid`.
pub(crate) const PID_MARKER: &str = "mgmt-pid:";

/// `command` run so that its pid is printed first (`exec` keeps the pid:
/// the one printed is the one that runs the command).
pub(super) fn pid_wrapped(command: &str) -> String {
    format!(
        "echo {PID_MARKER}$$ && exec /bin/sh -c {}",
        shell_quote(command).unwrap_or_default()
    )
}

/// The inverse of [`pid_wrapped`]: the command inside, if `line` is one.
pub(crate) fn pid_unwrapped(line: &str) -> Option<String> {
    let quoted = line.strip_prefix(&format!("echo {PID_MARKER}$$ && exec /bin/sh -c "))?;
    let mut words = shlex::split(quoted)?;
    let command = (words.len() == 1).then(|| words.remove(0))?;
    (pid_wrapped(&command) == line).then_some(command)
}

/// Hands one line to the reader. Once the reader has gone, `deliver` turns
/// false and the pump only drains the channel, for the exit status.
async fn deliver_line(
    lines: &mpsc::Sender<OutputLine>,
    deliver: &mut bool,
    is_err: bool,
    text: String,
) {
    let line = if is_err {
        OutputLine::Stderr(text)
    } else {
        OutputLine::Stdout(text)
    };
    if *deliver && lines.send(line).await.is_err() {
        *deliver = false;
    }
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
