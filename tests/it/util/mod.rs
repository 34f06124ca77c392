//! Test helpers: temp dirs, running the built binary, waiting on its output.

#![allow(dead_code)]

pub mod etcd;
pub mod hostile;
pub mod link;
pub mod netns;
pub mod sshd;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A temp dir for one test, removed at the end.
pub struct Dir {
    pub tmp: tempfile::TempDir,
}

impl Dir {
    pub fn new() -> Dir {
        Dir {
            tmp: tempfile::Builder::new()
                .prefix("mgmt-it-")
                .tempdir()
                .expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// Absolute path of `name` inside the dir, as a string for YAML.
    pub fn p(&self, name: &str) -> String {
        self.tmp.path().join(name).display().to_string()
    }

    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let p = self.tmp.path().join(name);
        std::fs::write(&p, content).expect("write test file");
        p
    }

    pub fn read(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.tmp.path().join(name)).ok()
    }
}

/// The built binary.
pub fn mgmt() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mgmt"));
    c.env_remove("RUST_LOG").stdin(Stdio::null());
    c
}

/// The binary remote tests ship to their hosts: the static musl release
/// build, the artifact users get, when the test command names it in
/// `MGMT_TEST_SHIPPED` (scripts/test.sh builds it first and sets it), else
/// this build of mgmt.
pub fn shipped() -> PathBuf {
    match std::env::var_os("MGMT_TEST_SHIPPED") {
        Some(p) => {
            let p = PathBuf::from(p);
            assert!(
                p.is_file(),
                "MGMT_TEST_SHIPPED={} is not a file: build it (cargo build --release --target \
                 x86_64-unknown-linux-musl) or unset it",
                p.display()
            );
            p
        }
        None => PathBuf::from(env!("CARGO_BIN_EXE_mgmt")),
    }
}

/// `--remote-binary` for [`shipped`], when that is not this build.
pub fn shipped_args() -> Vec<std::ffi::OsString> {
    match std::env::var_os("MGMT_TEST_SHIPPED") {
        Some(_) => vec!["--remote-binary".into(), shipped().into()],
        None => Vec::new(),
    }
}

/// Output of a finished run.
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs to completion, with a guard against hangs.
pub fn run(cmd: &mut Command, limit: Duration) -> Output {
    let mut p = Proc::spawn(cmd);
    let code = p.wait(limit);
    Output {
        code,
        stdout: p.stdout_rest(),
        stderr: p.lines_so_far().join("\n"),
    }
}

/// A running `mgmt`, killed (by pid) when dropped; its stderr is read line
/// by line so a test can wait for an event in the log, and its exit arrives
/// as an event too (a waiter thread owns the child).
pub struct Proc {
    pid: i32,
    lines: mpsc::Receiver<String>,
    exit: mpsc::Receiver<i32>,
    code: Option<i32>,
    stdout: mpsc::Receiver<String>,
    seen: Vec<String>,
    /// Lines before this index were matched by an earlier wait.
    cursor: usize,
}

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Proc {
        let mut child: Child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mgmt");
        let pid = child.id() as i32;
        let (tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (out_tx, stdout) = mpsc::channel();
        let mut out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut out, &mut s);
            let _ = out_tx.send(s);
        });
        let (exit_tx, exit) = mpsc::channel();
        std::thread::spawn(move || {
            let code = child.wait().map(|s| s.code().unwrap_or(-1)).unwrap_or(-1);
            let _ = exit_tx.send(code);
        });
        Proc {
            pid,
            lines,
            exit,
            code: None,
            stdout,
            seen: Vec::new(),
            cursor: 0,
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Waits for a stderr line containing `needle`, among the lines after
    /// the previous match; panics after `limit`.
    pub fn wait_line(&mut self, needle: &str, limit: Duration) -> String {
        self.wait_all(&[needle], limit).remove(0)
    }

    /// Waits until every needle has appeared in a stderr line after the
    /// previous match, in any order; returns the matching lines.
    pub fn wait_all(&mut self, needles: &[&str], limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        let mut found: Vec<Option<String>> = vec![None; needles.len()];
        let mut i = self.cursor;
        loop {
            while i < self.seen.len() {
                for (n, f) in needles.iter().zip(found.iter_mut()) {
                    if f.is_none() && self.seen[i].contains(n) {
                        *f = Some(self.seen[i].clone());
                    }
                }
                i += 1;
            }
            if found.iter().all(Option::is_some) {
                self.cursor = i;
                return found.into_iter().flatten().collect();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!(
                    "no lines with {needles:?} within {limit:?}; got:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Every stderr line read so far (draining what is buffered).
    pub fn lines_so_far(&mut self) -> Vec<String> {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
        self.seen.clone()
    }

    /// The URL of the embedded store, from the run's `store: listening on`
    /// line (the run must have a listener: `--client-urls`, or `--file`).
    pub fn store_url(&mut self, limit: Duration) -> String {
        let line = self.wait_line("store: listening on ", limit);
        let url = line.rsplit(' ').next().unwrap_or_default().trim();
        assert!(url.starts_with("http://"), "no URL in {line:?}");
        url.to_owned()
    }

    /// Takes every line printed so far as seen: the next `wait_line` only
    /// matches a line printed after this call.
    pub fn skip_seen(&mut self) {
        self.lines_so_far();
        self.cursor = self.seen.len();
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), sig).expect("signal");
    }

    /// Waits for exit (killing it after `limit`) and returns the exit code;
    /// all of stderr has been read when it returns.
    pub fn wait(&mut self, limit: Duration) -> i32 {
        if let Some(c) = self.code {
            return c;
        }
        let code = match self.exit.recv_timeout(limit) {
            Ok(c) => c,
            Err(_) => {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(self.pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                let _ = self.exit.recv();
                panic!(
                    "mgmt did not exit within {limit:?}; log:\n{}",
                    self.lines_so_far().join("\n")
                );
            }
        };
        self.code = Some(code);
        // The reader ends at EOF, which follows the exit.
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(l);
        }
        code
    }

    pub fn stdout_rest(&mut self) -> String {
        self.stdout
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.code.is_none() && self.exit.try_recv().is_err() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = self.exit.recv_timeout(Duration::from_secs(10));
        }
    }
}

/// Polls a condition that has no event to wait on (another process's
/// exit), with a bound; returns whether it became true.
/// Every key under `prefix` in the store at `url` (ours or etcd), with its
/// value and lease id, read with a real etcd client.
pub fn store_kvs(url: &str, prefix: &str) -> Vec<(String, String, i64)> {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let opts = etcd_client::ConnectOptions::new().with_user("root", STORE_PASSWORD);
        let mut c = etcd_client::Client::connect([url], Some(opts))
            .await
            .expect("connect to the store as root");
        let opts = etcd_client::GetOptions::new().with_prefix();
        let resp = c.get(prefix, Some(opts)).await.expect("range");
        resp.kvs()
            .iter()
            .map(|kv| {
                let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                (text(kv.key()), text(kv.value()), kv.lease())
            })
            .collect()
    })
}

