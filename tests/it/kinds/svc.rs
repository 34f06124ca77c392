//! `svc` (issue #16) against a real systemd: PID 1 of a PID + mount
//! namespace of its own, with a copy of `/etc` (where the test writes its
//! units), its own `/run`, `/tmp`, `/var/tmp`, `/var/log` and
//! `/var/lib/systemd`, and the test's directory at `/srv`.
//!
//! systemd boots a target of the test's (`mgmt-it.target`: the journal,
//! the system bus, and one unit that says "ready" through a FIFO once
//! systemd is on the bus) instead of `basic.target`:
//! the usual boot runs `systemd-tmpfiles --remove`, which empties `/tmp`,
//! and other units that act on the machine (sysctl, udev). For the same
//! reason `/tmp` is a tmpfs in the namespace, systemd runs as in a
//! container (`container=`), logs to the journal only, and the journal's
//! socket makes no `/dev/log` link (`/dev` is the machine's). `mgmt` runs
//! in both namespaces through `nsenter`; killing PID 1 ends everything in
//! the namespace, which the [`Systemd`] guard does by pid.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use super::LIMIT;
use crate::util::{mgmt, Dir, Output, Proc};

const TARGET: &str = "[Unit]
Description=mgmt tests: a service manager and nothing else
Wants=systemd-journald.service dbus.socket dbus.service mgmt-it-ready.service
";

/// Says "ready" once systemd holds its name on the system bus (`gdbus
/// wait` waits for the name's owner to change, no polling).
const READY: &str = "[Unit]
DefaultDependencies=no
After=systemd-journald.service dbus.service
[Service]
Type=oneshot
ExecStart=/bin/sh -c 'gdbus wait --system --timeout 60 org.freedesktop.systemd1 && echo ready > /srv/ready'
";

/// A service that runs until stopped, for the tests to manage.
const UNIT: &str = "[Unit]
Description=mgmt test service
DefaultDependencies=no
[Service]
ExecStart=/bin/sleep infinity
ExecReload=/bin/true
[Install]
WantedBy=mgmt-it.target
";

/// A real systemd in its own namespaces; killed by pid when dropped.
struct Systemd {
    dir: Dir,
    /// `unshare`, whose only child is the namespace's PID 1.
    unshare: Child,
    /// systemd, as the machine's pid namespace numbers it.
    pid: i32,
}

