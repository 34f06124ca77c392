//! Jinja templates in a graph's string values (issue #15): one graph for a
//! whole role, rendered on each host with its own facts.
//!
//! Every string value of the document (names, paths, content, commands, a
//! `meta.when`; never a mapping key, nor `graph:`, `hostname:`, `remote:`
//! and `via:`, which the initiator reads, nor `when:`, an expression of its
//! own evaluated by [`eval_condition`]) that holds `{{`, `{%` or `{#` is
//! rendered with minijinja before the graph is checked, so the usual checks
//! (an absolute path, an octal mode) apply to what was rendered. A template
//! sees `facts` ([`crate::facts::Facts`]), `host` ([`Host`]) and two
//! functions over the values hosts publish with `kv` resources:
//! `values(NAME[, GLOB])`, a list sorted by host name, and
//! `values_by_host(NAME[, GLOB])`, a mapping host → value; and
//! `hosts(WHERE)`, the hosts whose published facts and graph name match an
//! expression (#20).
//!
//! Undefined variables are errors (strict undefined), and so is any other
//! template error; each is reported at the value's `file:line:col` with the
//! expression at fault. Rendering is a pure function of the text and the
//! [`Context`], so the same inputs give the same graph, and the engine,
//! which compares graphs, re-applies nothing. No I/O here: the run gathers
//! the facts and the values and calls [`super::parse_rendered`] again when
//! they change.

use std::collections::BTreeMap;
use std::sync::Arc;

use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;
use serde_yaml_ng::Value;

use super::pos::PosNode;
use super::report::Errors;
use super::Originals;
use crate::facts::Facts;

/// A host's place in the run, as templates see it (`host.name`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Host {
    /// Its identity in the store (`--hostname`).
    pub name: String,
    /// Its position in its graph's `remote:` list (0 for a local run).
    pub index: u64,
    /// The length of that list (1 for a local run).
    pub count: u64,
    /// How the initiator shows it (`gw.dc1/web3`); its name for a local run.
    pub route: String,
}

/// Values hosts publish with `kv` resources: name → host → value.
pub type Values = BTreeMap<String, BTreeMap<String, String>>;

/// What hosts publish about themselves (#20): host → `{graph, facts}`
/// (JSON), for `hosts(WHERE)`.
pub type Published = BTreeMap<String, serde_json::Value>;

/// What templates may read.
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub facts: Facts,
    pub host: Host,
    pub values: Values,
    /// Every host's published facts and graph name, while the text calls
    /// `hosts()`.
    pub hosts: Published,
}

/// Whether the text of a graph calls `hosts()` (then its host must follow
/// every host's published facts).
pub fn reads_hosts(src: &str) -> bool {
    src.contains("hosts(")
}

/// `hosts(WHERE)`: the hosts whose published record makes `expr` true,
/// with `name`, `graph` and `facts` as variables, sorted by name; each as
/// `{name, graph, facts}`. A record the expression cannot be evaluated on
/// (a fact it lacks) does not match; a bad expression is an error.
fn select_hosts(hosts: &Published, expr: &str) -> Result<Vec<minijinja::Value>, minijinja::Error> {
    let env = Environment::new();
    let e = env.compile_expression(expr)?;
    let mut out = Vec::new();
    for (name, rec) in hosts {
        let vars = minijinja::context! {
            name => name,
            graph => rec["graph"].as_str().unwrap_or(""),
            facts => minijinja::Value::from_serialize(&rec["facts"]),
        };
        if e.eval(vars).is_ok_and(|v| v.is_true()) {
            out.push(minijinja::Value::from_serialize(serde_json::json!({
                "name": name,
                "graph": rec["graph"],
                "facts": rec["facts"],
            })));
        }
    }
    Ok(out)
}

/// Whether `s` holds template syntax, so it is rendered at all.
pub fn is_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%") || s.contains("{#")
}

/// Whether the text of a graph reads exchanged values (then its host must
/// follow every host's `kv` exports).
pub fn reads_values(src: &str) -> bool {
    src.contains("values(") || src.contains("values_by_host(")
}

/// Renders every templated string value of `value` in place, but those of
/// [`AS_WRITTEN`]; errors go to `errs` at the value's position, and the
/// value is left as it was.
pub(crate) fn render_tree(
    value: &mut Value,
    at: Option<&PosNode>,
    ctx: &Context,
    errs: &mut Errors,
) -> Originals {
    let env = environment(&ctx.values, &ctx.hosts);
    let mut originals = Originals::new();
    let Value::Mapping(map) = value else {
        walk(value, at, &env, ctx, errs, &mut originals);
        return originals;
    };
    let positions = match at {
        Some(PosNode::Map { entries, .. }) if entries.len() == map.len() => Some(entries),
        _ => None,
    };
    for (i, (k, v)) in map.iter_mut().enumerate() {
        if k.as_str().is_some_and(|k| AS_WRITTEN.contains(&k)) {
            continue;
        }
        walk(
            v,
            positions.map(|p| &p[i].1),
            &env,
            ctx,
            errs,
            &mut originals,
        );
    }
    originals
}

