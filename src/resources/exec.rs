//! `exec`: runs a shell command, on the first apply, on a refresh, and on
//! every line its `watchcmd` prints; `ifcmd` gates it on every check.
//!
//! Every command runs under a [`super::keeper`] of its own: when the command
//! ends, when it is stopped (engine stop, `timeout`, resource removed), and
//! when mgmt itself ends in any way, SIGKILL included, everything the command
//! started is killed, its process group and whatever left that group. Its
//! output goes to the log, line by line, under the resource's id.
//!
//! The one exception is asked for by name: `detach: true` runs `cmd` (not
//! `ifcmd` or `watchcmd`) without a keeper, so a daemon it starts outlives
//! the run, as one started by a service manager would. mgmt then waits for
//! `cmd` itself to exit, not for the end of its output (which the daemon
//! may have inherited).

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_yaml_ng::{Mapping, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::keeper::{self, Stop};
use super::{
    bool_field, int_field, str_field, Checked, Ctx, EventTx, FieldError, FieldSpec, FieldType,
    KindSpec, Resource, ResourceError,
};

pub static SPEC: KindSpec = KindSpec {
    kind: "exec",
    fields: &[
        FieldSpec {
            name: "cmd",
            ty: FieldType::Str,
            required: true,
            doc: "the command, run with the shell",
        },
        FieldSpec {
            name: "shell",
            ty: FieldType::Str,
            required: false,
            doc: "the shell that runs cmd, ifcmd and watchcmd (default /bin/sh)",
        },
        FieldSpec {
            name: "ifcmd",
            ty: FieldType::Str,
            required: false,
            doc: "run cmd only when this exits 0 (checked every time)",
        },
        FieldSpec {
            name: "timeout",
            ty: FieldType::Int,
            required: false,
            doc: "seconds before cmd is killed and the resource fails",
        },
        FieldSpec {
            name: "watchcmd",
            ty: FieldType::Str,
            required: false,
            doc: "long-running command; every line it prints triggers a new run",
        },
        FieldSpec {
            name: "detach",
            ty: FieldType::Bool,
            required: false,
            doc: "cmd starts a daemon meant to outlive the run: what cmd leaves running is \
                  not killed (where no service manager is; prefer svc)",
        },
    ],
    sends: &[],
    receives: &["cmd", "shell", "ifcmd", "timeout"],
    build,
    group: None,
};

struct Exec {
    cmd: String,
    shell: String,
    ifcmd: Option<String>,
    timeout: Option<Duration>,
    watchcmd: Option<String>,
    /// `cmd` runs without a keeper (see the module docs).
    detach: bool,
    /// Set by the watchcmd watcher for every line: run again.
    pending: Arc<AtomicBool>,
    /// `cmd` ran successfully since the last trigger.
    done: bool,
}

fn build(_name: &str, params: &Mapping) -> Result<Box<dyn Resource>, FieldError> {
    let cmd = str_field(params, "cmd").unwrap_or_default();
    if cmd.trim().is_empty() {
        return Err(FieldError::new("cmd", "cmd must not be empty"));
    }
    let timeout = match int_field(params, "timeout") {
        None => None,
        Some(t) if t > 0 => Some(Duration::from_secs(t as u64)),
        Some(t) => {
            return Err(FieldError::new(
                "timeout",
                format!("timeout must be a positive number of seconds, not {t}"),
            ))
        }
    };
    Ok(Box::new(Exec {
        cmd,
        shell: str_field(params, "shell").unwrap_or_else(|| "/bin/sh".into()),
        ifcmd: str_field(params, "ifcmd"),
        timeout,
        watchcmd: str_field(params, "watchcmd"),
        detach: bool_field(params, "detach").unwrap_or(false),
        pending: Arc::new(AtomicBool::new(false)),
        done: false,
    }))
}

/// Starts `cmd` with `shell` under a keeper; dropping the [`Stop`] kills
/// it and everything it started. No `kill_on_drop`: a SIGKILL of the keeper
/// would orphan the command's children instead of killing them; a dropped
/// child is reaped by tokio in the background once its keeper exits.
fn start(shell: &str, cmd: &str, stderr: Stdio) -> std::io::Result<(Child, Stop)> {
    let (watch, stop) = keeper::pipe()?;
    let fd = watch.raw();
    let mut c = command(shell, cmd, stderr);
    // SAFETY: `split` is written for this place (raw system calls only,
    // see keeper.rs) and touches no memory shared with the parent. It runs
    // before `restore_thp`, so the keeper keeps mgmt's setting and only
    // the command gets the system's.
    unsafe {
        c.pre_exec(move || keeper::split(fd));
    }
    restore_thp(&mut c);
    let child = c.spawn();
    // The keeper has its copy; ours would hide mgmt's end from it.
    drop(watch);
    Ok((child?, stop))
}

/// `shell -c cmd` in a process group of its own, its output piped: what
/// [`start`] builds on, and, with [`restore_thp`], what `detach: true` runs
/// as it is, without a keeper.
fn command(shell: &str, cmd: &str, stderr: Stdio) -> Command {
    let mut c = Command::new(shell);
    c.arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        // A group of its own, out of reach of a terminal's ^C.
        .process_group(0);
    c
}

/// mgmt itself runs with transparent huge pages off (see main.rs); the
/// operator's command gets the system's default back, right before exec.
fn restore_thp(c: &mut Command) {
    // SAFETY: one prctl(2) call, async-signal-safe, touching no memory
    // shared with the parent.
    unsafe {
        c.pre_exec(|| {
            let _ = nix::sys::prctl::set_thp_disable(false);
            Ok(())
        });
    }
}

/// How long the output of a `detach: true` command is still read after the
/// command exited: a daemon that kept the pipe open never closes it.
const DETACHED_OUTPUT_GRACE: Duration = Duration::from_millis(500);

/// Runs `cmd`, logging its output under `id`; Ok(exit code).
/// With `detach`, no keeper: it waits for the command's own exit and reads
/// its output only a little longer ([`DETACHED_OUTPUT_GRACE`]).
async fn run_logged(
    shell: &str,
    cmd: &str,
    id: &str,
    timeout: Option<Duration>,
    detach: bool,
) -> Result<i32, ResourceError> {
    let started = if detach {
        let mut c = command(shell, cmd, Stdio::piped());
        restore_thp(&mut c);
        c.spawn().map(|c| (c, None))
    } else {
        start(shell, cmd, Stdio::piped()).map(|(c, s)| (c, Some(s)))
    };
    let (mut child, _stop) =
        started.map_err(|e| ResourceError::io(format!("cannot start {shell}"), e))?;
    let out = child
        .stdout
        .take()
        .map(|s| log_lines(BufReader::new(s), id.to_owned(), false));
    let err = child
        .stderr
        .take()
        .map(|s| log_lines(BufReader::new(s), id.to_owned(), true));
    let wait = async {
        if detach {
            let output = async { tokio::join!(opt(out), opt(err)) };
            tokio::pin!(output);
            return tokio::select! {
                status = child.wait() => {
                    let _ = tokio::time::timeout(DETACHED_OUTPUT_GRACE, output).await;
                    status
                }
                _ = &mut output => child.wait().await,
            };
        }
        let (_, _, status) = tokio::join!(opt(out), opt(err), child.wait());
        status
    };
    let status = match timeout {
        Some(t) => tokio::time::timeout(t, wait).await.map_err(|_| {
            ResourceError::Failed(format!("command timed out after {}s: {cmd}", t.as_secs()))
        })?,
        None => wait.await,
    }
    .map_err(|e| ResourceError::io("cannot wait for the command", e))?;
    Ok(status.code().unwrap_or(-1))
}

async fn opt<F: std::future::Future<Output = ()>>(f: Option<F>) {
    if let Some(f) = f {
        f.await
    }
}

async fn log_lines<R: tokio::io::AsyncBufRead + Unpin>(r: R, id: String, stderr: bool) {
    let mut lines = r.lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if stderr {
            tracing::warn!("{id}: {line}");
        } else {
            tracing::info!("{id}: {line}");
        }
    }
}