impl Systemd {
    fn boot(units: &[(&str, &str)]) -> Systemd {
        let dir = Dir::new();
        let root = dir.path();
        for (name, copy) in [("etc", "/etc"), ("vls", "/var/lib/systemd")] {
            let ok = Command::new("cp")
                .args(["-a", copy])
                .arg(root.join(name))
                .status()
                .unwrap();
            assert!(ok.success());
        }
        std::fs::create_dir(root.join("log")).unwrap();
        std::fs::create_dir(root.join("srv")).unwrap();
        let sys = root.join("etc/systemd/system");
        std::fs::write(sys.join("mgmt-it.target"), TARGET).unwrap();
        std::fs::write(sys.join("mgmt-it-ready.service"), READY).unwrap();
        let dropin = |unit: &str, text: &str| {
            let d = sys.join(format!("{unit}.d"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("mgmt-it.conf"), text).unwrap();
        };
        dropin("systemd-journald-dev-log.socket", "[Socket]\nSymlinks=\n");
        // The system bus without sysinit.target, which would come with it.
        dropin("dbus.socket", "[Unit]\nDefaultDependencies=no\n");
        dropin("dbus.service", "[Unit]\nDefaultDependencies=no\n");
        for (name, text) in units {
            std::fs::write(sys.join(name), text).unwrap();
        }
        let fifo = root.join("srv/ready");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let script = concat!(
            "set -e; mount --bind \"$1\" /etc; mount --bind \"$2\" /var/log; ",
            "mount --bind \"$3\" /var/lib/systemd; mount --bind \"$4\" /srv; ",
            "mount -t tmpfs tmpfs /run; mkdir -p /run/systemd; ",
            "mount -t tmpfs tmpfs /tmp; mount -t tmpfs tmpfs /var/tmp; ",
            "export container=mgmt-it; ",
            "exec /lib/systemd/systemd --system --unit=mgmt-it.target --show-status=0 --log-target=journal"
        );
        let unshare = Command::new("unshare")
            .args(["--fork", "--pid", "--mount", "--uts", "--mount-proc"])
            .args(["--propagation", "private", "--", "sh", "-c", script, "boot"])
            .args(["etc", "log", "vls", "srv"].map(|n| root.join(n)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start unshare");
        let mut sd = Systemd {
            dir,
            unshare,
            pid: 0,
        };
        // Ready when the ready unit writes into the FIFO.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::fs::File::open(&fifo).and_then(|mut f| f.read_to_string(&mut s));
            let _ = tx.send(s);
        });
        let said = rx.recv_timeout(LIMIT).expect("systemd booted its target");
        assert_eq!(said.trim(), "ready");
        sd.pid = sd.pid1().expect("systemd's pid");
        sd
    }

    /// unshare's only child: the namespace's PID 1.
    fn pid1(&self) -> Option<i32> {
        let me = self.unshare.id();
        let children = std::fs::read_to_string(format!("/proc/{me}/task/{me}/children")).ok()?;
        children.split_whitespace().next()?.parse().ok()
    }

    /// `program args...` inside the namespaces.
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.pid.to_string(), "-m", "-p", "--", program]);
        c.stdin(Stdio::null()).env_remove("RUST_LOG");
        c
    }

    fn systemctl(&self, args: &[&str]) -> String {
        let out = self.command("systemctl").args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The graph `body` as `/srv/g.yaml` inside.
    fn graph(&self, body: &str) -> &'static str {
        std::fs::write(
            self.srv("g.yaml"),
            format!("graph: svc\nresources:\n{body}"),
        )
        .unwrap();
        "/srv/g.yaml"
    }

    fn srv(&self, name: &str) -> PathBuf {
        self.dir.path().join("srv").join(name)
    }

    fn mgmt(&self, args: &[&str]) -> Command {
        let mut c = self.command(mgmt().get_program().to_str().unwrap());
        c.arg("run").args(args);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        crate::util::run(&mut self.mgmt(args), LIMIT)
    }
}

