#!/usr/bin/env bash
# bench/clientlib.sh [LIB...]   (default: etcd3 aetcd)
#
# etcd client libraries written by others, in another language, run their
# own test suites against a real etcd and against the embedded store, each
# suite once against a fresh server of each; prints the pass/fail/skip counts
# side by side and every test whose outcome differs (issue #14).
#
#   etcd3   Python etcd3 (kragniz/python-etcd3), tests/test_etcd3.py
#           (pytest + hypothesis), endpoint from PYTHON_ETCD_HTTP_URL
#   aetcd   Python aetcd (martyanov/aetcd, asyncio), tests/ (pytest-asyncio),
#           endpoint from TEST_ETCD_HTTP_URL
#
# Both come from PyPI's source distributions, which carry their tests.
# Nothing of them is kept in this repository: pip downloads them into $CACHE,
# each suite runs from a fresh copy in a temp dir, with its dependencies in a
# venv of its own in $CACHE (pinned, so that two runs count the same tests).
#
# Besides the endpoint variable, some tests dial localhost:2379
# (`etcd3.client()`, `aetcd.Client()`, etcdctl without --endpoints), so each
# server runs on 127.0.0.1:2379 inside a private network namespace
# (`unshare --net`, a loopback of its own): those tests reach the server under
# test and nothing else on this machine. The suites also drive Debian's Go
# etcdctl 3.4 to write and read behind the client's back.
#
# The store side is `examples/store_serve.rs`: `Store::new(Config::default())`
# on one listener, as `mgmt run --client-urls` serves it, without the run's
# own converged key in it (which tests that expect an empty store count).
#
# Knobs: CACHE (default target/clientlib), OUT (default
# /tmp/mgmt-bench-clientlib: junit XML and logs per library and server),
# STORE_BIN (default: built here, target/debug/examples/store_serve),
# PYTEST_ARGS (extra pytest arguments, e.g. "-k watch").
# Needs python3 (venv, pip), etcd and etcdctl (apt-get install -y
# etcd-server etcd-client), unshare and ip (util-linux, iproute2).
# Leaves no process behind: the suite and the server are stopped by pid on
# any exit.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${CACHE:-$HERE/target/clientlib}
OUT=${OUT:-/tmp/mgmt-bench-clientlib}
ADDR=127.0.0.1:2379
URL=http://$ADDR
if [ "$#" -gt 0 ]; then LIBS=("$@"); else LIBS=(etcd3 aetcd); fi

die() { echo "bench/clientlib.sh: $*" >&2; exit 1; }

# The sdist (name==version) of each library, and what its tests need.
lib_sdist() {
    case $1 in
        etcd3) echo etcd3==0.12.0 ;;
        aetcd) echo aetcd==1.0.0 ;;
        *) die "unknown library $1 (known: etcd3 aetcd)" ;;
    esac
}
lib_deps() {
    case $1 in
        # tenacity and hypothesis as its requirements pin them (its lock
        # calls tenacity 6's wait signature; newer hypothesis refuses its
        # function-scoped fixture under @given); protobuf 3.x for its
        # generated modules; grpcio 1.27 has no build for Python 3.11.
        etcd3) echo protobuf==3.20.3 grpcio==1.85.3 six==1.17.0 tenacity==6.1.0 \
            mock==5.2.0 pytest==9.2.0 hypothesis==4.56.3 ;;
        # As its pyproject.toml pins its test tools.
        aetcd) echo protobuf==7.36.2 grpcio==1.85.3 pytest==9.0.3 \
            pytest-asyncio==1.3.0 pytest-mock==3.15.1 ;;
    esac
}

