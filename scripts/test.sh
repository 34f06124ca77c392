#!/usr/bin/env bash
# The whole test suite, as the README gives it and CI runs it: installs what
# is missing, checks formatting and lints, builds the static binary, and runs
# every test (unit, integration against real etcd and OpenSSH sshd).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh
# The root the dnf 5 tests chroot into, made once (tests/it/kinds/pkg_dnf5.rs).
bash scripts/test-roots.sh

echo "== fmt"
cargo fmt --all -- --check
echo "== clippy"
cargo clippy --locked --all-targets -- -D warnings
echo "== static build (x86_64-unknown-linux-musl)"
cargo build --locked --release --target x86_64-unknown-linux-musl
bin=target/x86_64-unknown-linux-musl/release/mgmt
file "$bin" | tee /dev/stderr | grep -q 'statically linked\|static-pie linked'
echo "== tests"
# The remote and gateway tests ship the static build users get, not the
# debug build (tests/it/util/mod.rs: shipped()).
export MGMT_TEST_SHIPPED="$PWD/$bin"
# Benchmarks are compiled (clippy above) but not run here: bench/*.sh runs them.
cargo test --locked --lib --bins --tests
