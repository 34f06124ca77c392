//! `mgmt emulate`: one process serving many emulated SSH hosts, so that a
//! run against thousands of hosts can be measured on one machine while the
//! initiator does exactly what it does against real ones.
//!
//! Each host listens on its own loopback address (`--first-address`, then
//! the next ones) with its own ed25519 host key, written to a
//! `known_hosts` file. It speaks real SSH (russh): public-key auth against
//! an `authorized_keys` file, `exec`, SFTP, remote port forwarding and
//! agent forwarding. What it runs is only what `mgmt` sends
//! ([`exec`]); the launch of `mgmt run` becomes the real engine running in
//! this process for that host ([`child`]), with the host's own hostname and
//! file root `<root>/<host>/` ([`files`]), reaching the initiator's store
//! through the real tunnel. Uploads are stored once per content.
//!
//! Counters (connections, bytes in and out, SFTP sessions, children running, converged)
//! are kept per host and written as JSON to `--stats` every second, with,
//! for every host together, the leaf children (`mgmt run --file`) running,
//! the most that ever ran at once, and the hosts in the order their leaf
//! children started (`leaf_children`: what bounds a rolling run, #20).

mod agent;
mod child;
mod exec;
mod files;
mod listen;
mod server;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::keys::PublicKey;
use tokio_util::sync::CancellationToken;

use crate::ssh::lock;

/// How the emulator is set up (`mgmt emulate` flags).
#[derive(Debug, Clone)]
pub struct Options {
    pub hosts: usize,
    pub first: Ipv4Addr,
    pub port: u16,
    /// Every host's files are under `<root>/<host>/`.
    pub root: PathBuf,
    pub authorized_keys: PathBuf,
    /// Written: one line per host key.
    pub known_hosts: PathBuf,
    /// Written: one `ssh://user@addr:port` URL per host.
    pub hosts_file: Option<PathBuf>,
    /// Written every second: counters as JSON.
    pub stats: Option<PathBuf>,
    /// The user named in the URLs of `hosts_file`.
    pub user: String,
    /// One socket on `0.0.0.0:port` for every host (loopback peers only)
    /// instead of one listener per host.
    pub shared_listener: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum EmulateError {
    #[error("--hosts {0}: give between 1 and 1000000 hosts")]
    Count(usize),
    #[error("--first-address {first}: {count} hosts do not fit in 127.0.0.0/8 from there")]
    Range { first: Ipv4Addr, count: usize },
    #[error("--authorized-keys {path}: {reason}")]
    Keys { path: String, reason: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source} (is another emulator running there?)")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{hosts} hosts need {need} open files, and the limit cannot be raised: {reason}")]
    Files {
        hosts: usize,
        need: u64,
        reason: String,
    },
}

