#!/usr/bin/env bash
# bench/gateway.sh [N] [G]   (default: 200 hosts, 4 gateways)
#
# N hosts behind G gateways against the same N hosts flat, side by side in
# one run, at the same --cconns, shipping the mgmt static binary itself:
#
#   flat/cold   mgmt run --remote flat.yaml (remote: all N URLs), caches empty
#   hier/cold   mgmt run --remote gw1.yaml ... gwG.yaml (N/G URLs each, via: gwK)
#   flat/warm, hier/warm   the same again, every binary cached
#
# The fleet (scripts/fleet.sh: real sshd, one home per host) lives in a
# network namespace of its own, on 10.77.1.x, reached from this machine's
# side through a veth pair: that pair is the "uplink" from the laptop to the
# datacentre. Gateways reach their hosts inside the namespace. Each case runs
# twice: on the plain veth (in-kernel, as fast as loopback) and with the
# uplink throttled to $RATE by tc tbf on both ends of the pair. Nothing
# leaves the machine: the 10.77 addresses exist only inside the namespace
# and on the veth pair, which this script makes and removes.
#
# Measured per case: wall time, initiator CPU and peak RSS (/usr/bin/time),
# and from the run's own summary the binary bytes and all bytes written to
# the SSH connections from here (every byte of SSH framing, graphs, output
# and store traffic). Beside the initiator's peak RSS, the gateways' and the
# leaves' (#19 item 4: the gateways' cost moves, it does not vanish): the
# VmHWM of every mgmt process run from the fleet's caches, sampled every
# 0.1 s during the case (bench/lib.sh's rss_sampler), the largest gateway,
# all gateways together and the largest leaf. Prints a table and the ratios
# of issue #5's targets.
#
# Knobs: MGMT_BIN (default target/x86_64-unknown-linux-musl/release/mgmt),
# CONC=50, RATE=100mbit, SKIP=regex of case ids (e.g. SKIP=throttled),
# ARGS=extra flags for every mgmt run (e.g. ARGS=--trace),
# OUT (default /tmp/mgmt-bench-gateway). Needs root, iproute2, openssh-server.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
N=${1:-200}
G=${2:-4}
CONC=${CONC:-50}
RATE=${RATE:-100mbit}
SKIP=${SKIP:-}
read -r -a extra <<< "${ARGS:-}"
BIN=${MGMT_BIN:-$HERE/target/x86_64-unknown-linux-musl/release/mgmt}
OUT=${OUT:-/tmp/mgmt-bench-gateway}
NS=mgmt-bench-dc
V0=mgmtbv0
V1=mgmtbv1
PREFIX=10.77.1

BENCH=bench/gateway.sh
# shellcheck source=bench/lib.sh
. "$HERE/bench/lib.sh"
[ "$(id -u)" = 0 ] || die "run as root (network namespace, sshd)"
[ -x "$BIN" ] || die "no mgmt binary at $BIN: cargo build --release --target x86_64-unknown-linux-musl (or set MGMT_BIN)"
command -v ip >/dev/null && command -v tc >/dev/null || die "needs iproute2 (ip, tc)"
[ -x /usr/bin/time ] || die "needs /usr/bin/time (apt-get install -y time)"
[ $((N + G)) -le 254 ] || die "N + G must be at most 254"
[ "$G" -ge 1 ] && [ $((N % G)) -eq 0 ] || die "N must be a multiple of G"
! ip netns list | grep -qw "$NS" || die "namespace $NS exists: another run? remove it with 'ip netns del $NS'"

