#!/usr/bin/env bash
# bench/link.sh [N ...]   (default: 50)
#
# The fleet behind an emulated uplink (issue #17 item 1): mgmt, OpenSSH and
# Ansible side by side in one run, over the plain link and over a slow,
# lossy one, shipping the same bytes (the mgmt static binary).
#
# The link. The fleet (scripts/fleet.sh: real sshd, one home per host) lives
# in a network namespace of its own on $PREFIX.x (the datacentre), reached
# from this machine through a second namespace that routes between two veth
# pairs (the link): here -- router -- datacentre. Each profile of $LINKS is
# applied to the link in turn:
#
#   veth                    plain veths and the router (in-kernel, as fast
#                           as loopback)
#   RATE/RTT/LOSS           e.g. 100mbit/50ms/0.1%:
#     rate   tc tbf on the two outer ends, each direction's sender side
#            (burst 256kb, latency 100ms), as bench/gateway.sh; "-" for none
#     delay  bench/linkemu (a small Rust program on the `nfq` crate) bound
#            to a netfilter queue in the router; iptables there sends every
#            forwarded packet to it (FORWARD -j NFQUEUE), and it holds each
#            one RTT/2 before accepting it, in order: RTT/2 each way. This
#            kernel has no netem. The router is there because a packet held
#            on its sender's own OUTPUT hook still counts against that
#            socket's TCP small-queue budget, which throttles a bulk sender
#            to a few packets per delay (measured: 58 KB/s at 50 ms, no
#            loss); forwarded packets are free of it, as on a real path
#     loss   the same program drops that share of the packets, each one
#            independently, in each direction (so a round trip loses about
#            twice that)
#
# Each profile is checked before its cases and printed in the header: the
# RTT with ping (20 pings), the rate with a bulk TCP transfer (32 MiB from
# here into the namespace, the direction binaries go).
#
# The cases, per profile and N (hosts G+1..G+N of the fleet; hosts 1..G are
# the gateways):
#
#   mgmt/cold, mgmt/warm       mgmt run --remote (one graph, remote: the N
#                              hosts, one noop), caches emptied first / full
#   mgmt-gw/cold, mgmt-gw/warm the same N hosts behind G gateways (G graphs,
#                              via: gateway K), as bench/gateway.sh
#   openssh/cold, openssh/warm check-copy-run with xargs -P (the shared
#                              bench's job, bench/lib.sh)
#   openssh/true               xargs -P ssh HOST true
#   openssh/true-c25519        the same, -o KexAlgorithms=curve25519-sha256
#   ansible/cold, ansible/warm ansible-playbook copy + command, only at the
#                              smallest N (ANSIBLE_N), skipped when Ansible
#                              cannot be installed
#
# Every case runs REPS times (default 3): medians, min–max beside them. A
# case counts only when every repetition reached all N hosts (mgmt: exit 0
# and its summary "N converged, 0 failed"; OpenSSH: an OK line per host;
# Ansible: ok=2 failed=0 per host); a ratio with an invalid side says
# "invalid". Measured per case: wall time; bytes on the uplink (the veth's
# tx_bytes + rx_bytes, both directions, every byte of the case); set-up
# round trips per host, derived: wall time per host slot (wall x min(CONC,
# N) / N) over the measured RTT, for every tool, and for mgmt also each
# host's own set-up (connect + copy + start, from --events' "done" rows,
# median) over the RTT; initiator CPU per host (the client cgroup: the tool
# and all it starts; for mgmt also its own, /usr/bin/time) and host CPU per
# host (the fleet's cgroup: sshd, the hosts' mgmt, shells); the initiator's
# peak RSS, and in the mgmt cases every gateway's and leaf's peak RSS
# (VmHWM of the mgmt processes run from the fleet's caches, sampled every
# 0.1 s: the gateways' cost moves, it does not vanish); the link emulator's
# CPU (its own cgroup), kept out of "foreign".
#
# Knobs: MGMT_BIN (default target/x86_64-unknown-linux-musl/release/mgmt),
# LINKS (default "veth 100mbit/50ms/0.1%"), G=2 gateways, CONC=50 (every
# tool's concurrency and mgmt's --cconns), REPS=3, SKIP=regex of case ids,
# ANSIBLE_N (default the smallest N), ARGS=extra flags for every mgmt run,
# OUT (default /tmp/mgmt-bench-link). Needs root, iproute2, openssh-server,
# iptables, iputils-ping, time (installed with apt-get when missing), cargo
# (builds bench/linkemu). Nothing leaves the machine: the addresses exist
# only in the two namespaces and on the veth pairs, which this script makes
# and removes.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=bench/link.sh
# shellcheck source=bench/lib.sh
. "$HERE/bench/lib.sh"

