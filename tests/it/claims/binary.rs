//! The dynamic-binary warning (#19 item 3), checked against real ELF files:
//! the static musl build users get, and this dynamically linked debug
//! build. The static one is the binary scripts/test.sh builds and names in
//! `MGMT_TEST_SHIPPED`; a plain `cargo test` needs it built first.

use std::path::PathBuf;

use crate::remote_run::{noop_run, LIMIT};

const WARNING: &str = "is dynamically linked";

/// The static build: `MGMT_TEST_SHIPPED`, else the release musl build.
fn static_build() -> PathBuf {
    let p = std::env::var_os("MGMT_TEST_SHIPPED")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("target/x86_64-unknown-linux-musl/release/mgmt")
        });
    assert!(
        p.is_file(),
        "no static build at {}: run scripts/test.sh, or cargo build --release --target \
         x86_64-unknown-linux-musl first",
        p.display()
    );
    p
}

/// Whether a run shipping `binary` warned that it is dynamically linked,
/// and its exit code.
fn warned(binary: &std::path::Path) -> (bool, i32) {
    let shown = binary.display().to_string();
    let (_fleet, _d, mut p) = noop_run(1, &["--converged-timeout", "0", "--remote-binary", &shown]);
    let code = p.wait(LIMIT);
    let log = p.lines_so_far().join("\n");
    (log.contains(&format!("{shown} {WARNING}")), code)
}

// See: #19 (README: a dynamically linked --remote-binary is warned about;
// the static build is not)
#[test]
fn only_a_dynamically_linked_binary_is_warned_about() {
    let dynamic = PathBuf::from(env!("CARGO_BIN_EXE_mgmt"));
    let interp = std::fs::read(&dynamic).expect("read the debug build");
    assert!(
        interp.windows(b"ld-linux".len()).any(|w| w == b"ld-linux"),
        "the debug build should name a dynamic loader"
    );
    assert_eq!(warned(&dynamic), (true, 0));
    assert_eq!(warned(&static_build()), (false, 0));
}