/// SIGKILLs process `pid` when dropped (a test that fails midway still
/// stops what it started; a `script` killed so closes its terminal, which
/// hangs up the program it ran).
pub struct KillOnDrop(pub i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// The `root` password of the store listeners that remote runs under test
/// open (a remote run's listener needs one).
pub const STORE_PASSWORD: &str = "test-root-password";

/// The arguments that give a remote run a store listener this test can
/// read with [`store_kvs`]: a free loopback port, and [`STORE_PASSWORD`]
/// in a 0600 file (one per test process, kept until it ends).
pub fn listener_args() -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    static FILE: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let dir = FILE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let f = dir.path().join("store-password");
        std::fs::write(&f, format!("{STORE_PASSWORD}\n")).expect("write the password");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        dir
    });
    let file = dir.path().join("store-password").display().to_string();
    vec![
        "--client-urls".into(),
        "127.0.0.1:0".into(),
        "--store-password-file".into(),
        file,
    ]
}

/// A process frozen (SIGSTOP) until this is dropped (SIGCONT), so that a
/// test failing meanwhile leaves nothing frozen behind.
pub struct Frozen(i32);

impl Frozen {
    pub fn new(pid: i32) -> Frozen {
        use nix::sys::signal::{kill, Signal};
        kill(nix::unistd::Pid::from_raw(pid), Signal::SIGSTOP).expect("freeze a process");
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        use nix::sys::signal::{kill, Signal};
        let _ = kill(nix::unistd::Pid::from_raw(self.0), Signal::SIGCONT);
    }
}

/// Whether process `pid` is gone, or a zombie waiting to be reaped (which
/// runs nothing any more).
pub fn gone(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|st| {
            st.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true)
}

/// Flips one byte in the middle of `path`, keeping its size and putting its
/// modification time back, so only its change time tells (the install
/// stamp, #17). The byte's offset and the bytes now in the file.
pub fn flip_a_byte_keeping_size_and_mtime(path: &std::path::Path) -> (usize, Vec<u8>) {
    let mtime = std::fs::metadata(path)
        .expect("md")
        .modified()
        .expect("mtime");
    let mut bytes = std::fs::read(path).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(path, &bytes).expect("write");
    let f = std::fs::File::options()
        .write(true)
        .open(path)
        .expect("open");
    f.set_modified(mtime).expect("mtime");
    (mid, bytes)
}

pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + limit;
    while std::time::Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

/// `ID=` of this machine's os-release: the `facts.os.id` of hosts emulated
/// here (sshd fleets and `mgmt emulate` alike).
pub fn os_id() -> String {
    let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("ID="))
        .unwrap_or("")
        .trim_matches('"')
        .to_owned()
}