NS_=("$@"); [ "${#NS_[@]}" -gt 0 ] || NS_=(50)
read -r -a LINKS <<< "${LINKS:-veth 100mbit/50ms/0.1%}"
G=${G:-2}
CONC=${CONC:-50}
REPS=${REPS:-3}
SKIP=${SKIP:-}
read -r -a extra <<< "${ARGS:-}"
BIN=${MGMT_BIN:-$HERE/target/x86_64-unknown-linux-musl/release/mgmt}
OUT=${OUT:-/tmp/mgmt-bench-link}
NSN=mgmt-bench-link        # the datacentre: the fleet
RNS=mgmt-bench-link-r      # the link: a router between here and the datacentre
V0=mgmtlv0                 # here, towards the router (the uplink)
V1=mgmtlv1                 # the router, towards here
V2=mgmtlv2                 # the router, towards the datacentre
V3=mgmtlv3                 # the datacentre, towards the router
PREFIX=10.78.1
QUEUE=${QUEUE:-7}
CGROOT=/sys/fs/cgroup/cpuacct
FLEET="$HERE/scripts/fleet.sh"

maxn=0
for n in "${NS_[@]}"; do
  [[ $n =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] || die "N must be a number (got '$n')"
  [ $((n % G)) -eq 0 ] || die "N ($n) must be a multiple of G ($G)"
  [ "$n" -gt "$maxn" ] && maxn=$n
done
[ $((maxn + G)) -le 254 ] || die "N + G must be at most 254"
ANSIBLE_N=${ANSIBLE_N:-$(printf '%s\n' "${NS_[@]}" | sort -n | head -n 1)}
for l in "${LINKS[@]}"; do
  [ "$l" = veth ] || [[ $l =~ ^(-|[0-9]+[kmg]?bit)/[0-9.]+ms/[0-9.]+%$ ]] ||
    die "link profile '$l' is not veth or RATE/RTTms/LOSS% (e.g. 100mbit/50ms/0.1%)"
done
[ "$(id -u)" = 0 ] || die "run as root (network namespace, sshd, iptables)"
[ -x "$BIN" ] || die "no mgmt binary at $BIN: cargo build --release --target x86_64-unknown-linux-musl (or set MGMT_BIN)"
command -v ip > /dev/null && command -v tc > /dev/null || die "needs iproute2 (ip, tc)"
[ -x /usr/sbin/sshd ] || die "openssh-server missing: run 'bash scripts/deps.sh'"
for x in "$NSN" "$RNS"; do
  ! ip netns list | grep -qw "$x" || die "namespace $x exists: another run? remove it with 'ip netns del $x'"
done
[ -x /usr/bin/time ] || apt_install time || die "cannot install 'time': apt-get install -y time"
command -v iptables > /dev/null || apt_install iptables || die "cannot install iptables: apt-get install -y iptables"
command -v ping > /dev/null || apt_install iputils-ping || die "cannot install ping: apt-get install -y iputils-ping"
HAVE_ANSIBLE=1
if ! command -v ansible-playbook > /dev/null; then
  apt_install ansible || { HAVE_ANSIBLE=0; echo "$BENCH: ansible could not be installed (apt-get install -y ansible failed); Ansible cases skipped" >&2; }
fi
[ "$HAVE_ANSIBLE" = 1 ] || SKIP="${SKIP:+$SKIP|}ansible"

# The link emulator, its own cargo package (not a member of mgmt's crate).
LE_TARGET=${CARGO_TARGET_DIR:-$HERE/target}/linkemu
(cd "$HERE/bench/linkemu" && CARGO_TARGET_DIR=$LE_TARGET cargo build --release --locked --quiet) ||
  die "cannot build bench/linkemu (cargo build --release in bench/linkemu)"
LINKEMU=$LE_TARGET/release/linkemu

WORK=$(mktemp -d /tmp/mgmt-bench-link.XXXXXX)
F=$WORK/fleet
CG=""; SCG=""; LCG=""
if [ -w "$CGROOT" ]; then
  CG="$CGROOT/mgmt_link_client_$$"
  SCG="$CGROOT/mgmt_link_server_$$"
  LCG="$CGROOT/mgmt_link_emu_$$"
  mkdir -p "$CG" "$SCG" "$LCG"
fi
LE_PID=""
SRV_PID=""
RSS_SAMPLER=""

unlink_rules() {
  ip netns exec "$RNS" iptables -D FORWARD -j NFQUEUE --queue-num "$QUEUE" 2> /dev/null || true
}
stop_linkemu() {
  [ -n "$LE_PID" ] || return 0
  unlink_rules
  kill -TERM "$LE_PID" 2> /dev/null || true
  wait "$LE_PID" 2> /dev/null || true
  LE_PID=""
}
cleanup() {
  local rc=$?
  rss_sampler_stop
  [ -n "$SRV_PID" ] && { kill "$SRV_PID" 2> /dev/null || true; }
  close_masters
  stop_linkemu
  [ -f "$F/.mgmt-fleet" ] && { bash "$FLEET" down "$F" > /dev/null 2>&1 || rc=1; }
  ip link del "$V0" 2> /dev/null || true
  ip netns del "$NSN" 2> /dev/null || true
  ip netns del "$RNS" 2> /dev/null || true
  local g
  for g in "$CG" "$SCG" "$LCG"; do
    if [ -n "$g" ] && [ -d "$g" ]; then rmdir "$g" 2> /dev/null || echo "$BENCH: cgroup $g still busy, not removed" >&2; fi
  done
  rm -rf -- "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "$BENCH: interrupted" >&2; exit 130' INT TERM

mkdir -p "$OUT" "$WORK/logs"
HASH=$(sha256sum "$BIN" | awk '{print $1}')
SIZE=$(stat -c %s "$BIN")
write_jobs

# here ($V0 10.78.0.254) -- ($V1 10.78.0.1) router $RNS ($V2 10.78.2.254)
#   -- ($V3 10.78.2.1, the hosts' $PREFIX.x) datacentre $NSN
echo "== namespaces $RNS (the link) and $NSN ($((maxn + G)) hosts on $PREFIX.x)" >&2
ip netns add "$RNS"
ip netns add "$NSN"
ip link add "$V0" type veth peer name "$V1"
ip link set "$V1" netns "$RNS"
ip addr add 10.78.0.254/24 dev "$V0"
ip link set "$V0" up
ip route add "$PREFIX.0/24" via 10.78.0.1 dev "$V0"
ip netns exec "$RNS" ip link set lo up
ip netns exec "$RNS" ip addr add 10.78.0.1/24 dev "$V1"
ip netns exec "$RNS" ip link set "$V1" up
ip netns exec "$RNS" ip link add "$V2" type veth peer name "$V3"
ip netns exec "$RNS" ip link set "$V3" netns "$NSN"
ip netns exec "$RNS" ip addr add 10.78.2.254/24 dev "$V2"
ip netns exec "$RNS" ip link set "$V2" up
ip netns exec "$RNS" ip route add "$PREFIX.0/24" via 10.78.2.1 dev "$V2"
ip netns exec "$RNS" sysctl -qw net.ipv4.ip_forward=1
ip netns exec "$NSN" ip link set lo up
ip netns exec "$NSN" ip addr add 10.78.2.1/24 dev "$V3"
for ((x = 1; x <= maxn + G; x++)); do
  ip netns exec "$NSN" ip addr add "$PREFIX.$x/32" dev "$V3"
done
ip netns exec "$NSN" ip link set "$V3" up
ip netns exec "$NSN" ip route add default via 10.78.2.254 dev "$V3"
(
  [ -n "$SCG" ] && echo "$BASHPID" > "$SCG/cgroup.procs"
  exec ip netns exec "$NSN" env FLEET_NET=$PREFIX FLEET_IN_NETNS=1 bash "$FLEET" up $((maxn + G)) "$F"
)
mapfile -t urls < "$F/hosts"

# Bytes on the uplink so far: both directions of the pair.
bench_bytes() { echo $(($(cat /sys/class/net/$V0/statistics/tx_bytes) + $(cat /sys/class/net/$V0/statistics/rx_bytes))); }

# --- the link profiles ---
LINK=""       # the profile being measured
RTT_MS=0      # its measured ping RTT (average)
link_up() {
  local p=$1 rate rtt loss half frac
  LINK=$p
  tc qdisc del dev "$V0" root 2> /dev/null || true
  ip netns exec "$NSN" tc qdisc del dev "$V3" root 2> /dev/null || true
  [ "$p" = veth ] && return 0
  IFS=/ read -r rate rtt loss <<< "$p"
  if [ "$rate" != - ]; then
    tc qdisc replace dev "$V0" root tbf rate "$rate" burst 256kb latency 100ms
    ip netns exec "$NSN" tc qdisc replace dev "$V3" root tbf rate "$rate" burst 256kb latency 100ms
  fi
  half=$(awk -v r="${rtt%ms}" 'BEGIN { print r / 2 }')
  frac=$(awk -v l="${loss%\%}" 'BEGIN { print l / 100 }')
  # The emulator first, then the rules: a queued packet with no reader is dropped.
  local ready=$WORK/linkemu.out
  : > "$ready"
  (
    [ -n "$LCG" ] && echo "$BASHPID" > "$LCG/cgroup.procs"
    exec ip netns exec "$RNS" "$LINKEMU" --queue "$QUEUE" --delay-ms "$half" --loss "$frac"
  ) > "$ready" 2> "$WORK/linkemu.err" &
  LE_PID=$!
  local i
  for ((i = 0; i < 100; i++)); do
    grep -q '^linkemu: ready' "$ready" && break
    kill -0 "$LE_PID" 2> /dev/null || { cat "$WORK/linkemu.err" >&2; die "linkemu exited"; }
    sleep 0.05
  done
  grep -q '^linkemu: ready' "$ready" || die "linkemu never said ready"
  ip netns exec "$RNS" iptables -A FORWARD -j NFQUEUE --queue-num "$QUEUE"
}
link_down() {
  stop_linkemu
  [ -s "$WORK/linkemu.err" ] && sed "s/^/  /" "$WORK/linkemu.err" >&2
  : > "$WORK/linkemu.err"
  tc qdisc del dev "$V0" root 2> /dev/null || true
  ip netns exec "$NSN" tc qdisc del dev "$V3" root 2> /dev/null || true
}
# link_check: RTT by ping and rate by a bulk TCP transfer; one header line.
link_check() {
  local pl rtt rmin rmax ploss mbps
  pl=$(ping -c 20 -i 0.2 -q "$PREFIX.1" 2>&1 || true)
  ploss=$(sed -n 's/.* \([0-9.]*\)% packet loss.*/\1/p' <<< "$pl")
  read -r rmin rtt rmax < <(sed -n 's#^rtt [^=]*= \([0-9.]*\)/\([0-9.]*\)/\([0-9.]*\)/.*#\1 \2 \3#p' <<< "$pl")
  RTT_MS=${rtt:-0}
  # A receiver in the namespace counts bytes until EOF; the sender here
  # times 32 MiB until the receiver has read them all and closed.
  ip netns exec "$NSN" python3 -c '
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5201)); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); n = 0
while True:
    b = c.recv(1 << 20)
    if not b: break
    n += len(b)
