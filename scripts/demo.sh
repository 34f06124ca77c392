#!/usr/bin/env bash
# The README's first command: installs what is needed, builds the static
# binary, and runs mgmt's two-host example the way it is meant to run: from
# this machine, over SSH, on two hosts. The hosts are emulated here by real
# OpenSSH sshd processes on 127.0.1.1 and 127.0.1.2 port 2222, each with its
# own home directory (scripts/fleet.sh). One command,
#
#   mgmt run --remote remote2a.yaml --remote remote2b.yaml --converged-timeout 2
#
# copies the binary to each host over SFTP, opens a reverse tunnel to the
# store embedded in this process, and runs the copies. Host a applies
# file1a, host b file1b; each exports one file (@@file2a, @@file2b) and
# collects every exported file. It exits once both hosts have been converged
# for 2 seconds, and the demo shows what each host ended with. The hosts are
# stopped at the end, also on failure or ^C. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh
echo "== building the static binary (x86_64-unknown-linux-musl)"
cargo build --release --target x86_64-unknown-linux-musl
bin="$PWD/target/x86_64-unknown-linux-musl/release/mgmt"
file "$bin"

[ "$(id -u)" = 0 ] || { echo "demo: run as root (the emulated hosts are sshd processes): sudo bash scripts/demo.sh" >&2; exit 1; }

work=$(mktemp -d /tmp/mgmt-demo.XXXXXX)
fleet="$work/fleet"
cleanup() {
  local rc=$?
  if [ -f "$fleet/.mgmt-fleet" ]; then
    echo "== stopping the emulated hosts"
    bash scripts/fleet.sh down "$fleet" || rc=1
  fi
  rm -rf -- "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "demo: interrupted" >&2; exit 130' INT TERM

echo "== starting 2 emulated hosts (scripts/fleet.sh up 2 $fleet)"
bash scripts/fleet.sh up 2 "$fleet"
mapfile -t urls < "$fleet/hosts"

# mgmt's remote2a/remote2b, with /tmp/ moved into each host's home and the
# remote: URL pointing at the emulated host.
i=0
for h in a b; do
  i=$((i + 1))
  home="$fleet/home-$i"
  sed -e "s#/tmp/#$home/#g" -e "s#^remote: .*#remote: ${urls[$((i - 1))]}#" \
    "examples/remote2$h.yaml" > "$work/remote2$h.yaml"
  echo "   host $h: ${urls[$((i - 1))]}  (home $home)"
done

echo "== mgmt run --remote remote2a.yaml --remote remote2b.yaml --converged-timeout 2"
status=0
env -u SSH_AUTH_SOCK "$bin" run \
  --remote "$work/remote2a.yaml" --remote "$work/remote2b.yaml" \
  --converged-timeout 2 \
  --identity "$fleet/id_ed25519" --known-hosts "$fleet/known_hosts" || status=$?
echo "== mgmt exited with $status"

echo "== what each host ended with"
i=0
for h in a b; do
  i=$((i + 1))
  home="$fleet/home-$i"
  for f in "$home"/file*; do
    [ -e "$f" ] || { echo "   host $h: no files"; status=1; continue; }
    printf '   %s/%-8s %s\n' "$h" "$(basename "$f")" "$(cat "$f")"
  done
  echo "   $h/.cache/mgmt: $(find "$home/.cache/mgmt" -type f 2>/dev/null | wc -l) cached file(s)"
done
exit "$status"
