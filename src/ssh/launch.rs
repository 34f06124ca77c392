//! Starting the cached binary: one shell command line that checks on the
//! host that the binary is the one of its hash (its install stamp, else its
//! SHA-256: [`super::stamp`]) and `exec`s it only then, so a corrupt,
//! truncated or changed binary never runs ([`CachedBinary::launch_command`]),
//! and its inverse for `mgmt emulate` ([`CachedBinary::parse_launch`]).

use super::child::ExecError;
use super::child::RemoteChild;
use super::session::{ExecOptions, Session};
use super::stamp::VERIFY_SH;
use super::{shell_join, shell_quote, HostError};

/// Exit code of [`CachedBinary::launch_command`] when the binary fails its
/// hash check (and so was not run).
pub const VERIFY_FAILED_EXIT: u32 = 121;

/// Name of the binary inside its cache directory.
pub(super) use super::pack::BIN_NAME;

/// Where the binary is on the host, and what it cost to get it there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedBinary {
    /// The prefix actually used.
    pub prefix: String,
    /// `<prefix>/bin/<sha256>`.
    pub dir: String,
    /// `<dir>/mgmt`.
    pub path: String,
    /// Lowercase hex SHA-256 of the content.
    pub sha256: String,
    /// True when nothing had to be uploaded.
    pub hit: bool,
    /// Bytes written over SFTP (0 on a hit).
    pub bytes_sent: u64,
    /// True when the `/tmp` fallback was used.
    pub fallback: bool,
    /// Directories above the prefix that this upload created (they did not
    /// exist), outermost first: `--no-caching` removes them again when they
    /// are empty, and never one it did not create.
    pub created: Vec<String>,
}

impl CachedBinary {
    /// A shell command line that checks the binary ([`super::stamp`]: its
    /// install stamp, else its SHA-256) and, only if it is the binary of
    /// `self.sha256`, `exec`s it with `args` (each quoted). Otherwise it
    /// prints one line on stderr and exits with [`VERIFY_FAILED_EXIT`].
    /// `None` if an argument cannot be quoted (NUL byte).
    pub fn launch_command<S: AsRef<str>>(&self, args: &[S]) -> Option<String> {
        let dir = shell_quote(&self.dir)?;
        let argv = shell_join(args.iter().map(|a| a.as_ref()))?;
        Some(format!(
            "cd {dir} && s={sha} && {VERIFY_SH} && exec ./{BIN_NAME} {argv}; \
             echo {msg} >&2; exit {VERIFY_FAILED_EXIT}",
            sha = shell_quote(&self.sha256)?,
            msg = shell_quote(&format!(
                "mgmt: {}/{BIN_NAME} is missing or failed its sha-256 check; not running it",
                self.dir
            ))?,
        ))
    }

    /// The inverse of [`Self::launch_command`]: the cache directory, the
    /// expected hash and the arguments of a launch command line, or `None`
    /// if `cmd` is not exactly one (`mgmt emulate` runs only these).
    pub fn parse_launch(cmd: &str) -> Option<(String, String, Vec<String>)> {
        let rest = cmd.strip_prefix("cd ")?;
        let (dir_q, rest) = rest.split_once(" && s=")?;
        let (sha_q, rest) = rest.split_once(" && ")?;
        let rest = rest.strip_prefix(VERIFY_SH)?.strip_prefix(" && exec ./")?;
        let argv_q = rest.strip_prefix(BIN_NAME)?.strip_prefix(' ')?;
        let dir = single_word(dir_q)?;
        let sha = single_word(sha_q)?;
        let argv_q = argv_q.rsplit_once("; echo ")?.0;
        let args = shlex::split(argv_q)?;
        let probe = CachedBinary {
            prefix: String::new(),
            dir: dir.clone(),
            path: String::new(),
            sha256: sha.clone(),
            hit: true,
            bytes_sent: 0,
            fallback: false,
            created: Vec::new(),
        };
        // Only a command this process would have built is accepted.
        (probe.launch_command(&args)? == cmd).then_some((dir, sha, args))
    }