c.close()' "$PREFIX.1" > "$WORK/bulk.srv" &
  SRV_PID=$!
  local i
  for ((i = 0; i < 100; i++)); do grep -q ready "$WORK/bulk.srv" && break; sleep 0.05; done
  mbps=$(python3 -c '
import socket, sys, time
s = socket.create_connection((sys.argv[1], 5201), timeout=60); b = b"\0" * (1 << 20); t = time.time()
for _ in range(32): s.sendall(b)
s.shutdown(socket.SHUT_WR); s.recv(1)
print("%.1f" % (32 * (1 << 20) * 8 / 1e6 / (time.time() - t)))' "$PREFIX.1" 2>&1 || echo "failed")
  wait "$SRV_PID" 2> /dev/null || true
  SRV_PID=""
  local how="plain veth, no shaping"
  [ "$LINK" = veth ] || how="tbf rate on each direction's sender side; bench/linkemu on a router namespace (iptables FORWARD -j NFQUEUE): RTT/2 each way, independent loss per packet each way"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$LINK" "${rmin:-?}" "${rtt:-?}" "${rmax:-?}" "${ploss:-?}" "$mbps" "$how" >> "$WORK/links.tsv"
  echo "== link $LINK: ping RTT min/avg/max ${rmin:-?}/${rtt:-?}/${rmax:-?} ms, ${ploss:-?}% of 20 pings lost; bulk TCP $mbps Mbit/s here -> namespace ($how)" >&2
}

