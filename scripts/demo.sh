#!/usr/bin/env bash
# The README's first command: installs what is needed, builds the static
# binary, and runs mgmt's two-host example on this machine. Host "a" embeds
# the coordination store, host "b" joins it; each applies its own file,
# exports one file, and collects every exported file. Both exit once the
# cluster has been converged for 2 seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh
echo "== building the static binary (x86_64-unknown-linux-musl)"
cargo build --release --target x86_64-unknown-linux-musl
bin="$PWD/target/x86_64-unknown-linux-musl/release/mgmt"
file "$bin"

demo=$(mktemp -d /tmp/mgmt-demo.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

for h in a b; do
  mkdir -p "$demo/$h"
  # mgmt's remote2a/remote2b, with /tmp/ moved into this demo's directory.
  sed "s#/tmp/#$demo/$h/#g" "examples/remote2$h.yaml" > "$demo/remote2$h.yaml"
done

echo "== host a: embeds the store"
"$bin" run --hostname a --converged-timeout 2 --file "$demo/remote2a.yaml" 2> >(tee "$demo/a.log" | sed 's/^/[a] /' >&2) &
pids+=($!)
# The store's address is in a's log once it listens.
for _ in $(seq 100); do
  url=$(grep -o 'store: listening on http://[0-9.:]*' "$demo/a.log" 2>/dev/null | awk '{print $4}' || true)
  [ -n "$url" ] && break
  sleep 0.1
done
[ -n "$url" ] || { echo "demo: host a did not start its store" >&2; exit 1; }
echo "== host b: joins the store at $url"
"$bin" run --hostname b --no-server --seeds "$url" --converged-timeout 2 --file "$demo/remote2b.yaml" 2> >(sed 's/^/[b] /' >&2) &
pids+=($!)
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
pids=()

echo "== what each host ended with"
for f in $(cd "$demo" && find a b -type f | sort); do
  printf '%-10s %s' "$f" "$(cat "$demo/$f")"
  echo
done
exit "$status"
