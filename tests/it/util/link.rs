//! A slow, lossy link for tests: `bench/linkemu` (its own cargo package,
//! built here on first use) bound to a netfilter queue in a network
//! namespace, and the `iptables` rules that send a device's traffic through
//! it. This kernel has no `netem`; linkemu holds each packet for a fixed
//! delay and drops a share of them (see its `//!` doc).
//!
//! The emulator is a child of the test, stopped by its pid when the
//! [`LinkEmu`] is dropped (and, being in the namespace, by
//! [`super::netns::NsLan::stop`] too). The rules live in the namespace and
//! go with it.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The built `linkemu`: `cargo build --release --locked` of
/// `bench/linkemu` into `<target dir>/linkemu`, once per test binary.
pub fn linkemu() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .map(|t| if t.is_absolute() { t } else { root.join(t) })
            .unwrap_or_else(|| root.join("target"))
            .join("linkemu");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .args(["build", "--release", "--locked", "--quiet"])
            .current_dir(root.join("bench/linkemu"))
            .env("CARGO_TARGET_DIR", &target)
            .stdin(Stdio::null())
            .output()
            .expect("run cargo for bench/linkemu");
        assert!(
            out.status.success(),
            "cannot build bench/linkemu: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        target.join("release/linkemu")
    })
    .clone()
}

/// `iptables` must be installed (scripts/deps.sh installs it).
pub fn need_iptables() {
    let ok = Command::new("iptables")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "iptables not found: run 'bash scripts/deps.sh' (or apt-get install -y iptables)"
    );
}

/// A running linkemu.
pub struct LinkEmu {
    child: Option<Child>,
}

impl LinkEmu {
    /// Starts linkemu on `queue` with `delay_ms` one way and `loss` (a
    /// fraction) per packet, through `wrap` (which puts the command in the
    /// namespace, e.g. [`super::netns::NsLan::in_laptop`]); returns once it
    /// has bound the queue (its ready line), so rules may be added.
    pub fn start(
        wrap: impl Fn(&Command) -> Command,
        queue: u16,
        delay_ms: u32,
        loss: f64,
    ) -> LinkEmu {
        let mut c = Command::new(linkemu());
        c.args(["--queue", &queue.to_string()])
            .args(["--delay-ms", &delay_ms.to_string()])
            .args(["--loss", &loss.to_string()]);
        let mut child = wrap(&c)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start linkemu");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let emu = LinkEmu { child: Some(child) };
        // The timeout guards against a hang; readiness is the line.
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(l) if l.starts_with("linkemu: ready") => emu,
            other => panic!("linkemu did not start: {other:?}"),
        }
    }

    /// Stops it (SIGTERM by pid, then waits) and returns what it printed
    /// on stderr: its counts, `in N packets (D dropped), out ...`.
    pub fn stop(mut self) -> String {
        self.stop_child()
    }

    fn stop_child(&mut self) -> String {
        let Some(mut child) = self.child.take() else {
            return String::new();
        };
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let _ = child.wait();
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        err
    }
}

impl Drop for LinkEmu {
    fn drop(&mut self) {
        self.stop_child();
    }
}

/// The packets linkemu saw and dropped, from its closing line (`linkemu:
/// queue Q: N packets, D dropped; ...`).
pub fn counts(stderr: &str) -> (u64, u64) {
    let line = stderr
        .lines()
        .find(|l| l.contains(" packets, "))
        .unwrap_or_else(|| panic!("no counts in linkemu's output: {stderr}"));
    let nums: Vec<u64> = line
        .split(';')
        .next()
        .unwrap_or_default()
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    match nums[..] {
        [_, seen, dropped] => (seen, dropped),
        _ => panic!("unexpected linkemu counts: {line}"),
    }
}
