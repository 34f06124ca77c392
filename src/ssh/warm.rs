//! The warm start: one exec that finds the cached binary, checks it and
//! starts it, with no SFTP session (#17 item 3).
//!
//! A host that already has the binary costs the same checks as the SFTP
//! path ([`super::cache`]), done by the host's own `/bin/sh` in the one
//! command that then `exec`s the binary:
//!
//! - the directory above the prefix is resolved (`cd -P`, as SFTP's
//!   `realpath`), and one `stat` call judges every directory from `/` down
//!   to the binary by OpenSSH's StrictModes rule ([`super::strict`]): owned
//!   by the login user or root, not writable by group or others (a
//!   root-owned sticky ancestor such as `/tmp` excepted), no symbolic link
//!   (`stat` does not follow one, and a link is not a directory);
//! - the binary is checked as [`CachedBinary::launch_command`] checks it
//!   (its install stamp, else its SHA-256: [`super::stamp`]), in the
//!   checked directory it then runs from.
//!
//! Only when all of it holds does the command print `mgmt-warm:<pid>
//! <prefix>` and `exec` the binary, which then reads the tunnel secret and
//! the graph from its stdin (`--graph-stdin`) and keeps the graph in
//! memory (its live edits follow on stdin: [`crate::link`]); the parent
//! writes both right after the exec request, without waiting for an
//! answer. Anything else (no binary, another hash, a
//! directory that fails the rule, a `/tmp` fallback the parent cannot
//! know) prints `mgmt-warm:miss` with the answers of the cache's probe
//! (the login uid and the codecs) and exits [`WARM_MISS_EXIT`]: the parent
//! then takes the SFTP path, which copies what is missing or names what is
//! wrong, and needs no probe of its own. So the check is never weaker than
//! the SFTP path's, and a miss costs no extra round trip.

use russh::client::Msg;
use russh::Channel;

use super::child::ExecError;
use super::child::{ExitStatus, OutputLine, RemoteChild};
use super::launch::{CachedBinary, BIN_NAME};
use super::pack::HostProbe;
use super::session::{ExecOptions, Session};
use super::{shell_join, shell_quote, HostError};

/// Exit code of the warm command when it did not start the binary.
pub const WARM_MISS_EXIT: u32 = 120;

/// What the warm command prints before it `exec`s the binary.
const STARTED: &str = "mgmt-warm:";
/// What it prints when it did not.
const MISS: &str = "mgmt-warm:miss";

/// The command, with `^NAME^` fields each filled in once, in this order.
///
/// Its cost is the host's (#17): one `stat` process is all it starts
/// before the binary. The uid comes from `/proc/self/status` by the
/// shell's own `read` (`id -u` only where that fails); `stat` prints, for
/// every path from `/` to the binary, owner, raw mode (`%f`: type and
/// permission bits), and the stamp's fields ([`super::stamp`]), split into
/// the positional parameters and judged in the same shell; the binary's
/// fields then stand in for the stamp check's own `stat`.
const TEMPLATE: &str = concat!(
    "set -f; u=; while read -r _k _r _e _; do [ \"$_k\" = Uid: ] && u=$_e && break; done",
    " </proc/self/status 2>/dev/null; [ -n \"$u\" ] || u=$(id -u </dev/null);",
    " cd -P -- ^PARENT^ 2>/dev/null",
    " && p=${PWD%/}/^NAME^ && s=^SHA^ && d=$p/bin/$s",
    " && set -- / && a= && x=${PWD#/} && while [ -n \"$x\" ]; do a=$a/${x%%/*};",
    " set -- \"$@\" \"$a\"; case $x in */*) x=${x#*/};; *) x=;; esac; done",
    " && n=$# && set -- \"$@\" \"$p\" \"$p/bin\" \"$d\" \"$d/mgmt\" && k=$#",
    " && set -- $(stat -c '%u %f %d %i %s %.9Y %.9Z' -- \"$@\" 2>/dev/null </dev/null)",
    " && [ $# -eq $((k * 7)) ] && ok=1 && i=0 && while [ $# -ge 7 ]; do",
    " i=$((i+1)); m=$((0x$2)); case $1 in \"$u\"|0) ;; *) ok=;; esac;",
    " if [ $i -gt $n ] || [ \"$1\" != 0 ] || [ $((m & 512)) -eq 0 ]; then",
    " [ $((m & 18)) -eq 0 ] || ok=; fi;",
    " if [ $i -lt $k ]; then [ $((m & 61440)) -eq 16384 ] || ok=;",
    " else [ $((m & 61440)) -eq 32768 ] || ok=; fi;",
    " _vw=\"$3 $4 $5 $6 $7\"; shift 7; done && [ -n \"$ok\" ]",
    " && cd -- \"$d\" && ",
    crate::check_stamp_sh!(),
    " && echo \"mgmt-warm:$$ $p\"",
    " && exec ./mgmt ^ARGS^ --run-dir \"$p\"/run/^RUN^ --graph-stdin=^LEN^;",
    " echo mgmt-warm:miss; echo \"$u\";",
    " for c in zstd xz gzip; do command -v \"$c\" >/dev/null 2>&1 && echo \"$c\"; done;",
    " exit 120"
);