fn io_err(
    what: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(std::io::Error) -> EmulateError {
    let path = path.display().to_string();
    move |source| EmulateError::Io { what, path, source }
}

/// A task aborted when dropped.
pub(crate) struct Abort(tokio::task::JoinHandle<()>);

impl Drop for Abort {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What every host shares.
pub(crate) struct Emulator {
    authorized: Vec<PublicKey>,
    blobs: Arc<files::Blobs>,
    pids: AtomicU32,
    ports: AtomicU32,
    /// Leaf children (`mgmt run --file`, not gateways) of every host: seen
    /// from outside the initiator, what a rolling run's cap must bound.
    leaves: LeafCounters,
}

/// How many leaf children run at once, the most that ever did, and the
/// order they started in (by host).
#[derive(Default)]
pub(crate) struct LeafCounters {
    running: AtomicU64,
    max_running: AtomicU64,
    start_order: Mutex<Vec<String>>,
}

impl LeafCounters {
    pub fn started(&self, host: &str) {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(now, Ordering::SeqCst);
        lock(&self.start_order).push(host.to_owned());
    }

    pub fn ended(&self) {
        self.running.fetch_sub(1, Ordering::SeqCst);
    }

    fn stats(&self) -> serde_json::Value {
        serde_json::json!({
            "running": self.running.load(Ordering::SeqCst),
            "max_running": self.max_running.load(Ordering::SeqCst),
            "start_order": *lock(&self.start_order),
        })
    }
}

impl Emulator {
    pub fn leaves(&self) -> &LeafCounters {
        &self.leaves
    }

    /// An emulated pid, unique in this process.
    pub fn next_pid(&self) -> u32 {
        self.pids.fetch_add(1, Ordering::Relaxed)
    }

    /// A forwarded port number, unique in this process (nothing listens on
    /// it: children reach it through [`child`]).
    pub fn next_port(&self) -> u32 {
        10000 + self.ports.fetch_add(1, Ordering::Relaxed) % 50000
    }
}

/// Per-host counters.
#[derive(Default)]
pub(crate) struct Counters {
    pub connections: AtomicU64,
    pub bytes_in: Arc<AtomicU64>,
    pub bytes_out: Arc<AtomicU64>,
    pub auth_refused: AtomicU64,
    pub children_started: AtomicU64,
    /// SFTP sessions opened (the initiator parks its own after set-up).
    pub sftp_sessions: AtomicU64,
}

struct ChildSlot {
    cancel: CancellationToken,
    abort: tokio::task::AbortHandle,
    converged: Arc<AtomicBool>,
}

/// One emulated host.
pub(crate) struct Host {
    pub name: String,
    pub jail: files::Jail,
    pub counters: Counters,
    children: Mutex<HashMap<u32, ChildSlot>>,
}

impl Host {
    pub fn add_child(
        &self,
        pid: u32,
        cancel: CancellationToken,
        abort: tokio::task::AbortHandle,
        converged: Arc<AtomicBool>,
    ) {
        self.counters
            .children_started
            .fetch_add(1, Ordering::Relaxed);
        let slot = ChildSlot {
            cancel,
            abort,
            converged,
        };
        lock(&self.children).insert(pid, slot);
    }

    pub fn remove_child(&self, pid: u32) {
        lock(&self.children).remove(&pid);
    }

    /// SIGINT/SIGTERM (a clean stop) or SIGKILL (abort) to a child by its
    /// emulated pid; false if this host has no such child.
    pub fn signal(&self, pid: u32, hard: bool) -> bool {
        let children = lock(&self.children);
        let Some(slot) = children.get(&pid) else {
            return false;
        };
        match hard {
            true => slot.abort.abort(),
            false => slot.cancel.cancel(),
        }
        true
    }

    fn stop_children(&self) {
        for slot in lock(&self.children).values() {
            slot.cancel.cancel();
        }
    }

    fn stats(&self) -> serde_json::Value {
        let children = lock(&self.children);
        let c = &self.counters;
        serde_json::json!({
            "connections": c.connections.load(Ordering::Relaxed),
            "bytes_in": c.bytes_in.load(Ordering::Relaxed),
            "bytes_out": c.bytes_out.load(Ordering::Relaxed),
            "auth_refused": c.auth_refused.load(Ordering::Relaxed),
            "children_started": c.children_started.load(Ordering::Relaxed),
            "sftp_sessions": c.sftp_sessions.load(Ordering::Relaxed),
            "children_running": children.len(),
            "converged": children.values().filter(|s| s.converged.load(Ordering::Relaxed)).count(),
        })
    }
}

/// Serves the hosts until `cancel`; then stops their children.
pub async fn run(opts: Options, cancel: CancellationToken) -> Result<(), EmulateError> {
    if opts.hosts == 0 || opts.hosts > 1_000_000 {
        return Err(EmulateError::Count(opts.hosts));
    }
    raise_open_files(opts.hosts, !opts.shared_listener)?;
    let addrs = addresses(opts.first, opts.hosts)?;
    std::fs::create_dir_all(&opts.root).map_err(io_err("--root", &opts.root))?;
    let emu = Arc::new(Emulator {
        authorized: read_authorized(&opts.authorized_keys)?,
        blobs: Arc::new(
            files::Blobs::new(opts.root.join(".blobs")).map_err(io_err("--root", &opts.root))?,
        ),
        pids: AtomicU32::new(100_000),
        ports: AtomicU32::new(0),
        leaves: LeafCounters::default(),
    });
    let mut hosts = Vec::with_capacity(addrs.len());
    let mut served = HashMap::with_capacity(addrs.len());
    let mut known = String::new();
    let mut urls = String::new();
    for addr in &addrs {
        let name = addr.to_string();
        let top = opts.root.join(&name);
        let jail = files::Jail::new(top.clone()).map_err(io_err("--root", &top))?;
        let key = host_key();
        let entry = match opts.port {
            22 => name.clone(),
            p => format!("[{name}]:{p}"),
        };
        let public = key.public_key().to_openssh().unwrap_or_default();
        known.push_str(&format!("{entry} {public}\n"));
        urls.push_str(&format!("ssh://{}@{name}:{}\n", opts.user, opts.port));
        let host = Arc::new(Host {
            name,
            jail,
            counters: Counters::default(),
            children: Mutex::new(HashMap::new()),
        });
        let cfg = server_config(key);
        served.insert(
            *addr,
            listen::Served {
                host: host.clone(),
                cfg,
            },
        );
        hosts.push(host);
    }
    let served = Arc::new(served);
    let tasks = bind(&opts, &addrs, &served, &emu, &cancel)?;
    crate::ssh::connect::serve_locally(listen::local_dial(served, emu.clone(), opts.port));
    write_file(&opts.known_hosts, &known, "--known-hosts-out")?;
    if let Some(p) = &opts.hosts_file {
        write_file(p, &urls, "--hosts-out")?;
    }
    // On stderr with the logs; scripts can also wait for the known_hosts
    // file, written once every host listens.
    eprintln!(
        "mgmt emulate: serving {} host(s) on {}..{} port {}; known_hosts: {}",
        hosts.len(),
        addrs[0],
        addrs[addrs.len() - 1],
        opts.port,
        opts.known_hosts.display()
    );
    report(&opts, &emu, &hosts, &cancel).await;
    drop(tasks);
    for h in &hosts {
        h.stop_children();
    }
    wait_children(&hosts).await;
    if let Some(p) = &opts.stats {
        let _ = write_file(p, &stats(&emu, &hosts).to_string(), "--stats");
    }
    Ok(())
}

/// Writes the counters every second until `cancel`.
async fn report(opts: &Options, emu: &Emulator, hosts: &[Arc<Host>], cancel: &CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {
                if let Some(p) = &opts.stats {
                    if let Err(e) = write_file(p, &stats(emu, hosts).to_string(), "--stats") {
                        tracing::warn!("{e}");
                    }
                }
            }
        }
    }
}

