//! `pkg`: a system package, installed (at a version, or the newest) or
//! absent, through the host's package manager.
//!
//! The backend is the host's: dpkg and apt on Debian, Ubuntu and their
//! kin. A host with rpm/dnf or apk is recognised and refused with a clear
//! "not supported yet" rather than guessed at. The check reads the state
//! first (`dpkg-query`, then `apt-cache policy` only for what needs a
//! candidate), so nothing runs that would change nothing; a package apt
//! does not know makes it read its sources once (`apt-get update`) before
//! the package is called missing.
//!
//! Several `pkg` resources of a graph are grouped by the engine
//! ([`KindSpec::group`]) and reach apt in ONE `apt-get install` call, the
//! removals as `name-` words in the same call, so twenty packages take the
//! lock once. Installs are non-interactive and keep changed configuration
//! files (`--force-confdef --force-confold`). A held lock or a missing
//! package is an error that names the packages. Nothing is watched: the
//! package database changes only through the package tools.

use std::collections::HashMap;

use serde_yaml_ng::{Mapping, Value};

use super::argv::{self, words};
use super::{
    str_field, Checked, Ctx, FieldError, FieldSpec, FieldType, KindSpec, Resource, ResourceError,
};

pub static SPEC: KindSpec = KindSpec {
    kind: "pkg",
    fields: &[
        FieldSpec {
            name: "state",
            ty: FieldType::Str,
            required: false,
            doc: "installed (default), absent or newest",
        },
        FieldSpec {
            name: "version",
            ty: FieldType::Str,
            required: false,
            doc: "the exact version to install (with state installed only)",
        },
    ],
    sends: &[],
    receives: &["state", "version"],
    build,
    group: Some(build_group),
};

/// What the graph wants of one package.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Want {
    name: String,
    state: State,
    version: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Installed,
    Absent,
    Newest,
}

/// One package, or a group of them applied together.
struct Pkg {
    wants: Vec<Want>,
    /// apt's lists were read (`apt-get update`) by this resource already:
    /// once per life, before the first change that needs a candidate.
    refreshed: bool,
}

fn build(name: &str, params: &Mapping) -> Result<Box<dyn Resource>, FieldError> {
    Ok(Box::new(Pkg {
        wants: vec![want(name, params)?],
        refreshed: false,
    }))
}

fn build_group(members: &[(String, Mapping)]) -> Result<Box<dyn Resource>, FieldError> {
    let wants = members
        .iter()
        .map(|(name, params)| want(name, params))
        .collect::<Result<_, _>>()?;
    Ok(Box::new(Pkg {
        wants,
        refreshed: false,
    }))
}

fn want(name: &str, params: &Mapping) -> Result<Want, FieldError> {
    check_name(name)?;
    let state = read_state(str_field(params, "state").as_deref())?;
    let version = str_field(params, "version");
    check_version(state, version.as_deref())?;
    Ok(Want {
        name: name.to_owned(),
        state,
        version,
    })
}

fn read_state(s: Option<&str>) -> Result<State, FieldError> {
    match s {
        None | Some("installed") => Ok(State::Installed),
        Some("absent") => Ok(State::Absent),
        Some("newest") => Ok(State::Newest),
        Some(other) => Err(FieldError::new(
            "state",
            format!("state must be installed, absent or newest, not {other:?}"),
        )),
    }
}

/// Debian's package names: lowercase letters, digits and `+-.`, starting
/// with a letter or digit, at least two characters; so never an option.
/// Not ending in `-` either, which `apt-get install` may read as a
/// "remove" mark (a trailing `+`, as in `g++`, apt resolves by name first).
fn check_name(name: &str) -> Result<(), FieldError> {
    let ok = name.len() >= 2
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
    if ok {
        return Ok(());
    }
    Err(FieldError::new(
        "name",
        format!("{name:?} is not a package name; expected lowercase letters, digits and + - . starting with a letter or digit, e.g. nginx"),
    ))
}