# --- per-case hooks (bench/lib.sh) ---
LE_CPU0=0
case_start() {
  LE_CPU0=$(cg_usage "$LCG")
  case $1 in mgmt*) rss_sampler_start "$F/home-" "$WORK/rss" ;; *) : > "$WORK/rss" ;; esac
  rm -f "$WORK/events.json"
}
case_stop() {
  rss_sampler_stop
  BENCH_OTHER_CPU=$(echo "$LE_CPU0 $(cg_usage "$LCG")" | awk '{printf "%.2f", ($2 - $1) / 1e9}')
}
# Extra fields: link, rtt_ms, linkemu_cpu_s, gw_n, gw_max_kb, gw_sum_kb,
# leaf_n, leaf_max_kb, setup_ms (median leaf), gw_setup_ms (median gateway).
case_extra() {
  local setup="" gsetup=""
  if [ -s "$WORK/events.json" ]; then
    cp "$WORK/events.json" "$WORK/logs/${1//\//_}.$2.$3.events.json"
    read -r setup gsetup < <(python3 - "$WORK/events.json" << 'EOF'
import json, statistics, sys
leaf, gw = [], []
for line in open(sys.argv[1]):
    try:
        e = json.loads(line)
    except ValueError:
        continue
    if e.get('event') != 'done' or not e.get('hop'):
        continue
    h = e['hop']
    t = sum(h.get(k) or 0 for k in ('connect_ms', 'copy_ms', 'start_ms'))
    (gw if e.get('result') == 'gateway' else leaf).append(t)
med = lambda v: str(statistics.median(v)) if v else '-'
print(med(leaf), med(gw))
EOF
    )
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s' "$LINK" "$RTT_MS" "${BENCH_OTHER_CPU:-0}" "$(rss_summary "$WORK/rss")" "${setup:--}" "${gsetup:--}"
}

