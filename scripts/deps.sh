#!/usr/bin/env bash
# Installs what building and testing mgmt needs on Debian, when missing:
# protoc (etcd-client's build), musl-tools and the musl target (the static
# binary shipped to hosts), OpenSSH server and client and etcd (real peers
# for the tests), etcdctl (a real client for the store's tests), dpkg-dev,
# systemd, dbus and gdbus (the system kinds' tests), rpm, rpmbuild, dnf and
# createrepo_c (pkg's rpm/dnf backend tests), openssl and script (the
# password-login tests), iptables (the slow-link test). Runs
# non-interactively; safe to run again.
set -euo pipefail

if ! command -v cargo >/dev/null || ! command -v rustup >/dev/null; then
  echo "deps: cargo and rustup are needed (Rust 1.89 or newer, from rustup); install them, then run this again" >&2
  exit 1
fi

need=()
command -v protoc >/dev/null || need+=(protobuf-compiler)
# protoc's well-known types (google/protobuf/descriptor.proto): only a
# Recommends of protobuf-compiler, which --no-install-recommends skips.
[ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
command -v musl-gcc >/dev/null || need+=(musl-tools)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null || need+=(openssh-client)
command -v etcd >/dev/null || need+=(etcd-server)
# Go etcdctl 3.4, which the store's tests drive against ours and etcd.
command -v etcdctl >/dev/null || need+=(etcd-client)
command -v file >/dev/null || need+=(file)
command -v python3 >/dev/null || need+=(python3)
# The system kinds' tests (tests/it/kinds): a local apt repository, and a
# real systemd with its system bus in a namespace.
command -v dpkg-scanpackages >/dev/null || need+=(dpkg-dev)
[ -x /lib/systemd/systemd ] || need+=(systemd)
command -v dbus-daemon >/dev/null || need+=(dbus)
command -v gdbus >/dev/null || need+=(libglib2.0-bin)
command -v useradd >/dev/null || need+=(passwd)
# pkg's rpm/dnf tests: tiny rpms built by rpmbuild, a local repository
# indexed by createrepo_c, and the real dnf 4 reading it.
command -v rpmbuild >/dev/null || need+=(rpm)
command -v dnf >/dev/null || need+=(dnf)
command -v createrepo_c >/dev/null || need+=(createrepo-c)
# The password-login tests: root's hash for sshd's own /etc/shadow copy
# (openssl passwd), and a pseudo-terminal for the prompt (script).
command -v openssl >/dev/null || need+=(openssl)
command -v script >/dev/null || need+=(bsdutils)
# The slow-link test (tests/it/remote/slow_link.rs): iptables sends the
# LAN's packets to bench/linkemu through a netfilter queue.
command -v iptables >/dev/null || need+=(iptables)

if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "deps: missing ${need[*]}; run as root (or: sudo apt-get install ${need[*]})" >&2
    exit 1
  fi
  echo "deps: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq </dev/null
  apt-get install -y -qq --no-install-recommends "${need[@]}" </dev/null >/dev/null
fi

if ! rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
  echo "deps: adding the x86_64-unknown-linux-musl target" >&2
  rustup target add x86_64-unknown-linux-musl >&2
fi