fn check_version(state: State, version: Option<&str>) -> Result<(), FieldError> {
    let Some(v) = version else { return Ok(()) };
    if state != State::Installed {
        return Err(FieldError::new(
            "version",
            "version goes with state: installed only (newest and absent take no version)",
        ));
    }
    let ok = !v.is_empty()
        && v.starts_with(|c: char| c.is_ascii_digit())
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".+~:-".contains(c));
    if ok {
        return Ok(());
    }
    Err(FieldError::new(
        "version",
        format!("{v:?} is not a package version; expected e.g. 1.2.3-1"),
    ))
}

/// Refuses a host whose package manager this kind does not drive yet.
fn backend() -> Result<(), ResourceError> {
    let release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let field = |key: &str| {
        release
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim_matches('"').to_owned())
            .unwrap_or_default()
    };
    let ids = format!("{} {}", field("ID="), field("ID_LIKE="));
    let has = |tool: &str| {
        ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
            .iter()
            .any(|d| std::path::Path::new(d).join(tool).exists())
    };
    if has("apt-get") && has("dpkg-query") {
        return Ok(());
    }
    let other = if has("dnf") || has("yum") || has("rpm") {
        "rpm/dnf"
    } else if has("apk") {
        "apk"
    } else {
        "an unknown package manager"
    };
    Err(ResourceError::Failed(format!(
        "this host ({}) uses {other}, which pkg does not support yet; only dpkg/apt (Debian, Ubuntu) is (hint: install the package with an exec resource for now)",
        ids.trim()
    )))
}

/// What dpkg says of each package: its installed version, if any.
async fn installed(names: &[&str], ctx: &Ctx) -> Result<HashMap<String, String>, ResourceError> {
    let mut args = words([
        "-W",
        "-f=${Package}\t${db:Status-Abbrev}\t${Version}\n",
        "--",
    ]);
    args.extend(names.iter().map(|n| n.to_string()));
    // Exits 1 when some name is unknown; it still lists the others.
    let ran = argv::run("dpkg-query", &args, &[], &ctx.cancel).await?;
    if ran.code > 1 {
        return Err(ResourceError::Failed(format!(
            "dpkg-query exited with code {}: {}",
            ran.code,
            ran.tail()
        )));
    }
    Ok(ran
        .stdout
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let (name, status, version) = (f.next()?, f.next()?, f.next()?);
            // The second letter is the state: `i` is installed.
            (status.as_bytes().get(1) == Some(&b'i')).then(|| (name.into(), version.into()))
        })
        .collect())
}

/// apt's candidate version of each package it knows (none: not known).
async fn candidates(names: &[String], ctx: &Ctx) -> Result<HashMap<String, String>, ResourceError> {
    let mut args = words(["policy"]);
    args.extend(names.iter().cloned());
    let ran = argv::run("apt-cache", &args, &[], &ctx.cancel).await?;
    if !ran.ok() {
        return Err(ResourceError::Failed(format!(
            "apt-cache policy exited with code {}: {}",
            ran.code,
            ran.tail()
        )));
    }
    let mut out = HashMap::new();
    let mut current: Option<String> = None;
    for line in ran.stdout.lines() {
        if !line.starts_with(' ') {
            current = line.strip_suffix(':').map(str::to_owned);
        } else if let (Some(name), Some(c)) = (&current, line.trim().strip_prefix("Candidate: ")) {
            if c != "(none)" {
                out.insert(name.clone(), c.to_owned());
            }
        }
    }
    Ok(out)
}

/// The word `apt-get install` takes for one package, and what it does in
/// words; `None` when the package is as wanted.
fn action(w: &Want, now: Option<&String>, candidate: Option<&String>) -> Option<(String, String)> {
    let name = &w.name;
    match (w.state, now) {
        (State::Absent, None) => None,
        (State::Absent, Some(v)) => Some((format!("{name}-"), format!("remove {name} {v}"))),
        (State::Installed, Some(v)) if w.version.as_ref().is_none_or(|want| want == v) => None,
        (State::Newest, Some(v)) if candidate.is_none_or(|c| c == v) => None,
        (_, now) => {
            let to = w.version.as_ref().or(candidate);
            let word = match &w.version {
                Some(v) => format!("{name}={v}"),
                None => name.clone(),
            };
            let what = match (now, to) {
                (Some(from), Some(to)) => format!("change {name} from {from} to {to}"),
                (None, Some(to)) => format!("install {name} {to}"),
                (_, None) => format!("install {name}"),
            };
            Some((word, what))
        }
    }
}