# --- Stage 1, on the host's network: build, download, install. ---
if [ -z "${CLIENTLIB_NETNS:-}" ]; then
    for t in python3 etcd etcdctl unshare ip; do
        command -v "$t" >/dev/null || die "$t not found (hint: apt-get install -y etcd-server etcd-client iproute2 util-linux python3-venv)"
    done
    if [ -z "${STORE_BIN:-}" ]; then
        (cd "$HERE" && cargo build --locked --example store_serve) || die "cannot build examples/store_serve.rs"
        target=${CARGO_TARGET_DIR:-target}
        case $target in /*) ;; *) target=$HERE/$target ;; esac
        STORE_BIN=$target/debug/examples/store_serve
    fi
    [ -x "$STORE_BIN" ] || die "no store binary at $STORE_BIN"
    mkdir -p "$CACHE" "$OUT"
    for lib in "${LIBS[@]}"; do
        spec=$(lib_sdist "$lib")
        if [ ! -f "$CACHE/${spec/==/-}.tar.gz" ]; then
            python3 -m pip download --quiet --no-binary :all: --no-deps "$spec" -d "$CACHE" \
                || die "cannot download $spec from PyPI"
        fi
        venv=$CACHE/venv-$lib
        if [ ! -x "$venv/bin/python" ]; then
            python3 -m venv "$venv" || die "cannot make a venv (hint: apt-get install -y python3-venv)"
            # shellcheck disable=SC2046 # one word per requirement
            "$venv/bin/pip" install --quiet $(lib_deps "$lib") \
                || { rm -rf "$venv"; die "cannot install $lib's test dependencies into $venv"; }
        fi
    done
    export STORE_BIN CACHE OUT CLIENTLIB_NETNS=1
    if [ "$(id -u)" = 0 ]; then
        exec unshare --net -- bash "${BASH_SOURCE[0]}" "$@"
    fi
    exec unshare --net --map-root-user -- bash "${BASH_SOURCE[0]}" "$@"
fi

# --- Stage 2, in a network namespace of its own: run each suite on each. ---
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

# Starts a fresh server ($1: etcd or ours) on $ADDR and waits (up to 20 s,
# etcd elects itself first) until it answers.
start_server() {
    local name=$1 log=$OUT/$2.log i
    if [ "$name" = etcd ]; then
        rm -rf "$work/etcd-data"
        etcd --name clientlib --data-dir "$work/etcd-data" \
            --listen-client-urls "$URL" --advertise-client-urls "$URL" \
            --listen-peer-urls http://127.0.0.1:2380 \
            --initial-advertise-peer-urls http://127.0.0.1:2380 \
            --initial-cluster clientlib=http://127.0.0.1:2380 >"$log" 2>&1 &
    else
        "$STORE_BIN" "$ADDR" >"$log" 2>&1 &
    fi
    server_pid=$!
    for i in $(seq 200); do
        kill -0 "$server_pid" 2>/dev/null || die "$name exited at start (see $log)"
        etcdctl --endpoints "$URL" --dial-timeout 1s endpoint health >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "$name did not answer on $URL within 20 s (see $log)"
}

# Runs library $1's suite against the server just started; junit XML as $2.
run_suite() {
    local lib=$1 run=$2
    local src=$work/$run spec
    spec=$(lib_sdist "$lib")
    mkdir -p "$src"
    tar -xzf "$CACHE/${spec/==/-}.tar.gz" -C "$src" --strip-components=1
    local -a env args
    case $lib in
        # PYTHONPATH as its tox.ini sets it (a test patches `etcdrpc`);
        # the etcd version decides which tests it skips.
        etcd3) env=(PYTHONPATH="$src:$src/etcd3" PYTHON_ETCD_HTTP_URL="$URL"
                    TEST_ETCD_VERSION=v3.4.23)
               args=(tests) ;;
        # Its addopts ask for coverage (pytest-cov), which is not measured here.
        aetcd) env=(PYTHONPATH="$src" TEST_ETCD_HTTP_URL="$URL")
               args=(tests -o addopts=) ;;
    esac
    echo "== $spec's tests against ${run#*-} ($URL)" >&2
    # timeout is a hang guard only (a watch test blocks forever if a cancel
    # is lost); it passes a TERM from cleanup on to pytest.
    # shellcheck disable=SC2086 # PYTEST_ARGS is a list of words
    (cd "$src" && exec env "${env[@]}" timeout 1800 "$CACHE/venv-$lib/bin/python" -m pytest \
        "${args[@]}" -p no:cacheprovider -q -rfE --junitxml="$OUT/$run.xml" ${PYTEST_ARGS:-}) \
        >"$OUT/$run.pytest.log" 2>&1 &
    suite_pid=$!
    wait "$suite_pid" || true
    suite_pid=
    tail -n 1 "$OUT/$run.pytest.log" >&2
}

xmls=()
for lib in "${LIBS[@]}"; do
    for server in etcd ours; do
        start_server "$server" "$lib-$server"
        run_suite "$lib" "$lib-$server"
        stop_server
    done
    xmls+=("$lib" "$OUT/$lib-etcd.xml" "$OUT/$lib-ours.xml")
done

# Side by side: the counts per library, then each test whose outcome differs.
"$CACHE/venv-${LIBS[0]}/bin/python" - "${xmls[@]}" <<'EOF'
import sys
import xml.etree.ElementTree as ET

def outcomes(path):
    res = {}
    for case in ET.parse(path).iter("testcase"):
        name = case.get("classname", "") + "::" + case.get("name", "")
        kinds = {child.tag for child in case}
        if "skipped" in kinds:
            res[name] = "skip"
        elif "failure" in kinds or "error" in kinds:
            res[name] = "fail"
        else:
            res[name] = "pass"
    return res

args = sys.argv[1:]
for i in range(0, len(args), 3):
    lib, etcd, ours = args[i], outcomes(args[i + 1]), outcomes(args[i + 2])
    print(f"\n{lib:8} {'etcd':>6} {'ours':>6}")
    for kind in ("pass", "fail", "skip"):
        a = sum(1 for v in etcd.values() if v == kind)
        b = sum(1 for v in ours.values() if v == kind)
        print(f"{kind:8} {a:>6} {b:>6}")
    print(f"{'total':8} {len(etcd):>6} {len(ours):>6}")
    diff = sorted(n for n in etcd.keys() | ours.keys() if etcd.get(n) != ours.get(n))
    for n in diff:
        print(f"  differs: {n}: etcd {etcd.get(n, '-')}, ours {ours.get(n, '-')}")
EOF
echo "junit XML and logs: $OUT" >&2
