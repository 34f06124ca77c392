#!/usr/bin/env bash
# bench/clientlib.sh: an etcd client library written by others, in another
# language, runs its own test suite against a real etcd and against the
# embedded store, one after the other; prints the pass/fail/skip counts side
# by side and every test whose outcome differs (issue #14).
#
# The library is Python's etcd3 (kragniz/python-etcd3) at $ETCD3_VERSION,
# from PyPI's source distribution, which carries tests/test_etcd3.py. Nothing
# of it is kept in this repository: it is downloaded into $CACHE with pip, run
# from a fresh copy in a temp dir, with its dependencies in a venv in $CACHE.
#
# Its tests reach the server two ways: the `etcd` fixture and etcdctl (Go,
# Debian's 3.4) use $PYTHON_ETCD_HTTP_URL, but several tests call
# `etcd3.client()` or etcdctl with their defaults, localhost:2379. So each
# server runs on 127.0.0.1:2379 inside a private network namespace
# (`unshare --net`, a loopback of its own): nothing else on this machine is
# reached, and nothing already on port 2379 is in the way.
#
# The store side is `examples/store_serve.rs`: `Store::new(Config::default())`
# on one listener, as `mgmt run --client-urls` serves it, without the run's
# own converged key in it.
#
# Knobs: ETCD3_VERSION=0.12.0, CACHE (default target/clientlib),
# OUT (default /tmp/mgmt-bench-clientlib: junit XML and logs per server),
# STORE_BIN (default: built here, target/debug/examples/store_serve),
# PYTEST_ARGS (extra pytest arguments, e.g. "-k watch").
# Needs python3 (venv, pip), etcd and etcdctl (apt-get install -y
# etcd-server etcd-client), unshare and ip (util-linux, iproute2).
# Leaves no process behind: each server is stopped by its pid, on any exit.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ETCD3_VERSION=${ETCD3_VERSION:-0.12.0}
CACHE=${CACHE:-$HERE/target/clientlib}
OUT=${OUT:-/tmp/mgmt-bench-clientlib}
ADDR=127.0.0.1:2379
URL=http://$ADDR

die() { echo "bench/clientlib.sh: $*" >&2; exit 1; }

# --- Stage 1, on the host's network: build, download, install. ---
if [ -z "${CLIENTLIB_NETNS:-}" ]; then
    for t in python3 etcd etcdctl unshare ip; do
        command -v "$t" >/dev/null || die "$t not found (hint: apt-get install -y etcd-server etcd-client iproute2 util-linux python3-venv)"
    done
    if [ -z "${STORE_BIN:-}" ]; then
        (cd "$HERE" && cargo build --locked --example store_serve) || die "cannot build examples/store_serve.rs"
        STORE_BIN=${CARGO_TARGET_DIR:-$HERE/target}/debug/examples/store_serve
    fi
    [ -x "$STORE_BIN" ] || die "no store binary at $STORE_BIN"
    mkdir -p "$CACHE" "$OUT"
    sdist=$CACHE/etcd3-$ETCD3_VERSION.tar.gz
    if [ ! -f "$sdist" ]; then
        python3 -m pip download --quiet --no-binary :all: --no-deps \
            "etcd3==$ETCD3_VERSION" -d "$CACHE" || die "cannot download etcd3 $ETCD3_VERSION from PyPI"
    fi
    venv=$CACHE/venv
    if [ ! -x "$venv/bin/python" ]; then
        python3 -m venv "$venv" || die "cannot make a venv (hint: apt-get install -y python3-venv)"
        # tenacity and hypothesis are the versions the library's
        # requirements pin (its lock calls tenacity 6's wait signature; newer
        # hypothesis refuses its function-scoped fixture under @given); its
        # generated protobuf modules need protobuf 3.x; grpcio 1.27 has no
        # build for this Python, so a current one. All pinned, so that two
        # runs count the same tests.
        "$venv/bin/pip" install --quiet 'protobuf==3.20.3' 'grpcio==1.85.3' \
            'six==1.17.0' 'tenacity==6.1.0' 'mock==5.2.0' 'pytest==9.2.0' \
            'hypothesis==4.56.3' || { rm -rf "$venv"; die "cannot install the test dependencies into $venv"; }
    fi
    export STORE_BIN CACHE OUT ETCD3_VERSION CLIENTLIB_NETNS=1
    if [ "$(id -u)" = 0 ]; then
        exec unshare --net -- bash "${BASH_SOURCE[0]}" "$@"
    fi
    exec unshare --net --map-root-user -- bash "${BASH_SOURCE[0]}" "$@"