/// Top-level keys read as written: the initiator needs them before any
/// host has facts (the host's identity, where it is, how to get there).
/// `when:` too: it is an expression itself, evaluated by [`eval_condition`].
const AS_WRITTEN: &[&str] = &["graph", "hostname", "remote", "via", "when"];

/// Checks the syntax of a condition (`--where`, a graph's `when:`): a Jinja
/// expression such as `facts.os.id == "debian" and facts.memory_mb >= 4096`.
pub fn check_condition(expr: &str) -> Result<(), String> {
    let env = environment(&Values::new(), &Published::new());
    env.compile_expression(expr)
        .map(|_| ())
        .map_err(|e| describe(expr, &e))
}

/// Evaluates a condition with this host's `facts` and `host`: whether it
/// holds (Jinja truth: false, 0, empty and none do not).
pub fn eval_condition(expr: &str, ctx: &Context) -> Result<bool, String> {
    let env = environment(&ctx.values, &ctx.hosts);
    let e = env
        .compile_expression(expr)
        .map_err(|e| describe(expr, &e))?;
    let vars = minijinja::context! { facts => &ctx.facts, host => &ctx.host };
    e.eval(vars)
        .map(|v| v.is_true())
        .map_err(|e| describe(expr, &e))
}

fn walk(
    value: &mut Value,
    at: Option<&PosNode>,
    env: &Environment<'static>,
    ctx: &Context,
    errs: &mut Errors,
    originals: &mut Originals,
) {
    match value {
        Value::String(s) if is_template(s) => {
            let pos = at.map(PosNode::pos);
            let vars = minijinja::context! { facts => &ctx.facts, host => &ctx.host };
            match env.render_str(s, vars) {
                Ok(out) => {
                    if let Some(p) = pos {
                        originals.insert(p, std::mem::replace(s, out));
                    } else {
                        *s = out;
                    }
                }
                Err(e) => errs.at(pos, describe(s, &e)),
            }
        }
        Value::Sequence(items) => {
            let positions = match at {
                Some(PosNode::Seq { items: p, .. }) if p.len() == items.len() => Some(p),
                _ => None,
            };
            for (i, item) in items.iter_mut().enumerate() {
                walk(item, positions.map(|p| &p[i]), env, ctx, errs, originals);
            }
        }
        Value::Mapping(map) => {
            let positions = match at {
                Some(PosNode::Map { entries, .. }) if entries.len() == map.len() => Some(entries),
                _ => None,
            };
            for (i, (_, v)) in map.iter_mut().enumerate() {
                walk(v, positions.map(|p| &p[i].1), env, ctx, errs, originals);
            }
        }
        Value::Tagged(t) => walk(&mut t.value, at, env, ctx, errs, originals),
        _ => {}
    }
}

/// The environment: strict undefined, no auto-escaping (these are config
/// files and commands, not HTML), and the two value functions.
fn environment(values: &Values, hosts: &Published) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    let shared = Arc::new(values.clone());
    let v = shared.clone();
    env.add_function("values", move |name: String, glob: Option<String>| {
        selected(&v, &name, glob.as_deref())
            .into_values()
            .collect::<Vec<String>>()
    });
    env.add_function(
        "values_by_host",
        move |name: String, glob: Option<String>| selected(&shared, &name, glob.as_deref()),
    );
    let hosts = Arc::new(hosts.clone());
    env.add_function("hosts", move |expr: String| select_hosts(&hosts, &expr));
    env
}

/// The values published under `name` by the hosts `glob` matches.
fn selected(values: &Values, name: &str, glob: Option<&str>) -> BTreeMap<String, String> {
    values
        .get(name)
        .into_iter()
        .flatten()
        .filter(|(host, _)| glob.is_none_or(|g| super::glob_match(g, host)))
        .map(|(h, v)| (h.clone(), v.clone()))
        .collect()
}

