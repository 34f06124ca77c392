//! Template errors, undefined variables and colliding collects: each a
//! clear error at `file:line:col`, exit 2, nothing applied (#15).

use std::time::Duration;

use super::{finish, local, LIMIT};
use crate::remote_run::remote_cmd;
use crate::util::sshd::SshdFleet;
use crate::util::{mgmt, Dir, Proc};

/// A graph whose line 6 holds `content` for a file at `<dir>/out`.
fn with_content(d: &Dir, content: &str) -> String {
    format!(
        "graph: bad\nresources:\n  file:\n  - name: {}\n    mode: \"0644\"\n    content: \"{content}\"\n",
        d.p("out")
    )
}

// See: #15 (a template error names file:line:col; nothing applied)
#[test]
fn a_template_error_and_an_undefined_variable_stop_before_anything_runs() {
    let d = Dir::new();
    let cases = [
        ("x {{ host.name ", "syntax error"),
        ("x {{ host.nmae }}", "host.nmae"),
        ("x {{ facts.nothing }}", "facts.nothing"),
        ("x {{ values() }}", "template error"),
    ];
    for (content, what) in cases {
        let mut p = local(&d, &with_content(&d, content), "h1", &[]);
        let (code, log) = finish(&mut p);
        assert_eq!(code, 2, "{content}: {log}");
        let at = format!("{}:6:14: template error", d.p("h1.yaml"));
        assert!(log.contains(&at) && log.contains(what), "{content}: {log}");
        assert!(log.contains("nothing was applied"), "{log}");
        assert!(d.read("out").is_none(), "{content}: applied anyway");
    }
}

// See: #15 (an undefined variable on a remote host points into the file the user edits)
#[test]
fn a_remote_hosts_template_error_points_into_the_initiators_file() {
    let fleet = SshdFleet::start(1);
    let d = Dir::new();
    let text = format!(
        "graph: bad\n# the url below\nremote: {}\nresources:\n  file:\n  - name: {}\n    content: \"{{{{ host.nmae }}}}\"\n",
        fleet.url(1),
        d.p("out")
    );
    let g = d.write("role.yaml", &text);
    let mut p = Proc::spawn(&mut remote_cmd(
        &fleet,
        &[&g],
        &["--converged-timeout", "1"],
    ));
    let (code, log) = finish(&mut p);
    assert_eq!(code, 1, "{log}");
    let at = format!("{}:7:14: template error", g.display());
    assert!(log.contains(&at) && log.contains("host.nmae"), "{log}");
    assert!(d.read("out").is_none());
}

// See: #15 (two hosts' files landing on one path: an error naming both)
#[test]
fn collected_files_that_collide_name_both_hosts() {
    let d = Dir::new();
    let export = |host: &str| {
        format!(
            "graph: {host}\nresources:\n  file:\n  - name: \"@@app-{{{{ host.name }}}}\"\n    path: /etc/app.conf\n    content: \"from {{{{ host.name }}}}\"\n"
        )
    };
    // Host a exports and serves the store; b exports and collects both.
    let mut a = local(&d, &export("a"), "a", &["--client-urls", "127.0.0.1:0"]);
    let url = a.store_url(LIMIT);
    a.wait_line("settled:", LIMIT);
    let role = format!(
        "{}collect:\n- kind: file\n  pattern: \"{}/{{{{ host.name }}}}/\"\n",
        export("b"),
        d.p("in")
    );
    let g = d.write("b.yaml", &role);
    let mut c = mgmt();
    c.arg("run")
        .arg("--file")
        .arg(&g)
        .args(["--hostname", "b", "--no-server", "--seeds", &url]);
    let mut b = Proc::spawn(&mut c);
    let (code, log) = finish(&mut b);
    a.signal(nix::sys::signal::Signal::SIGINT);
    let _ = a.wait(Duration::from_secs(30));
    assert_eq!(code, 2, "{log}");
    let at = format!("{}:8:3: collect: host \"a\" and host \"b\"", g.display());
    assert!(log.contains(&at), "{log}");
    assert!(log.contains(&format!("{}/b/app.conf", d.p("in"))), "{log}");
    assert!(d.read("in/b/app.conf").is_none(), "a collapse was applied");
}
