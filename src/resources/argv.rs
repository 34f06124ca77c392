//! Runs a system tool (`useradd`, `apt-get`, `systemctl`, ...) with an
//! argument vector and collects what it printed, for the kinds that manage
//! the system through its own tools.
//!
//! No value ever passes through a shell: the program gets each argument as
//! one word, so a user name or a package name with a `;` in it is that
//! name, not a command. The tool runs under a [`super::keeper`] like every
//! command mgmt starts: when the check is cancelled (engine stop, resource
//! removed) or mgmt ends, the tool and anything it started are killed.
//! What this does not do: decide what a non-zero exit means, which is each
//! kind's business.

use std::process::Stdio;

use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use super::keeper;
use super::ResourceError;

/// What a finished tool left behind.
#[derive(Debug, Clone)]
pub(crate) struct Ran {
    /// The exit code; -1 when it died of a signal.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn ok(&self) -> bool {
        self.code == 0
    }

    /// The last lines the tool printed (stderr first, else stdout), joined
    /// with `; ` so that an error stays one line.
    pub fn tail(&self) -> String {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let from = lines.len().saturating_sub(6);
        lines[from..].join("; ")
    }
}

/// Runs `program args...` with `env` added to mgmt's environment, stdin
/// closed, until it ends or `cancel` fires (then it is killed, with all it
/// started, and an error says so).
pub(crate) async fn run(
    program: &str,
    args: &[String],
    env: &[(&str, &str)],
    cancel: &CancellationToken,
) -> Result<Ran, ResourceError> {
    let (watch, _stop) =
        keeper::pipe().map_err(|e| ResourceError::io("cannot make a keeper pipe", e))?;
    let fd = watch.raw();
    let mut c = Command::new(program);
    c.args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: `split` only makes raw, async-signal-safe system calls (see
    // keeper.rs) and must be the first pre_exec closure, as it is here.
    unsafe {
        c.pre_exec(move || keeper::split(fd));
    }
    let child = c.spawn();
    // The keeper has its copy; ours would hide mgmt's end from it.
    drop(watch);
    let child = child.map_err(|e| ResourceError::io(format!("cannot start {program}"), e))?;
    let out = tokio::select! {
        _ = cancel.cancelled() => {
            return Err(ResourceError::Failed(format!("stopped while {program} ran")));
        }
        out = child.wait_with_output() => out,
    }
    .map_err(|e| ResourceError::io(format!("cannot wait for {program}"), e))?;
    Ok(Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// `args` as owned words, for [`run`].
pub(crate) fn words<I, S>(args: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    args.into_iter().map(Into::into).collect()
}