/// `template error in "…": undefined value at `host.nmae` (line 2 of the
/// value)`: what minijinja says, with the expression it points at.
fn describe(src: &str, e: &minijinja::Error) -> String {
    let what = match e.kind() {
        minijinja::ErrorKind::UndefinedError => "undefined variable or attribute".to_owned(),
        minijinja::ErrorKind::SyntaxError => "syntax error".to_owned(),
        minijinja::ErrorKind::UnknownFunction => "unknown function".to_owned(),
        minijinja::ErrorKind::UnknownFilter => "unknown filter".to_owned(),
        k => k.to_string(),
    };
    let mut msg = format!("template error: {what}");
    if let Some(d) = e.detail() {
        msg.push_str(&format!(" ({d})"));
    }
    if let Some(code) = e.range().and_then(|r| src.get(r)) {
        msg.push_str(&format!(" at `{}`", code.trim()));
    }
    if src.contains('\n') {
        if let Some(line) = e.line() {
            msg.push_str(&format!(", line {line} of the value"));
        }
    }
    let hint = match e.kind() {
        minijinja::ErrorKind::UndefinedError => {
            "templates see facts (facts.hostname, facts.os.id, ...), host (host.name, host.index, host.count, host.route), values(NAME) and values_by_host(NAME)"
        }
        _ => "see docs/graph-format.md, Templates",
    };
    format!("{msg}; nothing was applied (hint: {hint})")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        let mut values = Values::new();
        for (h, v) in [("b", "2"), ("a", "1"), ("c", "3")] {
            values
                .entry("peer".into())
                .or_default()
                .insert(h.into(), v.into());
        }
        Context {
            hosts: Published::new(),
            facts: Facts::default(),
            host: Host {
                name: "a".into(),
                index: 0,
                count: 3,
                route: "a".into(),
            },
            values,
        }
    }

    fn render(s: &str) -> Result<String, String> {
        let mut v = Value::String(s.into());
        let mut errs = Errors::new("g.yaml");
        render_tree(&mut v, None, &ctx(), &mut errs);
        errs.finish(()).map_err(|e| e.to_string())?;
        Ok(v.as_str().unwrap_or_default().to_owned())
    }

    #[test]
    fn values_are_sorted_by_host_and_filtered_by_glob() {
        assert_eq!(render("{{ values('peer') | join(',') }}").unwrap(), "1,2,3");
        assert_eq!(
            render("{{ values('peer', '[bc]') | length }}").unwrap(),
            "0"
        );
        assert_eq!(render("{{ values('peer', 'b*') | join }}").unwrap(), "2");
        assert_eq!(render("{{ values_by_host('peer')['c'] }}").unwrap(), "3");
        assert_eq!(
            render("{{ values('none') | length == host.count }}").unwrap(),
            "False"
        );
    }

    #[test]
    fn undefined_is_an_error_that_names_the_expression() {
        let e = render("x-{{ host.nmae }}").unwrap_err();
        assert!(e.contains("undefined") && e.contains("host.nmae"), "{e}");
        let e = render("{{ host.name ").unwrap_err();
        assert!(e.contains("syntax error"), "{e}");
    }

    // See: #15 (templated values are checked once rendered, on the host)
    #[test]
    fn a_graph_is_checked_as_rendered_and_when_must_be_a_boolean() {
        let text = "graph: g\nresources:\n  file:\n  - name: \"{{ facts.hostname }}\"\n    meta: {when: \"{{ host.count > 2 }}\"}\n";
        // As written (the initiator): the name is not an absolute path yet.
        let g = crate::graph::parse_str(text, "g.yaml").expect("unrendered");
        assert!(g.resources[0].meta.waiting());
        let mut c = ctx();
        c.facts.hostname = "/srv/x".into();
        let g = crate::graph::parse_rendered(text, "g.yaml", &c).expect("rendered");
        let when = g.resources[0].meta.when.clone().expect("when");
        assert!(
            when.ready && when.expr == "{{ host.count > 2 }}",
            "{when:?}"
        );
        c.facts.hostname = "relative".into();
        let e = crate::graph::parse_rendered(text, "g.yaml", &c).unwrap_err();
        assert!(
            e.to_string().starts_with("g.yaml:4:11: file[relative]"),
            "{e}"
        );
        let bad = text.replace("host.count > 2", "host.name");
        let e = crate::graph::parse_rendered(&bad, "g.yaml", &ctx()).unwrap_err();
        assert!(
            e.to_string()
                .contains("rendered to \"a\"; expected true or false"),
            "{e}"
        );
    }

    // See: #20 (hosts(WHERE): the hosts whose published record matches)
    #[test]
    fn hosts_where_selects_by_graph_and_facts() {
        let mut ctx = ctx();
        for (h, graph, mem) in [
            ("b", "web", 512),
            ("a", "db-master", 4096),
            ("c", "web", 8192),
        ] {
            let rec = serde_json::json!({"graph": graph, "facts": {"memory_mb": mem}});
            ctx.hosts.insert(h.into(), rec);
        }
        let env = environment(&ctx.values, &ctx.hosts);
        let render = |t: &str| env.render_str(t, minijinja::context! {}).unwrap();
        let db = "{{ hosts('graph == \"db-master\"') | map(attribute='name') | join(',') }}";
        assert_eq!(render(db), "a");
        let big = "{{ hosts('facts.memory_mb >= 4096') | map(attribute='name') | join(',') }}";
        assert_eq!(render(big), "a,c");
        // A record lacking the fact does not match; none match: empty.
        ctx.hosts
            .insert("d".into(), serde_json::json!({"graph": "web", "facts": {}}));
        let env = environment(&ctx.values, &ctx.hosts);
        let none = "{{ hosts('facts.cpus > 1') | length }}";
        assert_eq!(env.render_str(none, minijinja::context! {}).unwrap(), "0");
        assert!(env
            .render_str("{{ hosts('graph ==') }}", minijinja::context! {})
            .is_err());
    }
}
