#!/usr/bin/env bash
# fleet.sh: emulate N SSH hosts on this machine with real OpenSSH sshd
# processes, for the demo, the benchmark and manual tries of `mgmt run --remote`.
#
#   scripts/fleet.sh up N DIR     start N hosts (1..254); DIR must not exist yet
#   scripts/fleet.sh down DIR     stop exactly the sshd processes recorded in DIR, remove DIR
#   scripts/fleet.sh status DIR   show the recorded sshd processes
#
# Host x (1..N) is the loopback address $FLEET_NET.x (default 127.0.1.x; a
# 10.x.y prefix with FLEET_IN_NETNS=1 inside a network namespace) on
# port $FLEET_PORT (default 2222). Each host has its own home DIR/home-x: a
# `Match LocalAddress` block sets HOME there (SetEnv) and forces a wrapper
# (DIR/force.sh) that cds there and runs the client's command, or for SFTP
# `sftp-server -d DIR/home-x`. So ~/.cache/mgmt, relative scp/SFTP paths and
# every file a host writes under its home are per host.
#
# OpenSSH listens on at most 16 sockets per process, so N hosts are served by
# ceil(N/16) `sshd -D -e` processes, started in the background; their pids are
# in DIR/sshd.pids, their logs in DIR/sshd.K.log. `up` returns once every
# address logged "Server listening on". Must run as root (sshd's privilege
# separation); needs openssh-server (scripts/deps.sh installs it).
#
# What `up` leaves in DIR, for clients:
#   hosts          one URL per line: ssh://root@127.0.1.x:2222
#   addrs          one address per line: 127.0.1.x
#   id_ed25519     the client key, authorized on every host (authorized_keys)
#   known_hosts    "[127.0.1.x]:2222 ssh-ed25519 ..." for every host
#   ssh_config     for OpenSSH: ssh -F DIR/ssh_config 127.0.1.x (strict host keys)
#   home-x/        host x's home
set -euo pipefail

SSHD=/usr/sbin/sshd
SFTP_SERVER=/usr/lib/openssh/sftp-server
PER_SSHD=16
PORT=${FLEET_PORT:-2222}
NET=${FLEET_NET:-127.0.1}
MAX_STARTUPS=${FLEET_MAX_STARTUPS:-200:30:400}
READY_SECS=${FLEET_READY_SECS:-20}
MARK=.mgmt-fleet

die() { echo "fleet.sh: $*" >&2; exit 1; }
usage() { die "usage: fleet.sh up N DIR | down DIR | status DIR"; }

