#!/usr/bin/env python3
"""Engine benchmark (issue #2): 1,000 `file` resources in a chain plus 1,000
independent ones. Measures the first apply, the idempotent second run, and
the CPU the process uses over 10 s while converged and idle (from /proc).

Usage: bench/engine.py [path/to/mgmt]   (default: target/release/mgmt)
Prints a table; nothing here asserts a wall-clock threshold.
"""
import os
import resource
import shutil
import subprocess
import sys
import tempfile
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


def proc_cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def idle_cpu(binary, g):
    p = subprocess.Popen([binary, "run", "-t", "1", "--max-runtime", "600", "--file", g], stderr=subprocess.PIPE, text=True)
    try:
        for line in p.stderr:
            if "converged:" in line:
                break
        c0, t0 = proc_cpu(p.pid), time.monotonic()
        time.sleep(IDLE_SECONDS)
        c1, t1 = proc_cpu(p.pid), time.monotonic()
        return (c1 - c0) / (t1 - t0) * 100.0
    finally:
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
        idle = idle_cpu(binary, g)
        print(f"{'case':<28}{'wall s':>10}{'cpu s':>10}  result")
        print(f"{'first apply (2,000 files)':<28}{w1:>10.3f}{c1:>10.3f}  {s1}")
        print(f"{'second run (idempotent)':<28}{w2:>10.3f}{c2:>10.3f}  {s2}")
        print(f"idle while converged: {idle:.3f}% of one core over {IDLE_SECONDS} s")
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
