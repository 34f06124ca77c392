//! `pkg`: a system package, installed (at a version, or the newest) or
//! absent, through the host's package manager.
//!
//! The backend is the host's ([`backend`]): dpkg and apt on Debian, Ubuntu
//! and their kin (`apt.rs`), rpm and dnf 4 or dnf 5 on Fedora, RHEL and
//! theirs (`dnf.rs`). A host with apk, or an unknown one, is refused with
//! a clear "not supported yet" rather than guessed at. Each backend reads the
//! state first (`dpkg-query`, `rpm -q`), then what its sources offer only
//! for what needs a candidate, so nothing runs that would change nothing;
//! the sources are read afresh once per life of the resource (`apt-get
//! update`, `dnf --refresh`), not under noop.
//!
//! Several `pkg` resources of a graph are grouped by the engine
//! ([`KindSpec::group`]) and reach the package manager in ONE call: one
//! `apt-get install` (removals as `name-`), or one dnf transaction (dnf 4:
//! a `dnf shell` script of install, upgrade and remove lines; dnf 5: one
//! `dnf5 do` with an `--action` per package), so twenty
//! packages take the lock once. Changes are non-interactive. A held lock
//! or a missing package is an error that names the packages. Nothing is
//! watched: the package database changes only through the package tools.

mod apt;
mod dnf;

use serde_yaml_ng::{Mapping, Value};

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

/// Package names as Debian and rpm make them: letters, digits and
/// `+-._`, starting with a letter or digit, at least two characters; so
/// never an option, a glob or a `name=version`. Not ending in `-` either,
/// which `apt-get install` may read as a "remove" mark (a trailing `+`, as
/// in `g++`, apt resolves by name first). Uppercase and `_` are rpm's
/// (`NetworkManager`); apt simply knows no such package.
fn check_name(name: &str) -> Result<(), FieldError> {
    let ok = name.len() >= 2
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-._".contains(c));
    if ok {
        return Ok(());
    }
    Err(FieldError::new(
        "name",
        format!("{name:?} is not a package name; expected letters, digits and + - . _ starting with a letter or digit, e.g. nginx"),
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
            .all(|c| c.is_ascii_alphanumeric() || ".+~:-_^".contains(c));
    if ok {
        return Ok(());
    }
    Err(FieldError::new(
        "version",
        format!("{v:?} is not a package version; expected e.g. 1.2.3-1"),
    ))
}

/// The package manager `pkg` drives on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Apt,
    Dnf(dnf::Dnf),
}

impl Backend {
    fn tool(self) -> &'static str {
        match self {
            Backend::Apt => "apt-get",
            Backend::Dnf(d) => d.program(),
        }
    }
}

/// The host's package manager: from `/etc/os-release` (`ID`, `ID_LIKE`)
/// when it names a known family, else from the tools present. A host with
/// apk, or an unknown one, is refused, as is a family whose tools are
/// missing.
fn backend() -> Result<Backend, ResourceError> {
    let ids = os_ids();
    let apt = has("apt-get") && has("dpkg-query");
    // What `dnf` is (Fedora 41 on: a link to dnf5), or dnf5 alone.
    let dnf = match (has("dnf"), has("dnf5")) {
        (true, _) if std::fs::canonicalize("/usr/bin/dnf").is_ok_and(|p| is_dnf5(&p)) => {
            Some(dnf::Dnf::Five)
        }
        (true, _) => Some(dnf::Dnf::Four),
        (false, true) => Some(dnf::Dnf::Five),
        (false, false) => None,
    }
    .filter(|_| has("rpm"));
    let family = |names: &[&str]| ids.split_whitespace().any(|id| names.contains(&id));
    let host = ids.trim();
    if family(&["debian", "ubuntu"]) && apt {
        return Ok(Backend::Apt);
    }
    let rpm_family = family(&[
        "fedora",
        "rhel",
        "centos",
        "rocky",
        "almalinux",
        "amzn",
        "ol",
    ]);
    if let (true, Some(d)) = (rpm_family, dnf) {
        return Ok(Backend::Dnf(d));
    }
    if rpm_family {
        return Err(ResourceError::Failed(format!(
            "this host ({host}) is of the rpm family but has no dnf (or dnf5) and rpm in /usr/bin; pkg drives dnf 4 or 5 (hint: install dnf, or use an exec resource)"
        )));
    }
    if !family(&["alpine"]) {
        if apt {
            return Ok(Backend::Apt);
        }
        if let Some(d) = dnf {
            return Ok(Backend::Dnf(d));
        }
    }
    let other = if family(&["alpine"]) || has("apk") {
        "apk"
    } else {
        "an unknown package manager"
    };
    Err(ResourceError::Failed(format!(
        "this host ({host}) uses {other}, which pkg does not support yet; only dpkg/apt (Debian, Ubuntu) and rpm/dnf (Fedora, RHEL) are (hint: install the package with an exec resource for now)"
    )))
}

/// `ID` and `ID_LIKE` of `/etc/os-release`, as one list of words.
fn os_ids() -> String {
    let release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let field = |key: &str| {
        release
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim_matches('"').to_owned())
            .unwrap_or_default()
    };
    format!("{} {}", field("ID="), field("ID_LIKE="))
}

