//! The rpm/dnf backend of `pkg` (Fedora, RHEL and their kin, dnf 4 or
//! dnf 5): the state from `rpm -q`, what the repositories offer from `dnf
//! repoquery --available`, the newest from `dnf check-update`, and every
//! change in ONE dnf transaction, so installs and removals share a lock
//! and a history entry: with dnf 4, a `dnf shell` script of `install`,
//! `upgrade` and `remove` lines ending in `run`; with dnf 5, which has no
//! `shell`, one `dnf5 do` with an `--action=` before each package.
//!
//! `dnf shell` exits 0 even when a line fails, so its stderr is read too:
//! an `Error:` line fails the group; and every package is checked again
//! afterwards. A package to install that no repository offers is refused
//! before anything runs. dnf 4's own lock makes it exit at once rather
//! than wait (`exit_on_lock`); rpm's transaction lock already does. dnf 5
//! has no such option and waits for its lock for as long as it is held,
//! so before each dnf5 command the locks are looked at ([`held_lock`]):
//! one held is an error naming the packages and the holder.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use super::super::argv::{self, words};
use super::super::{Ctx, ResourceError};
use super::{missing_error, State, Step, Want};

/// Which dnf the host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dnf {
    /// dnf 4: `dnf`, with `shell`.
    Four,
    /// dnf 5: `dnf5`, with `do`.
    Five,
}

impl Dnf {
    pub(super) fn program(self) -> &'static str {
        match self {
            Dnf::Four => "dnf",
            Dnf::Five => "dnf5",
        }
    }

    /// Every package's step (see [`plan`]).
    pub(super) async fn plan(
        self,
        wants: &[Want],
        refreshed: &mut bool,
        ctx: &Ctx,
    ) -> Result<Vec<Step>, ResourceError> {
        plan(self, wants, refreshed, ctx).await
    }

    /// The one transaction for every step.
    pub(super) async fn apply(self, steps: &[Step], ctx: &Ctx) -> Result<(), ResourceError> {
        match self {
            Dnf::Four => apply_shell(steps, ctx).await,
            Dnf::Five => apply_do(steps, ctx).await,
        }
    }

    /// dnf 5 waits for a held lock; say so instead (see [`held_lock`]).
    fn lock_free(self, doing: &str, names: &[&str]) -> Result<(), ResourceError> {
        if self == Dnf::Four {
            return Ok(());
        }
        match held_lock(LOCKS) {
            None => Ok(()),
            Some(held) => Err(ResourceError::Failed(format!(
                "cannot {doing} packages {}: {held}{}",
                names.join(", "),
                super::LOCK_HINT
            ))),
        }
    }
}

/// The locks dnf 5 and rpm take on the package database, where each
/// version keeps them: dnf 5's system-repo lock, rpm's transaction lock.
const LOCKS: &[&str] = &[
    "/var/lib/dnf/system-repo.lock",
    "/var/lib/libdnf5/system-repo.lock",
    "/usr/lib/sysimage/libdnf5/system-repo.lock",
    "/var/lib/rpm/.rpm.lock",
    "/usr/lib/sysimage/rpm/.rpm.lock",
];

/// The first of `paths` on which another process holds a POSIX record
/// lock (the kind dnf 5 and rpm take), said in words with the holder's
/// pid; `None` when none is held (or none exists). Only looked at
/// (`F_GETLK`), never taken.
fn held_lock(paths: &[&str]) -> Option<String> {
    paths.iter().find_map(|p| {
        let file = std::fs::File::open(Path::new(p)).ok()?;
        let mut fl = nix::libc::flock {
            l_type: nix::libc::F_WRLCK as i16,
            l_whence: nix::libc::SEEK_SET as i16,
            l_start: 0,
            l_len: 0,
            l_pid: 0,
        };
        nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_GETLK(&mut fl)).ok()?;
        (fl.l_type != nix::libc::F_UNLCK as i16).then(|| match fl.l_pid {
            pid if pid > 0 => format!("{p} is locked by process {pid}"),
            _ => format!("{p} is locked"),
        })
    })
}

/// `[epoch:]version-release`, the epoch only when the package has one.
const QF: &str = "%{NAME}\t%|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}\n";

