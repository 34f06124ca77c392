//! A real OpenSSH `sshd` fleet for tests: N emulated hosts on loopback
//! addresses, each with its own home directory, served by ceil(N/16) sshd
//! processes (OpenSSH listens on at most 16 sockets per process).
//!
//! Each fleet takes a random block `127.<a>.<b>.1..N` and a random high port,
//! so parallel tests never collide and no port is found by bind-and-drop.
//! Per-host homes: a `Match LocalAddress` block per address sets `HOME` with
//! `SetEnv` (so the shell reads that home's rc files, not root's) and a
//! `ForceCommand` wrapper that `cd`s there and runs the client's command, or
//! for the sftp subsystem `sftp-server -d <home>`. `SetEnv HOME` alone does
//! not move SFTP: sftp starts in the passwd home, hence `-d`. A host's
//! `<home>/.path`, when a test makes it, comes first on that host's `PATH`
//! (a fake `xz` or `gzip`, say). Readiness is
//! sshd's own "Server listening on" line per address on stderr (`-e`), never
//! a sleep. Dropping the fleet stops every process it started, by pid, and
//! waits for it. Also: [`Agent`], an `ssh-agent -D` child with a key loaded.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use mgmt::ssh::auth::{AuthSettings, Credentials};
use mgmt::ssh::hostkey::{HostKeyPolicy, KnownHosts};
use mgmt::ssh::target::{SshConfigFile, Target};
use mgmt::ssh::ClientSettings;
use rand::Rng;

const SSHD: &str = "/usr/sbin/sshd";
const PER_SSHD: usize = 16;

/// Fleet options.
#[derive(Clone, Debug)]
pub struct FleetOptions {
    /// sshd `MaxStartups`; the default is generous so the fleet emulates
    /// separate machines.
    pub max_startups: String,
    /// Also listen on `[::1]` (host 1's settings apply there).
    pub ipv6: bool,
    /// Root's password on the fleet's hosts: sshd then runs in a mount
    /// namespace of its own whose `/etc/shadow` is a copy with root's hash
    /// replaced (the machine's own file is never touched), and takes
    /// passwords.
    pub root_password: Option<String>,
    /// sshd `LogLevel`: `VERBOSE` adds each connection's client port and
    /// each session's start, for tests that watch the hosts from outside.
    pub log_level: &'static str,
}

impl Default for FleetOptions {
    fn default() -> Self {
        Self {
            max_startups: "200:30:400".into(),
            ipv6: false,
            root_password: None,
            log_level: "INFO",
        }
    }
}

/// A copy of `/etc/shadow` in `dir` whose root line holds `password`'s
/// SHA-512 crypt hash (from `openssl passwd -6`, the password on stdin).
fn shadow_with_root_password(dir: &Path, password: &str) -> PathBuf {
    use std::io::Write;
    let mut c = Command::new("openssl")
        .args(["passwd", "-6", "-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run openssl passwd");
    c.stdin
        .take()
        .expect("stdin")
        .write_all(format!("{password}\n").as_bytes())
        .expect("write the password");
    let out = c.wait_with_output().expect("openssl passwd");
    assert!(out.status.success(), "openssl passwd failed");
    let hash = String::from_utf8(out.stdout)
        .expect("hash")
        .trim()
        .to_owned();
    let shadow = std::fs::read_to_string("/etc/shadow").expect("read /etc/shadow");
    let text: String = shadow
        .lines()
        .map(|l| match l.strip_prefix("root:") {
            Some(rest) => {
                let after = rest.split_once(':').map(|(_, a)| a).unwrap_or("");
                format!("root:{hash}:{after}\n")
            }
            None => format!("{l}\n"),
        })
        .collect();
    let path = dir.join("shadow");
    std::fs::write(&path, text).expect("write the shadow copy");
    path
}

/// A running fleet. Drop stops it.
pub struct SshdFleet {
    dir: tempfile::TempDir,
    ips: Vec<String>,
    port: u16,
    procs: Vec<Sshd>,
    /// Private key authorised on every host.
    pub client_key: PathBuf,
    /// known_hosts with a `[ip]:port` line per host.
    pub known_hosts: PathBuf,
    /// The hosts' public key line (`ssh-ed25519 AAAA...`).
    pub host_pub: String,
}

struct Sshd {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    drain: Option<std::thread::JoinHandle<()>>,
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Make an ed25519 key pair at `path` (and `path.pub`).
pub fn keygen(path: &Path) {
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "mgmt-test", "-f"])
        .arg(path));
}

