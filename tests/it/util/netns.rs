//! Separate machines on one: hosts in network and mount namespaces of their
//! own, on a private LAN, each with a real sshd on port 22.
//!
//! Each host has its own address (`10.<a>.<b>.11`, `.12`, ...), a default
//! route, its own `/etc` (a copy of this machine's), its own empty
//! `/var/lib`, `/tmp` and `/root` (tmpfs), and `/var/lib/dpkg` bound back
//! read-only, so the host knows what is installed but cannot change it. The
//! LAN is a bridge in one more namespace, the "laptop", whose address is
//! `.1`: the initiator and every client of the hosts run there
//! ([`NsLan::in_laptop`]), so this machine's own network is never touched.
//!
//! A namespace is held by a `sleep` that `unshare` execs (no fork, so the
//! holder's pid is the child's). [`NsLan::stop`] kills every process found
//! in each namespace by pid (whatever a graph started there included) and
//! says which ones it had to kill; dropping the LAN does the same.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::Rng;

use super::sshd::keygen;

/// A process that holds namespaces open, and the namespace it is in.
struct Holder {
    child: Child,
    /// `/proc/<pid>/ns/net` as read through the link (`net:[4026...]`).
    net: String,
}

impl Holder {
    fn spawn(unshare: &[&str]) -> Self {
        let child = Command::new("unshare")
            .args(unshare)
            .args(["sleep", "infinity"])
            .stdin(Stdio::null())
            .spawn()
            .expect("start unshare");
        let pid = child.id();
        let mut holder = Self {
            child,
            net: String::new(),
        };
        // unshare has entered its namespaces once it has exec'd sleep.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| !p.ends_with("sleep"))
            .unwrap_or(true)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "unshare never ran sleep"
            );
            std::thread::yield_now();
        }
        holder.net = net_of(pid as i32).expect("the holder's network namespace");
        holder
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// Every process in this network namespace but the holder.
    fn others(&self) -> Vec<i32> {
        let me = self.child.id() as i32;
        pids()
            .into_iter()
            .filter(|&p| p != me && net_of(p).as_deref() == Some(self.net.as_str()))
            .collect()
    }

    /// Kills every other process in the namespace, round after round until
    /// none is left, then the holder; the pids it had to kill.
    fn stop(&mut self) -> Vec<i32> {
        let mut killed = Vec::new();
        for _ in 0..100 {
            let rest = self.others();
            if rest.is_empty() {
                break;
            }
            for p in rest {
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
                if !killed.contains(&p) {
                    killed.push(p);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        killed
    }
}

/// The command lines of `pids`, but sshd's and those of processes already
/// exiting (an empty command line).
fn not_sshd(pids: Vec<i32>) -> Vec<String> {
    pids.into_iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/cmdline")).ok())
        .map(|c| c.replace('\0', " ").trim().to_owned())
        .filter(|c| !c.is_empty() && !c.starts_with("/usr/sbin/sshd") && !c.starts_with("sshd:"))
        .collect()
}

fn pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The network namespace of a live (not zombie) process.
fn net_of(pid: i32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    let link = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
    Some(link.to_string_lossy().into_owned())
}

/// Runs `args` inside the namespaces `flags` of `holder`; panics on failure.
fn ns_run(holder: &Holder, flags: &[&str], args: &[&str]) {
    let out = Command::new("nsenter")
        .args(["-t", &holder.pid()])
        .args(flags)
        .arg("--")
        .args(args)
        .output()
        .expect("run nsenter");
    assert!(
        out.status.success(),
        "{args:?} in namespace {} failed: {}",
        holder.net,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `c` (its program, arguments, environment and directory) run in
/// `holder`'s namespaces `flags`, through `nsenter` (which execs it: no
/// fork, so a pid taken of the child is the command's).
fn nsenter(holder: &Holder, flags: &[&str], c: &Command) -> Command {
    let mut n = Command::new("nsenter");
    n.args(["-t", &holder.pid()])
        .args(flags)
        .arg("--")
        .arg(c.get_program())
        .args(c.get_args())
        .stdin(Stdio::null());
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => n.env(k, v),
            None => n.env_remove(k),
        };
    }
    if let Some(dir) = c.get_current_dir() {
        n.current_dir(dir);
    }
    n
}

/// One host: its namespaces, its address, its sshd.
struct NsHost {
    holder: Holder,
    ip: String,
    sshd: Option<Child>,
}

/// A private LAN of hosts in namespaces. Drop stops everything in it.
pub struct NsLan {
    dir: tempfile::TempDir,
    /// The LAN's first three octets (`10.<a>.<b>`).
    net: String,
    laptop: Holder,
    hosts: Vec<NsHost>,
    /// Private key authorised for root on every host.
    pub client_key: std::path::PathBuf,
    /// known_hosts with one line per host address (port 22).
    pub known_hosts: std::path::PathBuf,
}

/// What each host's mount namespace gets, `$0` being the host's scratch
/// directory (bound at `/mnt`, where its sshd finds its files).
const MOUNTS: &str = "set -e
mount --bind \"$0\" /mnt
mount --bind /var/lib/dpkg /mnt/dpkg
mount --bind /mnt/etc /etc
mount -t tmpfs -o mode=0755 tmpfs /var/lib
mkdir /var/lib/dpkg
mount --bind /mnt/dpkg /var/lib/dpkg
mount -o remount,bind,ro /var/lib/dpkg
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=0700 tmpfs /root";

impl NsLan {
    /// Starts `n` hosts (1..=200) and their sshd, each listening once this
    /// returns.
    pub fn start(n: usize) -> Self {
        assert!((1..=200).contains(&n), "1..=200 hosts");
        std::fs::create_dir_all("/run/sshd").expect("create /run/sshd");
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        keygen(&d.join("host_key"));
        let client_key = d.join("id_ed25519");
        keygen(&client_key);
        let host_pub = std::fs::read_to_string(d.join("host_key.pub")).expect("host key");
        let host_pub: Vec<&str> = host_pub.split_whitespace().take(2).collect();

        let mut rng = rand::rng();
        let net = format!(
            "10.{}.{}",
            rng.random_range(16..=250u8),
            rng.random_range(0..=255u8)
        );
        let laptop = Holder::spawn(&["--net"]);
        ns_run(&laptop, &["-n"], &["ip", "link", "set", "lo", "up"]);
        ns_run(
            &laptop,
            &["-n"],
            &["ip", "link", "add", "br0", "type", "bridge"],
        );
        ns_run(
            &laptop,
            &["-n"],
            &["ip", "addr", "add", &format!("{net}.1/24"), "dev", "br0"],
        );
        ns_run(&laptop, &["-n"], &["ip", "link", "set", "br0", "up"]);

        let mut lan = Self {
            known_hosts: d.join("known_hosts"),
            client_key,
            laptop,
            hosts: Vec::new(),
            dir,
            net: net.clone(),
        };
        let mut known = String::new();
        for i in 1..=n {
            let ip = format!("{net}.{}", 10 + i);
            known.push_str(&format!("{ip} {}\n", host_pub.join(" ")));
            let host = lan.host(i, &ip, &net);
            lan.hosts.push(host);
        }
        std::fs::write(&lan.known_hosts, known).expect("known_hosts");
        for i in 0..n {
            lan.start_sshd(i);
        }
        lan
    }

    /// Host `i`'s namespaces: a veth to the bridge, its address and route,
    /// its mounts, and the files its sshd reads.
    fn host(&self, i: usize, ip: &str, net: &str) -> NsHost {
        let holder = Holder::spawn(&["--net", "--mount", "--propagation", "private"]);
        let veth = format!("v{i}");
        ns_run(
            &self.laptop,
            &["-n"],
            &[
                "ip",
                "link",
                "add",
                &veth,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &holder.pid(),
            ],
        );
        ns_run(
            &self.laptop,
            &["-n"],
            &["ip", "link", "set", &veth, "master", "br0", "up"],
        );
        for step in [
            vec!["ip", "link", "set", "lo", "up"],
            vec!["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
            vec!["ip", "link", "set", "eth0", "up"],
            vec!["ip", "route", "add", "default", "via", &format!("{net}.1")],
        ] {
            ns_run(&holder, &["-n"], &step);
        }

        let home = self.dir.path().join(format!("host-{i}"));
        std::fs::create_dir_all(home.join("dpkg")).expect("host dir");
        let cp = Command::new("cp")
            .arg("-a")
            .arg("/etc")
            .arg(home.join("etc"))
            .status()
            .expect("copy /etc");
        assert!(cp.success(), "cp -a /etc failed");
        let d = self.dir.path();
        std::fs::copy(d.join("host_key"), home.join("host_key")).expect("host key");
        std::fs::copy(d.join("id_ed25519.pub"), home.join("authorized_keys")).expect("keys");
        std::fs::write(
            home.join("sshd_config"),
            format!(
                "ListenAddress {ip}:22\n\
                 HostKey /mnt/host_key\n\
                 AuthorizedKeysFile /mnt/authorized_keys\n\
                 PidFile none\n\
                 StrictModes no\n\
                 UsePAM no\n\
                 PermitRootLogin prohibit-password\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 AllowTcpForwarding yes\n\
                 Subsystem sftp internal-sftp\n\
                 LogLevel INFO\n"
            ),
        )
        .expect("sshd_config");
        let home = home.to_str().expect("utf-8 path");
        ns_run(&holder, &["-m"], &["sh", "-c", MOUNTS, home]);
        NsHost {
            holder,
            ip: ip.to_owned(),
            sshd: None,
        }
    }

    /// Starts host `k`'s sshd (0-based) and waits for its listening line.
    fn start_sshd(&mut self, k: usize) {
        let host = &mut self.hosts[k];
        let mut child = Command::new("nsenter")
            .args(["-t", &host.holder.pid(), "-n", "-m", "--"])
            .args(["/usr/sbin/sshd", "-D", "-e", "-f", "/mnt/sshd_config"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sshd");
        let stderr = child.stderr.take().expect("piped stderr");
        host.sshd = Some(child);
        let (tx, rx) = mpsc::channel::<String>();
        // Drains sshd's stderr for its whole life (a full pipe blocks it).
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let want = format!("Server listening on {} port 22.", host.ip);
        loop {
            // The timeout guards against a hang; readiness is the line.
            match rx.recv_timeout(Duration::from_secs(20)) {
                Ok(line) if line.trim() == want => break,
                Ok(_) => {}
                Err(_) => panic!("sshd of {} did not start listening", host.ip),
            }
        }
    }

    /// Host `i`'s address (1-based).
    pub fn ip(&self, i: usize) -> &str {
        &self.hosts[i - 1].ip
    }

    /// `ssh://root@<address>` of host `i` (1-based).
    pub fn url(&self, i: usize) -> String {
        format!("ssh://root@{}", self.ip(i))
    }

    /// The laptop's address on the LAN (`.1`).
    pub fn laptop_ip(&self) -> String {
        format!("{}.1", self.net)
    }

    /// `c` to be run in the laptop's network namespace (its program, its
    /// arguments, its environment and directory), through `nsenter`.
    pub fn in_laptop(&self, c: &Command) -> Command {
        nsenter(&self.laptop, &["-n"], c)
    }

    /// `c` to be run in host `i`'s network and mount namespaces.
    pub fn in_host(&self, i: usize, c: &Command) -> Command {
        nsenter(&self.hosts[i - 1].holder, &["-n", "-m"], c)
    }

    /// `c` to be run in host `i`'s network namespace only (this machine's
    /// files: a tool built here, which the host's own `/tmp` or `/root`
    /// would hide).
    pub fn in_host_net(&self, i: usize, c: &Command) -> Command {
        nsenter(&self.hosts[i - 1].holder, &["-n"], c)
    }

    /// Processes in host `i`'s namespace besides its holder and its sshd
    /// (and the sessions sshd serves, which end with their connections).
    pub fn processes(&self, i: usize) -> Vec<String> {
        not_sshd(self.hosts[i - 1].holder.others())
    }

    /// Stops everything: each host's sshd by pid, then every process left
    /// in each namespace, then the holders. Returns what had to be killed
    /// besides sshd and its sessions, per host, and checks that nothing is
    /// left.
    pub fn stop(&mut self) -> Vec<Vec<String>> {
        let mut killed = Vec::new();
        for host in &mut self.hosts {
            if let Some(mut sshd) = host.sshd.take() {
                let _ = kill(Pid::from_raw(sshd.id() as i32), Signal::SIGTERM);
                let _ = sshd.wait();
            }
            let names = not_sshd(host.holder.others());
            host.holder.stop();
            assert!(
                host.holder.others().is_empty(),
                "processes left in {}'s namespace",
                host.ip
            );
            killed.push(names);
        }
        self.hosts.clear();
        self.laptop.stop();
        killed
    }

    /// The LAN's scratch directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for NsLan {
    fn drop(&mut self) {
        for host in &mut self.hosts {
            if let Some(mut sshd) = host.sshd.take() {
                let _ = sshd.kill();
                let _ = sshd.wait();
            }
            host.holder.stop();
        }
        self.laptop.stop();
    }
}
