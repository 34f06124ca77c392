//! Facts in the store (#20 item 2): every host publishes its facts and
//! graph name under its own key, and templates find other hosts by what
//! they are with `hosts(WHERE)`. Three `mgmt emulate` hosts, each with its
//! own file root: the one whose graph is `db-master` is found by the other
//! two, and its name and address reach their files.

use std::path::PathBuf;
use std::time::Duration;

use sha2::Digest;

use crate::emulate::{seed_cache, Emu};
use crate::util::{Dir, Proc};

const DB: &str = r#"graph: db-master
hostname: h0
resources:
  file:
  - name: me
    path: /tmp/me
    content: "{{ facts.default_ipv4 }}"
remote: URL
"#;

const WEB: &str = r#"graph: web
hostname: NAME
resources:
  file:
  - name: db
    path: /tmp/db
    content: "{{ hosts('graph == \"db-master\"') | map(attribute='name') | join(',') }} at {{ hosts('graph == \"db-master\"') | map(attribute='facts') | map(attribute='default_ipv4') | join(',') }}"
remote: URL
"#;

// See: #20 (tests: hosts(where) finds the one host of a role among three
// isolated hosts and its address reaches the others' files)
#[test]
fn hosts_where_finds_the_db_master_and_its_address_reaches_the_others() {
    let emu = Emu::start(3, false);
    let d = Dir::new();
    let bin = std::fs::read(env!("CARGO_BIN_EXE_mgmt")).unwrap();
    let sha = hex::encode(sha2::Sha256::digest(&bin));
    for i in 0..3 {
        seed_cache(&emu, i, &sha);
    }
    let mut files: Vec<PathBuf> = vec![d.write("db.yaml", &DB.replace("URL", &emu.url(0)))];
    for i in 1..3 {
        let text = WEB
            .replace("NAME", &format!("h{i}"))
            .replace("URL", &emu.url(i));
        files.push(d.write(&format!("web{i}.yaml"), &text));
    }
    let mut c = emu.run(&files, "key");
    c.arg("--converged-timeout=2");
    let mut p = Proc::spawn(&mut c);
    let code = p.wait(Duration::from_secs(300));
    let log = p.lines_so_far().join("\n");
    assert_eq!(code, 0, "{log}");
    let me = std::fs::read_to_string(emu.root(0).join("tmp/me")).unwrap();
    for i in 1..3 {
        let got = std::fs::read_to_string(emu.root(i).join("tmp/db")).unwrap();
        assert_eq!(got, format!("h0 at {me}"), "host h{i}: {log}");
    }
    assert!(!emu.root(0).join("tmp/db").exists());
}
