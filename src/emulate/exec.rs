//! The commands an emulated host runs: exactly those `mgmt` sends, nothing
//! else. The launch of a cached binary (its hash checked first, as the
//! shell would; a warm start's too, which answers the probe on a miss)
//! becomes an in-process child ([`super::child`]); `kill`
//! signals such a child by its emulated pid; `id -u` (and the cache's
//! probe, answered with no codec), `sha256sum -- PATH`
//! and `mv -f -- A B` are answered inside the host's directory. Any other
//! command line fails with exit code 127 and says why on stderr.

use std::sync::Arc;

use russh::server::Msg;
use russh::{ChannelReadHalf, ChannelWriteHalf};

use super::child::{self, ChildCtx};
use super::Out;
use crate::ssh::launch::{CachedBinary, VERIFY_FAILED_EXIT};
use crate::ssh::warm::{WarmSpec, WARM_MISS_EXIT};

/// Runs `line` (an exec request) to its end; returns its exit code.
pub(crate) async fn run(
    ctx: ChildCtx,
    line: &str,
    read: ChannelReadHalf,
    write: Arc<ChannelWriteHalf<Msg>>,
) -> u32 {
    let out = Out { write: &write };
    let (pid, command) = match crate::ssh::child::pid_unwrapped(line) {
        Some(inner) => {
            let pid = ctx.emu.next_pid();
            out.stdout(&format!("{}{pid}\n", crate::ssh::child::PID_MARKER))
                .await;
            (pid, inner)
        }
        None => (ctx.emu.next_pid(), line.to_owned()),
    };
    if let Some((parent, name, spec)) = WarmSpec::parse(&command) {
        return warm(ctx, pid, (&parent, &name), spec, read, write).await;
    }
    if let Some((dir, sha, args)) = CachedBinary::parse_launch(&command) {
        let Some(dir) = ctx.host.jail.resolve(&dir) else {
            out.stderr("mgmt emulate: the cache directory is outside this host\n")
                .await;
            return 126;
        };
        let bin = dir.join("mgmt");
        match ctx.emu.blobs.sha256(&bin) {
            Ok(h) if h == sha => {}
            _ => {
                let msg = format!(
                    "mgmt: {}/mgmt is missing or failed its sha-256 check; not running it\n",
                    dir.display()
                );
                out.stderr(&msg).await;
                return VERIFY_FAILED_EXIT;
            }
        }
        return child::run(ctx.clone(), pid, bin, args, read, write.clone()).await;
    }
    if command == crate::ssh::pack::PROBE_COMMAND {
        // The uid and no codec: an emulated host gets the binary as it is.
        out.stdout(&format!("{}\n", nix::unistd::getuid())).await;
        return 0;
    }
    let Some(words) = shlex::split(&command) else {
        return refuse(&out, &command).await;
    };
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["id", "-u"] => {
            out.stdout(&format!("{}\n", nix::unistd::getuid())).await;
            0
        }
        ["kill", signal, pid] => kill(&ctx, signal, pid),
        ["sha256sum", "--", path] => match ctx.host.jail.resolve(path) {
            Some(p) => match ctx.emu.blobs.sha256(&p) {
                Ok(h) => {
                    out.stdout(&format!("{h}  {path}\n")).await;
                    0
                }
                Err(e) => {
                    out.stderr(&format!("sha256sum: {path}: {e}\n")).await;
                    1
                }
            },
            None => 1,
        },
        ["mv", "-f", "--", from, to] => {
            let (Some(from), Some(to)) = (ctx.host.jail.resolve(from), ctx.host.jail.resolve(to))
            else {
                return 1;
            };
            u32::from(std::fs::rename(from, to).is_err())
        }
        _ => refuse(&out, &command).await,
    }
}

/// A warm start: the child when the binary is in the host's cache with
/// the right hash, else the miss and the probe's answer (no codec).
async fn warm(
    ctx: ChildCtx,
    pid: u32,
    (parent, name): (&str, &str),
    spec: WarmSpec,
    read: ChannelReadHalf,
    write: Arc<ChannelWriteHalf<Msg>>,
) -> u32 {
    let out = Out { write: &write };
    let prefix = ctx.host.jail.resolve(parent).map(|d| d.join(name));
    let bin = prefix
        .as_ref()
        .map(|p| p.join("bin").join(&spec.sha256).join("mgmt"));
    let hit = bin
        .as_ref()
        .is_some_and(|b| ctx.emu.blobs.sha256(b).is_ok_and(|h| h == spec.sha256));
    let (Some(prefix), Some(bin), true) = (prefix, bin, hit) else {
        out.stdout(&format!("mgmt-warm:miss\n{}\n", nix::unistd::getuid()))
            .await;
        return WARM_MISS_EXIT;
    };
    out.stdout(&format!("mgmt-warm:{pid} {}\n", prefix.display()))
        .await;
    let run_dir = prefix.join("run").join(&spec.run_id);
    let mut args = spec.args;
    args.extend([
        "--run-dir".to_owned(),
        run_dir.display().to_string(),
        format!("--graph-stdin={}", spec.graph_len),
    ]);
    child::run(ctx.clone(), pid, bin, args, read, write.clone()).await
}

async fn refuse(out: &Out<'_>, command: &str) -> u32 {
    let shown: String = command.chars().take(200).collect();
    out.stderr(&format!(
        "mgmt emulate: this emulated host runs only the commands mgmt sends \
         (launch of a cached binary, kill, id -u, sha256sum, mv); refused: {shown}\n"
    ))
    .await;
    127
}

/// `kill -INT|-TERM|-KILL PID`: 0 if that child of this host was signalled.
fn kill(ctx: &ChildCtx, signal: &str, pid: &str) -> u32 {
    let Ok(pid) = pid.parse::<u32>() else {
        return 1;
    };
    let hard = match signal {
        "-INT" | "-TERM" => false,
        "-KILL" => true,
        _ => return 1,
    };
    u32::from(!ctx.host.signal(pid, hard))
}
