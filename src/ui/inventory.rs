//! How `mgmt facts` shows an inventory: one row per host (name, OS,
//! architecture, kernel, CPUs, memory, default IPv4) for people, or one
//! JSON document with every host's whole facts for scripts. The facts come
//! as the hosts printed them (JSON); a missing field shows `-`. A
//! gateway's `mgmt facts` prints the same document for its parent, which
//! reads it back with [`parse_facts_json`].

use serde_json::{json, Value};

/// One host's facts, or why there are none.
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    /// Its identity (the graph's `hostname:`, or the URL's host).
    pub host: &'a str,
    /// How it was reached (`gw/host` behind a gateway).
    pub route: &'a str,
    pub facts: Result<&'a Value, &'a str>,
}

/// One row of a document [`facts_json`] wrote, as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct OwnedAnswer {
    pub host: String,
    pub route: String,
    pub facts: Result<Value, String>,
}

const HEADER: [&str; 7] = ["host", "os", "arch", "kernel", "cpus", "memory", "ipv4"];

/// The table, then `route: reason` for each host without facts (the route
/// is the host's name unless it is behind a gateway: `gw/host`).
pub fn facts_table(rows: &[Answer<'_>]) -> String {
    let mut table: Vec<[String; 7]> = vec![HEADER.map(String::from)];
    let mut failures = String::new();
    for &Answer { host, route, facts } in rows {
        match facts {
            Ok(f) => table.push(cells(host, f)),
            Err(why) => {
                let mut row = [(); 7].map(|_| "-".to_string());
                row[0] = host.to_string();
                table.push(row);
                // Behind a gateway, the route: "here" in a reason is there.
                failures.push_str(&format!(
                    "{}: {}\n",
                    super::escape::escape_controls(route),
                    super::escape::escape_controls(why)
                ));
            }
        }
    }
    let mut widths = [0usize; 7];
    for line in &table {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for line in &table {
        let text: Vec<String> = line
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(text.join("  ").trim_end());
        out.push('\n');
    }
    let ok = rows.iter().filter(|a| a.facts.is_ok()).count();
    out.push_str(&format!(
        "{ok} of {} host(s) answered\n{failures}",
        rows.len()
    ));
    out
}

fn cells(host: &str, f: &Value) -> [String; 7] {
    let s = |v: &Value| match v {
        Value::String(s) if !s.is_empty() => super::escape::escape_controls(s).into_owned(),
        Value::Number(n) => n.to_string(),
        _ => "-".to_string(),
    };
    let os = match (s(&f["os"]["id"]), s(&f["os"]["version"])) {
        (id, v) if v == "-" => id,
        (id, v) => format!("{id} {v}"),
    };
    let memory = match f["memory_mb"].as_u64() {
        Some(mb) => format!("{mb} MiB"),
        None => "-".into(),
    };
    [
        host.to_string(),
        os,
        s(&f["arch"]),
        s(&f["kernel"]),
        s(&f["cpus"]),
        memory,
        s(&f["default_ipv4"]),
    ]
}

/// One JSON document: `{"v":1,"hosts":[{"host","route","facts","error"}]}`,
/// in plan order; `facts` null and `error` the reason for a host without
/// facts.
pub fn facts_json(rows: &[Answer<'_>]) -> String {
    let hosts: Vec<Value> = rows
        .iter()
        .map(|a| match a.facts {
            Ok(f) => json!({"host": a.host, "route": a.route, "facts": f, "error": null}),
            Err(why) => json!({"host": a.host, "route": a.route, "facts": null, "error": why}),
        })
        .collect();
    json!({ "v": 1, "hosts": hosts }).to_string()
}

/// The rows of a line [`facts_json`] wrote (a gateway's inventory);
/// `None` for any other line. A row without facts or an error is an error
/// row; a row without a host name is left out.
pub fn parse_facts_json(line: &str) -> Option<Vec<OwnedAnswer>> {
    let doc: Value = serde_json::from_str(line.trim()).ok()?;
    if doc["v"] != 1 {
        return None;
    }
    let rows = doc["hosts"].as_array()?;
    Some(
        rows.iter()
            .filter_map(|r| {
                let host = r["host"].as_str()?.to_owned();
                let route = r["route"].as_str().unwrap_or(&host).to_owned();
                let facts = match (&r["facts"], r["error"].as_str()) {
                    (_, Some(why)) => Err(why.to_owned()),
                    (Value::Object(_), None) => Ok(r["facts"].clone()),
                    _ => Err("no facts and no reason given".to_owned()),
                };
                Some(OwnedAnswer { host, route, facts })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_row_per_host_and_the_reasons_after() {
        let f = json!({"os": {"id": "debian", "version": "12"}, "arch": "x86_64",
            "kernel": "6.1.0", "cpus": 2, "memory_mb": 3900, "default_ipv4": "10.0.0.7"});
        let web1 = Answer {
            host: "web1",
            route: "web1",
            facts: Ok(&f),
        };
        let web2 = Answer {
            host: "web2",
            route: "gw/web2",
            facts: Err("auth refused"),
        };
        let text = facts_table(&[web1, web2]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("host"), "{text}");
        assert!(
            lines[1].contains("debian 12") && lines[1].contains("3900 MiB"),
            "{text}"
        );
        assert!(lines[2].starts_with("web2"), "{text}");
        assert_eq!(lines[3], "1 of 2 host(s) answered");
        assert_eq!(lines[4], "gw/web2: auth refused");
        let line = facts_json(&[web1, web2]);
        let doc: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(doc["hosts"][0]["facts"]["os"]["id"], "debian");
        // What a gateway prints, its parent reads back row for row.
        let back = parse_facts_json(&line).expect("a facts document");
        assert_eq!(back[0].facts, Ok(f.clone()));
        assert_eq!(back[1].route, "gw/web2");
        assert_eq!(back[1].facts, Err("auth refused".to_owned()));
        assert_eq!(parse_facts_json("{\"v\":2,\"hosts\":[]}"), None);
        assert_eq!(parse_facts_json("hello"), None);
    }
}