impl Drop for Systemd {
    fn drop(&mut self) {
        // Also when boot failed before the pid was read.
        if self.pid == 0 {
            self.pid = self.pid1().unwrap_or(0);
        }
        if self.pid > 0 {
            // PID 1 gone, the kernel kills the whole namespace.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}

fn web(conf: &str) -> String {
    format!(
        r#"  file:
  - name: /srv/web.conf
    content: "{conf}\n"
  svc:
  - name: mgmtit
    state: running
    startup: enabled
edges:
- name: conf-restarts
  from: {{kind: file, name: /srv/web.conf}}
  to: {{kind: svc, name: mgmtit}}
  notify: true
"#
    )
}

// See: #16 (start, enable, a hand-stop corrected at once, refresh restart)
#[test]
fn a_service_is_started_enabled_kept_running_and_restarted_on_refresh() {
    let sd = Systemd::boot(&[("mgmtit.service", UNIT)]);
    let g = sd.graph(&web("v1"));
    let mut p = Proc::spawn(&mut sd.mgmt(&["--converged-timeout", "4", "--file", g]));
    p.wait_all(
        &[
            "svc[mgmtit]: enabled mgmtit.service",
            "svc[mgmtit]: started mgmtit.service",
        ],
        LIMIT,
    );
    assert_eq!(sd.systemctl(&["is-active", "mgmtit"]), "active");
    assert_eq!(sd.systemctl(&["is-enabled", "mgmtit"]), "enabled");

    // Stopped by hand: the bus signal brings it back, no poll.
    sd.systemctl(&["stop", "mgmtit"]);
    p.wait_line("svc[mgmtit]: started mgmtit.service", LIMIT);

    // The config edited by hand: the file is put back, which notifies.
    let before = sd.systemctl(&["show", "-p", "MainPID", "--value", "mgmtit"]);
    std::fs::write(sd.srv("web.conf"), "edited\n").unwrap();
    p.wait_line("svc[mgmtit]: restarted mgmtit.service", LIMIT);
    let after = sd.systemctl(&["show", "-p", "MainPID", "--value", "mgmtit"]);
    assert_ne!(before, after, "a new main process");
    assert_eq!(p.wait(LIMIT), 0);

    let second = sd.run(&["-t", "1", "--file", g]);
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert!(
        second
            .stderr
            .contains("converged: 2 resources, 0 changed, 0 failed"),
        "{}",
        second.stderr
    );
}

// See: #16 (reload: true reloads instead of restarting; stop and disable)
#[test]
fn a_refresh_reloads_when_asked_then_stop_and_disable() {
    let sd = Systemd::boot(&[("mgmtit.service", UNIT)]);
    let first = sd.run(&["-t", "1", "--file", sd.graph(&web("v1"))]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    let g = sd.graph(&web("v2").replace("startup: enabled", "startup: enabled\n    reload: true"));
    let out = sd.run(&["-t", "1", "--file", g]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("svc[mgmtit]: reloaded mgmtit.service"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("restarted"), "{}", out.stderr);

    // And back: stopped and disabled.
    let g = sd.graph(
        &web("v2")
            .replace("state: running", "state: stopped")
            .replace("startup: enabled", "startup: disabled"),
    );
    let out = sd.run(&["-t", "1", "--file", g]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("svc[mgmtit]: disabled mgmtit.service")
            && out.stderr.contains("svc[mgmtit]: stopped mgmtit.service"),
        "{}",
        out.stderr
    );
    assert_eq!(sd.systemctl(&["is-active", "mgmtit"]), "inactive");
    assert_eq!(sd.systemctl(&["is-enabled", "mgmtit"]), "disabled");
}

// See: #16 (--noop says what it would do and changes nothing)
#[test]
fn noop_says_what_it_would_do_and_changes_nothing() {
    let sd = Systemd::boot(&[("mgmtit.service", UNIT)]);
    let out = sd.run(&["--noop", "-t", "1", "--file", sd.graph(&web("v1"))]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    for line in [
        "svc[mgmtit]: would enable mgmtit.service",
        "svc[mgmtit]: would start mgmtit.service",
    ] {
        assert!(out.stderr.contains(line), "no {line:?} in:\n{}", out.stderr);
    }
    assert_eq!(sd.systemctl(&["is-active", "mgmtit"]), "inactive");
    assert_eq!(sd.systemctl(&["is-enabled", "mgmtit"]), "disabled");
}

// See: #16 (a missing unit, and one that fails to start with its log lines)
#[test]
fn missing_and_failing_units_are_errors_with_their_logs() {
    let failing = "[Unit]\nDefaultDependencies=no\n[Service]\nType=oneshot\nExecStart=/bin/sh -c 'echo mgmtit-boom >&2; exit 3'\n";
    let sd = Systemd::boot(&[("mgmtit-fail.service", failing)]);
    let g = sd.graph(
        "  svc:\n  - name: mgmtit-nosuch\n    state: running\n  - name: mgmtit-fail\n    state: running\n",
    );
    let out = sd.run(&["-t", "1", "--file", g]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("unit mgmtit-nosuch.service is not-found"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("cannot start mgmtit-fail.service"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("mgmtit-boom"), "{}", out.stderr);
}

// See: #16 (bad input refused with file:line:col)
#[test]
fn bad_svc_fields_are_refused_with_positions() {
    let d = Dir::new();
    let g = d.write(
        "g.yaml",
        "graph: bad\nresources:\n  svc:\n  - name: \"-x\"\n  - name: web\n    state: up\n    startup: on\n",
    );
    let f = g.display().to_string();
    super::refused(
        &g,
        &[
            &format!("{f}:4:11: svc[-x]: \"-x\" is not a unit name"),
            &format!("{f}:6:12: svc[web]: state must be running or stopped, not \"up\""),
        ],
    );
}
