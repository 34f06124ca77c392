//! A role graph behind a gateway (#15): `host.route` names the path, and a
//! template error on a host points into the initiator's file.

use super::finish;
use crate::remote_run::{remote_cmd, row};
use crate::util::sshd::SshdFleet;
use crate::util::{Dir, Proc};

// See: #15 (host.route and error labels through a gateway)
#[test]
fn behind_a_gateway_routes_render_and_errors_name_the_users_file() {
    let fleet = SshdFleet::start(4);
    let d = Dir::new();
    let role = r#"graph: role
remote: [URL2, URL3]
via: [GW]
resources:
  file:
  - name: "DIR/{{ host.name }}/route"
    parents: true
    content: "{{ host.route }} {{ host.index }}/{{ host.count }}"
"#;
    let fill = |t: &str| {
        t.replace("URL2", &fleet.url(2))
            .replace("URL3", &fleet.url(3))
            .replace("URL4", &fleet.url(4))
            .replace("GW", &fleet.url(1))
            .replace("DIR", &d.path().display().to_string())
    };
    let bad =
        "graph: bad\nremote: URL4\nvia: [GW]\nresources:\n  noop:\n  - name: \"{{ host.nmae }}\"\n";
    let (g, b) = (
        d.write("role.yaml", &fill(role)),
        d.write("bad.yaml", &fill(bad)),
    );
    let mut p = Proc::spawn(&mut remote_cmd(
        &fleet,
        &[&g, &b],
        &["--converged-timeout", "2"],
    ));
    let (code, log) = finish(&mut p);
    assert_eq!(code, 1, "{log}");
    for (i, idx) in [(2, 0), (3, 1)] {
        let route = format!("{}/{}", fleet.ip(1), fleet.ip(i));
        assert_eq!(row(&log, &route)[2], "converged", "{log}");
        let got = d.read(&format!("{}/route", fleet.ip(i)));
        assert_eq!(got, Some(format!("{route} {idx}/2")), "{log}");
    }
    let four = format!("{}/{}", fleet.ip(1), fleet.ip(4));
    assert_eq!(row(&log, &four)[2], "failed:", "{log}");
    let at = format!("{}:6:11: template error", b.display());
    assert!(log.contains(&at) && log.contains("host.nmae"), "{log}");
}