async fn wait_children(hosts: &[Arc<Host>]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while hosts.iter().any(|h| !lock(&h.children).is_empty()) {
        if tokio::time::Instant::now() > deadline {
            tracing::warn!("some emulated children did not stop within 10 s");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn stats(emu: &Emulator, hosts: &[Arc<Host>]) -> serde_json::Value {
    let mut per_host = serde_json::Map::new();
    let mut totals: std::collections::BTreeMap<String, u64> = Default::default();
    for h in hosts {
        let s = h.stats();
        for (k, v) in s.as_object().into_iter().flatten() {
            *totals.entry(k.clone()).or_default() += v.as_u64().unwrap_or(0);
        }
        per_host.insert(h.name.clone(), s);
    }
    serde_json::json!({
        "hosts": hosts.len(),
        "totals": totals,
        "per_host": per_host,
        "leaf_children": emu.leaves.stats(),
    })
}

/// Listens for every host, per host or on one shared socket.
fn bind(
    opts: &Options,
    addrs: &[Ipv4Addr],
    served: &Arc<HashMap<Ipv4Addr, listen::Served>>,
    emu: &Arc<Emulator>,
    cancel: &CancellationToken,
) -> Result<Vec<Abort>, EmulateError> {
    let listen = |sock: SocketAddr| {
        let l = std::net::TcpListener::bind(sock)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(tokio::net::TcpListener::from_std);
        l.map_err(|source| EmulateError::Listen { addr: sock, source })
    };
    if opts.shared_listener {
        let l = listen(SocketAddr::from((Ipv4Addr::UNSPECIFIED, opts.port)))?;
        let pick = listen::by_destination(served.clone());
        let task = tokio::spawn(listen::accept(l, emu.clone(), cancel.clone(), pick));
        return Ok(vec![Abort(task)]);
    }
    let mut tasks = Vec::with_capacity(addrs.len());
    for addr in addrs {
        let l = listen(SocketAddr::from((*addr, opts.port)))?;
        let one = served[addr].clone();
        let pick = move |_: &tokio::net::TcpStream, _| Some(one.clone());
        tasks.push(Abort(tokio::spawn(listen::accept(
            l,
            emu.clone(),
            cancel.clone(),
            pick,
        ))));
    }
    Ok(tasks)
}

fn server_config(key: russh::keys::PrivateKey) -> Arc<russh::server::Config> {
    Arc::new(russh::server::Config {
        keys: vec![key],
        // An unknown key is refused at once: nothing here is worth a
        // timing attack, and tests time out otherwise.
        auth_rejection_time: Duration::from_millis(100),
        auth_rejection_time_initial: Some(Duration::ZERO),
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        nodelay: true,
        ..Default::default()
    })
}

fn host_key() -> russh::keys::PrivateKey {
    let mut seed = [0u8; 32];
    rand::fill(&mut seed);
    let pair = russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&seed);
    russh::keys::PrivateKey::from(pair)
}

fn addresses(first: Ipv4Addr, count: usize) -> Result<Vec<Ipv4Addr>, EmulateError> {
    let start = u32::from(first);
    let end = start as u64 + count as u64 - 1;
    let loopback = |a: u64| a >> 24 == 127;
    if !loopback(start as u64)
        || !loopback(end)
        || end >= u32::from(Ipv4Addr::new(127, 255, 255, 255)) as u64
    {
        return Err(EmulateError::Range { first, count });
    }
    Ok((0..count as u32)
        .map(|i| Ipv4Addr::from(start + i))
        .collect())
}

fn read_authorized(path: &std::path::Path) -> Result<Vec<PublicKey>, EmulateError> {
    let bad = |reason: String| EmulateError::Keys {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = PublicKey::from_openssh(line).map_err(|e| {
            bad(format!(
                "line {}: {e} (options before the key are not supported)",
                i + 1
            ))
        })?;
        keys.push(key);
    }
    if keys.is_empty() {
        return Err(bad("no keys in it".into()));
    }
    Ok(keys)
}

fn write_file(path: &std::path::Path, text: &str, what: &'static str) -> Result<(), EmulateError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(io_err(what, path))?;
    std::fs::rename(&tmp, path).map_err(io_err(what, path))
}

/// Each host needs its connection (and a listener of its own unless they
/// share one); say so before starting when the limit cannot be raised.
fn raise_open_files(hosts: usize, listener_each: bool) -> Result<(), EmulateError> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    // A connection per host, and a listener each unless shared.
    let need = hosts as u64 * (1 + u64::from(listener_each)) + 1024;
    let fail = |reason: String| EmulateError::Files {
        hosts,
        need,
        reason,
    };
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| fail(e.to_string()))?;
    if soft >= need {
        return Ok(());
    }
    setrlimit(Resource::RLIMIT_NOFILE, need, hard.max(need)).map_err(|e| {
        fail(format!(
            "{e} (hard limit {hard}; raise it with ulimit -Hn, or use --shared-listener)"
        ))
    })
}

/// Where an emulated command writes its stdout and stderr.
pub(crate) struct Out<'a> {
    pub write: &'a russh::ChannelWriteHalf<russh::server::Msg>,
}

impl Out<'_> {
    pub async fn stdout(&self, text: &str) {
        let _ = self.write.data_bytes(text.as_bytes().to_vec()).await;
    }

    pub async fn stderr(&self, text: &str) {
        let _ = self
            .write
            .extended_data_bytes(1, text.as_bytes().to_vec())
            .await;
    }
}
