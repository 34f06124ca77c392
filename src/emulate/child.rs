//! The child an emulated host runs when the initiator launches its cached
//! binary: the real `mgmt run`, in this process, with the host's own
//! hostname and file root. Its stdin is the SSH channel's data (the secret
//! first, then EOF when the parent is gone); its store connections are new
//! forwarded-tcpip channels on the host's SSH connection, so they travel the
//! real tunnel; what it prints goes back on the channel. A gateway child
//! (`--remote`) ships the binary it was launched from and authenticates
//! onward through the agent forwarded on its channel, if any.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use russh::server::Msg;
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Emulator, Host, Out};
use crate::cli::{Cli, Command};
use crate::config::{Config, ConfigError};
use crate::link::{Dial, DialStream, ParentLink};
use crate::ui::Ui;

/// What a command on one SSH connection of one host can reach.
#[derive(Clone)]
pub(crate) struct ChildCtx {
    pub emu: Arc<Emulator>,
    pub host: Arc<Host>,
    pub handle: russh::server::Handle,
    /// Ports the client asked to have forwarded on this connection.
    pub forwards: Arc<Mutex<Vec<u32>>>,
    /// Agent forwarding was asked for on this channel.
    pub agent: bool,
}

/// Runs `mgmt <args>` for the host; returns its exit code.
pub(crate) async fn run(
    ctx: ChildCtx,
    pid: u32,
    bin: PathBuf,
    args: Vec<String>,
    read: ChannelReadHalf,
    write: Arc<ChannelWriteHalf<Msg>>,
) -> u32 {
    let out = Out { write: &write };
    let (stdin_w, stdin_r) = tokio::io::duplex(64 * 1024);
    let pump = super::Abort(tokio::spawn(pump_stdin(read, stdin_w)));
    let link = ParentLink {
        stdin: Box::new(stdin_r),
        dial: None,
        secret: None,
        engine_converged: None,
    };
    let (cfg, mut link) = match config(&ctx, &bin, args, link).await {
        Ok(c) => c,
        Err(msg) => {
            out.stderr(&msg).await;
            return 2;
        }
    };
    let Some(port) = tunnel_port(&cfg) else {
        out.stderr("mgmt emulate: an emulated child needs --seeds http://127.0.0.1:PORT\n")
            .await;
        return 2;
    };
    let gateway = cfg.remote.is_some();
    let mut cfg = cfg;
    let _agent = match gateway {
        true => Some(agent_for(&ctx, &mut cfg).await),
        false => None,
    };
    let (lines_tx, lines_rx) = mpsc::unbounded_channel();
    let forward = tokio::spawn(forward_output(lines_rx, write.clone()));
    let sink = |ext| {
        Box::new(ChanWriter {
            tx: lines_tx.clone(),
            ext,
        }) as Box<dyn Write + Send>
    };
    let ui = match gateway {
        true => Ui::records(sink(0), sink(1)),
        false => Ui::with_writers(sink(0), sink(1)),
    };
    drop(lines_tx);
    let converged = Arc::new(AtomicBool::new(false));
    link.dial = Some(dial(ctx.clone(), port));
    link.engine_converged = Some(converged.clone());
    let cancel = CancellationToken::new();
    let leaf = !gateway;
    if leaf {
        ctx.emu.leaves().started(&ctx.host.name);
    }
    let task = tokio::spawn(crate::run::run_linked(cfg, ui, cancel.clone(), link));
    ctx.host
        .add_child(pid, cancel, task.abort_handle(), converged);
    let code = match task.await {
        Ok(Ok(outcome)) => {
            for f in outcome.failed() {
                out.stderr(&format!("mgmt: failed: {f}\n")).await;
            }
            u32::from(outcome.exit_code())
        }
        Ok(Err(e)) => {
            out.stderr(&format!("mgmt: {e:#}\n")).await;
            1
        }
        Err(e) if e.is_cancelled() => 137,
        Err(_) => 101,
    };
    ctx.host.remove_child(pid);
    if leaf {
        ctx.emu.leaves().ended();
    }
    drop(pump);
    // Everything the child printed goes out before its exit status.
    let _ = tokio::time::timeout(Duration::from_secs(2), forward).await;
    code
}