/// The fields of one warm start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WarmSpec {
    /// The cache prefix as asked (`--remote-prefix`); `None`: `~/.cache/mgmt`.
    pub prefix: Option<String>,
    /// Lowercase hex SHA-256 of the binary.
    pub sha256: String,
    /// The run's id: the child's `--run-dir` is `<prefix>/run/<run_id>`
    /// (it names the run; a warm start makes no directory there).
    pub run_id: String,
    /// The binary's arguments, before `--run-dir` and `--graph-stdin`.
    pub args: Vec<String>,
    /// The length of the graph that follows the secret line on stdin.
    pub graph_len: usize,
}

/// How a warm start went.
#[derive(Debug)]
pub enum Warm {
    /// The binary runs; where its cache is.
    Started {
        child: RemoteChild,
        cached: CachedBinary,
    },
    /// It was not started; what the host told of itself, when it could.
    Miss(Option<HostProbe>),
}

impl WarmSpec {
    /// The prefix split into the directory it lives in (relative to the
    /// login directory unless absolute) and its own name.
    fn parent_and_name(&self) -> Option<(String, String)> {
        let p = self.prefix.as_deref().unwrap_or("~/.cache/mgmt");
        let p = p.strip_prefix("~/").unwrap_or(p).trim_end_matches('/');
        let (parent, name) = match p.rsplit_once('/') {
            Some(("", name)) => ("/", name),
            Some((parent, name)) => (parent, name),
            None => (".", p),
        };
        let plain = |w: &str| !w.is_empty() && w != "." && w != ".." && !w.contains('/');
        plain(name).then(|| (parent.to_owned(), name.to_owned()))
    }

    /// The shell command line; `None` when a field cannot be used (a NUL
    /// byte, a prefix that names no directory).
    pub fn command(&self) -> Option<String> {
        let (parent, name) = self.parent_and_name()?;
        let fields = [
            shell_quote(&parent)?,
            shell_quote(&name)?,
            shell_quote(&self.sha256)?,
            shell_join(&self.args)?,
            shell_quote(&self.run_id)?,
            self.graph_len.to_string(),
        ];
        let parts: Vec<&str> = TEMPLATE.split('^').collect();
        let mut out = String::new();
        for (i, part) in parts.iter().enumerate() {
            match i % 2 {
                0 => out.push_str(part),
                _ => out.push_str(fields.get(i / 2)?),
            }
        }
        Some(format!("exec /bin/sh -c {}", shell_quote(&out)?))
    }

