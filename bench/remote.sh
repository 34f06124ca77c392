#!/usr/bin/env bash
# bench/remote.sh [N ...]   (default: 50 200)
#
# `mgmt run --remote` side by side with OpenSSH, pssh and Ansible, in one run,
# on N hosts emulated on this machine (scripts/fleet.sh: real sshd processes,
# 16 loopback addresses each, one home per host). Every tool ships the same
# bytes, the mgmt static binary itself, at the same concurrency (50):
#
#   mgmt/cold      mgmt run --remote G --cconns 50 --converged-timeout 0, every
#                  host's ~/.cache removed first (G: one graph, remote: all N
#                  URLs, one noop resource)
#   mgmt/warm      the same again, binary cached on every host
#   openssh/cold   xargs -P 50: per host ssh "run the cached copy if there", else
#                  a second ssh uploading it (cat > tmp, chmod, mv) and running
#                  it (`mgmt --version`): check-copy-run (shared/bench/openssh_job.sh)
#   openssh/warm   the same, cache full (1 ssh per host)
#   openssh/true   xargs -P 50 ssh HOST true
#   openssh/true-c25519  the same with -o KexAlgorithms=curve25519-sha256 (the
#                  best-tuned bare ssh)
#   openssh-mux/cold, openssh-mux/warm  check-copy-run as an expert would
#                  script it: one multiplexed connection per host
#                  (ControlMaster, ControlPersist until the job's end) and
#                  curve25519 KEX, so the copy reuses the check's connection
#   pssh/copy+run  parallel-scp the binary, then parallel-ssh run it (-p 50)
#   ansible/cold   ansible-playbook -f 50: copy (into the cache) + command
#   ansible/warm   the same, cache full
#
# Every case runs REPS times (default 3); each figure is the median, with the
# min and max beside it. A case counts only when every repetition reached all
# N hosts (and, for mgmt, exited 0); a ratio with an invalid side is printed as
# "invalid", never as a number. Bytes come from an independent counter (the
# loopback interface's tx_bytes in /proc/net/dev, both directions, everything
# on loopback during the case) beside mgmt's own "wire sent" figure.
#
# Measured per case: wall time; client CPU (the tool and everything it starts,
# from a cpuacct cgroup when /sys/fs/cgroup/cpuacct is writable, which also
# counts Ansible's daemonised ControlPersist masters; else from wait4 rusage);
# for mgmt also the initiator's own CPU and peak RSS (/usr/bin/time). Prints a
# table and the ratios of the project's targets.
#
# Also: bench/remote.sh --peers-job | --peers-true, mgmt as "our tool" in
# ../shared/bench/peers.sh (see below).
#
# Knobs: MGMT_BIN (default: target/x86_64-unknown-linux-musl/release/mgmt),
# CONC=50, REPS=3, SKIP=regex of case ids to skip (e.g. SKIP='ansible|pssh'),
# FLEET_PORT (default 2222). Needs root, openssh-server, pssh, time; Ansible is
# installed with apt-get if missing (skipped if that fails). Only loopback
# addresses are used. Results also go to $OUT (default /tmp/mgmt-bench-results).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NS=("$@"); [ "${#NS[@]}" -gt 0 ] || NS=(50 200)
CONC=${CONC:-50}
REPS=${REPS:-3}
SKIP=${SKIP:-}
BIN=${MGMT_BIN:-$HERE/target/x86_64-unknown-linux-musl/release/mgmt}
OUT=${OUT:-/tmp/mgmt-bench-results}
FLEET="$HERE/scripts/fleet.sh"
CGROOT=/sys/fs/cgroup/cpuacct

BENCH=bench/remote.sh
# shellcheck source=bench/lib.sh
. "$HERE/bench/lib.sh"

