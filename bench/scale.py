#!/usr/bin/env python3
"""The cost curve of `mgmt run --remote` from 10 to 10,000 hosts.

Every host is emulated by one `mgmt emulate` process (real SSH, real SFTP,
the real engine and store client per host, through the real tunnel). For
each size N, host i (`h00042`) runs a graph of 10 resources: nine files and
one exported value; it collects the values of the 10 hosts of its decade
(`hostname: "h0004?"`). The initiator runs with --converged-timeout, first
with every cache empty (cold), then again (warm).

Measured per run: wall time; the initiator's CPU seconds and peak RSS
(wait4 rusage); its peak open file descriptors (sampled from /proc every
0.2 s); the store's operations (its `store:` line at the end of the run);
the emulator's CPU over the run; how many hosts converged. Results go to
JSON and a table; --png draws the per-host costs against N.

Usage: bench/scale.py --bin MGMT --sizes 10,100,1000,10000 [--png FILE]
       [--json FILE] [--cold-max N] [--via G] [--layouts L] [--perf PREFIX]
       [--workdir DIR]
--via G puts the same hosts behind G emulated gateways (each runs the real
`mgmt run --remote` in-process) and runs both layouts side by side;
--layouts flat (or gateways) runs only one of them. --layouts one-file puts
every host in one graph file, as a role is written: the same ten resources
(named by `{{ host.name }}`), each host collecting the values of the first
nine (`hostname: "127.30.0.?"`). --perf PREFIX attaches
`perf record -g` to each initiator (PREFIX-<hosts>-<layout>-<case>.data;
use a build with symbols: see README, "The cost curve").
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

PORT = 2299


def addr(first, i):
    n = first + i
    return "127.%d.%d.%d" % (n >> 16 & 255, n >> 8 & 255, n & 255)


def write_graphs(d, n, first, gateways):
    """One graph per host; returns the files to pass as --remote."""
    files = []
    for i in range(n):
        name = "h%05d" % i
        res = "".join(
            '  - name: f%d\n    path: /tmp/f%d\n    content: "%s f%d\\n"\n' % (k, k, name, k)
            for k in range(1, 10)
        )
        res += '  - name: "@@v-%s"\n    path: /tmp/v-%s\n    content: "value of %s\\n"\n' % (
            name, name, name)
        via = ""
        if gateways:
            g = i % gateways
            via = "via: [ssh://root@%s:%d]\n" % (addr(first, n + g), PORT)
        text = (
            "graph: %s\nhostname: %s\nresources:\n  file:\n%s"
            'collect:\n- kind: file\n  hostname: "h%04d?"\n  pattern: /tmp/\n'
            "remote: ssh://root@%s:%d\n%s" % (name, name, res, i // 10, addr(first, i), PORT, via)
        )
        path = os.path.join(d, "%s.yaml" % name)
        with open(path, "w") as f:
            f.write(text)
        files.append(path)
    return files


def write_one_file(d, n, first):
    """Every host in one graph file (a role): the same ten resources,
    named by template, and the values of the first nine hosts collected."""
    res = "".join(
        '  - name: f%d\n    path: /tmp/f%d\n    content: "{{ host.name }} f%d\\n"\n' % (k, k, k)
        for k in range(1, 10)
    )
    res += ('  - name: "@@v-{{ host.name }}"\n    path: "/tmp/v-{{ host.name }}"\n'
            '    content: "value of {{ host.name }}\\n"\n')
    lines = ["graph: role", "resources:", "  file:", res.rstrip("\n"),
             "collect:", "- kind: file", '  hostname: "%s?"' % addr(first, 0)[:-1],
             "  pattern: /tmp/", "remote:"]
    lines += ["- ssh://root@%s:%d" % (addr(first, i), PORT) for i in range(n)]
    path = os.path.join(d, "role.yaml")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return [path]


def proc_cpu(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tck


def proc_status(pid, key):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def count_fds(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return 0


class Emulator:
    def __init__(self, args, work, hosts, first):
        self.work = work
        self.kh = os.path.join(work, "known_hosts")
        cmd = [
            args.bin, "emulate", "--hosts=%d" % hosts, "--first-address=%s" % addr(first, 0),
            "--port=%d" % PORT, "--root", os.path.join(work, "root"),
            "--authorized-keys", os.path.join(work, "key.pub"), "--known-hosts-out", self.kh,
            "--stats", os.path.join(work, "stats.json"), "--shared-listener",
        ]
        self.log = open(os.path.join(work, "emulate.log"), "w")
        self.p = subprocess.Popen(cmd, stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL)
        deadline = time.time() + 300
        while not os.path.exists(self.kh):
            if self.p.poll() is not None or time.time() > deadline:
                raise SystemExit("mgmt emulate did not start; see %s" % self.log.name)
            time.sleep(0.1)

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        try:
            self.p.wait(60)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        self.log.close()


def run_once(args, work, files, emu, label):
    cmd = [args.bin, "run"]
    for f in files:
        cmd += ["--remote", f]
    cmd += ["--identity", os.path.join(work, "key"), "--known-hosts", emu.kh,
            "--converged-timeout=%d" % args.converged_timeout, "--cconns=%d" % args.cconns]
    env = dict(os.environ)
    env.pop("SSH_AUTH_SOCK", None)
    env["RUST_LOG"] = "warn,mgmt::run=info"
    err_path = os.path.join(work, "%s.log" % label)
    emu_cpu0 = proc_cpu(emu.p.pid)
    t0 = time.time()
    with open(err_path, "w") as err:
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL,
                             env=env)
        perf = None
        if args.perf:
            out = "%s-%d-%s.data" % (args.perf, len(files), label)
            perf = subprocess.Popen(["perf", "record", "-q", "-g", "-p", str(p.pid), "-o", out],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        peak_fds = 0
        while True:
            peak_fds = max(peak_fds, count_fds(p.pid))
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.time() - t0 > args.timeout:
                p.kill()
            time.sleep(0.2)
    wall = time.time() - t0
    if perf:
        perf.wait(120)  # it ends with the process it follows
    emu_cpu = proc_cpu(emu.p.pid) - emu_cpu0
    with open(err_path) as f:
        log = f.read()
    m = re.search(r"(\d+) converged, (\d+) failed, (\d+) stopped", log)
    store = re.search(r"store: (\d+) puts, (\d+) ranges, (\d+) txns, (\d+) deletes, (\d+) watch events", log)
    return {
        "case": label,
        "exit": os.waitstatus_to_exitcode(status),
        "wall_s": round(wall, 2),
        "cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
        "rss_kb": ru.ru_maxrss,
        "peak_fds": peak_fds,
        "converged": int(m.group(1)) if m else 0,
        "failed": int(m.group(2)) if m else -1,
        "store_ops": sum(int(x) for x in store.groups()[:4]) if store else 0,
        "watch_events": int(store.group(5)) if store else 0,
        "emulator_cpu_s": round(emu_cpu, 2),
        "emulator_rss_kb": proc_status(emu.p.pid, "VmHWM"),
        "log": err_path,
    }


def bench_size(args, n, layout):
    gateways = args.via if layout == "gateways" else 0
    work = tempfile.mkdtemp(prefix="n%d-%s-" % (n, layout), dir=args.workdir)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                    os.path.join(work, "key")], check=True)
    first = (30 << 16) + 1
    if layout == "one-file":
        files = write_one_file(work, n, first)
    else:
        files = write_graphs(work, n, first, gateways)
    emu = Emulator(args, work, n + gateways, first)
    rows = []
    try:
        cold = not (args.cold_max and n > args.cold_max)
        cases = ["cold", "warm"] if cold else ["warm-only"]
        for case in cases:
            if case == "warm-only":
                # Cold copies skipped at this size: the caches are filled
                # as a previous run would have left them (hard links to
                # the binary), then the warm run is measured.
                seed_caches(args, work, n + gateways, first)
                case = "warm"
            r = run_once(args, work, files, emu, "%s-%s" % (layout, case) if args.perf else case)
            r["case"] = case
            r.update({"hosts": n, "layout": layout, "gateways": gateways})
            rows.append(r)
            print(json.dumps(r), flush=True)
    finally:
        emu.stop()
        if not args.keep:
            subprocess.run(["rm", "-rf", work])
    return rows


def seed_caches(args, work, hosts, first):
    import hashlib
    h = hashlib.sha256()
    with open(args.bin, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    sha = h.hexdigest()
    for i in range(hosts):
        d = os.path.join(work, "root", addr(first, i), "home", ".cache", "mgmt", "bin", sha)
        os.makedirs(d, mode=0o700, exist_ok=True)
        for p in [d, os.path.dirname(d), os.path.dirname(os.path.dirname(d))]:
            os.chmod(p, 0o700)
        target = os.path.join(d, "mgmt")
        if not os.path.exists(target):
            os.link(args.bin, target)


def table(rows):
    head = ("hosts", "layout", "case", "wall_s", "cpu_s", "rss_kb", "peak_fds", "store_ops",
            "converged", "emulator_cpu_s")
    out = ["| " + " | ".join(head) + " | per host: wall ms, cpu ms, rss KB |",
           "|" + "---|" * (len(head) + 1)]
    for r in rows:
        n = r["hosts"]
        per = "%.1f, %.2f, %.1f" % (1000 * r["wall_s"] / n, 1000 * r["cpu_s"] / n, r["rss_kb"] / n)
        out.append("| " + " | ".join(str(r[h]) for h in head) + " | " + per + " |")
    return "\n".join(out)


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    metrics = [("wall_s", 1000, "wall time per host (ms)"),
               ("cpu_s", 1000, "initiator CPU per host (ms)"),
               ("rss_kb", 1, "initiator peak RSS per host (KB)")]
    series = sorted({(r["layout"], r["case"]) for r in rows})
    for ax, (key, scale, title) in zip(axes, metrics):
        for layout, case in series:
            pts = sorted((r["hosts"], scale * r[key] / r["hosts"]) for r in rows
                         if r["layout"] == layout and r["case"] == case)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                    label="%s, %s" % (layout, case))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("hosts")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[2].axhline(100, color="red", linestyle="--", linewidth=1, label="target: 100 KB/host")
    axes[0].legend()
    axes[2].legend()
    fig.suptitle("mgmt run --remote against mgmt emulate (2 cores, one machine)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--sizes", default="10,100,1000,10000")
    ap.add_argument("--via", type=int, default=0, help="also run behind this many gateways")
    ap.add_argument("--layouts", help="comma-separated: flat, gateways, one-file (default: flat, and gateways with --via)")
    ap.add_argument("--perf", metavar="PREFIX", help="perf record each initiator into PREFIX-*.data")
    ap.add_argument("--cold-max", type=int, default=0, help="skip cold runs above this size")
    ap.add_argument("--cconns", type=int, default=64)
    ap.add_argument("--converged-timeout", type=int, default=3)
    ap.add_argument("--timeout", type=int, default=3600)
    ap.add_argument("--json")
    ap.add_argument("--png")
    ap.add_argument("--workdir", default="/tmp")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        layouts = args.layouts.split(",") if args.layouts else ["flat"] + (["gateways"] if args.via else [])
        for layout in layouts:
            rows += bench_size(args, n, layout)
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(rows, f, indent=1)
    print(table(rows))
    if args.png:
        plot(rows, args.png)
        print("plot: %s" % args.png)


if __name__ == "__main__":
    sys.exit(main())
