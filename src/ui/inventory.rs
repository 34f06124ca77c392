//! How `mgmt facts` shows an inventory: one row per host (name, OS,
//! architecture, kernel, CPUs, memory, default IPv4) for people, or one
//! JSON document with every host's whole facts for scripts. The facts come
//! as the hosts printed them (JSON); a missing field shows `-`.

use serde_json::{json, Value};

/// One host's facts, or why there are none.
pub type Answer<'a> = (&'a str, Result<&'a Value, &'a str>);

const HEADER: [&str; 7] = ["host", "os", "arch", "kernel", "cpus", "memory", "ipv4"];

/// The table, then `host: reason` for each host without facts.
pub fn facts_table(rows: &[Answer<'_>]) -> String {
    let mut table: Vec<[String; 7]> = vec![HEADER.map(String::from)];
    let mut failures = String::new();
    for (host, facts) in rows {
        match facts {
            Ok(f) => table.push(cells(host, f)),
            Err(why) => {
                let mut row = [(); 7].map(|_| "-".to_string());
                row[0] = (*host).to_string();
                table.push(row);
                failures.push_str(&format!(
                    "{host}: {}\n",
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
    let ok = rows.iter().filter(|(_, f)| f.is_ok()).count();
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

/// One JSON document: `{"hosts":[{"host","facts","error"}]}`, in plan
/// order; `facts` null and `error` the reason for a host without facts.
pub fn facts_json(rows: &[Answer<'_>]) -> String {
    let hosts: Vec<Value> = rows
        .iter()
        .map(|(host, f)| match f {
            Ok(f) => json!({"host": host, "facts": f, "error": null}),
            Err(why) => json!({"host": host, "facts": null, "error": why}),
        })
        .collect();
    json!({ "v": 1, "hosts": hosts }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_row_per_host_and_the_reasons_after() {
        let f = json!({"os": {"id": "debian", "version": "12"}, "arch": "x86_64",
            "kernel": "6.1.0", "cpus": 2, "memory_mb": 3900, "default_ipv4": "10.0.0.7"});
        let text = facts_table(&[("web1", Ok(&f)), ("web2", Err("auth refused"))]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("host"), "{text}");
        assert!(
            lines[1].contains("debian 12") && lines[1].contains("3900 MiB"),
            "{text}"
        );
        assert!(lines[2].starts_with("web2"), "{text}");
        assert_eq!(lines[3], "1 of 2 host(s) answered");
        assert_eq!(lines[4], "web2: auth refused");
        let doc: Value = serde_json::from_str(&facts_json(&[("web1", Ok(&f))])).unwrap();
        assert_eq!(doc["hosts"][0]["facts"]["os"]["id"], "debian");
    }
}