# The recorded pid $1 is still one of this fleet's sshd listeners.
ours() {
  local pid=$1 dir=$2
  [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$dir/sshd_config."
}

# Descendants of pid $1 (per-connection sshd processes of a listener and
# what their sessions run), one per line.
descendants() {
  local c
  for c in $(cat /proc/"$1"/task/*/children 2>/dev/null); do
    echo "$c"
    descendants "$c"
  done
}

# Something listens on TCP port $PORT (any address): print it.
port_taken() {
  local hex line
  hex=$(printf '%04X' "$PORT")
  for f in /proc/net/tcp /proc/net/tcp6; do
    [ -r "$f" ] || continue
    # fields: sl local_address rem_address st ...; st 0A = LISTEN
    while read -r _ local _ st _; do
      if [ "$st" = 0A ] && [ "${local##*:}" = "$hex" ]; then
        line=1
      fi
    done < <(tail -n +2 "$f")
  done
  [ -n "${line:-}" ] || return 1
  if command -v ss >/dev/null; then ss -ltnpH "sport = :$PORT" 2>/dev/null | head -n 3 || true; fi
  return 0
}

up_failed() {
  echo "fleet.sh: up failed; stopping what was started" >&2
  cmd_down "$UP_DIR" || true
}

cmd_up() {
  local n=${1:-} dir=${2:-}
  [ -n "$n" ] && [ -n "$dir" ] || usage
  [[ $n =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le 254 ] || die "N must be 1..254 (got '$n')"
  [[ $PORT =~ ^[0-9]+$ ]] && [ "$PORT" -ge 1024 ] && [ "$PORT" -le 65535 ] || die "FLEET_PORT must be 1024..65535"
  if [[ $NET =~ ^10\.[0-9]{1,3}\.[0-9]{1,3}$ ]] && [ "${FLEET_IN_NETNS:-}" = 1 ]; then
    # A private prefix only inside a network namespace of our own (bench/
    # gateway.sh makes one), never on the machine's own network.
    [ "$(readlink /proc/self/ns/net)" != "$(readlink /proc/1/ns/net)" ] ||
      die "FLEET_NET $NET is allowed only inside a network namespace (ip netns exec NS ...)"
  else
    [[ $NET =~ ^127\.[0-9]{1,3}\.[0-9]{1,3}$ ]] || die "FLEET_NET must be a loopback /24 prefix like 127.0.1 (got '$NET')"
  fi
  [ "$NET" != 127.0.0 ] || die "FLEET_NET 127.0.0 would collide with 127.0.0.1 (a system sshd, localhost services): use 127.0.1"
  [ "$(id -u)" = 0 ] || die "run as root: sshd needs root for privilege separation (sudo bash scripts/fleet.sh up $n $dir)"
  [ -x "$SSHD" ] || die "$SSHD not found: run 'bash scripts/deps.sh' (or apt-get install -y openssh-server)"
  [ -x "$SFTP_SERVER" ] || die "$SFTP_SERVER not found: apt-get install -y openssh-sftp-server"
  command -v ssh-keygen >/dev/null || die "ssh-keygen not found: apt-get install -y openssh-client"
  if [ -e "$dir" ] && [ -n "$(ls -A "$dir" 2>/dev/null)" ]; then
    if [ -f "$dir/$MARK" ]; then
      die "$dir already holds a fleet: stop it first with 'fleet.sh down $dir'"
    fi
    die "$dir exists and is not empty: give a new directory"
  fi
  local taken
  if taken=$(port_taken); then
    die "TCP port $PORT is already in use${taken:+:
$taken}
another fleet may be up (fleet.sh down ITS_DIR), or pick another port: FLEET_PORT=2223 fleet.sh up $n $dir"
  fi

  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  [[ $dir =~ ^[A-Za-z0-9._/+-]+$ ]] || die "DIR '$dir' has characters sshd_config cannot hold unquoted: use a plain path like /tmp/fleet"
  chmod 755 "$dir"
  : > "$dir/$MARK"
  : > "$dir/sshd.pids"
  # On any failure below, stop what was started and remove the directory.
  UP_DIR=$dir
  trap 'up_failed' EXIT
  # sshd's privilege separation directory (a system sshd would create it).
  mkdir -p /run/sshd
  chmod 755 /run/sshd

  # Every emulated host is the same kernel and the same user (root), so
  # per-user kernel limits are shared by the whole fleet. inotify instances
  # (fs.inotify.max_user_instances, Debian default 128) run out first: a
  # program on each host that watches files (mgmt does: its graph, its
  # files) fails with EMFILE past ~128 hosts. Raise it for the fleet's life;
  # `down` puts the old value back.
  local inst=/proc/sys/fs/inotify/max_user_instances old want
  if [ -w "$inst" ]; then
    old=$(cat "$inst"); want=$(( 128 + 8 * n ))
    if [ "$old" -lt "$want" ]; then
      echo "$want" > "$inst"
      echo "$old $want" > "$dir/inotify.restore"
      echo "fleet.sh: raised fs.inotify.max_user_instances $old -> $want for $n hosts sharing one user (restored by down)" >&2
    fi
  fi

  ssh-keygen -q -t ed25519 -N '' -C mgmt-fleet-host -f "$dir/host_key"
  ssh-keygen -q -t ed25519 -N '' -C mgmt-fleet-client -f "$dir/id_ed25519"
  cp "$dir/id_ed25519.pub" "$dir/authorized_keys"
  chmod 600 "$dir/host_key" "$dir/id_ed25519" "$dir/authorized_keys"
  local host_pub
  host_pub=$(awk '{print $1" "$2}' "$dir/host_key.pub")

  cat > "$dir/force.sh" <<'EOF'
#!/bin/sh
# ForceCommand wrapper: run the client's command in this host's home ($1).
cd "$1" || exit 1
export HOME="$1"
case "$SSH_ORIGINAL_COMMAND" in
internal-sftp) exec /usr/lib/openssh/sftp-server -d "$1" ;;
'') exec /bin/sh -l ;;
*) exec /bin/sh -c "$SSH_ORIGINAL_COMMAND" ;;
esac
EOF
  chmod 755 "$dir/force.sh"

  cat > "$dir/ssh_config" <<EOF
# OpenSSH client settings for this fleet: ssh -F $dir/ssh_config $NET.1
Host *
  User root
  Port $PORT
  IdentityFile $dir/id_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile $dir/known_hosts
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  BatchMode yes
  LogLevel ERROR
  ConnectTimeout 30
EOF

  : > "$dir/hosts.tmp"; : > "$dir/addrs"; : > "$dir/known_hosts"
  local x ip
  for ((x = 1; x <= n; x++)); do
    ip=$NET.$x
    mkdir -p "$dir/home-$x"
    echo "ssh://root@$ip:$PORT" >> "$dir/hosts.tmp"
    echo "$ip" >> "$dir/addrs"
    echo "[$ip]:$PORT $host_pub" >> "$dir/known_hosts"
  done

  local k first last cfg log pid
  local nproc=$(( (n + PER_SSHD - 1) / PER_SSHD ))
  for ((k = 0; k < nproc; k++)); do
    first=$(( k * PER_SSHD + 1 ))
    last=$(( (k + 1) * PER_SSHD )); [ "$last" -le "$n" ] || last=$n
    cfg=$dir/sshd_config.$k
    log=$dir/sshd.$k.log
    {
      echo "# fleet.sh sshd $k: hosts $NET.$first .. $NET.$last"
      for ((x = first; x <= last; x++)); do echo "ListenAddress $NET.$x:$PORT"; done
      cat <<EOF
HostKey $dir/host_key
AuthorizedKeysFile $dir/authorized_keys
PidFile none
StrictModes no
UsePAM no
UseDNS no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PrintMotd no
PrintLastLog no
X11Forwarding no
AllowTcpForwarding yes
AllowStreamLocalForwarding yes
AllowAgentForwarding yes
MaxStartups $MAX_STARTUPS
MaxSessions 50
Subsystem sftp internal-sftp
LogLevel INFO
EOF
      for ((x = first; x <= last; x++)); do
        echo "Match LocalAddress $NET.$x"
        echo "  SetEnv HOME=$dir/home-$x"
        echo "  ForceCommand $dir/force.sh $dir/home-$x"
      done
    } > "$cfg"
    "$SSHD" -t -f "$cfg" || die "sshd rejected $cfg (see above)"
    # A background child that outlives this script; setsid keeps the
    # terminal's ^C away from it (the caller's trap runs `down` instead).
    setsid "$SSHD" -D -e -f "$cfg" < /dev/null > /dev/null 2> "$log" &
    pid=$!
    echo "$pid" >> "$dir/sshd.pids"
  done

  # Readiness: every address's "Server listening on IP port PORT." line.
  local deadline=$(( SECONDS + READY_SECS )) missing
  for ((k = 0; k < nproc; k++)); do
    first=$(( k * PER_SSHD + 1 ))
    last=$(( (k + 1) * PER_SSHD )); [ "$last" -le "$n" ] || last=$n
    log=$dir/sshd.$k.log
    pid=$(sed -n "$((k + 1))p" "$dir/sshd.pids")
    while :; do
      missing=0
      for ((x = first; x <= last; x++)); do
        grep -qF "Server listening on $NET.$x port $PORT." "$log" || { missing=$x; break; }
      done
      [ "$missing" = 0 ] && break
      if ! kill -0 "$pid" 2>/dev/null; then
        cat "$log" >&2
        die "sshd $k (pid $pid) exited before listening on $NET.$missing:$PORT; its log is above"
      fi
      if [ "$SECONDS" -ge "$deadline" ]; then
        cat "$log" >&2
        die "sshd $k (pid $pid) not listening on $NET.$missing:$PORT after ${READY_SECS}s; its log is above"
      fi
      sleep 0.05
    done
  done
  trap - EXIT
  mv "$dir/hosts.tmp" "$dir/hosts"
  echo "fleet.sh: $n host(s) $NET.1..$NET.$n port $PORT, $nproc sshd process(es) (pids $(tr '\n' ' ' < "$dir/sshd.pids")); URLs in $dir/hosts" >&2
}

cmd_down() {
  local dir=${1:-}
  [ -n "$dir" ] || usage
  [ -d "$dir" ] || { echo "fleet.sh: $dir does not exist; nothing to stop" >&2; return 0; }
  dir=$(cd "$dir" && pwd)
  [ -f "$dir/$MARK" ] || die "$dir is not a fleet directory (no $MARK); not touching it"
  local pid pids=() kids=()
  if [ -f "$dir/sshd.pids" ]; then
    while read -r pid; do
      [ -n "$pid" ] || continue
      if ours "$pid" "$dir"; then
        pids+=("$pid")
        # Sessions still open (a client still connected) and what they run:
        # stopped as well, by pid.
        while read -r c; do [ -n "$c" ] && kids+=("$c"); done < <(descendants "$pid")
      fi
    done < "$dir/sshd.pids"
  fi
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${kids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  local all=("${pids[@]}" "${kids[@]}") left i
  for ((i = 0; i < 100; i++)); do
    left=()
    for pid in "${all[@]}"; do kill -0 "$pid" 2>/dev/null && left+=("$pid"); done
    [ "${#left[@]}" = 0 ] && break
    sleep 0.05
  done
  if [ "${#left[@]}" -gt 0 ]; then
    echo "fleet.sh: pid(s) ${left[*]} ignored SIGTERM for 5 s; sending SIGKILL" >&2
    for pid in "${left[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  fi
  if [ -f "$dir/inotify.restore" ]; then
    local inst=/proc/sys/fs/inotify/max_user_instances old set
    read -r old set < "$dir/inotify.restore"
    # Only if nobody changed it since (another fleet, an admin).
    if [ "$(cat "$inst")" = "$set" ]; then
      echo "$old" > "$inst" && echo "fleet.sh: fs.inotify.max_user_instances back to $old" >&2
    fi
  fi
  rm -rf -- "$dir"
  echo "fleet.sh: stopped ${#pids[@]} sshd process(es)${kids[0]:+ and ${#kids[@]} session process(es)}; removed $dir" >&2
}

cmd_status() {
  local dir=${1:-} pid
  [ -n "$dir" ] || usage
  [ -f "$dir/$MARK" ] || die "$dir is not a fleet directory"
  while read -r pid; do
    [ -n "$pid" ] || continue
    if ours "$pid" "$(cd "$dir" && pwd)"; then echo "$pid running"; else echo "$pid gone"; fi
  done < "$dir/sshd.pids"
}

case "${1:-}" in
  up) shift; cmd_up "$@" ;;
  down) shift; cmd_down "$@" ;;
  status) shift; cmd_status "$@" ;;
  *) usage ;;
esac
