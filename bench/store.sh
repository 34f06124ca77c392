#!/bin/sh
# Store benchmark: the embedded store against a real etcd 3.4, side by side in
# one run, with the same etcd-client workload (see benches/store.rs). Builds
# in release (cargo's bench profile), starts both servers as child processes
# on loopback and prints a table with the ratios. Leaves no process behind.
set -eu
cd "$(dirname "$0")/.."
if ! command -v etcd >/dev/null 2>&1; then
    echo "bench/store.sh: etcd not found on PATH; install it with: apt-get install -y etcd-server" >&2
    exit 2
fi
exec cargo bench --bench store "$@"