fi

# --- Stage 2, in a network namespace of its own: run both. ---
ip link set lo up
work=$(mktemp -d /tmp/mgmt-clientlib.XXXXXX)
server_pid=
suite_pid=
stop_server() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=
    fi
}
cleanup() {
    local rc=$?
    if [ -n "$suite_pid" ]; then
        kill "$suite_pid" 2>/dev/null || true
        wait "$suite_pid" 2>/dev/null || true
    fi
    stop_server
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

export ETCDCTL_API=3
# Up to 20 s for the server to answer (etcd elects itself first).
wait_ready() {
    local i
    for i in $(seq 200); do
        kill -0 "$server_pid" 2>/dev/null || die "$1 exited at start (see $OUT/$1.log)"
        etcdctl --endpoints "$URL" --dial-timeout 1s endpoint health >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "$1 did not answer on $URL within 20 s (see $OUT/$1.log)"
}

# Runs the suite once against the server just started; junit XML to $OUT.
run_suite() {
    local name=$1
    local src=$work/$name
    mkdir -p "$src"
    tar -xzf "$CACHE/etcd3-$ETCD3_VERSION.tar.gz" -C "$src" --strip-components=1
    echo "== etcd3 $ETCD3_VERSION's tests against $name ($URL)" >&2
    # timeout is a hang guard only (a watch test blocks forever if a cancel
    # is lost); it passes a TERM from cleanup on to pytest.
    # PYTHONPATH as the library's tox.ini sets it (a test patches `etcdrpc`).
    (cd "$src" && PYTHONPATH=$src:$src/etcd3 PYTHON_ETCD_HTTP_URL=$URL TEST_ETCD_VERSION=v3.4.23 \
        exec timeout 1800 "$CACHE/venv/bin/python" -m pytest tests \
        -p no:cacheprovider -q -rfE --junitxml="$OUT/$name.xml" ${PYTEST_ARGS:-}) \
        >"$OUT/$name.pytest.log" 2>&1 &
    suite_pid=$!
    wait "$suite_pid" || true
    suite_pid=
    tail -n 1 "$OUT/$name.pytest.log" >&2
}

etcd --name clientlib --data-dir "$work/etcd-data" \
    --listen-client-urls "$URL" --advertise-client-urls "$URL" \
    --listen-peer-urls http://127.0.0.1:2380 \
    --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster clientlib=http://127.0.0.1:2380 >"$OUT/etcd.log" 2>&1 &
server_pid=$!
wait_ready etcd
run_suite etcd
stop_server

"$STORE_BIN" "$ADDR" >"$OUT/ours.log" 2>&1 &
server_pid=$!
wait_ready ours
run_suite ours
stop_server

# Side by side: the counts, then each test whose outcome differs.
"$CACHE/venv/bin/python" - "$OUT/etcd.xml" "$OUT/ours.xml" <<'EOF'
import sys
import xml.etree.ElementTree as ET

def outcomes(path):
    res = {}
    for case in ET.parse(path).iter("testcase"):
        name = case.get("classname", "").split(".")[-1] + "::" + case.get("name", "")
        kinds = {child.tag for child in case}
        if "skipped" in kinds:
            res[name] = "skip"
        elif "failure" in kinds or "error" in kinds:
            res[name] = "fail"
        else:
            res[name] = "pass"
    return res

etcd, ours = outcomes(sys.argv[1]), outcomes(sys.argv[2])
print(f"{'':8} {'etcd':>6} {'ours':>6}")
for kind in ("pass", "fail", "skip"):
    a = sum(1 for v in etcd.values() if v == kind)
    b = sum(1 for v in ours.values() if v == kind)
    print(f"{kind:8} {a:>6} {b:>6}")
print(f"{'total':8} {len(etcd):>6} {len(ours):>6}")
diff = sorted(n for n in etcd.keys() | ours.keys() if etcd.get(n) != ours.get(n))
if diff:
    print("\ndiffering (etcd -> ours):")
    for n in diff:
        print(f"  {n}: {etcd.get(n, '-')} -> {ours.get(n, '-')}")
EOF
echo "junit XML and logs: $OUT" >&2
