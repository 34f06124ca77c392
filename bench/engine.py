#!/usr/bin/env python3
"""Engine benchmark (issue #2): 1,000 `file` resources in a chain plus 1,000
independent ones. Measures the first apply, the idempotent second run, and
the CPU the process uses over 10 s while settled and idle (utime + stime
from /proc/PID/stat, in a process run with `-t -1` that stays up).

Usage: bench/engine.py [path/to/mgmt]   (default: target/release/mgmt)
Prints a table; nothing here asserts a wall-clock threshold.
"""
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

N = 1000
IDLE_SECONDS = 10
TICK = os.sysconf("SC_CLK_TCK")


def graph(root):
    lines = ["graph: bench", "resources:", "  file:"]
    for kind in ("chain", "free"):
        for i in range(N):
            lines += [f"  - name: {kind}{i}", f"    path: {root}/{kind}{i}", f'    content: "{kind} {i}\\n"']
    lines.append("edges:")
    for i in range(1, N):
        lines += [f"- name: e{i}", f"  from: {{kind: file, name: chain{i-1}}}", f"  to: {{kind: file, name: chain{i}}}"]
    return "\n".join(lines) + "\n"


def timed_run(cmd):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    out = subprocess.run(cmd, stderr=subprocess.PIPE, text=True)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if out.returncode != 0:
        sys.exit(f"run failed ({out.returncode}):\n{out.stderr[-3000:]}")
    summary = [l for l in out.stderr.splitlines() if "converged:" in l]
    return wall, cpu, summary[-1].split("converged:")[-1].strip() if summary else "?"


def proc_stat(pid):
    """Fields of /proc/PID/stat after the command name (field 3 onwards)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def proc_cpu(pid):
    """utime + stime of the process, in seconds."""
    fields = proc_stat(pid)
    return (int(fields[11]) + int(fields[12])) / TICK


def proc_state(pid):
    return proc_stat(pid)[0]


def idle_cpu(binary, g):
    """CPU % of one core over IDLE_SECONDS of a process that stays up.

    `-t -1` never exits on convergence (with `-t N` the process exits right
    after its `converged:` line, and /proc would show a zombie). Readiness is
    the engine's `settled:` line: every resource has had its first check and
    nothing runs. The process must still be alive at the end; SIGINT stops it.
    """
    p = subprocess.Popen([binary, "run", "-t", "-1", "--file", g], stderr=subprocess.PIPE, text=True)
    try:
        for line in p.stderr:
            if "settled:" in line:
                break
        else:
            sys.exit(f"mgmt exited ({p.wait()}) before it settled")
        # Keep reading stderr so a chatty process can never block on the pipe.
        tail = []
        drain = threading.Thread(target=lambda: tail.extend(p.stderr), daemon=True)
        drain.start()
        c0, t0 = proc_cpu(p.pid), time.monotonic()
        time.sleep(IDLE_SECONDS)
        c1, t1 = proc_cpu(p.pid), time.monotonic()
        if p.poll() is not None or proc_state(p.pid) == "Z":
            sys.exit(f"mgmt exited ({p.returncode}) during the idle measurement:\n{''.join(tail)[-3000:]}")
        p.send_signal(signal.SIGINT)
        code = p.wait(timeout=60)
        drain.join(timeout=10)
        if code != 0:
            sys.exit(f"mgmt exited {code} on SIGINT:\n{''.join(tail)[-3000:]}")
        return (c1 - c0) / (t1 - t0) * 100.0, c0, c1 - c0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def main():
    binary = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/release/mgmt")
    tmp = tempfile.mkdtemp(prefix="mgmt-bench-")
    try:
        root = os.path.join(tmp, "files")
        os.mkdir(root)
        g = os.path.join(tmp, "g.yaml")
        with open(g, "w") as f:
            f.write(graph(root))
        # -t 0: exit as soon as idle, so the timings measure the work only.
        cmd = [binary, "run", "-t", "0", "--no-watch", "--file", g]
        w1, c1, s1 = timed_run(cmd)
        w2, c2, s2 = timed_run(cmd)
        idle, before, used = idle_cpu(binary, g)
        print(f"{'case':<28}{'wall s':>10}{'cpu s':>10}  result")
        print(f"{'first apply (2,000 files)':<28}{w1:>10.3f}{c1:>10.3f}  {s1}")
        print(f"{'second run (idempotent)':<28}{w2:>10.3f}{c2:>10.3f}  {s2}")
        print(
            f"idle while settled (-t -1): {idle:.3f}% of one core over {IDLE_SECONDS} s "
            f"({used:.2f} s CPU; {before:.2f} s used before it settled; alive at the end, exit 0 on SIGINT)"
        )
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