/// What rpm says of each package: its installed `[epoch:]version-release`.
pub(super) async fn installed(
    names: &[&str],
    ctx: &Ctx,
) -> Result<HashMap<String, String>, ResourceError> {
    let mut args = words(["-q", "--qf", QF]);
    args.extend(names.iter().map(|n| n.to_string()));
    // Exits with the number of names not installed, said on stdout;
    // a database that cannot be read says so on stderr.
    let ran = argv::run("rpm", &args, &[], &ctx.cancel).await?;
    if ran.code < 0 || ran.stderr.contains("error:") {
        return Err(ResourceError::Failed(format!(
            "rpm -q exited with code {}: {}",
            ran.code,
            ran.tail()
        )));
    }
    Ok(tab_pairs(&ran.stdout))
}

/// `name<TAB>value` lines; the last line of a name wins (the newest of an
/// install-only package such as a kernel, which rpm lists oldest first).
fn tab_pairs(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect()
}

/// Whether the installed `evr` is the `want`ed version: the same, or the
/// same without the epoch when `want` has none, or the same version with
/// any release when `want` names no release (`1.2` is `1.2-3.fc40`).
pub(super) fn same(evr: &str, want: &str) -> bool {
    let evr = match (want.contains(':'), evr.split_once(':')) {
        (false, Some((_, rest))) => rest,
        _ => evr,
    };
    evr == want || (!want.contains('-') && evr.rsplit_once('-').is_some_and(|(v, _)| v == want))
}

/// A dnf query, reading the repositories' metadata afresh the first time
/// in the resource's life (not under noop: dnf then uses its cache, which
/// it fills itself when it has none or it has expired).
async fn query(
    dnf: Dnf,
    args: &[&str],
    names: &[&String],
    refreshed: &mut bool,
    ctx: &Ctx,
) -> Result<argv::Ran, ResourceError> {
    let shown: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
    dnf.lock_free("read", &shown)?;
    let mut all = words(["-q"]);
    if !*refreshed && !ctx.noop {
        let program = dnf.program();
        tracing::info!("{}: reading the repositories ({program} --refresh)", ctx.id);
        all.push("--refresh".into());
        *refreshed = true;
    }
    all.extend(args.iter().map(|a| a.to_string()));
    all.extend(names.iter().map(|n| n.to_string()));
    argv::run(dnf.program(), &all, &[], &ctx.cancel).await
}

/// Every version the repositories offer of each package, oldest first.
async fn available(
    dnf: Dnf,
    names: &[&String],
    refreshed: &mut bool,
    ctx: &Ctx,
) -> Result<HashMap<String, Vec<String>>, ResourceError> {
    // dnf 4 ends each package's line itself; dnf 5 does not.
    let qf = match dnf {
        Dnf::Four => "%{name}\t%{evr}",
        Dnf::Five => "%{name}\t%{evr}\n",
    };
    let args = ["repoquery", "--available", "--qf", qf];
    let ran = query(dnf, &args, names, refreshed, ctx).await?;
    if !ran.ok() {
        return Err(ResourceError::Failed(format!(
            "{} repoquery exited with code {}: {}",
            dnf.program(),
            ran.code,
            ran.tail()
        )));
    }
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for (n, v) in ran.stdout.lines().filter_map(|l| l.split_once('\t')) {
        out.entry(n.to_owned()).or_default().push(v.to_owned());
    }
    Ok(out)
}

/// The newer version `dnf check-update` offers of each installed package
/// (exit 100: some; 0: none).
async fn updates(
    dnf: Dnf,
    names: &[&String],
    refreshed: &mut bool,
    ctx: &Ctx,
) -> Result<HashMap<String, String>, ResourceError> {
    let ran = query(dnf, &["check-update"], names, refreshed, ctx).await?;
    if ran.code != 0 && ran.code != 100 {
        return Err(ResourceError::Failed(format!(
            "{} check-update exited with code {}: {}",
            dnf.program(),
            ran.code,
            ran.tail()
        )));
    }
    Ok(check_update_lines(&ran.stdout))
}