# --peers-job / --peers-true: mgmt as "our tool" in ../shared/bench/peers.sh
# (its OURS_JOB_CMD / OURS_TRUE_CMD): on the hosts of hosts.sh (addresses in
# $PEERBENCH_DIR/hosts, port $PEERBENCH_PORT, key $PEERBENCH_DIR/id_ed25519),
# one `mgmt run --remote` whose graph names them all. The job ships mgmt itself
# (cached on each host by content hash) and runs one exec resource that prints
# "payload ok host=<i>" (peers.sh's default OURS_OK_REGEX); --peers-true runs
# one noop. Host keys are checked against a known_hosts made from hosts.sh's
# host key.
if [ "${1:-}" = --peers-job ] || [ "${1:-}" = --peers-true ]; then
  PD=${PEERBENCH_DIR:-/tmp/peerbench}
  PP=${PEERBENCH_PORT:-2200}
  [ -x "$BIN" ] || die "no mgmt binary at $BIN: build it with 'cargo build --release --target x86_64-unknown-linux-musl' (or set MGMT_BIN)"
  [ -s "$PD/hosts" ] || die "no $PD/hosts: start the hosts first (shared/bench/hosts.sh start N)"
  mkdir -p "$PD/mgmt"
  g="$PD/mgmt/${1#--}.yaml"
  {
    echo "graph: peers"
    echo "remote:"
    sed "s#^\(.*\)\$#- ssh://root@\1:$PP#" "$PD/hosts"
    echo "resources:"
    if [ "$1" = --peers-job ]; then
      echo "  exec:"
      echo "  - name: job"
      echo "    cmd: printf '%s ok host=%s\\n' payload \"\$PEERBENCH_HOST\""
    else
      echo "  noop:"
      echo "  - name: noop1"
    fi
    echo "edges: []"
  } > "$g"
  hk=$(awk '{print $1" "$2}' "$PD/ssh_host_ed25519_key.pub")
  sed "s#^\(.*\)\$#[\1]:$PP $hk#" "$PD/hosts" > "$PD/mgmt/known_hosts"
  exec env -u SSH_AUTH_SOCK "$BIN" run --remote "$g" --cconns "$CONC" --converged-timeout 0 \
    --identity "$PD/id_ed25519" --known-hosts "$PD/mgmt/known_hosts"
fi

