#!/usr/bin/env bash
# bench/scale.sh [SIZES] [GATEWAYS]   (default: 10,100,1000,10000 and 10)
#
# The cost curve of a run from 10 to 10,000 hosts, every host emulated by
# one `mgmt emulate` process on loopback addresses 127.30.x.y (see
# bench/scale.py for what each host runs and what is measured). Runs flat,
# then (GATEWAYS > 0) the same hosts behind that many emulated gateways;
# cold then warm caches. Writes docs/scale.json and docs/scale.png.
#
# Knobs: MGMT_BIN (default target/x86_64-unknown-linux-musl/release/mgmt),
# COLD_MAX (skip cold runs above this many hosts; default none), LAYOUTS
# (comma-separated: flat, gateways, one-file; default flat,gateways),
# WORKDIR (default /tmp). Needs root (open-files limits), ssh-keygen,
# python3 and python3-matplotlib (installed with apt if missing).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SIZES=${1:-10,100,1000,10000}
G=${2:-10}
BIN=${MGMT_BIN:-$HERE/target/x86_64-unknown-linux-musl/release/mgmt}
die() { echo "bench/scale.sh: $*" >&2; exit 1; }
[ -x "$BIN" ] || die "no mgmt binary at $BIN: cargo build --release --target x86_64-unknown-linux-musl (or set MGMT_BIN)"
command -v ssh-keygen >/dev/null || die "needs ssh-keygen (apt-get install -y openssh-client)"
# Debian's python3, where apt puts matplotlib (not a pyenv one on PATH).
PY=python3
[ -x /usr/bin/python3 ] && PY=/usr/bin/python3
if ! "$PY" -c 'import matplotlib' 2>/dev/null; then
  [ "$(id -u)" = 0 ] || die "needs python3-matplotlib (run as root to install it)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-matplotlib >/dev/null
fi
# 10,000 emulated hosts watch about 20 files each, all as this one user.
need=$((1 << 20))
if [ "$(cat /proc/sys/fs/inotify/max_user_watches)" -lt "$need" ]; then
  [ "$(id -u)" = 0 ] || die "fs.inotify.max_user_watches is too low for 10,000 hosts (run as root to raise it)"
  echo "bench/scale.sh: raising fs.inotify.max_user_watches to $need for the emulated hosts" >&2
  sysctl -qw fs.inotify.max_user_watches=$need
fi
exec "$PY" "$HERE/bench/scale.py" --bin "$BIN" --sizes "$SIZES" --via "$G" \
  --cold-max "${COLD_MAX:-0}" --workdir "${WORKDIR:-/tmp}" ${LAYOUTS:+--layouts "$LAYOUTS"} \
  --json "$HERE/docs/scale.json" --png "$HERE/docs/scale.png"