#[async_trait::async_trait]
impl Resource for Exec {
    async fn check_apply(&mut self, ctx: &Ctx) -> Result<Checked, ResourceError> {
        let triggered = self.pending.swap(false, Ordering::SeqCst);
        if self.done && !ctx.refresh && !triggered {
            return Ok(Checked::Ok);
        }
        if let Some(ifcmd) = &self.ifcmd {
            let code = run_logged(&self.shell, ifcmd, &ctx.id, self.timeout, false).await?;
            if code != 0 {
                tracing::debug!("{}: ifcmd exited {code}, not running cmd", ctx.id);
                return Ok(Checked::Ok);
            }
        }
        if ctx.noop {
            tracing::info!("{}: would run: {}", ctx.id, self.cmd);
            return Ok(Checked::Changed);
        }
        tracing::info!("{}: running: {}", ctx.id, self.cmd);
        let code = run_logged(&self.shell, &self.cmd, &ctx.id, self.timeout, self.detach).await?;
        if code != 0 {
            return Err(ResourceError::Failed(format!(
                "command exited with code {code}: {}",
                self.cmd
            )));
        }
        // Without ifcmd, a success settles it until the next trigger; with
        // ifcmd, the gate decides on every check.
        self.done = self.ifcmd.is_none();
        Ok(Checked::Changed)
    }