/// `name.arch  evr  repo` lines, up to the obsoletes' section (dnf 5
/// heads the list with an `Upgrades` line, of one word).
fn check_update_lines(text: &str) -> HashMap<String, String> {
    text.lines()
        .take_while(|l| !l.starts_with("Obsoleting"))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let [na, evr, _repo] = f.as_slice() else {
                return None;
            };
            let (name, _arch) = na.rsplit_once('.')?;
            Some((name.to_owned(), evr.to_string()))
        })
        .collect()
}

/// Every package's `dnf shell` line and log line, for those that are not
/// as wanted; a package to install (at its version) that no repository
/// offers fails, named, before anything changes.
async fn plan(
    dnf: Dnf,
    wants: &[Want],
    refreshed: &mut bool,
    ctx: &Ctx,
) -> Result<Vec<Step>, ResourceError> {
    let names: Vec<&str> = wants.iter().map(|w| w.name.as_str()).collect();
    let now = installed(&names, ctx).await?;
    let pin_ok = |w: &Want, v: &str| w.version.as_deref().is_none_or(|p| same(v, p));
    let asked: Vec<&String> = wants
        .iter()
        .filter(|w| match (w.state, now.get(&w.name)) {
            (State::Absent, _) | (State::Newest, Some(_)) => false,
            (_, Some(v)) => !pin_ok(w, v),
            (_, None) => true,
        })
        .map(|w| &w.name)
        .collect();
    let avail = if asked.is_empty() {
        HashMap::new()
    } else {
        available(dnf, &asked, refreshed, ctx).await?
    };
    let newest: Vec<&String> = wants
        .iter()
        .filter(|w| w.state == State::Newest && now.contains_key(&w.name))
        .map(|w| &w.name)
        .collect();
    let ups = if newest.is_empty() {
        HashMap::new()
    } else {
        updates(dnf, &newest, refreshed, ctx).await?
    };
    // The version each asked package would get: the newest offered that
    // the pin (if any) accepts.
    let target = |w: &Want| -> Option<String> {
        let offered = avail.get(&w.name)?;
        offered.iter().rev().find(|v| pin_ok(w, v)).cloned()
    };
    let missing: Vec<String> = wants
        .iter()
        .filter(|w| asked.contains(&&w.name) && target(w).is_none())
        .map(|w| match &w.version {
            Some(v) => format!("{}-{v}", w.name),
            None => w.name.clone(),
        })
        .collect();
    if !missing.is_empty() {
        let missing: Vec<&str> = missing.iter().map(String::as_str).collect();
        return Err(missing_error(
            &missing,
            dnf.program(),
            "a repository in /etc/yum.repos.d",
        ));
    }
    Ok(wants
        .iter()
        .filter_map(|w| action(w, now.get(&w.name), target(w), ups.get(&w.name)))
        .collect())
}

/// One package's `dnf shell` line and what it does in words; `None` when
/// the package is as wanted. `to` is what an install would get, `up` what
/// `dnf check-update` offers.
fn action(w: &Want, now: Option<&String>, to: Option<String>, up: Option<&String>) -> Option<Step> {
    let name = &w.name;
    let step = |word: String, what: String| Some(Step { word, what });
    let spec = match &w.version {
        Some(v) => format!("{name}-{v}"),
        None => name.clone(),
    };
    let to = to.unwrap_or_default();
    match (w.state, now) {
        (State::Absent, None) => None,
        (State::Absent, Some(v)) => step(format!("remove {name}"), format!("remove {name} {v}")),
        (State::Newest, Some(v)) => {
            let up = up?;
            step(
                format!("upgrade {name}"),
                format!("change {name} from {v} to {up}"),
            )
        }
        (_, Some(v)) if w.version.as_deref().is_none_or(|p| same(v, p)) => None,
        (_, Some(v)) => step(
            format!("install {spec}"),
            format!("change {name} from {v} to {to}"),
        ),
        (_, None) => step(format!("install {spec}"), format!("install {name} {to}")),
    }
}

