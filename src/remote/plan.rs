//! What a remote run will do, decided before any connection: every
//! `--remote` graph validated, every `remote:` URL parsed (with
//! `~/.ssh/config` applied), every host's identity unique, the binary to ship
//! found and hashed, the SSH settings built, the open-files limit raised.
//!
//! Every problem found here is an input error (exit 2), reported with the
//! graph file's `file:line:col` where there is one; all of them are reported,
//! not only the first. Nothing here touches the network.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::auth::AuthSettings;
use super::hostkey::{HostKeyPolicy, KnownHosts};
use super::target::{local_user, SshConfigFile, Target};
use super::{ClientSettings, Credentials, Pacer};
use crate::cli::RunArgs;
use crate::config::GraphFile;
use crate::graph::{GraphError, GraphErrors};

/// Pending connections allowed per sshd address: OpenSSH's default
/// `MaxStartups 10:30:100` starts dropping at 10.
const PACE_PER_ADDR: usize = 8;

/// One host of the run.
#[derive(Debug, Clone)]
pub struct HostPlan {
    /// Identity in the store: the graph's `hostname:` or the URL's host.
    pub name: String,
    /// Index of its graph in [`Plan::files`].
    pub file: usize,
    pub target: Target,
}

/// The binary shipped to hosts.
#[derive(Debug, Clone)]
pub struct Binary {
    pub path: PathBuf,
    /// Lowercase hex SHA-256 of its content.
    pub sha256: String,
    pub size: u64,
}

/// Everything a remote run needs, validated.
#[derive(Clone)]
pub struct Plan {
    pub files: Vec<GraphFile>,
    pub hosts: Vec<HostPlan>,
    pub settings: ClientSettings,
    /// Hosts in set-up at once; 0: no cap.
    pub cconns: usize,
    pub binary: Arc<Binary>,
    /// `--remote-prefix`.
    pub prefix: Option<String>,
    /// `!--no-caching`.
    pub caching: bool,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("hosts", &self.hosts.len())
            .field("binary", &self.binary)
            .finish()
    }
}

/// Why a remote run cannot start.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{0}")]
    Graphs(GraphErrors),
    #[error("{flag}: {message}")]
    Flag { flag: &'static str, message: String },
}

/// Builds the plan for `args.remotes`; `None` when there are none.
pub fn plan(args: &RunArgs) -> Result<Option<Plan>, PlanError> {
    if args.remotes.is_empty() {
        return Ok(None);
    }
    if args.no_server {
        return Err(flag(
            "--remote",
            "needs the embedded store: drop --no-server and --seeds",
        ));
    }
    let ssh_config = match &args.ssh_config {
        Some(p) => SshConfigFile::load(p),
        None => SshConfigFile::load_default(),
    }
    .map_err(|e| flag("--ssh-config", e.to_string()))?;
    let (files, hosts) = targets(&args.remotes, &ssh_config)?;
    let binary = binary(args.remote_binary.as_deref())?;
    raise_open_files(hosts.len())?;
    let policy = match args.host_key_check.as_str() {
        "accept-new" => HostKeyPolicy::AcceptNew,
        "off" => HostKeyPolicy::Off,
        _ => HostKeyPolicy::Strict,
    };
    let known_hosts = match &args.known_hosts {
        Some(p) => KnownHosts {
            path: p.clone(),
            policy,
        },
        None => KnownHosts::user_default(policy).ok_or_else(|| {
            flag(
                "--known-hosts",
                "no home directory to find ~/.ssh/known_hosts in; name a file",
            )
        })?,
    };
    let mut auth = AuthSettings::from_env();
    auth.key_files = args.identities.clone();
    auth.allow_interactive = args.allow_interactive;
    for k in &auth.key_files {
        if !k.exists() {
            return Err(flag(
                "--identity",
                format!("{}: no such key file", k.display()),
            ));
        }
    }
    let mut settings = ClientSettings::new(known_hosts, Credentials::new(auth));
    settings.connect_timeout = Duration::from_secs(args.connect_timeout.max(1));
    settings.pacer = Some(Pacer::new(PACE_PER_ADDR));
    Ok(Some(Plan {
        files,
        hosts,
        settings,
        cconns: args.cconns,
        binary: Arc::new(binary),
        prefix: args.remote_prefix.clone(),
        caching: !args.no_caching,
    }))
}

fn flag(flag: &'static str, message: impl Into<String>) -> PlanError {
    PlanError::Flag {
        flag,
        message: message.into(),
    }
}