    fn watcher(
        &self,
        _root: &std::path::Path,
        events: EventTx,
    ) -> Option<futures::future::BoxFuture<'static, Result<(), ResourceError>>> {
        let watchcmd = self.watchcmd.clone()?;
        let shell = self.shell.clone();
        let pending = self.pending.clone();
        Some(Box::pin(async move {
            let (mut child, _stop) = start(&shell, &watchcmd, Stdio::null())
                .map_err(|e| ResourceError::io(format!("cannot start watchcmd {watchcmd:?}"), e))?;
            let stdout = child
                .stdout
                .take()
                .ok_or_else(|| ResourceError::Failed("watchcmd has no stdout".into()))?;
            let mut lines = BufReader::new(stdout).lines();
            while let Some(_line) = lines
                .next_line()
                .await
                .map_err(|e| ResourceError::io("cannot read watchcmd output", e))?
            {
                pending.store(true, Ordering::SeqCst);
                let _ = events.try_send(());
            }
            let status = child
                .wait()
                .await
                .map_err(|e| ResourceError::io("cannot wait for watchcmd", e))?;
            Err(ResourceError::Failed(format!(
                "watchcmd ended ({status}): {watchcmd}"
            )))
        }))
    }

    fn get_field(&self, field: &str) -> Option<Value> {
        let s = |v: &Option<String>| v.clone().map(Value::String);
        match field {
            "cmd" => Some(Value::String(self.cmd.clone())),
            "shell" => Some(Value::String(self.shell.clone())),
            "ifcmd" => s(&self.ifcmd),
            "watchcmd" => s(&self.watchcmd),
            "detach" => Some(Value::Bool(self.detach)),
            "timeout" => self.timeout.map(|t| Value::from(t.as_secs())),
            _ => None,
        }
    }

    fn set_field(&mut self, field: &str, value: Value) -> Result<(), FieldError> {
        match (field, value) {
            ("cmd", Value::String(v)) => self.cmd = v,
            ("ifcmd", Value::String(v)) => self.ifcmd = Some(v),
            ("shell", Value::String(v)) => self.shell = v,
            ("timeout", v) => match v.as_u64() {
                Some(t) if t > 0 => self.timeout = Some(Duration::from_secs(t)),
                _ => {
                    return Err(FieldError::new(
                        "timeout",
                        format!("received timeout {v:?} is not a positive number of seconds"),
                    ))
                }
            },
            _ => {
                return Err(FieldError {
                    field: None,
                    message: format!("exec cannot receive {field}"),
                })
            }
        }
        self.done = false;
        Ok(())
    }
}