work=$(mktemp -d /tmp/mgmt-bench-gateway.XXXXXX)
fleet=$work/fleet
mkdir -p "$OUT"
cleanup() {
  local rc=$?
  rss_sampler_stop
  [ -f "$fleet/.mgmt-fleet" ] && bash "$HERE/scripts/fleet.sh" down "$fleet" >/dev/null 2>&1 || true
  ip link del "$V0" 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  rm -rf -- "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== namespace $NS: $((N + G)) hosts on $PREFIX.x behind veth $V0/$V1"
ip netns add "$NS"
ip link add "$V0" type veth peer name "$V1"
ip link set "$V1" netns "$NS"
ip addr add 10.77.0.254/24 dev "$V0"
ip link set "$V0" up
ip route add "$PREFIX.0/24" dev "$V0"
ip netns exec "$NS" ip link set lo up
ip netns exec "$NS" ip addr add 10.77.0.1/24 dev "$V1"
for ((x = 1; x <= N + G; x++)); do
  ip netns exec "$NS" ip addr add "$PREFIX.$x/32" dev "$V1"
done
ip netns exec "$NS" ip link set "$V1" up
ip netns exec "$NS" env FLEET_NET=$PREFIX FLEET_IN_NETNS=1 bash "$HERE/scripts/fleet.sh" up $((N + G)) "$fleet"
mapfile -t urls < "$fleet/hosts"

# Graphs: one noop per host; gateways are hosts 1..G, the rest are leaves.
{
  echo "graph: flat"; echo "remote:"
  for ((x = G; x < N + G; x++)); do echo "- ${urls[$x]}"; done
  printf 'resources:\n  noop:\n  - name: n\n'
} > "$work/flat.yaml"
per=$((N / G))
hier=()
for ((k = 0; k < G; k++)); do
  f=$work/gw$((k + 1)).yaml
  {
    echo "graph: dc$((k + 1))"; echo "via: [${urls[$k]}]"; echo "remote:"
    for ((x = G + k * per; x < G + (k + 1) * per; x++)); do echo "- ${urls[$x]}"; done
    printf 'resources:\n  noop:\n  - name: n\n'
  } > "$f"
  hier+=(--remote "$f")
done
graph_bytes=$(cat "$work"/gw*.yaml | wc -c)
bin_bytes=$(stat -c %s "$BIN")

clear_caches() { rm -rf "$fleet"/home-*/.cache; }

throttle() {
  tc qdisc replace dev "$V0" root tbf rate "$RATE" burst 256kb latency 100ms
  ip netns exec "$NS" tc qdisc replace dev "$V1" root tbf rate "$RATE" burst 256kb latency 100ms
}

# run_case ID ARGS...: one mgmt run; appends "id wall cpu rss_kb binary wire
# ok rc gw_n gw_max_kb gw_sum_kb leaf_n leaf_max_kb" to $OUT/results.
run_case() {
  local id=$1; shift
  if [ -n "$SKIP" ] && [[ $id =~ $SKIP ]]; then return; fi
  local log=$OUT/${id//\//-}.log
  echo "== $id"
  local status=0
  rss_sampler_start "$fleet/home-" "$work/rss"
  env -u SSH_AUTH_SOCK /usr/bin/time -o "$work/time" -f '%e %U %S %M' \
    "$BIN" run "$@" --cconns "$CONC" --converged-timeout 0 \
    --identity "$fleet/id_ed25519" --known-hosts "$fleet/known_hosts" ${extra[@]+"${extra[@]}"} > "$log.out" 2> "$log" || status=$?
  rss_sampler_stop
  # time(1) puts "Command exited with non-zero status N" first on failure.
  read -r wall user sys rss < <(tail -n 1 "$work/time")
  local binary wire ok
  binary=$(sed -n 's/^binary sent: [^(]*(\([0-9]*\) B) from here.*/\1/p' "$log")
  wire=$(sed -n 's/^wire sent: [^(]*(\([0-9]*\) B) from here.*/\1/p' "$log")
  ok=$(grep -c ' converged ' "$log" || true)
  echo "$id $wall $(awk -v u="$user" -v s="$sys" 'BEGIN { print u + s }') $rss ${binary:-0} ${wire:-0} $ok $status $(rss_summary "$work/rss" | tr '\t' ' ')" | tee -a "$OUT/results"
}

: > "$OUT/results"
for phase in veth throttled; do
  if [ "$phase" = throttled ]; then
    if [ -n "$SKIP" ] && [[ throttled =~ $SKIP ]]; then continue; fi
    echo "== throttling the uplink to $RATE"
    throttle
  fi
  clear_caches; run_case "$phase/flat/cold" --remote "$work/flat.yaml"
  run_case "$phase/flat/warm" --remote "$work/flat.yaml"
  clear_caches; run_case "$phase/hier/cold" "${hier[@]}"
  run_case "$phase/hier/warm" "${hier[@]}"
done

echo
echo "N=$N hosts, G=$G gateways, --cconns $CONC, binary $bin_bytes B, gateway graphs $graph_bytes B, throttled rate $RATE"
printf '%-22s %8s %8s %9s %14s %14s %5s %4s %16s %16s %15s\n' case wall_s cpu_s rss_MB binary_B wire_B conv rc gw_rss_max_MB gw_rss_sum_MB leaf_rss_max_MB
mb() { awk -v r="$1" 'BEGIN { printf "%.1f", r / 1024 }'; }
while read -r id wall cpu rss binary wire ok status gwn gwmax gwsum _ lfmax; do
  if [ "${gwn:-0}" -gt 0 ]; then gwm="$(mb "$gwmax") ($gwn)"; gws=$(mb "$gwsum"); else gwm=-; gws=-; fi
  printf '%-22s %8.2f %8.2f %9.1f %14s %14s %5s %4s %16s %16s %15s\n' "$id" "$wall" "$cpu" "$(mb "$rss")" "$binary" "$wire" "$ok" "$status" "$gwm" "$gws" "$(mb "${lfmax:-0}")"
done < "$OUT/results"
echo "(peak RSS: the initiator's from /usr/bin/time; gateways' and leaves' the VmHWM of their mgmt processes, sampled every 0.1 s; a leaf that lives under 0.1 s may be missed)"
get() { awk -v id="$1" -v col="$2" '$1 == id { print $col }' "$OUT/results"; }
ratio() { if [ -n "$1" ] && [ -n "$2" ]; then awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; else echo "-"; fi; }
echo
for phase in veth throttled; do
  fc=$(get "$phase/flat/cold" 2); hc=$(get "$phase/hier/cold" 2)
  [ -n "$fc" ] && [ -n "$hc" ] || continue
  echo "$phase: hier/flat wall, cold: $(ratio "$hc" "$fc")  (flat/hier: $(ratio "$fc" "$hc")x)"
done
hw=$(get veth/hier/cold 6)
[ -n "$hw" ] && echo "initiator wire bytes, hier cold: $hw = $(ratio "$hw" "$((G * bin_bytes + graph_bytes))") x (G x binary + graphs) [target <= 1.05]"
echo "results: $OUT/results, logs: $OUT/*.log"
