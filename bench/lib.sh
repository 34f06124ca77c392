# bench/lib.sh: what the fleet benchmarks share (sourced by bench/remote.sh,
# bench/link.sh and bench/gateway.sh; not run by itself).
#
# The caller sets, before calling what needs them:
#   BENCH         its name, for messages ("bench/remote.sh")
#   WORK          its scratch directory (logs/ and the job scripts go there)
#   REPS, SKIP    repetitions per case, regex of case ids to skip
#   CG, SCG       cpuacct cgroups of the client and of the fleet's sshd (or "")
#   RES           the results file run_once appends to
#   bench_bytes   a function printing a byte counter (loopback, the uplink)
#                 read before and after each case
# and may set:
#   CASE_TIMEOUT  seconds per case (default 120 + 3 N)
#   case_extra    a function "ID N REP LOG" printing extra tab-separated
#                 fields appended to the case's line in $RES (after the 13
#                 common ones), e.g. the gateways' peak RSS
#   case_start / case_stop  functions "ID N REP" run right before and after
#                 the timed command (a sampler started and stopped by pid)
#
# Each line of $RES: id n ok wall cpu rss self rc srv foreign rep bytes wire
# [extra...], tab-separated (see run_once).

die() { echo "$BENCH: $*" >&2; exit 1; }

apt_install() {
  echo "$BENCH: installing $*" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" < /dev/null > /dev/null
}

cg_usage() { if [ -n "$1" ]; then cat "$1/cpuacct.usage"; else echo 0; fi; }
# CPU seconds the whole machine has been busy (all cores), from /proc/stat.
busy() { awk '/^cpu /{printf "%.2f", ($2 + $3 + $4 + $7 + $8 + $9) / 100; exit}' /proc/stat; }
# Wait (at most 30 s) until the machine is quiet: under 0.3 cores busy over 1 s.
wait_quiet() {
  local i b0 b1
  for ((i = 0; i < 30; i++)); do
    b0=$(busy); sleep 1; b1=$(busy)
    awk -v a="$b0" -v b="$b1" 'BEGIN{exit !(b - a < 0.3)}' && return 0
  done
  echo "  (machine still busy after 30 s: $(cut -d' ' -f1-3 /proc/loadavg); measuring anyway, see the foreign CPU column)" >&2
}