/// Reads every graph (duplicates removed) and resolves its `remote:` URLs.
fn targets(
    paths: &[PathBuf],
    ssh_config: &SshConfigFile,
) -> Result<(Vec<GraphFile>, Vec<HostPlan>), PlanError> {
    let mut errors = Vec::new();
    let mut files: Vec<GraphFile> = Vec::new();
    let mut seen_paths = Vec::new();
    for p in paths {
        let canon = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
        if seen_paths.contains(&canon) {
            continue;
        }
        seen_paths.push(canon);
        match GraphFile::load(p) {
            Ok(f) => files.push(f),
            Err(GraphErrors(e)) => errors.extend(e),
        }
    }
    let user = local_user();
    let mut hosts = Vec::new();
    let mut names: HashMap<String, String> = HashMap::new();
    for (i, f) in files.iter().enumerate() {
        let label = f.path.display().to_string();
        if let Some(gw) = f.graph.via.first() {
            // Until hierarchical fan-out exists, never connect directly to
            // hosts the operator meant to reach through a gateway.
            errors.push(GraphError { file: label.clone(), pos: Some(gw.pos), message: "via: gateways are not supported by this version yet; remove via: to connect directly".into() });
            continue;
        }
        if f.graph.remote.is_empty() {
            errors.push(GraphError { file: label.clone(), pos: None, message: "no remote: key; add remote: ssh://user@host (or a list of URLs) to run this graph there".into() });
        }
        for url in &f.graph.remote {
            let at = |message: String| GraphError {
                file: label.clone(),
                pos: Some(url.pos),
                message,
            };
            let target = match Target::parse(&url.value, ssh_config, user.as_deref()) {
                Ok(t) => t,
                Err(e) => {
                    errors.push(at(e.to_string()));
                    continue;
                }
            };
            let name = f
                .graph
                .hostname
                .clone()
                .unwrap_or_else(|| target.name.clone());
            let here = format!("{label}:{}:{}", url.pos.line, url.pos.col);
            if let Some(first) = names.insert(name.clone(), here.clone()) {
                errors.push(at(format!("host {name:?} is already a target (at {first}); each host may appear once (set hostname: to tell them apart)")));
                continue;
            }
            hosts.push(HostPlan {
                name,
                file: i,
                target,
            });
        }
    }
    if errors.is_empty() {
        Ok((files, hosts))
    } else {
        Err(PlanError::Graphs(GraphErrors(errors)))
    }
}

/// Finds and hashes the binary to ship; warns when it is not static.
fn binary(given: Option<&Path>) -> Result<Binary, PlanError> {
    let path = match given {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe().map_err(|e| {
            flag(
                "--remote-binary",
                format!("cannot find the running binary ({e}); name one"),
            )
        })?,
    };
    let data = std::fs::read(&path)
        .map_err(|e| flag("--remote-binary", format!("{}: {e}", path.display())))?;
    if !data.starts_with(b"\x7fELF") {
        return Err(flag(
            "--remote-binary",
            format!("{} is not an ELF executable", path.display()),
        ));
    }
    if has_interpreter(&data) {
        tracing::warn!(
            "{} is dynamically linked: it runs only on hosts with a compatible libc; ship the static build (cargo build --release --target x86_64-unknown-linux-musl) with --remote-binary",
            path.display()
        );
    }
    Ok(Binary {
        sha256: hex::encode(Sha256::digest(&data)),
        size: data.len() as u64,
        path,
    })
}

/// True when a 64-bit little-endian ELF has a PT_INTERP program header
/// (a dynamic loader), i.e. it is not statically linked.
fn has_interpreter(elf: &[u8]) -> bool {
    let u16_at = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(|b| u64::from_le_bytes(b) as usize)
    };
    let (Some(phoff), Some(entsize), Some(count)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..count).any(|i| u32_at(phoff + i * entsize) == Some(3))
}

/// Raises the soft open-files limit to what `hosts` connections need, or
/// says before starting that this process cannot serve that many.
fn raise_open_files(hosts: usize) -> Result<(), PlanError> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    // One socket per host, plus room for the store, logs and inotify.
    let need = hosts as u64 + 256;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)
        .map_err(|e| flag("--remote", format!("cannot read the open-files limit: {e}")))?;
    if soft >= need {
        return Ok(());
    }
    if hard < need {
        return Err(flag("--remote", format!("{hosts} hosts need about {need} open files but the hard limit is {hard}; raise it (ulimit -Hn, limits.conf) or reach the hosts through gateways")));
    }
    setrlimit(Resource::RLIMIT_NOFILE, need, hard).map_err(|e| {
        flag(
            "--remote",
            format!("cannot raise the open-files limit to {need}: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_is_classified() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        // Test binaries are built for the host target; under musl they are
        // static, under glibc dynamic. Either way the parser must not panic.
        let _ = has_interpreter(&exe);
        assert!(!has_interpreter(b"\x7fELF"));
    }

    #[test]
    fn duplicate_hosts_and_bad_urls_are_positioned() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a.yaml");
        std::fs::write(
            &a,
            "graph: a\nremote:\n- ssh://root@h1\n- ssh://root@h1:2222\n- http://x\n",
        )
        .unwrap();
        let b = d.path().join("b.yaml");
        std::fs::write(&b, "graph: b\n").unwrap();
        let Err(PlanError::Graphs(GraphErrors(errs))) =
            targets(&[a.clone(), b.clone(), a.clone()], &SshConfigFile::none())
        else {
            panic!("expected errors");
        };
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(errs.len(), 3, "{text:#?}");
        assert!(
            text[0].contains("a.yaml:4:3: host \"h1\" is already a target"),
            "{text:#?}"
        );
        assert!(
            text[1].contains("a.yaml:5:3:") && text[1].contains("ssh://"),
            "{text:#?}"
        );
        assert!(text[2].contains("b.yaml: no remote: key"), "{text:#?}");
    }
}