RES=$WORK/results.tsv
: > "$RES"
: > "$WORK/links.tsv"
echo "$BENCH: binary $BIN ($SIZE bytes, sha256 ${HASH:0:12}), concurrency $CONC, N = ${NS_[*]}, G = $G, links: ${LINKS[*]}" >&2
echo "$BENCH: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); CPU from $([ -n "$CG" ] && echo "cpuacct cgroups" || echo "rusage (no host CPU)")" >&2

rm_cache="rm -rf $F/home-*/.cache"
mgmt=(env -u SSH_AUTH_SOCK XDG_CACHE_HOME="$WORK/xdg" "$BIN" run --cconns "$CONC" --converged-timeout 0 --events "$WORK/events.json"
  --identity "$F/id_ed25519" --known-hosts "$F/known_hosts" ${extra[@]+"${extra[@]}"})
# The initiator compresses the binary once per build and keeps it
# ($XDG_CACHE_HOME/mgmt/ship, the newest four per codec): one untimed run to
# host 1 makes it, so no measured cold run pays for it (a laptop pays it
# once per version). A cache of the bench's own, which other runs of mgmt
# on this machine cannot evict.
echo "== priming the initiator's compressed-binary cache (one untimed run)" >&2
printf 'graph: prime\nremote: %s\nresources:\n  noop:\n  - name: n\n' "${urls[0]}" > "$WORK/prime.yaml"
"${mgmt[@]}" --remote "$WORK/prime.yaml" > "$WORK/prime.log" 2>&1 || { tail -n 20 "$WORK/prime.log" >&2; die "the priming run failed"; }