# Closes the ControlPersist masters Ansible and the mux job left.
close_masters() {
  local s
  for s in "$WORK"/ansible/cp/* "$WORK"/cm/*; do
    [ -S "$s" ] && ssh -o ControlPath="$s" -O exit x > /dev/null 2>&1 || true
  done
}

# write_jobs: the per-host job scripts and the Ansible playbook in $WORK,
# and $WORK/ansible/ansible.cfg (inventory $WORK/ansible/inventory.ini,
# forks $CONC).
write_jobs() {
  mkdir -p "$WORK/ansible/cp" "$WORK/ansible/tmp" "$WORK/cm"
  # check-copy-run with plain OpenSSH, one host (same logic as
  # shared/bench/openssh_job.sh, with the fleet's ssh_config: strict host keys).
  cat > "$WORK/openssh_job.sh" << 'EOF'
#!/bin/sh
h=$1
f=".cache/bench/$PB_HASH/mgmt"
out=$(ssh -F "$PB_CFG" "$h" "cd && [ -x $f ] && exec ./$f --version; exit 99"); rc=$?
if [ "$rc" = 99 ]; then
  out=$(ssh -F "$PB_CFG" "$h" "cd && mkdir -p .cache/bench/$PB_HASH && t=$f.tmp.\$\$ && cat > \$t && chmod 755 \$t && mv \$t $f && exec ./$f --version" < "$PB_PAYLOAD"); rc=$?
fi
if [ "$rc" = 0 ]; then printf 'OK %s %s\n' "$h" "$out"; else echo "FAIL $h rc=$rc"; fi
EOF
  chmod 755 "$WORK/openssh_job.sh"

  # The same over one multiplexed connection per host, curve25519 KEX: the copy
  # reuses the check's connection; the master ends with the job.
  cat > "$WORK/openssh_mux_job.sh" << 'EOF'
#!/bin/sh
h=$1
set -- -F "$PB_CFG" -o ControlMaster=auto -o "ControlPath=$PB_CM/%C" -o ControlPersist=yes -o KexAlgorithms=curve25519-sha256
f=".cache/bench/$PB_HASH/mgmt"
out=$(ssh "$@" "$h" "cd && [ -x $f ] && exec ./$f --version; exit 99"); rc=$?
if [ "$rc" = 99 ]; then
  out=$(ssh "$@" "$h" "cd && mkdir -p .cache/bench/$PB_HASH && t=$f.tmp.\$\$ && cat > \$t && chmod 755 \$t && mv \$t $f && exec ./$f --version" < "$PB_PAYLOAD"); rc=$?
fi
ssh "$@" -O exit "$h" > /dev/null 2>&1
if [ "$rc" = 0 ]; then printf 'OK %s %s\n' "$h" "$out"; else echo "FAIL $h rc=$rc"; fi
EOF
  chmod 755 "$WORK/openssh_mux_job.sh"

  cat > "$WORK/ansible_job.yml" << 'EOF'
- hosts: all
  gather_facts: false
  tasks:
    - name: copy the binary into the cache
      copy:
        src: "{{ payload_src }}"
        dest: "{{ hostdir }}/.cache/bench/{{ payload_hash }}/"
        mode: "0755"
    - name: run it
      command: "{{ hostdir }}/.cache/bench/{{ payload_hash }}/{{ payload_src | basename }} --version"
      args:
        chdir: "{{ hostdir }}"
      changed_when: false
EOF
  cat > "$WORK/ansible/ansible.cfg" << EOF
[defaults]
inventory = $WORK/ansible/inventory.ini
forks = $CONC
host_key_checking = False
timeout = 30
gathering = explicit
retry_files_enabled = False
interpreter_python = /usr/bin/python3
deprecation_warnings = False
nocows = 1
local_tmp = $WORK/ansible/tmp

[ssh_connection]
control_path_dir = $WORK/ansible/cp
EOF
}

# write_inventory FLEET [ADDRS FIRST]: Ansible's inventory for the fleet in
# FLEET (scripts/fleet.sh's addrs and homes): the hosts of ADDRS (default
# FLEET/addrs), the first of them being FLEET's host FIRST (default 1).
write_inventory() {
  local f=$1 addrs=${2:-$1/addrs} x=$((${3:-1} - 1)) a
  {
    echo "[bench]"
    while read -r a; do x=$((x + 1)); echo "$a hostdir=$f/home-$x"; done < "$addrs"
    echo "[bench:vars]"
    echo "ansible_user=root"
    echo "ansible_python_interpreter=/usr/bin/python3"
    echo "ansible_ssh_common_args='-F $f/ssh_config'"
  } > "$WORK/ansible/inventory.ini"
}

# run_case ID N PREPARE CMD...: REPS repetitions of CMD (run_once).
run_case() {
  local id=$1 n=$2 prep=$3 r; shift 3
  if [ -n "$SKIP" ] && [[ $id =~ $SKIP ]]; then return 0; fi
  for ((r = 1; r <= REPS; r++)); do run_once "$id" "$n" "$prep" "$r" "$@"; done
}

# run_once ID N PREPARE REP CMD...: runs CMD under /usr/bin/time in the
# client cgroup, after the untimed PREPARE and a quiet machine. Appends to
# $RES: id n ok wall cpu_s rss_kb self_cpu_s rc server_cpu_s foreign_cpu_s
# rep bytes wire_B [case_extra...]; ok is computed by ok_count (per case).
run_once() {
  local id=$1 n=$2 prep=$3 rep=$4; shift 4
  local log="$WORK/logs/${id//\//_}.$n.$rep.log" tf="$WORK/logs/${id//\//_}.$n.$rep.time"
  bash -c "$prep" < /dev/null > /dev/null 2>&1 || true
  sync
  wait_quiet
  local c0 c1 s0 s1 b0 b1 t0 t1 l0 l1 rc=0
  if declare -F case_start > /dev/null; then case_start "$id" "$n" "$rep"; fi
  c0=$(cg_usage "$CG"); s0=$(cg_usage "$SCG"); b0=$(busy); l0=$(bench_bytes)
  t0=$(date +%s.%N)
  (
    [ -n "$CG" ] && echo "$BASHPID" > "$CG/cgroup.procs"
    exec timeout -k 10 "${CASE_TIMEOUT:-$((120 + 3 * n))}" /usr/bin/time -f '%e %U %S %M' -o "$tf" "$@"
  ) > "$log" 2>&1 || rc=$?
  t1=$(date +%s.%N)
  b1=$(busy); c1=$(cg_usage "$CG"); s1=$(cg_usage "$SCG")
  close_masters
  l1=$(bench_bytes)
  if declare -F case_stop > /dev/null; then case_stop "$id" "$n" "$rep"; fi
  local wall cpu self rss ok srv foreign wire extra=""
  wall=$(echo "$t0 $t1" | awk '{printf "%.2f", $2 - $1}')
  # /usr/bin/time: elapsed user sys maxrss(KB) of the command and its waited-for children
  read -r _ tu ts rss < <(tail -n 1 "$tf" 2> /dev/null || echo "0 0 0 0")
  self=$(echo "$tu $ts" | awk '{printf "%.2f", $1 + $2}')
  if [ -n "$CG" ]; then
    cpu=$(echo "$c0 $c1" | awk '{printf "%.2f", ($2 - $1) / 1e9}')
    srv=$(echo "$s0 $s1" | awk '{printf "%.2f", ($2 - $1) / 1e9}')
    foreign=$(echo "$b0 $b1 $cpu $srv ${BENCH_OTHER_CPU:-0}" | awk '{f = $2 - $1 - $3 - $4 - $5; printf "%.1f", (f < 0 ? 0 : f)}')
  else
    cpu=$self; srv=0; foreign=0
  fi
  ok=$(ok_count "$id" "$n" "$log" "$rc")
  # mgmt's own count of what it sent, beside the interface's.
  wire=$(sed -n 's/^wire sent: .*(\([0-9]*\) B).*/\1/p' "$log" | tail -n 1)
  if declare -F case_extra > /dev/null; then extra=$(case_extra "$id" "$n" "$rep" "$log"); fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s%s\n' "$id" "$n" "$ok" "$wall" "$cpu" "$rss" "$self" "$rc" "$srv" "$foreign" "$rep" "$((l1 - l0))" "${wire:-}" "${extra:+	$extra}" >> "$RES"
  printf '  %-19s N=%-4s #%s ok %4s/%-4s wall %7.2f s  CPU client %6.2f s server %6.2f s foreign %4.1f s  bytes %s B  (rc %s)\n' \
    "$id" "$n" "$rep" "$ok" "$n" "$wall" "$cpu" "$srv" "$foreign" "$((l1 - l0))" "$rc" >&2
  if [ "$ok" != "$n" ]; then
    echo "  --- $id: last lines of its output:" >&2
    tail -n 15 "$log" | sed 's/^/  | /' >&2
  fi
}