    /// Start the binary with `args` through [`Self::launch_command`].
    pub async fn launch<S: AsRef<str>>(
        &self,
        session: &Session,
        args: &[S],
        opts: ExecOptions,
    ) -> Result<RemoteChild, HostError<ExecError>> {
        let Some(cmd) = self.launch_command(args) else {
            return Err(HostError::new(
                session.host(),
                ExecError::BadArgument {
                    what: BIN_NAME.into(),
                },
            ));
        };
        session.exec(&cmd, opts).await
    }
}

fn single_word(quoted: &str) -> Option<String> {
    let mut w = shlex::split(quoted)?;
    (w.len() == 1).then(|| w.remove(0))
}

#[cfg(test)]
mod launch_tests {
    use super::*;

    /// Runs the launch command with /bin/sh and the given PATH.
    fn launch_here(cached: &CachedBinary, path: &str) -> (i32, String) {
        let cmd = cached.launch_command(&["a b", "c"]).expect("quotable");
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(cmd)
            .env("PATH", path)
            .output()
            .expect("sh");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    #[test]
    fn a_launch_command_parses_back_to_its_parts() {
        let cached = CachedBinary {
            prefix: "/h/.cache/mgmt".into(),
            dir: "/h/.cache/mgmt/bin/ab cd".into(),
            path: String::new(),
            sha256: "ab".repeat(32),
            hit: true,
            bytes_sent: 0,
            fallback: false,
            created: Vec::new(),
        };
        let args = [
            "run",
            "--file",
            "/x y/g.yaml; echo",
            "--seeds=http://127.0.0.1:{port}",
        ];
        let cmd = cached.launch_command(&args).expect("quotable");
        let (dir, sha, got) = CachedBinary::parse_launch(&cmd).expect("parses");
        assert_eq!(
            (dir.as_str(), sha.as_str()),
            (cached.dir.as_str(), cached.sha256.as_str())
        );
        assert_eq!(got, args);
        // Anything else is refused, including a launch with a tail added.
        assert!(CachedBinary::parse_launch(&format!("{cmd}; rm -rf /")).is_none());
        assert!(CachedBinary::parse_launch("cd /tmp && ls").is_none());
    }

    #[test]
    fn launch_checks_the_hash_with_openssl_or_sha256sum() {
        use sha2::Digest;
        let dir = tempfile::tempdir().expect("tmp");
        let bin = dir.path().join(BIN_NAME);
        let script = b"#!/bin/sh\necho ran \"$@\"\n";
        std::fs::write(&bin, script).expect("write");
        std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let cached = CachedBinary {
            prefix: String::new(),
            dir: dir.path().display().to_string(),
            path: bin.display().to_string(),
            sha256: hex::encode(sha2::Sha256::digest(script)),
            hit: true,
            bytes_sent: 0,
            fallback: false,
            created: Vec::new(),
        };
        // Only sha256sum on the PATH: the fallback is used.
        let only = tempfile::tempdir().expect("tmp");
        std::os::unix::fs::symlink("/usr/bin/sha256sum", only.path().join("sha256sum"))
            .expect("link");
        let only = only.path().display().to_string();
        for path in [std::env::var("PATH").unwrap_or_default(), only.clone()] {
            assert_eq!(
                launch_here(&cached, &path),
                (0, "ran a b c\n".into()),
                "PATH={path}"
            );
        }
        // A changed binary is not run, whichever tool checks it.
        std::fs::write(&bin, b"#!/bin/sh\necho evil\n").expect("write");
        for path in [std::env::var("PATH").unwrap_or_default(), only] {
            assert_eq!(
                launch_here(&cached, &path),
                (VERIFY_FAILED_EXIT as i32, String::new()),
                "PATH={path}"
            );
        }
    }
}