impl SshdFleet {
    /// Start `n` hosts with default options.
    pub fn start(n: usize) -> Self {
        Self::start_with(n, FleetOptions::default())
    }

    /// Start `n` hosts.
    pub fn start_with(n: usize, opts: FleetOptions) -> Self {
        assert!((1..=254).contains(&n), "1..=254 hosts per fleet");
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} not found: install openssh-server (apt-get install -y openssh-server)"
        );
        // The privilege separation directory; a system sshd would create it.
        if !Path::new("/run/sshd").exists() {
            std::fs::create_dir_all("/run/sshd").expect("create /run/sshd");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let host_key = d.join("host_key");
        keygen(&host_key);
        let client_key = d.join("id_ed25519");
        keygen(&client_key);
        std::fs::copy(d.join("id_ed25519.pub"), d.join("authorized_keys"))
            .expect("authorized_keys");
        let host_pub = std::fs::read_to_string(d.join("host_key.pub")).expect("host pub");
        let host_pub: String = host_pub
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");

        let force = d.join("force.sh");
        std::fs::write(
            &force,
            "#!/bin/sh\n\
             # ForceCommand wrapper: run the client's command in this host's home.\n\
             cd \"$1\" || exit 1\n\
             export HOME=\"$1\"\n\
             # A test puts tools of its own first on this host's PATH here.\n\
             if [ -d \"$1/.path\" ]; then PATH=\"$1/.path:$PATH\"; export PATH; fi\n\
             case \"$SSH_ORIGINAL_COMMAND\" in\n\
             internal-sftp) exec /usr/lib/openssh/sftp-server -d \"$1\" ;;\n\
             '') exec /bin/sh -l ;;\n\
             *) exec /bin/sh -c \"$SSH_ORIGINAL_COMMAND\" ;;\n\
             esac\n",
        )
        .expect("force.sh");
        std::fs::set_permissions(&force, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");

        let mut rng = rand::rng();
        let a: u8 = rng.random_range(2..=250);
        let b: u8 = rng.random_range(0..=255);
        let port: u16 = rng.random_range(20000..=60999);
        let ips: Vec<String> = (1..=n).map(|x| format!("127.{a}.{b}.{x}")).collect();

        let mut known = String::new();
        for ip in &ips {
            known.push_str(&format!("[{ip}]:{port} {host_pub}\n"));
        }
        if opts.ipv6 {
            known.push_str(&format!("[::1]:{port} {host_pub}\n"));
        }
        let known_hosts = d.join("known_hosts");
        std::fs::write(&known_hosts, known).expect("known_hosts");

        let mut fleet = Self {
            dir,
            ips: ips.clone(),
            port,
            procs: Vec::new(),
            client_key,
            known_hosts,
            host_pub,
        };
        for (k, chunk) in ips.chunks(PER_SSHD).enumerate() {
            let mut listen = chunk.to_vec();
            if k == 0 && opts.ipv6 {
                listen.push("::1".into());
            }
            let proc = fleet.spawn_sshd(k, &listen, &opts);
            fleet.procs.push(proc);
        }
        fleet
    }

    fn spawn_sshd(&self, k: usize, ips: &[String], opts: &FleetOptions) -> Sshd {
        let d = self.dir.path();
        let mut cfg = String::new();
        for ip in ips {
            if ip.contains(':') {
                cfg.push_str(&format!("ListenAddress [{ip}]:{}\n", self.port));
            } else {
                cfg.push_str(&format!("ListenAddress {ip}:{}\n", self.port));
            }
        }
        cfg.push_str(&format!(
            "HostKey {d}/host_key\n\
             AuthorizedKeysFile {d}/authorized_keys\n\
             PidFile none\n\
             StrictModes no\n\
             UsePAM no\n\
             PermitRootLogin yes\n\
             KbdInteractiveAuthentication no\n\
             PasswordAuthentication {pw}\n\
             MaxStartups {ms}\n\
             MaxSessions 50\n\
             AllowTcpForwarding yes\n\
             AllowAgentForwarding yes\n\
             Subsystem sftp internal-sftp\n\
             LogLevel {ll}\n",
            ll = opts.log_level,
            d = d.display(),
            ms = opts.max_startups,
            pw = if opts.root_password.is_some() {
                "yes"
            } else {
                "no"
            },
        ));
        for ip in ips.iter().filter(|ip| !ip.contains(':')) {
            let x = ip.rsplit('.').next().unwrap_or("0");
            let home = d.join(format!("home-{x}"));
            std::fs::create_dir_all(&home).expect("home");
            cfg.push_str(&format!(
                "Match LocalAddress {ip}\n  SetEnv HOME={h}\n  ForceCommand {d}/force.sh {h}\n",
                h = home.display(),
                d = d.display()
            ));
        }
        let path = d.join(format!("sshd_config.{k}"));
        std::fs::write(&path, cfg).expect("sshd_config");

        let mut cmd = match &opts.root_password {
            None => Command::new(SSHD),
            Some(pw) => {
                // unshare without --fork: the pid stays sshd's (sh execs it).
                let shadow = shadow_with_root_password(d, pw);
                let mut c = Command::new("unshare");
                c.args(["--mount", "--propagation", "private", "sh", "-c"])
                    .arg("mount --bind \"$0\" /etc/shadow && exec \"$@\"")
                    .arg(&shadow)
                    .arg(SSHD);
                c
            }
        };
        let mut child = cmd
            .args(["-D", "-e", "-f"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sshd");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel::<String>();
        let log2 = log.clone();
        // Drains stderr for the whole life of sshd (a full pipe would block
        // it) and reports each line until the owner stops listening.
        let drain = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = ready_tx.send(line.clone());
                log2.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        let mut waiting: HashSet<String> = ips
            .iter()
            .map(|ip| format!("Server listening on {ip} port {}.", self.port))
            .collect();
        let mut proc = Sshd {
            child,
            log,
            drain: Some(drain),
        };
        while !waiting.is_empty() {
            // The timeout only guards against a hang; readiness is the line.
            match ready_rx.recv_timeout(Duration::from_secs(20)) {
                Ok(line) => {
                    waiting.remove(line.trim());
                }
                Err(_) => {
                    let log = proc.log.lock().map(|l| l.join("\n")).unwrap_or_default();
                    proc.stop();
                    panic!("sshd {k} did not start listening; its log:\n{log}");
                }
            }
        }
        proc
    }

    /// IP of host `i` (1-based).
    pub fn ip(&self, i: usize) -> &str {
        &self.ips[i - 1]
    }

    /// The fleet's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `ssh://root@ip:port` for host `i`.
    pub fn url(&self, i: usize) -> String {
        format!("ssh://root@{}:{}", self.ip(i), self.port)
    }

    /// Parsed target for host `i`.
    pub fn target(&self, i: usize) -> Target {
        Target::parse(&self.url(i), &SshConfigFile::none(), Some("root")).expect("target")
    }

    /// Home directory of host `i` on this machine.
    pub fn home(&self, i: usize) -> PathBuf {
        let x = self.ip(i).rsplit('.').next().unwrap_or("0").to_owned();
        self.dir.path().join(format!("home-{x}"))
    }

    /// Scratch directory of the fleet (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Strict known_hosts, the fleet's client key, no agent, no prompts,
    /// short timeouts.
    pub fn settings(&self) -> ClientSettings {
        let creds = Credentials::new(AuthSettings {
            agent_socket: None,
            key_files: vec![self.client_key.clone()],
            allow_interactive: false,
        });
        let mut s = ClientSettings::new(
            KnownHosts {
                path: self.known_hosts.clone(),
                policy: HostKeyPolicy::Strict,
            },
            creds,
        );
        s.connect_timeout = Duration::from_secs(10);
        s
    }

    /// Removes host `i`'s line from the fleet's `known_hosts` (its key is
    /// then unknown to a client) and returns it.
    pub fn forget_host_key(&self, i: usize) -> String {
        let entry = format!("[{}]:", self.ip(i));
        let original = std::fs::read_to_string(&self.known_hosts).expect("known_hosts");
        let (gone, kept): (Vec<&str>, Vec<&str>) =
            original.lines().partition(|l| l.starts_with(&entry));
        let kept: String = kept.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&self.known_hosts, kept).expect("write known_hosts");
        gone.first().expect("the host's line").to_string()
    }

    /// Asserts that host `i`'s line, `forgotten` by [`Self::forget_host_key`]
    /// when `known_hosts` read `before`, was learned again: once, with the
    /// same key (the comment aside), after the lines that were there.
    pub fn assert_learned_again(&self, i: usize, forgotten: &str, before: &str) {
        let entry = format!("[{}]:", self.ip(i));
        let after = std::fs::read_to_string(&self.known_hosts).expect("known_hosts");
        let learned: Vec<&str> = after.lines().filter(|l| l.starts_with(&entry)).collect();
        assert_eq!(learned.len(), 1, "{after}");
        let key = |l: &str| l.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
        assert_eq!(key(learned[0]), key(forgotten), "{after}");
        assert!(after.starts_with(before), "earlier lines changed:\n{after}");
    }

    /// Everything the sshd processes logged so far.
    pub fn log(&self) -> String {
        self.procs
            .iter()
            .map(|p| p.log.lock().map(|l| l.join("\n")).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Sshd {
    /// Stop the listening sshd by pid and wait for it. The stderr drain
    /// thread is not joined: per-connection sshd processes (which `setsid`
    /// and hold the pipe) end only when their client closes its TCP
    /// connection, which may be this very test's runtime, blocked here in
    /// `drop`. The thread ends on its own when the last of them exits.
    fn stop(&mut self) {
        stop_child(&mut self.child);
        drop(self.drain.take());
    }
}

/// SIGTERM by pid, then wait (SIGKILL if it does not go).
fn stop_child(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let _ = child.wait();
}

impl Drop for SshdFleet {
    fn drop(&mut self) {
        for p in &mut self.procs {
            p.stop();
        }
    }
}

/// An `ssh-agent -D` child holding one key. Drop stops it by pid.
pub struct Agent {
    child: Child,
    /// The agent socket.
    pub socket: PathBuf,
}

impl Agent {
    /// Start an agent with its socket in `dir` and add `key`.
    pub fn start(dir: &Path, key: &Path) -> Self {
        let socket = dir.join("agent.sock");
        let mut child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ssh-agent (install openssh-client)");
        // ssh-agent prints its environment lines once the socket is bound.
        let stdout = child.stdout.take().expect("stdout");
        let mut first = String::new();
        BufReader::new(stdout)
            .read_line(&mut first)
            .expect("agent output");
        assert!(
            first.contains("SSH_AUTH_SOCK"),
            "unexpected ssh-agent output: {first}"
        );
        let agent = Self { child, socket };
        run(Command::new("ssh-add")
            .arg("-q")
            .arg(key)
            .env("SSH_AUTH_SOCK", &agent.socket));
        agent
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}