for n in "${NS[@]}"; do
  [[ $n =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le 254 ] || die "N must be 1..254 (got '$n')"
done
[ "$(id -u)" = 0 ] || die "run as root (the emulated hosts are sshd processes)"
[ -x "$BIN" ] || die "no mgmt binary at $BIN: build it with 'cargo build --release --target x86_64-unknown-linux-musl' (or set MGMT_BIN)"
[ -x /usr/sbin/sshd ] || die "openssh-server missing: run 'bash scripts/deps.sh'"

[ -x /usr/bin/time ] || apt_install time || die "cannot install 'time': apt-get install -y time"
command -v parallel-ssh > /dev/null || apt_install pssh || echo "bench/remote.sh: pssh not installable; pssh case skipped" >&2
HAVE_ANSIBLE=1
if ! command -v ansible-playbook > /dev/null; then
  apt_install ansible || { HAVE_ANSIBLE=0; echo "bench/remote.sh: ansible could not be installed (apt-get install -y ansible failed); Ansible cases skipped" >&2; }
fi
command -v parallel-ssh > /dev/null || SKIP="${SKIP:+$SKIP|}pssh"
[ "$HAVE_ANSIBLE" = 1 ] || SKIP="${SKIP:+$SKIP|}ansible"

WORK=$(mktemp -d /tmp/mgmt-bench.XXXXXX)
F="$WORK/fleet"
CG=""; SCG=""
if [ -w "$CGROOT" ]; then
  CG="$CGROOT/mgmt_bench_client_$$"
  SCG="$CGROOT/mgmt_bench_server_$$"   # the fleet's sshd processes and their sessions
  mkdir -p "$CG" "$SCG"
fi

cleanup() {
  local rc=$?
  close_masters
  [ -f "$F/.mgmt-fleet" ] && { bash "$FLEET" down "$F" || rc=1; }
  local g
  for g in "$CG" "$SCG"; do
    if [ -n "$g" ] && [ -d "$g" ]; then rmdir "$g" 2> /dev/null || echo "bench/remote.sh: cgroup $g still busy, not removed" >&2; fi
  done
  rm -rf -- "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "bench/remote.sh: interrupted" >&2; exit 130' INT TERM

mkdir -p "$OUT" "$WORK/logs"
HASH=$(sha256sum "$BIN" | awk '{print $1}')
SIZE=$(stat -c %s "$BIN")

# Bytes sent on the loopback interface so far (every byte of every case
# crosses it once: both directions, all tools).
lo_bytes() { sed 's/:/ /' /proc/net/dev | awk '$1 == "lo" {print $10}'; }
bench_bytes() { lo_bytes; }
write_jobs
RES="$WORK/results.tsv"
: > "$RES"

echo "bench/remote.sh: binary $BIN ($SIZE bytes, sha256 ${HASH:0:12}), concurrency $CONC, N = ${NS[*]}" >&2
echo "bench/remote.sh: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); client CPU from $([ -n "$CG" ] && echo "cpuacct cgroups" || echo "rusage (no server CPU)")" >&2

for n in "${NS[@]}"; do
  echo "== N=$n: starting the fleet" >&2
  # The fleet's sshd processes (and every session they fork) in the server cgroup.
  (
    [ -n "$SCG" ] && echo "$BASHPID" > "$SCG/cgroup.procs"
    exec bash "$FLEET" up "$n" "$F"
  )
  cfg="$F/ssh_config"
  # one graph for every host: remote: a list of all N URLs, one noop
  {
    echo "graph: bench"
    echo "comment: one noop per host, for bench/remote.sh"
    echo "remote:"
    sed 's/^/- /' "$F/hosts"
    echo "resources:"
    echo "  noop:"
    echo "  - name: noop1"
    echo "edges: []"
  } > "$WORK/graph.yaml"
  write_inventory "$F"
  rm_cache="rm -rf $F/home-*/.cache"
  mgmt_cmd=(env -u SSH_AUTH_SOCK "$BIN" run --remote "$WORK/graph.yaml" --cconns "$CONC" --converged-timeout 0
    --identity "$F/id_ed25519" --known-hosts "$F/known_hosts")

  run_case mgmt/cold "$n" "$rm_cache" "${mgmt_cmd[@]}"
  run_case mgmt/warm "$n" "" "${mgmt_cmd[@]}"
  run_case openssh/cold "$n" "$rm_cache" \
    env PB_CFG="$cfg" PB_HASH="$HASH" PB_PAYLOAD="$BIN" xargs -a "$F/addrs" -P "$CONC" -n 1 "$WORK/openssh_job.sh"
  run_case openssh/warm "$n" "" \
    env PB_CFG="$cfg" PB_HASH="$HASH" PB_PAYLOAD="$BIN" xargs -a "$F/addrs" -P "$CONC" -n 1 "$WORK/openssh_job.sh"
  run_case openssh/true "$n" "" \
    xargs -a "$F/addrs" -P "$CONC" -I{} sh -c 'ssh -F "$0" "$1" true && echo "OK $1" || echo "FAIL $1"' "$cfg" {}
  run_case openssh/true-c25519 "$n" "" \
    xargs -a "$F/addrs" -P "$CONC" -I{} sh -c 'ssh -F "$0" -o KexAlgorithms=curve25519-sha256 "$1" true && echo "OK $1" || echo "FAIL $1"' "$cfg" {}
  run_case openssh-mux/cold "$n" "$rm_cache" \
    env PB_CFG="$cfg" PB_HASH="$HASH" PB_PAYLOAD="$BIN" PB_CM="$WORK/cm" xargs -a "$F/addrs" -P "$CONC" -n 1 "$WORK/openssh_mux_job.sh"
  run_case openssh-mux/warm "$n" "" \
    env PB_CFG="$cfg" PB_HASH="$HASH" PB_PAYLOAD="$BIN" PB_CM="$WORK/cm" xargs -a "$F/addrs" -P "$CONC" -n 1 "$WORK/openssh_mux_job.sh"
  run_case pssh/copy+run "$n" "rm -f $F/home-*/mgmt-pssh" \
    sh -c 'parallel-scp -h "$1" -p "$2" -t 300 -x "-F $3" "$4" mgmt-pssh && parallel-ssh -h "$1" -p "$2" -t 300 -x "-F $3" "chmod 755 mgmt-pssh && ./mgmt-pssh --version"' \
    _ "$F/addrs" "$CONC" "$cfg" "$BIN"
  run_case ansible/cold "$n" "$rm_cache" \
    env ANSIBLE_CONFIG="$WORK/ansible/ansible.cfg" ansible-playbook -f "$CONC" "$WORK/ansible_job.yml" \
    -e "payload_hash=$HASH" -e "payload_src=$BIN"
  run_case ansible/warm "$n" "" \
    env ANSIBLE_CONFIG="$WORK/ansible/ansible.cfg" ansible-playbook -f "$CONC" "$WORK/ansible_job.yml" \
    -e "payload_hash=$HASH" -e "payload_src=$BIN"

  bash "$FLEET" down "$F"
done

cp "$RES" "$OUT/results.tsv"
cp -r "$WORK/logs" "$OUT/" 2> /dev/null || true

# Table and ratios: medians of the repetitions, min and max beside them.
python3 - "$RES" "$SIZE" << 'EOF' | tee "$OUT/table.md"
import statistics, sys
rows = [l.rstrip('\n').split('\t') for l in open(sys.argv[1]) if l.strip()]
size = int(sys.argv[2])
G = {}
for id_, n, ok, wall, cpu, rss, self_, rc, srv, foreign, rep, lo, wire in rows:
    G.setdefault((id_, int(n)), []).append(dict(
        ok=ok, wall=float(wall), cpu=float(cpu), self=float(self_), rss=int(rss),
        srv=float(srv), foreign=float(foreign), rc=rc, lo=int(lo or 0),
        wire=int(wire) if wire else None))
R = {}
for (id_, n), reps in G.items():
    valid = all(r['ok'] == str(n) for r in reps)
    if id_.startswith('mgmt/'):
        valid = valid and all(r['rc'] == '0' for r in reps)
    med = {k: statistics.median(r[k] for r in reps)
           for k in ('wall', 'cpu', 'self', 'rss', 'srv', 'foreign', 'lo')}
    wires = [r['wire'] for r in reps if r['wire'] is not None]
    R[(id_, n)] = dict(med, valid=valid, reps=len(reps),
                       wall_min=min(r['wall'] for r in reps),
                       wall_max=max(r['wall'] for r in reps),
                       wire=statistics.median(wires) if len(wires) == len(reps) else None,
                       oks="/".join(r['ok'] for r in reps))
print(f"Payload: the mgmt static binary, {size/1e6:.1f} MB. Concurrency 50. "
      "Each figure is the median of the case's repetitions.\n")
print("| case | N | ok per rep | valid | wall s (min–max) | client CPU ms/host "
      "| server (sshd) CPU ms/host | initiator CPU ms/host | initiator peak RSS MB "
      "| loopback MB/host | mgmt wire sent MB/host | foreign CPU s |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for (id_, n), r in sorted(R.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    mg = id_.startswith('mgmt/')
    self_ms = f"{1000 * r['self'] / n:.0f}" if mg else ""
    rss = f"{r['rss'] / 1024:.0f}" if mg else ""
    wire = f"{r['wire'] / n / 1e6:.2f}" if r['wire'] is not None else ""
    valid = "yes" if r['valid'] else "**no**"
    print(f"| {id_} | {n} | {r['oks']} | {valid} "
          f"| {r['wall']:.2f} ({r['wall_min']:.2f}–{r['wall_max']:.2f}) "
          f"| {1000 * r['cpu'] / n:.0f} | {1000 * r['srv'] / n:.0f} | {self_ms} | {rss} "
          f"| {r['lo'] / n / 1e6:.2f} | {wire} | {r['foreign']:.1f} |")
print()
ns = sorted({k[1] for k in R})
def ratio(a, b, f, n):
    if (a, n) not in R or (b, n) not in R:
        return None
    if not (R[(a, n)]['valid'] and R[(b, n)]['valid']):
        return "invalid"
    d = f(R[(b, n)])
    return f"{f(R[(a, n)]) / d:.2f}" if d > 0 else None
print("| ratio (target) | " + " | ".join(f"N={n}" for n in ns) + " |")
print("|---|" + "---|" * len(ns))
def line(label, a, b, f=lambda r: r['wall'], g=None):
    vals = [ratio(a, b, f, n) if g is None else g(a, b, n) for n in ns]
    print(f"| {label} | " + " | ".join('—' if v is None else v for v in vals) + " |")
line("mgmt cold / OpenSSH check-copy-run cold, wall (≤ 0.5)", 'mgmt/cold', 'openssh/cold')
line("mgmt cold / OpenSSH multiplexed check-copy-run cold, wall", 'mgmt/cold', 'openssh-mux/cold')
line("mgmt warm / bare ssh true, wall (≤ 0.5)", 'mgmt/warm', 'openssh/true')
line("mgmt warm / bare ssh true with curve25519, wall", 'mgmt/warm', 'openssh/true-c25519')
line("mgmt warm / OpenSSH check-copy-run warm, wall", 'mgmt/warm', 'openssh/warm')
line("mgmt warm / OpenSSH multiplexed check-copy-run warm, wall", 'mgmt/warm', 'openssh-mux/warm')
line("loopback bytes, mgmt cold / OpenSSH cold", 'mgmt/cold', 'openssh/cold', lambda r: r['lo'])
def cpu_ratio(a, b, n):
    if (a, n) not in R or (b, n) not in R:
        return None
    if not (R[(a, n)]['valid'] and R[(b, n)]['valid']):
        return "invalid"
    return f"{R[(a, n)]['self'] / R[(b, n)]['cpu']:.2f}" if R[(b, n)]['cpu'] > 0 else None
line("initiator CPU/host, mgmt cold / OpenSSH cold client (≤ 0.25)", 'mgmt/cold', 'openssh/cold', g=cpu_ratio)
line("initiator CPU/host, mgmt warm / OpenSSH warm client (≤ 0.25)", 'mgmt/warm', 'openssh/warm', g=cpu_ratio)
def rss(a, b, n):
    if (a, n) not in R:
        return None
    return f"{R[(a, n)]['rss'] / 1024:.0f} / {R.get((b, n), {'rss': 0})['rss'] / 1024:.0f}"
line("initiator peak RSS MB, cold / warm (< 150)", 'mgmt/cold', 'mgmt/warm', g=rss)
EOF
echo "bench/remote.sh: results in $OUT (table.md, results.tsv, logs/)" >&2
