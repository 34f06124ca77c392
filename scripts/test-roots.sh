#!/usr/bin/env bash
# Makes the root file systems some tests chroot into, when missing; safe to
# run again (a root already made is kept, so its packages stay the same
# from run to run).
#
# dnf5-root: dnf 5 and rpm 6, for pkg's dnf 5 tests
# (tests/it/kinds/pkg_dnf5.rs). No Debian release but sid packages dnf5,
# and it needs sid's C++ and rpm libraries, so this is a minimal sid made
# by debootstrap, with dnf a link to dnf5 as on Fedora 41 on; the tests
# make it look like Fedora in a mount namespace of their own and never
# change it. About 60 MB to download, 315 MB on disk.
#
# Where: $MGMT_TEST_ROOTS, default /var/cache/mgmt-tests (the tests read
# the same variable, with the same default).
set -euo pipefail

roots="${MGMT_TEST_ROOTS:-/var/cache/mgmt-tests}"
mirror="${MGMT_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# Bumped when what a root holds changes, so that an old one is made again.
version=3

# The tests run what is in these roots as root: refuse a place someone
# else could have written to.
trusted() {
  local path=$1 owner mode
  read -r owner mode < <(stat -c '%u %a' "$path")
  if [ "$owner" != 0 ] || [ $((8#$mode & 8#022)) != 0 ]; then
    echo "test-roots: $path is owned by uid $owner with mode $mode: it must be root's and writable by root only (remove it, or set MGMT_TEST_ROOTS)" >&2
    exit 1
  fi
}

make_root() {
  local name=$1 suite=$2 include=$3
  local dest="$roots/$name"
  if [ -d "$roots" ]; then trusted "$roots"; fi
  if [ "$(cat "$dest/.mgmt-test-root" 2>/dev/null)" = "$version" ]; then
    trusted "$dest"
    return 0
  fi
  if [ "$(id -u)" != 0 ]; then
    echo "test-roots: $dest is missing; run as root (debootstrap needs it)" >&2
    exit 1
  fi
  if ! command -v debootstrap >/dev/null; then
    echo "test-roots: installing debootstrap" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap </dev/null >/dev/null
  fi
  echo "test-roots: making $dest ($suite with $include, from $mirror; about a minute)" >&2
  mkdir -p -m 0755 "$roots"
  trusted "$roots"
  local tmp
  tmp="$(mktemp -d "$roots/.$name.XXXXXX")"
  # Nothing half-made is left behind, whatever stops this.
  trap 'rm -rf --one-file-system "$tmp"' EXIT
  if ! debootstrap --variant=minbase --include="$include" "$suite" "$tmp/root" "$mirror" >"$tmp/log" 2>&1; then
    tail -20 "$tmp/log" >&2
    echo "test-roots: debootstrap of $suite failed (log above); check that $mirror is reachable" >&2
    exit 1
  fi
  rm -rf "$tmp/root/var/cache/apt/archives/"*.deb
  # Where dnf 5 keeps its history: made here so that a test can bind an
  # empty directory over it.
  mkdir -p "$tmp/root/usr/lib/sysimage"
  # Fedora's dnf5 package (41 on) makes dnf a link to dnf5; Debian's
  # makes no dnf.
  ln -s dnf5 "$tmp/root/usr/bin/dnf"
  echo "$version" >"$tmp/root/.mgmt-test-root"
  rm -rf --one-file-system "$dest"
  mv "$tmp/root" "$dest"
  rm -rf "$tmp"
  trap - EXIT
}

make_root dnf5-root sid dnf5,rpm
