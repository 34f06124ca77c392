//! Facts and `host` rendered on the host match the machine (#15).

use super::{finish, local};
use crate::util::Dir;

fn cpus_online() -> u64 {
    let out = std::process::Command::new("getconf")
        .arg("_NPROCESSORS_ONLN")
        .output()
        .expect("getconf");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a number")
}

fn os_id() -> String {
    let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("ID="))
        .unwrap_or_default()
        .trim_matches('"')
        .to_owned()
}

// See: #15 (facts gathered by the host, host.* for a local run)
#[test]
fn facts_and_host_render_what_the_machine_is() {
    let d = Dir::new();
    let out = d.p("facts.txt");
    let graph = format!(
        "graph: facts\nresources:\n  file:\n  - name: {out}\n    content: \"{{{{ facts.hostname }}}}|{{{{ facts.cpus }}}}|{{{{ facts.os.id }}}}|{{{{ facts.arch }}}}|{{{{ facts.kernel }}}}|{{{{ facts.memory_mb > 0 }}}}|{{{{ host.name }}}}|{{{{ host.index }}}}|{{{{ host.count }}}}|{{{{ host.route }}}}\"\n"
    );
    let mut p = local(&d, &graph, "role-h1", &[]);
    let (code, log) = finish(&mut p);
    assert_eq!(code, 0, "{log}");
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let want = format!(
        "{}|{}|{}|{}|{}|True|role-h1|0|1|role-h1",
        hostname.trim(),
        cpus_online(),
        os_id(),
        std::env::consts::ARCH,
        kernel.trim()
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), want, "{log}");

    // --noop applies nothing and shows what the templates rendered.
    std::fs::remove_file(&out).unwrap();
    let mut p = local(&d, &graph, "role-h2", &["--noop"]);
    let (code, log) = finish(&mut p);
    assert_eq!(code, 0, "{log}");
    assert!(!std::path::Path::new(&out).exists());
    assert!(
        log.contains("rendered:") && log.contains("role-h2|0|1|role-h2"),
        "{log}"
    );
}
