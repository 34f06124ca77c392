//! One graph on three hosts: each publishes values under a templated
//! name, and every host ends with all three (#15).

use super::finish;
use crate::remote_run::remote_cmd;
use crate::util::sshd::SshdFleet;
use crate::util::{Dir, Proc};

// See: #15 (one graph for a whole role)
#[test]
fn three_hosts_exchange_values_and_each_ends_with_all_three() {
    let fleet = SshdFleet::start(3);
    let d = Dir::new();
    let urls: Vec<String> = (1..=3).map(|i| fleet.url(i)).collect();
    let text = r#"graph: role
remote: [URLS]
resources:
  kv:
  - name: "@@member"
    value: "{{ host.name }}"
  - name: "@@addr-{{ host.name }}"
    value: "{{ host.name }}#{{ host.index }}/{{ host.count }}"
  file:
  - name: "DIR/{{ host.name }}/static"
    parents: true
    content: "{{ facts.cpus }}"
  - name: "DIR/{{ host.name }}/peers"
    parents: true
    content: "me {{ host.name }}#{{ host.index }}\n{% for h in values('member') %}{{ values('addr-' ~ h) | join }}\n{% endfor %}"
    meta:
      when: "{{ values('member') | length == host.count }}"
"#
    .replace("URLS", &urls.join(", "))
    .replace("DIR", &d.path().display().to_string());
    let g = d.write("role.yaml", &text);
    let mut p = Proc::spawn(&mut remote_cmd(
        &fleet,
        &[&g],
        &["--converged-timeout", "2"],
    ));
    let (code, log) = finish(&mut p);
    assert_eq!(code, 0, "{log}\n--- sshd:\n{}", fleet.log());
    // Hosts in name order, each with the index of its URL in remote:.
    let mut all: Vec<(String, usize)> = (1..=3).map(|i| (fleet.ip(i).to_owned(), i - 1)).collect();
    all.sort();
    let lines: String = all
        .iter()
        .map(|(ip, idx)| format!("{ip}#{idx}/3\n"))
        .collect();
    for i in 1..=3 {
        let ip = fleet.ip(i);
        let got = d.read(&format!("{ip}/peers"));
        assert_eq!(
            got.as_deref(),
            Some(format!("me {ip}#{}\n{lines}", i - 1).as_str()),
            "host {ip}\n{log}"
        );
        // New values re-rendered the graph (the first hosts up saw fewer
        // members); what did not change was applied once, never again.
        let writes = format!("file[{}/{ip}/static]: wrote", d.path().display());
        assert_eq!(log.matches(&writes).count(), 1, "host {ip}\n{log}");
    }
}