/// Whether the system has `tool` in one of its own directories.
fn has(tool: &str) -> bool {
    ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
        .iter()
        .any(|d| std::path::Path::new(d).join(tool).exists())
}

/// Whether `dnf`, resolved, is dnf 5 (Fedora 41 on: `dnf -> dnf5`), whose
/// command line has `do` where dnf 4 has `shell`.
fn is_dnf5(resolved: &std::path::Path) -> bool {
    resolved
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("dnf5"))
}

/// One package's change: what the backend takes (apt's word, a `dnf
/// shell` line, or `dnf5 do`'s action and package, as `action name`),
/// and what it does in words for the log.
struct Step {
    word: String,
    what: String,
}

/// A held lock's hint, for both backends.
const LOCK_HINT: &str = " (hint: another package manager run holds the lock; let it end, or set meta: {retry: N, delay: MS} to retry)";

/// Packages to install that no source offers, named.
fn missing_error(names: &[&str], tool: &str, source: &str) -> ResourceError {
    ResourceError::Failed(format!(
        "package {} not found: {tool} knows no installable version (hint: check the name, and that {source} provides it)",
        names.join(", ")
    ))
}

impl Pkg {
    fn names(&self) -> Vec<&str> {
        self.wants.iter().map(|w| w.name.as_str()).collect()
    }

    async fn plan(&mut self, backend: Backend, ctx: &Ctx) -> Result<Vec<Step>, ResourceError> {
        match backend {
            Backend::Apt => apt::plan(&self.wants, &mut self.refreshed, ctx).await,
            Backend::Dnf(d) => d.plan(&self.wants, &mut self.refreshed, ctx).await,
        }
    }

    /// Checks that every package is now as wanted, naming those that are not.
    async fn verify(&self, backend: Backend, ctx: &Ctx) -> Result<(), ResourceError> {
        let (now, same): (_, fn(&str, &str) -> bool) = match backend {
            Backend::Apt => (apt::installed(&self.names(), ctx).await?, |v, w| v == w),
            Backend::Dnf(_) => (dnf::installed(&self.names(), ctx).await?, dnf::same),
        };
        let wrong: Vec<&str> = self
            .wants
            .iter()
            .filter(|w| match (w.state, now.get(&w.name)) {
                (State::Absent, v) => v.is_some(),
                (_, None) => true,
                (_, Some(v)) => w.version.as_ref().is_some_and(|want| !same(v, want)),
            })
            .map(|w| w.name.as_str())
            .collect();
        if wrong.is_empty() {
            return Ok(());
        }
        Err(ResourceError::Failed(format!(
            "{} ended well but {} is still not as wanted",
            backend.tool(),
            wrong.join(", ")
        )))
    }
}

#[async_trait::async_trait]
impl Resource for Pkg {
    async fn check_apply(&mut self, ctx: &Ctx) -> Result<Checked, ResourceError> {
        super::host_only(ctx, "the host's own packages")?;
        let backend = backend()?;
        let plan = self.plan(backend, ctx).await?;
        if plan.is_empty() {
            return Ok(Checked::Ok);
        }
        if ctx.noop {
            for s in &plan {
                tracing::info!("{}: would {}", ctx.id, s.what);
            }
            return Ok(Checked::Changed);
        }
        match backend {
            Backend::Apt => apt::apply(&plan, ctx).await?,
            Backend::Dnf(d) => d.apply(&plan, ctx).await?,
        }
        self.verify(backend, ctx).await?;
        for s in &plan {
            tracing::info!("{}: {}", ctx.id, s.what);
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

    pub(super) fn w(name: &str, state: State, version: Option<&str>) -> Want {
        Want {
            name: name.into(),
            state,
            version: version.map(str::to_owned),
        }
    }

    #[test]
    fn names_that_a_package_tool_would_read_otherwise_are_refused() {
        for bad in ["-o", "a", "a b", "foo-", "x;y", "_x", "a*", "a=1", "a/b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        let good = [
            "nginx",
            "libc6",
            "g++",
            "python3.11",
            "NetworkManager",
            "perl-Test_x",
        ];
        for g in good {
            assert!(check_name(g).is_ok(), "{g}");
        }
    }

    #[test]
    fn dnf_5_is_told_from_dnf_4_by_what_dnf_resolves_to() {
        assert!(is_dnf5(std::path::Path::new("/usr/bin/dnf5")));
        assert!(!is_dnf5(std::path::Path::new("/usr/bin/dnf-3")));
        assert!(!is_dnf5(std::path::Path::new("/usr/bin/dnf")));
    }

    #[test]
    fn versions_take_epochs_releases_and_rpm_carets() {
        for good in [
            "1.0-1",
            "2:1.0-1.fc40",
            "1.2~rc1",
            "1.0^20240101git",
            "1.0_1",
        ] {
            assert!(
                check_version(State::Installed, Some(good)).is_ok(),
                "{good}"
            );
        }
        for bad in ["", "-1", "v1", "1 2", "1*"] {
            assert!(check_version(State::Installed, Some(bad)).is_err(), "{bad}");
        }
    }
}