/// The child's configuration, as `mgmt run` would build it from `args`
/// (a warm start's graph taken from `link`'s stdin first), rooted in the
/// host's directory, and the link; the error text otherwise.
async fn config(
    ctx: &ChildCtx,
    bin: &std::path::Path,
    args: Vec<String>,
    link: ParentLink,
) -> Result<(Config, ParentLink), String> {
    let argv = std::iter::once("mgmt".to_string()).chain(args);
    let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
    let Command::Run(mut run_args) = cli.command else {
        return Err("mgmt emulate: only `mgmt run` runs on an emulated host\n".into());
    };
    if !run_args.remotes.is_empty() {
        // A gateway sends on the binary it was started from.
        run_args.remote_binary = Some(bin.to_path_buf());
    }
    let link = crate::run::graph_from_stdin(&mut run_args, link)
        .await
        .map_err(|e| format!("mgmt: {e}\n"))?;
    let mut cfg = Config::from_args(&run_args).map_err(|e| match e {
        ConfigError::Graph(errors) => errors.0.iter().map(|e| format!("mgmt: {e}\n")).collect(),
        e => format!("mgmt: {e:#}\n"),
    })?;
    cfg.root = ctx.host.jail.top.clone();
    Ok((cfg, link))
}

fn tunnel_port(cfg: &Config) -> Option<u32> {
    let crate::config::StoreMode::External { seeds } = &cfg.store else {
        return None;
    };
    let url = seeds.first()?;
    let addr = url.strip_prefix("http://127.0.0.1:")?;
    addr.trim_end_matches('/').parse().ok()
}

/// Opens a forwarded-tcpip channel to the client for each store
/// connection, as sshd does when a process connects to the forwarded port.
fn dial(ctx: ChildCtx, port: u32) -> Dial {
    Arc::new(move || {
        let ctx = ctx.clone();
        Box::pin(async move {
            if !crate::ssh::lock(&ctx.forwards).contains(&port) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    format!("nothing is forwarded on port {port} of this host"),
                ));
            }
            let from = ctx.emu.next_pid() % 30000 + 30000;
            let ch = ctx
                .handle
                .channel_open_forwarded_tcpip("127.0.0.1", port, "127.0.0.1", from)
                .await
                .map_err(std::io::Error::other)?;
            Ok(Box::new(ch.into_stream()) as DialStream)
        })
    })
}

/// Gives a gateway child the agent forwarded on its channel (served on a
/// private socket), or no agent at all: never this process's own.
async fn agent_for(ctx: &ChildCtx, cfg: &mut Config) -> Option<super::agent::AgentSocket> {
    let socket = match ctx.agent {
        true => super::agent::AgentSocket::serve(ctx.handle.clone()).ok(),
        false => None,
    };
    if let Some(plan) = cfg.remote.as_mut() {
        let path = socket.as_ref().map(|s| s.path.clone());
        plan.settings.credentials =
            crate::ssh::auth::Credentials::new(crate::ssh::auth::AuthSettings {
                agent_socket: path.clone(),
                key_files: Vec::new(),
                allow_interactive: false,
            });
        plan.onward.agent = path;
    }
    socket
}

/// Channel data → the child's stdin; EOF (or the channel gone) closes it.
async fn pump_stdin(mut read: ChannelReadHalf, mut stdin: tokio::io::DuplexStream) {
    while let Some(msg) = read.wait().await {
        match msg {
            ChannelMsg::Data { data } if stdin.write_all(&data).await.is_err() => break,
            ChannelMsg::Eof | ChannelMsg::Close => break,
            _ => {}
        }
    }
    let _ = stdin.shutdown().await;
}

/// A `Write` for the child's UI: bytes go to the channel, stdout (0) or
/// stderr (1), in order.
struct ChanWriter {
    tx: mpsc::UnboundedSender<(u32, Vec<u8>)>,
    ext: u32,
}

impl Write for ChanWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = self.tx.send((self.ext, buf.to_vec()));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes what the child printed to the channel; the SSH window paces it.
async fn forward_output(
    mut rx: mpsc::UnboundedReceiver<(u32, Vec<u8>)>,
    write: Arc<ChannelWriteHalf<Msg>>,
) {
    while let Some((ext, data)) = rx.recv().await {
        let r = match ext {
            0 => write.data_bytes(data).await,
            _ => write.extended_data_bytes(1, data).await,
        };
        if r.is_err() {
            break;
        }
    }
}