/// The one dnf 4 transaction for every step: a `dnf shell` script, in a
/// private temporary file, ending in `run`.
async fn apply_shell(steps: &[Step], ctx: &Ctx) -> Result<(), ResourceError> {
    let mut script = tempfile::Builder::new()
        .prefix("mgmt-dnf-")
        .tempfile()
        .map_err(|e| ResourceError::io("cannot make dnf's script file", e))?;
    let text: String = steps.iter().map(|s| format!("{}\n", s.word)).collect();
    script
        .write_all(format!("{text}run\n").as_bytes())
        .map_err(|e| ResourceError::io("cannot write dnf's script file", e))?;
    let lines: Vec<&str> = steps.iter().map(|s| s.word.as_str()).collect();
    tracing::info!("{}: dnf shell: {}; run", ctx.id, lines.join("; "));
    let mut args = words(["-y", "-q", "--setopt=exit_on_lock=True", "shell"]);
    args.push(script.path().display().to_string());
    let ran = argv::run("dnf", &args, &[], &ctx.cancel).await?;
    let failed = ran
        .stderr
        .lines()
        .any(|l| l.starts_with("Error:") || l.contains("error:"));
    if ran.ok() && !failed {
        return Ok(());
    }
    let names = step_names(steps);
    let hint = if ran.stderr.contains("already locked") || ran.stderr.contains("transaction lock") {
        super::LOCK_HINT
    } else {
        ""
    };
    // `dnf shell` exits 0 after most errors; say which it was.
    let how = match ran.code {
        0 => "dnf shell reported an error".to_owned(),
        code => format!("dnf shell exited with code {code}"),
    };
    Err(ResourceError::Failed(format!(
        "cannot apply packages {}: {how}: {}{hint}",
        names.join(", "),
        ran.tail()
    )))
}

/// The packages of `steps` (each word is `action name`).
fn step_names(steps: &[Step]) -> Vec<&str> {
    steps
        .iter()
        .filter_map(|s| s.word.split_once(' ').map(|(_, n)| n))
        .collect()
}

/// `dnf5 do`'s arguments for `steps`: `--action=ACTION PACKAGE` each.
fn do_args(steps: &[Step]) -> Vec<String> {
    let mut args = words(["-y", "-q", "do"]);
    for s in steps {
        if let Some((action, spec)) = s.word.split_once(' ') {
            args.push(format!("--action={action}"));
            args.push(spec.to_owned());
        }
    }
    args
}

/// The one dnf 5 transaction for every step: `dnf5 do`, after a look at
/// the locks it would otherwise wait on.
async fn apply_do(steps: &[Step], ctx: &Ctx) -> Result<(), ResourceError> {
    let names = step_names(steps);
    Dnf::Five.lock_free("apply", &names)?;
    let lines: Vec<&str> = steps.iter().map(|s| s.word.as_str()).collect();
    tracing::info!("{}: dnf5 do: {}", ctx.id, lines.join("; "));
    let ran = argv::run("dnf5", &do_args(steps), &[], &ctx.cancel).await?;
    if ran.ok() {
        return Ok(());
    }
    Err(ResourceError::Failed(format!(
        "cannot apply packages {}: dnf5 do exited with code {}: {}{}",
        names.join(", "),
        ran.code,
        ran.tail(),
        do_failed_why(&ran.stderr, held_lock(LOCKS))
    )))
}

