//! One version of a local `--remote` graph file, as the run's hosts get it.
//!
//! Every leaf host of a file is sent the same text (the file without its
//! `remote:` and `via:`: [`super::plan::host_text`]), and its store
//! connections may read the same prefixes ([`Source::scope`]). Each takes
//! several full YAML parses of the file. Worked out host by host, they made
//! a run's set-up quadratic in the size of a file that lists its hosts:
//! with 200 hosts in one file, the initiator spent about 1.5 ms of CPU per
//! host re-parsing those 200 lines (#17). A [`Source`] works each out once
//! per version of the file, when first asked, and every host shares it. A
//! gateway's text, which carries its own hops ahead, is still made for each
//! gateway (there are few).

use std::sync::{Arc, OnceLock};

/// One version of a graph file's text, with what its hosts get of it.
#[derive(Debug)]
pub struct Source {
    text: String,
    leaf: OnceLock<Option<Arc<str>>>,
    scope: OnceLock<Vec<String>>,
}

impl Source {
    /// A version of a file, read and validated by the caller.
    pub fn new(text: String) -> Arc<Self> {
        Arc::new(Self {
            text,
            leaf: OnceLock::new(),
            scope: OnceLock::new(),
        })
    }

    /// The text to put on a host: for a leaf (`rest: None`) the one text
    /// every leaf of this version gets, for a gateway its own (its `via:`
    /// hops still ahead); `None` if it cannot be rewritten.
    pub fn for_host(&self, rest: Option<&[String]>) -> Option<Arc<str>> {
        match rest {
            None => self
                .leaf
                .get_or_init(|| super::plan::host_text(&self.text, None).map(Arc::from))
                .clone(),
            Some(rest) => super::plan::host_text(&self.text, Some(rest)).map(Arc::from),
        }
    }

    /// The store prefixes a child of this graph reads beyond its own keys
    /// (empty for a text that does not parse: it reads nothing).
    pub fn scope(&self) -> &[String] {
        self.scope.get_or_init(|| scope_of(&self.text))
    }
}

/// What `text`'s child reads: the prefixes its `collect:` names, every
/// host's `kv` values for a graph whose templates read `values()` (#15:
/// they have a root of their own, so this reads no other export), every
/// host's published facts for one that reads `hosts()` (#20), and every
/// host's exports for a graph whose `collect:` globs are templated (known
/// only once rendered on the host).
fn scope_of(text: &str) -> Vec<String> {
    let Ok(g) = crate::graph::parse_str(text, "graph") else {
        return Vec::new();
    };
    let mut scope = crate::world::collect_prefixes(&g);
    let templated = g.collect.iter().any(|c| {
        c.hostname
            .as_deref()
            .is_some_and(crate::graph::template::is_template)
    });
    if crate::graph::template::reads_values(text) {
        scope.push(crate::world::VALUES.to_owned());
    }
    if crate::graph::template::reads_hosts(text) {
        scope.push(crate::world::FACTS.to_owned());
    }
    if templated {
        scope.push(crate::world::EXPORTED.to_owned());
        scope.push(crate::world::VALUES.to_owned());
    }
    scope
}

#[cfg(test)]
mod tests {
    use super::*;

    // See: #13, #15 (a graph that reads values() reads every host's values,
    // not every host's exports)
    #[test]
    fn reading_values_opens_the_values_not_the_exports() {
        let g = "graph: g\nresources:\n  file:\n  - name: f\n    path: /tmp/f\n    content: \"{{ values('peer') | join(',') }}\"\n";
        assert_eq!(
            Source::new(g.into()).scope(),
            [crate::world::VALUES.to_owned()]
        );
        let plain = "graph: g\nresources:\n  noop:\n  - name: n\n";
        assert!(Source::new(plain.into()).scope().is_empty());
        assert!(Source::new("- not a graph\n".into()).scope().is_empty());
    }

    // See: #17 (a file's leaf text is made once per version, for all its
    // hosts), #13 (and it is the text without the hosts' URLs)
    #[test]
    fn every_leaf_of_a_version_shares_one_text_and_a_gateway_gets_its_own() {
        let text = "graph: g\nremote:\n- ssh://root@w1\n- ssh://w2\nvia: [ssh://gw1, ssh://gw2]\n\
                    resources:\n  noop:\n  - name: n\n";
        let v1 = Source::new(text.into());
        let (a, b) = (v1.for_host(None).unwrap(), v1.for_host(None).unwrap());
        assert!(Arc::ptr_eq(&a, &b), "worked out once, shared");
        assert_eq!(
            a.as_ref(),
            super::super::plan::host_text(text, None).unwrap()
        );
        assert!(!a.contains("ssh://"), "{a}");
        let gw = v1.for_host(Some(&["ssh://gw2".into()])).unwrap();
        assert!(
            gw.contains("ssh://gw2") && !gw.contains("ssh://gw1"),
            "{gw}"
        );
        // An edit is a new version, with its own text.
        let v2 = Source::new(text.replace("name: n", "name: m"));
        assert!(v2.for_host(None).unwrap().contains("name: m"));
        assert!(v1.for_host(None).unwrap().contains("name: n"));
    }
}