impl Pkg {
    fn names(&self) -> Vec<&str> {
        self.wants.iter().map(|w| w.name.as_str()).collect()
    }

    /// Every package's `apt-get install` word and log line, for those that
    /// are not as wanted. apt's lists are read first, once per life of the
    /// resource, when a package is to be installed, upgraded or checked for
    /// its newest version (not under noop: that would change the lists);
    /// a package to install that apt does not know then fails, named.
    async fn plan(&mut self, ctx: &Ctx) -> Result<Vec<(String, String)>, ResourceError> {
        let now = installed(&self.names(), ctx).await?;
        let asked: Vec<String> = self
            .wants
            .iter()
            .filter(|w| match (w.state, now.get(&w.name)) {
                (State::Absent, _) => false,
                (State::Newest, _) | (State::Installed, None) => true,
                (State::Installed, Some(v)) => w.version.as_ref().is_some_and(|want| want != v),
            })
            .map(|w| w.name.clone())
            .collect();
        if asked.is_empty() {
            return Ok(self.actions(&now, &HashMap::new()));
        }
        if !self.refreshed && !ctx.noop {
            update(ctx).await?;
            self.refreshed = true;
        }
        let cand = candidates(&asked, ctx).await?;
        let missing: Vec<&str> = asked
            .iter()
            .map(String::as_str)
            .filter(|n| !cand.contains_key(*n) && !now.contains_key(*n))
            .collect();
        if !missing.is_empty() {
            return Err(ResourceError::Failed(format!(
                "package {} not found: apt knows no installable version (hint: check the name, and that a source in /etc/apt/sources.list or sources.list.d provides it)",
                missing.join(", ")
            )));
        }
        Ok(self.actions(&now, &cand))
    }

    fn actions(
        &self,
        now: &HashMap<String, String>,
        cand: &HashMap<String, String>,
    ) -> Vec<(String, String)> {
        self.wants
            .iter()
            .filter_map(|w| action(w, now.get(&w.name), cand.get(&w.name)))
            .collect()
    }

    /// Checks that every package is now as wanted, naming those that are not.
    async fn verify(&self, ctx: &Ctx) -> Result<(), ResourceError> {
        let now = installed(&self.names(), ctx).await?;
        let wrong: Vec<&str> = self
            .wants
            .iter()
            .filter(|w| match (w.state, now.get(&w.name)) {
                (State::Absent, v) => v.is_some(),
                (_, None) => true,
                (_, Some(v)) => w.version.as_ref().is_some_and(|want| want != v),
            })
            .map(|w| w.name.as_str())
            .collect();
        if wrong.is_empty() {
            return Ok(());
        }
        Err(ResourceError::Failed(format!(
            "apt-get ended well but {} is still not as wanted",
            wrong.join(", ")
        )))
    }
}

const ENV: &[(&str, &str)] = &[
    ("DEBIAN_FRONTEND", "noninteractive"),
    ("APT_LISTCHANGES_FRONTEND", "none"),
];

/// Reads apt's lists. A failure (no network, a source down, the lists'
/// lock held) is a warning: the lists apt already has may well hold what
/// is wanted, and a package they lack is then reported by name.
async fn update(ctx: &Ctx) -> Result<(), ResourceError> {
    tracing::info!("{}: reading the package lists (apt-get update)", ctx.id);
    let ran = argv::run("apt-get", &words(["update", "-q"]), ENV, &ctx.cancel).await?;
    if !ran.ok() {
        tracing::warn!(
            "{}: apt-get update exited with code {}: {}; going on with the lists apt has",
            ctx.id,
            ran.code,
            ran.tail()
        );
    }
    Ok(())
}