/// What to add to a failed `dnf5 do`'s error: the lock `held` now, if any
/// (rpm's lock taken meanwhile fails the transaction with a word on dnf's
/// log only, "Rpm transaction failed"), or a hint when this dnf5 is one
/// from before the `do` command.
fn do_failed_why(stderr: &str, held: Option<String>) -> String {
    match held {
        Some(held) => format!("; {held}{}", super::LOCK_HINT),
        None if stderr.contains("Unknown argument \"do\"") => {
            " (hint: this dnf5 is older than its `do` command, which pkg needs for one transaction: upgrade dnf5 first)"
                .to_owned()
        }
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::w;
    use super::*;

    #[test]
    fn a_pinned_version_matches_with_or_without_epoch_and_release() {
        assert!(same("1.0-1", "1.0-1"));
        assert!(same("1.0-1.fc40", "1.0"));
        assert!(same("2:1.0-1", "1.0-1"));
        assert!(same("2:1.0-1", "2:1.0-1"));
        assert!(!same("2:1.0-1", "1:1.0-1"));
        assert!(!same("1.0-1", "1.0-2"));
        assert!(!same("1.0.1-1", "1.0"));
    }

    #[test]
    fn each_package_gets_the_line_dnf_shell_takes() {
        let v = |s: &str| Some(s.to_owned());
        let act = |want: &Want, now: Option<String>, up: Option<String>| {
            action(want, now.as_ref(), v("9"), up.as_ref()).map(|s| s.word)
        };
        let line = |s: &str| Some(s.to_owned());
        assert_eq!(
            act(&w("a", State::Installed, None), None, None),
            line("install a")
        );
        assert_eq!(act(&w("a", State::Installed, None), v("1-1"), None), None);
        assert_eq!(
            act(&w("a", State::Newest, None), v("1-1"), v("2-1")),
            line("upgrade a")
        );
        assert_eq!(act(&w("a", State::Newest, None), v("2-1"), None), None);
        assert_eq!(
            act(&w("a", State::Installed, Some("1.0")), v("2.0-1"), None),
            line("install a-1.0")
        );
        assert_eq!(
            act(&w("a", State::Absent, None), v("1-1"), None),
            line("remove a")
        );
        assert_eq!(act(&w("a", State::Absent, None), None, None), None);
    }

    #[test]
    fn dnf5_do_gets_an_action_before_each_package() {
        let step = |word: &str| Step {
            word: word.to_owned(),
            what: String::new(),
        };
        let steps = [step("install a-1.0"), step("remove b"), step("upgrade c")];
        assert_eq!(
            do_args(&steps),
            [
                "-y",
                "-q",
                "do",
                "--action=install",
                "a-1.0",
                "--action=remove",
                "b",
                "--action=upgrade",
                "c"
            ]
        );
        assert_eq!(step_names(&steps), ["a-1.0", "b", "c"]);
    }

    #[test]
    fn a_failed_do_names_the_lock_held_or_an_old_dnf5() {
        // What dnf5 says of a command it does not have (seen with
        // `dnf5 nosuchcmd`), for `do`.
        let old = "Unknown argument \"do\" for command \"dnf5\". Add \"--help\" for more information about the arguments.";
        assert!(do_failed_why(old, None).contains("upgrade dnf5 first"));
        let held = Some("/var/lib/rpm/.rpm.lock is locked by process 7".to_owned());
        let why = do_failed_why("Transaction failed: Rpm transaction failed.", held);
        assert!(why.starts_with("; /var/lib/rpm/.rpm.lock is locked by process 7"));
        assert!(why.contains("holds the lock"));
        assert_eq!(do_failed_why("No match for argument: x", None), "");
    }

    #[test]
    fn a_lock_another_process_holds_is_named_with_its_pid() {
        use std::io::BufRead;
        let d = tempfile::tempdir().unwrap();
        let (free, held) = (d.path().join("free.lock"), d.path().join("held.lock"));
        std::fs::write(&free, "").unwrap();
        let missing = d.path().join("missing.lock");
        let paths = [free.to_str().unwrap(), missing.to_str().unwrap()];
        assert_eq!(held_lock(&paths), None);
        // Another process takes a record lock as rpm does, says so, and
        // holds it until its stdin closes.
        let script = "import fcntl,sys\nf=open(sys.argv[1],'w')\nfcntl.lockf(f,fcntl.LOCK_EX)\nprint('held',flush=True)\nsys.stdin.read()";
        let mut holder = std::process::Command::new("python3")
            .args(["-c", script])
            .arg(&held)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        let out = holder.stdout.take().unwrap();
        std::io::BufReader::new(out).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "held");
        let all = [paths[0], paths[1], held.to_str().unwrap()];
        let said = held_lock(&all);
        drop(holder.stdin.take());
        holder.wait().unwrap();
        let want = format!("{} is locked by process {}", held.display(), holder.id());
        assert_eq!(said, Some(want));
        assert_eq!(held_lock(&all), None, "free once the holder is gone");
    }

    #[test]
    fn check_update_lists_name_and_version_up_to_obsoletes() {
        let text =
            "\nUpgrades\nmgmtit-a.noarch   2.0-1   mgmtit\nObsoleting Packages\nx.noarch 1-1 r\n";
        let got = check_update_lines(text);
        assert_eq!(got.len(), 1);
        assert_eq!(got["mgmtit-a"], "2.0-1");
    }
}