    /// The inverse of [`Self::command`], for `mgmt emulate`: the prefix's
    /// directory and name and the spec, or `None` unless `line` is exactly
    /// a command this process would build.
    pub fn parse(line: &str) -> Option<(String, String, WarmSpec)> {
        let script = line.strip_prefix("exec /bin/sh -c ")?;
        let mut words = shlex::split(script)?;
        let script = (words.len() == 1).then(|| words.remove(0))?;
        let parts: Vec<&str> = TEMPLATE.split('^').collect();
        let mut raw = Vec::new();
        let mut rest = script.as_str();
        for (i, literal) in parts.iter().enumerate().step_by(2) {
            rest = rest.strip_prefix(literal)?;
            let Some(next) = parts.get(i + 2) else { break };
            // The arguments may hold anything: their end is the last match.
            let end = match raw.len() {
                3 => rest.rfind(next)?,
                _ => rest.find(next)?,
            };
            raw.push(&rest[..end]);
            rest = &rest[end..];
        }
        let [parent, name, sha, args, run, len] = raw.as_slice() else {
            return None;
        };
        let one = |w: &str| {
            let mut v = shlex::split(w)?;
            (v.len() == 1).then(|| v.remove(0))
        };
        let (parent, name) = (one(parent)?, one(name)?);
        let prefix = match parent.as_str() {
            "." => name.clone(),
            "/" => format!("/{name}"),
            p => format!("{p}/{name}"),
        };
        let spec = WarmSpec {
            prefix: Some(prefix),
            sha256: one(sha)?,
            run_id: one(run)?,
            args: shlex::split(args)?,
            graph_len: len.parse().ok()?,
        };
        // Only a command this process would have built is accepted.
        (spec.command()? == line).then_some((parent, name, spec))
    }
}

/// Starts the cached binary in one exec when it is there and trusted (on
/// `channel` if one was opened for it), writing `stdin` (the secret line
/// and the graph) at once; on a miss the host's probe is kept in the
/// session for the SFTP path.
pub async fn warm_start(
    session: &Session,
    channel: Option<Channel<Msg>>,
    spec: &WarmSpec,
    (stdin, opts): (&[u8], ExecOptions),
) -> Result<Warm, HostError<ExecError>> {
    let err = |kind| HostError::new(session.host(), kind);
    let Some(cmd) = spec.command() else {
        return Err(err(ExecError::BadArgument {
            what: BIN_NAME.into(),
        }));
    };
    let mut child = session.exec_on(channel, &cmd, opts).await?;
    // Written before the answer: the command reads nothing before `exec`,
    // and on a miss it ends without reading it.
    let _ = child.write_stdin(stdin).await;
    let first = tokio::time::timeout(session.command_timeout, first_word(&mut child));
    let line = match first.await {
        Ok(Some(l)) => l,
        Ok(None) => return Ok(Warm::Miss(None)),
        Err(_) => {
            return Err(err(ExecError::Timeout {
                what: BIN_NAME.into(),
                after: session.command_timeout,
            }))
        }
    };
    if line == MISS {
        let out = child.collect().await;
        let probe = (out.status == ExitStatus::Exited(WARM_MISS_EXIT))
            .then(|| HostProbe::parse(&out.stdout))
            .flatten();
        if let Some(p) = &probe {
            let _ = session.probe.set(p.clone());
        }
        return Ok(Warm::Miss(probe));
    }
    let parsed = line.strip_prefix(STARTED).and_then(|r| r.split_once(' '));
    let Some((pid, prefix)) = parsed.and_then(|(pid, p)| Some((pid.parse().ok()?, p))) else {
        // The binary may be running: never a miss, which would start a
        // second one.
        return Err(err(ExecError::NoPid {
            what: BIN_NAME.into(),
        }));
    };
    child.pid = Some(pid);
    let dir = format!("{prefix}/bin/{}", spec.sha256);
    let cached = CachedBinary {
        prefix: prefix.to_owned(),
        path: format!("{dir}/{BIN_NAME}"),
        dir,
        sha256: spec.sha256.clone(),
        hit: true,
        bytes_sent: 0,
        fallback: false,
        created: Vec::new(),
    };
    Ok(Warm::Started { child, cached })
}

