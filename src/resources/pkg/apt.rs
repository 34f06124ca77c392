//! The dpkg/apt backend of `pkg`: the state from `dpkg-query`, candidates
//! from `apt-cache policy`, apt's lists read once (`apt-get update`), and
//! every change in ONE `apt-get install` call (removals as `name-`).

use std::collections::HashMap;

use super::super::argv::{self, words};
use super::super::{Ctx, ResourceError};
use super::{missing_error, State, Step, Want};

/// What dpkg says of each package: its installed version, if any.
pub(super) async fn installed(
    names: &[&str],
    ctx: &Ctx,
) -> Result<HashMap<String, String>, ResourceError> {
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
fn action(w: &Want, now: Option<&String>, candidate: Option<&String>) -> Option<Step> {
    let name = &w.name;
    let step = |word: String, what: String| Step { word, what };
    match (w.state, now) {
        (State::Absent, None) => None,
        (State::Absent, Some(v)) => Some(step(format!("{name}-"), format!("remove {name} {v}"))),
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
            Some(step(word, what))
        }
    }
}

/// Every package's `apt-get install` word and log line, for those that
/// are not as wanted. apt's lists are read first, once per life of the
/// resource (`refreshed`), when a package is to be installed, upgraded or
/// checked for its newest version (not under noop: that would change the
/// lists); a package to install that apt does not know then fails, named.
pub(super) async fn plan(
    wants: &[Want],
    refreshed: &mut bool,
    ctx: &Ctx,
) -> Result<Vec<Step>, ResourceError> {
    let names: Vec<&str> = wants.iter().map(|w| w.name.as_str()).collect();
    let now = installed(&names, ctx).await?;
    let asked: Vec<String> = wants
        .iter()
        .filter(|w| match (w.state, now.get(&w.name)) {
            (State::Absent, _) => false,
            (State::Newest, _) | (State::Installed, None) => true,
            (State::Installed, Some(v)) => w.version.as_ref().is_some_and(|want| want != v),
        })
        .map(|w| w.name.clone())
        .collect();
    let cand = if asked.is_empty() {
        HashMap::new()
    } else {
        if !*refreshed && !ctx.noop {
            update(ctx).await?;
            *refreshed = true;
        }
        candidates(&asked, ctx).await?
    };
    let missing: Vec<&str> = asked
        .iter()
        .map(String::as_str)
        .filter(|n| !cand.contains_key(*n) && !now.contains_key(*n))
        .collect();
    if !missing.is_empty() {
        return Err(missing_error(
            &missing,
            "apt",
            "a source in /etc/apt/sources.list or sources.list.d",
        ));
    }
    Ok(wants
        .iter()
        .filter_map(|w| action(w, now.get(&w.name), cand.get(&w.name)))
        .collect())
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

/// The one `apt-get install` call for every step.
pub(super) async fn apply(steps: &[Step], ctx: &Ctx) -> Result<(), ResourceError> {
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
    args.extend(steps.iter().map(|s| s.word.clone()));
    tracing::info!("{}: apt-get install {}", ctx.id, args[8..].join(" "));
    let ran = argv::run("apt-get", &args, ENV, &ctx.cancel).await?;
    if ran.ok() {
        return Ok(());
    }
    let names: Vec<&str> = steps
        .iter()
        .map(|s| {
            s.word
                .split('=')
                .next()
                .unwrap_or(&s.word)
                .trim_end_matches('-')
        })
        .collect();
    let hint = if ran.stderr.contains("Could not get lock") {
        super::LOCK_HINT
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

#[cfg(test)]
mod tests {
    use super::super::tests::w;
    use super::*;

    #[test]
    fn each_package_gets_the_word_apt_get_install_takes() {
        let v = |s: &str| Some(s.to_owned());
        let act = |want: &Want, now: Option<String>, cand: Option<String>| {
            action(want, now.as_ref(), cand.as_ref()).map(|s| s.word)
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
}