for link in "${LINKS[@]}"; do
  link_up "$link"
  link_check
  for n in "${NS_[@]}"; do
    echo "== link $link, N=$n" >&2
    # hosts G+1..G+N: leaves; 1..G: gateways
    sed -n "$((G + 1)),$((G + n))p" "$F/addrs" > "$WORK/addrs.$n"
    {
      echo "graph: link"; echo "remote:"
      for ((x = G; x < G + n; x++)); do echo "- ${urls[$x]}"; done
      printf 'resources:\n  noop:\n  - name: noop1\nedges: []\n'
    } > "$WORK/flat.$n.yaml"
    per=$((n / G))
    hier=()
    for ((k = 0; k < G; k++)); do
      g=$WORK/gw$((k + 1)).$n.yaml
      {
        echo "graph: dc$((k + 1))"; echo "via: [${urls[$k]}]"; echo "remote:"
        for ((x = G + k * per; x < G + (k + 1) * per; x++)); do echo "- ${urls[$x]}"; done
        printf 'resources:\n  noop:\n  - name: noop1\nedges: []\n'
      } > "$g"
      hier+=(--remote "$g")
    done
    write_inventory "$F" "$WORK/addrs.$n" $((G + 1))
    cfg=$F/ssh_config

    run_case mgmt/cold "$n" "$rm_cache" "${mgmt[@]}" --remote "$WORK/flat.$n.yaml"
    run_case mgmt/warm "$n" "" "${mgmt[@]}" --remote "$WORK/flat.$n.yaml"
    run_case mgmt-gw/cold "$n" "$rm_cache" "${mgmt[@]}" "${hier[@]}"
    run_case mgmt-gw/warm "$n" "" "${mgmt[@]}" "${hier[@]}"
    run_case openssh/cold "$n" "$rm_cache" \
      env PB_CFG="$cfg" PB_HASH="$HASH" PB_PAYLOAD="$BIN" xargs -a "$WORK/addrs.$n" -P "$CONC" -n 1 "$WORK/openssh_job.sh"
    run_case openssh/warm "$n" "" \
      env PB_CFG="$cfg" PB_HASH="$HASH" PB_PAYLOAD="$BIN" xargs -a "$WORK/addrs.$n" -P "$CONC" -n 1 "$WORK/openssh_job.sh"
    run_case openssh/true "$n" "" \
      xargs -a "$WORK/addrs.$n" -P "$CONC" -I{} sh -c 'ssh -F "$0" "$1" true && echo "OK $1" || echo "FAIL $1"' "$cfg" {}
    run_case openssh/true-c25519 "$n" "" \
      xargs -a "$WORK/addrs.$n" -P "$CONC" -I{} sh -c 'ssh -F "$0" -o KexAlgorithms=curve25519-sha256 "$1" true && echo "OK $1" || echo "FAIL $1"' "$cfg" {}
    if [ "$n" = "$ANSIBLE_N" ]; then
      run_case ansible/cold "$n" "$rm_cache" \
        env ANSIBLE_CONFIG="$WORK/ansible/ansible.cfg" ansible-playbook -f "$CONC" "$WORK/ansible_job.yml" \
        -e "payload_hash=$HASH" -e "payload_src=$BIN"
      run_case ansible/warm "$n" "" \
        env ANSIBLE_CONFIG="$WORK/ansible/ansible.cfg" ansible-playbook -f "$CONC" "$WORK/ansible_job.yml" \
        -e "payload_hash=$HASH" -e "payload_src=$BIN"
    fi
  done
  link_down