/// The command's first line of stdout that is one of its own (a login
/// shell's start-up files may print before it); stderr is only logged.
async fn first_word(child: &mut RemoteChild) -> Option<String> {
    while let Some(line) = child.next_line().await {
        match line {
            OutputLine::Stdout(l) if l.starts_with(STARTED) => return Some(l),
            other => tracing::debug!("warm start: {other:?}"),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(prefix: Option<&str>) -> WarmSpec {
        WarmSpec {
            prefix: prefix.map(str::to_owned),
            sha256: "ab".repeat(32),
            run_id: "r1".into(),
            args: vec!["run".into(), "--x={port}".into(), "a b' --run-dir ".into()],
            graph_len: 12,
        }
    }

    #[test]
    fn a_warm_command_parses_back_to_its_fields() {
        for (prefix, parent, name) in [
            (None, ".cache", "mgmt"),
            (Some("/opt/m"), "/opt", "m"),
            (Some("/m"), "/", "m"),
            (Some("~/c"), ".", "c"),
        ] {
            let s = spec(prefix);
            let cmd = s.command().expect("builds");
            let (p, n, back) = WarmSpec::parse(&cmd).expect("parses");
            assert_eq!((p.as_str(), n.as_str()), (parent, name), "{prefix:?}");
            assert_eq!((back.args, back.sha256), (s.args.clone(), s.sha256.clone()));
            assert_eq!((back.run_id, back.graph_len), (s.run_id, s.graph_len));
            assert!(WarmSpec::parse(&format!("{cmd}; rm -rf /")).is_none());
        }
        assert!(spec(Some("/")).command().is_none());
        assert!(WarmSpec::parse("exec /bin/sh -c ls").is_none());
    }

    /// A home with the "binary" (a script) cached under `.cache/mgmt`.
    fn home_with_binary(script: &[u8]) -> (tempfile::TempDir, WarmSpec, std::path::PathBuf) {
        use sha2::Digest;
        use std::os::unix::fs::PermissionsExt;
        let home = tempfile::tempdir().expect("tmp");
        let sha = hex::encode(sha2::Sha256::digest(script));
        let dir = home.path().join(".cache/mgmt/bin").join(&sha);
        std::fs::create_dir_all(&dir).expect("mkdir");
        for d in [".cache/mgmt", ".cache/mgmt/bin"] {
            let d = home.path().join(d);
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        std::fs::write(dir.join(BIN_NAME), script).expect("write");
        std::fs::set_permissions(dir.join(BIN_NAME), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        let spec = WarmSpec {
            prefix: None,
            sha256: sha,
            run_id: "r1".into(),
            args: vec!["run".into(), "a b".into()],
            graph_len: 5,
        };
        (home, spec, dir)
    }

    /// Runs the warm command in `home` with `stdin`; exit code and stdout.
    fn run_in(home: &std::path::Path, spec: &WarmSpec, stdin: &[u8]) -> (i32, Vec<String>) {
        run_with_path(home, spec, stdin, None)
    }

    /// [`run_in`] with `PATH` set to `path`.
    fn run_with_path(
        home: &std::path::Path,
        spec: &WarmSpec,
        stdin: &[u8],
        path: Option<&str>,
    ) -> (i32, Vec<String>) {
        use std::io::Write;
        let mut cmd = std::process::Command::new("/bin/sh");
        if let Some(p) = path {
            cmd.env("PATH", p);
        }
        let mut child = cmd
            .arg("-c")
            .arg(spec.command().expect("builds"))
            .current_dir(home)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("sh");
        // The command may end without reading it (a miss).
        let _ = child.stdin.take().expect("stdin").write_all(stdin);
        let out = child.wait_with_output().expect("wait");
        let text = String::from_utf8_lossy(&out.stdout);
        (
            out.status.code().unwrap_or(-1),
            text.lines().map(str::to_owned).collect(),
        )
    }

    const SCRIPT: &[u8] = b"#!/bin/sh\necho args \"$@\"\nread s\necho secret $s\nhead -c 5\necho\n";

    #[test]
    fn a_cached_trusted_binary_starts_with_its_stdin() {
        let (home, spec, _) = home_with_binary(SCRIPT);
        let (code, out) = run_in(home.path(), &spec, b"abcd\ngraph");
        assert_eq!(code, 0, "{out:?}");
        let real = std::fs::canonicalize(home.path()).expect("real");
        let prefix = format!("{}/.cache/mgmt", real.display());
        assert!(out[0].starts_with(STARTED), "{out:?}");
        assert!(out[0].ends_with(&format!(" {prefix}")), "{out:?}");
        assert_eq!(
            out[1..],
            [
                format!("args run a b --run-dir {prefix}/run/r1 --graph-stdin=5"),
                "secret abcd".into(),
                "graph".into()
            ]
        );
    }

    #[test]
    fn the_first_start_stamps_the_binary_and_later_ones_hash_no_more() {
        use std::os::unix::fs::PermissionsExt;
        let (home, spec, dir) = home_with_binary(SCRIPT);
        let (code, out) = run_in(home.path(), &spec, b"abcd\ngraph");
        assert_eq!(code, 0, "{out:?}");
        let stamp = std::fs::read_to_string(dir.join(super::super::stamp::STAMP_NAME))
            .expect("the first start hashed and wrote the stamp");
        assert!(stamp.starts_with(&spec.sha256), "{stamp}");
        // Hash tools that leave a mark and fail, first on the PATH.
        let tools = tempfile::tempdir().expect("tmp");
        for tool in ["openssl", "sha256sum"] {
            let p = tools.path().join(tool);
            std::fs::write(&p, "#!/bin/sh\ntouch \"$0.called\"\nexit 1\n").expect("w");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        let path = format!("{}:/usr/bin:/bin", tools.path().display());
        let (code, out) = run_with_path(home.path(), &spec, b"abcd\ngraph", Some(&path));
        assert_eq!(code, 0, "{out:?}");
        assert!(!tools.path().join("openssl.called").exists());
        // Another binary of the same size, with the modification time put
        // back: the stamp does not vouch for it, the hash is asked for.
        let bin = dir.join(BIN_NAME);
        let mtime = std::fs::metadata(&bin)
            .expect("md")
            .modified()
            .expect("mtime");
        let mut other = SCRIPT.to_vec();
        other[12] ^= 1;
        std::fs::write(&bin, &other).expect("write");
        let f = std::fs::File::options()
            .write(true)
            .open(&bin)
            .expect("open");
        f.set_modified(mtime).expect("mtime");
        let (code, out) = run_with_path(home.path(), &spec, b"abcd\ngraph", Some(&path));
        assert_eq!(code, WARM_MISS_EXIT as i32, "{out:?}");
        assert!(tools.path().join("openssl.called").exists());
        let (code, out) = run_in(home.path(), &spec, b"abcd\ngraph");
        assert_eq!(code, WARM_MISS_EXIT as i32, "{out:?}");
    }

    #[test]
    fn anything_untrusted_or_changed_is_a_miss_with_the_probe() {
        use std::os::unix::fs::PermissionsExt;
        let chmod = |p: &std::path::Path, m| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod")
        };
        let uid = nix::unistd::getuid().as_raw().to_string();
        let miss = |home: &std::path::Path, spec: &WarmSpec, why: &str| {
            let (code, out) = run_in(home, spec, b"abcd\ngraph");
            assert_eq!(code, WARM_MISS_EXIT as i32, "{why}: {out:?}");
            assert_eq!(
                out.first().map(String::as_str),
                Some(MISS),
                "{why}: {out:?}"
            );
            assert_eq!(out.get(1), Some(&uid), "{why}: the probe's uid");
        };
        // Nothing cached at all.
        let empty = tempfile::tempdir().expect("tmp");
        miss(empty.path(), &home_with_binary(SCRIPT).1, "no cache");
        // A binary whose content changed.
        let (home, spec, dir) = home_with_binary(SCRIPT);
        std::fs::write(dir.join(BIN_NAME), b"#!/bin/sh\necho evil\n").expect("write");
        miss(home.path(), &spec, "another hash");
        // A directory on the way that group or others may write.
        for (sub, mode) in [
            ("", 0o777),
            (".cache/mgmt", 0o770),
            (".cache/mgmt/bin", 0o702),
        ] {
            let (home, spec, _) = home_with_binary(SCRIPT);
            chmod(&home.path().join(sub), mode);
            miss(home.path(), &spec, &format!("{sub:?} mode {mode:o}"));
        }
        // The binary itself writable by others.
        let (home, spec, dir) = home_with_binary(SCRIPT);
        chmod(&dir.join(BIN_NAME), 0o702);
        miss(home.path(), &spec, "binary mode 702");
        // A symbolic link for the hash directory, to a real good one.
        let (home, spec, dir) = home_with_binary(SCRIPT);
        let moved = home.path().join("elsewhere");
        std::fs::rename(&dir, &moved).expect("mv");
        std::os::unix::fs::symlink(&moved, &dir).expect("link");
        miss(home.path(), &spec, "linked hash directory");
        // Owned by another user (root may chown; others skip this case).
        if nix::unistd::geteuid().is_root() {
            let (home, spec, dir) = home_with_binary(SCRIPT);
            nix::unistd::chown(&dir, Some(nix::unistd::Uid::from_raw(65534)), None).expect("chown");
            miss(home.path(), &spec, "hash directory owned by nobody");
        }
    }

    #[test]
    fn a_prefix_given_absolute_or_under_the_home_starts_too() {
        use std::os::unix::fs::PermissionsExt;
        let (home, spec, _) = home_with_binary(SCRIPT);
        let real = std::fs::canonicalize(home.path()).expect("real");
        // The same cache named three ways: `~/`, relative, absolute.
        let absolute = format!("{}/.cache/mgmt", real.display());
        for prefix in ["~/.cache/mgmt", ".cache/mgmt", absolute.as_str()] {
            let spec = WarmSpec {
                prefix: Some(prefix.to_owned()),
                ..spec.clone()
            };
            let (code, out) = run_in(home.path(), &spec, b"abcd\ngraph");
            assert_eq!(code, 0, "{prefix}: {out:?}");
            assert_eq!(out[0].split_once(' ').map(|p| p.1), Some(absolute.as_str()));
        }
        // A prefix directly under a root-owned sticky directory, as the
        // /tmp fallback is: accepted above the cache, as by the SFTP path.
        let sticky = tempfile::tempdir().expect("tmp");
        std::fs::set_permissions(sticky.path(), std::fs::Permissions::from_mode(0o1777))
            .expect("chmod");
        let (other, spec, _) = home_with_binary(SCRIPT);
        let moved = sticky.path().join("m");
        std::fs::rename(other.path().join(".cache/mgmt"), &moved).expect("mv");
        let spec = WarmSpec {
            prefix: Some(moved.display().to_string()),
            ..spec
        };
        let (code, out) = run_in(other.path(), &spec, b"abcd\ngraph");
        assert_eq!(code, 0, "{out:?}");
        // Without the sticky bit that directory is open to all: a miss.
        std::fs::set_permissions(sticky.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
        let (code, out) = run_in(other.path(), &spec, b"abcd\ngraph");
        assert_eq!(code, WARM_MISS_EXIT as i32, "{out:?}");
    }
}