# ok_count ID N LOG RC: how many of the N hosts the case reached, from its
# output (0 when the tool's exit says it failed).
ok_count() {
  local id=$1 n=$2 log=$3 rc=$4
  case "$id" in
    # mgmt exits 0 only if every host converged; its summary line must say so
    # too ("N converged, 0 failed, ..."), counted from the line itself.
    mgmt*/*)
      if [ "$rc" = 0 ]; then
        sed -n 's/^\([0-9][0-9]*\) converged, 0 failed, .*/\1/p' "$log" | tail -n 1 | grep . || echo 0
      else
        echo 0
      fi ;;
    openssh*/*) grep -c '^OK ' "$log" || true ;;  # one OK line per host that succeeded
    # parallel-ssh runs only if parallel-scp succeeded everywhere: n SUCCESS lines, then one per host run
    pssh/*) grep -c '\[SUCCESS\]' "$log" | awk -v n="$n" '{print ($1 > n) ? $1 - n : 0}' ;;
    ansible/*) grep -E '^[0-9.]+ +: ok=2 .*failed=0' "$log" | grep -c unreachable=0 || true ;;
    *) echo "?" ;;
  esac
}

# Peak RSS of mgmt processes running from a fleet's host caches, sampled:
# rss_sampler_start DIR OUT starts a sampler (its pid in RSS_SAMPLER) that
# every 0.1 s reads VmHWM (the kernel's own high-water mark of the process's
# resident set) of every process whose executable is under DIR (the cached
# binaries in DIR/home-*/.cache), and keeps each pid's last value;
# rss_sampler_stop ends it (by pid) and it writes OUT: one line per process,
# "gateway|leaf PID PEAK_KB". Gateways are the children started with
# --remote. A process's growth in its last 0.1 s can be missed.
rss_sampler_start() {
  local dir=$1 out=$2
  python3 - "$dir" "$out" << 'EOF' &
import os, signal, sys, time
root, out = sys.argv[1], sys.argv[2]
seen = {}
stop = False
def on_term(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, on_term)
while not stop:
    for p in os.listdir('/proc'):
        if not p.isdigit():
            continue
        try:
            exe = os.readlink(f'/proc/{p}/exe')
            if not exe.startswith(root):
                continue
            with open(f'/proc/{p}/status') as f:
                hwm = next((int(l.split()[1]) for l in f if l.startswith('VmHWM:')), None)
            with open(f'/proc/{p}/cmdline', 'rb') as f:
                kind = 'gateway' if b'\0--remote\0' in f.read() else 'leaf'
        except (OSError, StopIteration):
            continue
        if hwm is not None:
            seen[p] = (kind, max(hwm, seen.get(p, (kind, 0))[1]))
    time.sleep(0.1)
with open(out, 'w') as f:
    for p, (kind, hwm) in sorted(seen.items()):
        f.write(f'{kind} {p} {hwm}\n')
EOF
  RSS_SAMPLER=$!
}
rss_sampler_stop() {
  [ -n "${RSS_SAMPLER:-}" ] || return 0
  kill -TERM "$RSS_SAMPLER" 2> /dev/null || true
  wait "$RSS_SAMPLER" 2> /dev/null || true
  RSS_SAMPLER=""
}
# rss_summary OUT: "gateways COUNT MAX_KB SUM_KB leaves COUNT MAX_KB" from a
# sampler's file.
rss_summary() {
  awk '$1 == "gateway" { g++; gs += $3; if ($3 > gm) gm = $3 }
       $1 == "leaf" { l++; if ($3 > lm) lm = $3 }
       END { printf "%d\t%d\t%d\t%d\t%d", g, gm, gs, l, lm }' "$1" 2> /dev/null || printf '0\t0\t0\t0\t0'
}