done

cp "$RES" "$OUT/results.tsv"
cp "$WORK/links.tsv" "$OUT/links.tsv"
rm -rf "$OUT/logs"; cp -r "$WORK/logs" "$OUT/" 2> /dev/null || true

python3 - "$RES" "$WORK/links.tsv" "$SIZE" "$CONC" "$G" << 'EOF' | tee "$OUT/table.md"
import statistics, sys
rows = [l.rstrip('\n').split('\t') for l in open(sys.argv[1]) if l.strip()]
links = [l.rstrip('\n').split('\t') for l in open(sys.argv[2]) if l.strip()]
size, conc, G = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
print(f"Payload: the mgmt static binary, {size/1e6:.1f} MB. Concurrency {conc} (--cconns, xargs -P, forks); "
      f"{G} gateways in the mgmt-gw cases. Each figure is the median of the case's repetitions.\n")
print("| link | emulated by | ping RTT ms min/avg/max | ping loss (20) | bulk TCP Mbit/s |")
print("|---|---|---|---|---|")
for p, mn, avg, mx, pl, mb, how in links:
    print(f"| {p} | {how} | {mn}/{avg}/{mx} | {pl}% | {mb} |")
print()
G_ = {}
for r in rows:
    (id_, n, ok, wall, cpu, rss, self_, rc, srv, foreign, rep, by, wire,
     link, rtt, le, gwn, gwmax, gwsum, lfn, lfmax, setup, gsetup) = r
    G_.setdefault((link, id_, int(n)), []).append(dict(
        ok=ok, wall=float(wall), cpu=float(cpu), self=float(self_), rss=int(rss),
        srv=float(srv), foreign=float(foreign), rc=rc, by=int(by or 0), rtt=float(rtt or 0),
        le=float(le), gwn=int(gwn), gwmax=int(gwmax), gwsum=int(gwsum), lfmax=int(lfmax),
        setup=None if setup == '-' else float(setup), gsetup=None if gsetup == '-' else float(gsetup)))
R = {}
for (link, id_, n), reps in G_.items():
    valid = all(r['ok'] == str(n) for r in reps)
    if id_.startswith('mgmt'):
        valid = valid and all(r['rc'] == '0' for r in reps)
    med = {k: statistics.median(r[k] for r in reps)
           for k in ('wall', 'cpu', 'self', 'rss', 'srv', 'foreign', 'by', 'rtt', 'le', 'gwmax', 'gwsum', 'lfmax', 'gwn')}
    for k in ('setup', 'gsetup'):
        v = [r[k] for r in reps if r[k] is not None]
        med[k] = statistics.median(v) if v else None
    R[(link, id_, n)] = dict(med, valid=valid, wall_min=min(r['wall'] for r in reps),
                             wall_max=max(r['wall'] for r in reps), oks="/".join(r['ok'] for r in reps))
order = ['mgmt/cold', 'mgmt/warm', 'mgmt-gw/cold', 'mgmt-gw/warm', 'openssh/cold', 'openssh/warm',
         'openssh/true', 'openssh/true-c25519', 'ansible/cold', 'ansible/warm']