/// The one `apt-get install` call for every word.
async fn apply(words_: &[String], ctx: &Ctx) -> Result<(), ResourceError> {
    let mut args = words([
        "install",
        "-y",
        "-q",
        "--allow-downgrades",
        "-o",
        "Dpkg::Options::=--force-confdef",
        "-o",
        "Dpkg::Options::=--force-confold",
    ]);
    args.extend(words_.iter().cloned());
    let ran = argv::run("apt-get", &args, ENV, &ctx.cancel).await?;
    if ran.ok() {
        return Ok(());
    }
    let names: Vec<&str> = words_
        .iter()
        .map(|w| w.split('=').next().unwrap_or(w).trim_end_matches('-'))
        .collect();
    let hint = if ran.stderr.contains("Could not get lock") {
        " (hint: another package manager run holds the lock; let it end, or set meta: {retry: N, delay: MS} to retry)"
    } else {
        ""
    };
    Err(ResourceError::Failed(format!(
        "cannot apply packages {}: apt-get install exited with code {}: {}{hint}",
        names.join(", "),
        ran.code,
        ran.tail()
    )))
}

#[async_trait::async_trait]
impl Resource for Pkg {
    async fn check_apply(&mut self, ctx: &Ctx) -> Result<Checked, ResourceError> {
        super::host_only(ctx, "the host's own packages")?;
        backend()?;
        let plan = self.plan(ctx).await?;
        if plan.is_empty() {
            return Ok(Checked::Ok);
        }
        if ctx.noop {
            for (_, what) in &plan {
                tracing::info!("{}: would {what}", ctx.id);
            }
            return Ok(Checked::Changed);
        }
        let words_: Vec<String> = plan.iter().map(|(w, _)| w.clone()).collect();
        tracing::info!("{}: apt-get install {}", ctx.id, words_.join(" "));
        apply(&words_, ctx).await?;
        self.verify(ctx).await?;
        for (_, what) in &plan {
            tracing::info!("{}: {what}", ctx.id);
        }
        Ok(Checked::Changed)
    }

    fn get_field(&self, field: &str) -> Option<Value> {
        let w = self.wants.first()?;
        match field {
            "state" => Some(Value::String(
                match w.state {
                    State::Installed => "installed",
                    State::Absent => "absent",
                    State::Newest => "newest",
                }
                .into(),
            )),
            "version" => w.version.clone().map(Value::String),
            _ => None,
        }
    }

    /// Only a lone package receives: the engine never groups a resource
    /// at either end of a Send/Recv edge.
    fn set_field(&mut self, field: &str, value: Value) -> Result<(), FieldError> {
        let [w] = self.wants.as_mut_slice() else {
            return Err(FieldError {
                field: None,
                message: format!("a group of packages cannot receive {field}"),
            });
        };
        match field {
            "state" => w.state = read_state(value.as_str())?,
            "version" => w.version = value.as_str().map(str::to_owned),
            _ => {
                return Err(FieldError {
                    field: None,
                    message: format!("pkg cannot receive {field}"),
                })
            }
        }
        check_version(w.state, w.version.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(name: &str, state: State, version: Option<&str>) -> Want {
        Want {
            name: name.into(),
            state,
            version: version.map(str::to_owned),
        }
    }

    #[test]
    fn each_package_gets_the_word_apt_get_install_takes() {
        let v = |s: &str| Some(s.to_owned());
        let act = |want: &Want, now: Option<String>, cand: Option<String>| {
            action(want, now.as_ref(), cand.as_ref()).map(|(word, _)| word)
        };
        assert_eq!(act(&w("a", State::Installed, None), None, v("1")), v("a"));
        assert_eq!(act(&w("a", State::Installed, None), v("1"), v("2")), None);
        assert_eq!(act(&w("a", State::Newest, None), v("1"), v("2")), v("a"));
        assert_eq!(act(&w("a", State::Newest, None), v("2"), v("2")), None);
        assert_eq!(
            act(&w("a", State::Installed, Some("1")), v("2"), None),
            v("a=1")
        );
        assert_eq!(act(&w("a", State::Absent, None), v("1"), None), v("a-"));
        assert_eq!(act(&w("a", State::Absent, None), None, None), None);
    }

    #[test]
    fn names_that_apt_would_read_otherwise_are_refused() {
        for bad in ["-o", "a", "Nginx", "a b", "foo-", "x;y"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        for good in ["nginx", "libc6", "g++", "python3.11"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
    }
}