linkorder = [l[0] for l in links]
print("| link | case | N | ok per rep | valid | wall s (min–max) | uplink MB | uplink MB/host "
      "| RTTs/host (wall/slot ÷ RTT) | mgmt set-up/host ms (RTTs) | initiator CPU ms/host (client cgroup; mgmt itself) "
      "| host CPU ms/host | initiator peak RSS MB | gateways' peak RSS MB (each max; sum) | leaves' peak RSS MB (max) "
      "| link emulator CPU s | foreign CPU s |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for (link, id_, n), r in sorted(R.items(), key=lambda kv: (linkorder.index(kv[0][0]), kv[0][2], order.index(kv[0][1]) if kv[0][1] in order else 99)):
    mg = id_.startswith('mgmt')
    rtt = r['rtt']
    slot = r['wall'] * min(conc, n) / n
    rtts = f"{slot / (rtt / 1000):.0f}" if rtt >= 1 else "—"
    if mg and r['setup'] is not None:
        su = f"{r['setup']:.0f}" + (f" ({r['setup'] / rtt:.0f})" if rtt >= 1 else "")
        if id_.startswith('mgmt-gw') and r['gsetup'] is not None:
            su += f"; gateway {r['gsetup']:.0f}" + (f" ({r['gsetup'] / rtt:.0f})" if rtt >= 1 else "")
    else:
        su = ""
    icpu = f"{1000 * r['cpu'] / n:.0f}" + (f"; {1000 * r['self'] / n:.0f}" if mg else "")
    rss = f"{r['rss'] / 1024:.0f}" if mg else ""
    gw = f"{r['gwmax'] / 1024:.0f}; {r['gwsum'] / 1024:.0f}" if id_.startswith('mgmt-gw') else ""
    lf = f"{r['lfmax'] / 1024:.0f}" if mg else ""
    valid = "yes" if r['valid'] else "**no**"
    print(f"| {link} | {id_} | {n} | {r['oks']} | {valid} | {r['wall']:.2f} ({r['wall_min']:.2f}–{r['wall_max']:.2f}) "
          f"| {r['by'] / 1e6:.1f} | {r['by'] / n / 1e6:.2f} | {rtts} | {su} | {icpu} | {1000 * r['srv'] / n:.0f} "
          f"| {rss} | {gw} | {lf} | {r['le']:.1f} | {r['foreign']:.1f} |")
print()
ns = sorted({k[2] for k in R})
def ratio(link, a, b, n, f=lambda r: r['wall']):
    if (link, a, n) not in R or (link, b, n) not in R:
        return None
    if not (R[(link, a, n)]['valid'] and R[(link, b, n)]['valid']):
        return "invalid"
    d = f(R[(link, b, n)])
    return f"{f(R[(link, a, n)]) / d:.2f}" if d > 0 else None
cols = [(l, n) for l in linkorder for n in ns]
print("| ratio | " + " | ".join(f"{l} N={n}" for l, n in cols) + " |")
print("|---|" + "---|" * len(cols))
def line(label, a, b, f=lambda r: r['wall']):
    vals = [ratio(l, a, b, n, f) for l, n in cols]
    print(f"| {label} | " + " | ".join('—' if v is None else v for v in vals) + " |")
line("wall, mgmt cold / OpenSSH check-copy-run cold", 'mgmt/cold', 'openssh/cold')
line("wall, mgmt-gw cold / OpenSSH check-copy-run cold", 'mgmt-gw/cold', 'openssh/cold')
line("wall, mgmt-gw cold / mgmt cold", 'mgmt-gw/cold', 'mgmt/cold')
line("wall, mgmt warm / bare ssh true", 'mgmt/warm', 'openssh/true')
line("wall, mgmt warm / bare ssh true (curve25519)", 'mgmt/warm', 'openssh/true-c25519')
line("wall, mgmt warm / OpenSSH check-copy-run warm", 'mgmt/warm', 'openssh/warm')
line("wall, mgmt-gw warm / mgmt warm", 'mgmt-gw/warm', 'mgmt/warm')
line("wall, mgmt cold / Ansible cold", 'mgmt/cold', 'ansible/cold')
line("wall, mgmt warm / Ansible warm", 'mgmt/warm', 'ansible/warm')
line("uplink bytes, mgmt cold / OpenSSH cold", 'mgmt/cold', 'openssh/cold', lambda r: r['by'])
line("uplink bytes, mgmt-gw cold / OpenSSH cold", 'mgmt-gw/cold', 'openssh/cold', lambda r: r['by'])
line("uplink bytes, mgmt warm / ssh true", 'mgmt/warm', 'openssh/true', lambda r: r['by'])
EOF
echo "$BENCH: results in $OUT (table.md, results.tsv, links.tsv, logs/)" >&2
