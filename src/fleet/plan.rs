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

use crate::graph::{GraphError, GraphErrors, GraphFile, Located};
use crate::ssh::auth::AuthSettings;
use crate::ssh::hostkey::{HostKeyPolicy, KnownHosts};
use crate::ssh::target::{has_password, local_user, SshConfigFile, Target};
use crate::ssh::{ClientSettings, Credentials, Pacer};

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
    /// Its position in its graph's `remote:` list, and that list's length
    /// (templates' `host.index` and `host.count`).
    pub index: usize,
    pub count: usize,
}

/// A gateway and the part of the run behind it: the graphs it runs with
/// `mgmt run --remote`, their `via:` shortened by one hop.
#[derive(Debug, Clone)]
pub struct GatewayPlan {
    /// Its name in routes and the summary (`gw.dc1` in `gw.dc1/web3`).
    pub name: String,
    pub target: Target,
    /// Indexes in [`Plan::files`] of the graphs of its group.
    pub files: Vec<usize>,
    /// For each of `files`, the gateways still ahead at the gateway.
    pub rest: Vec<Vec<String>>,
    /// The identity of every host behind it, at every depth.
    pub leaves: Vec<String>,
    /// The initiator's known_hosts lines for every target behind it.
    pub known_hosts: String,
    /// The known_hosts entry name (`host`, `[host]:port`) of every target
    /// behind it: the only keys it may report learning.
    pub behind: Vec<String>,
}

/// The binary shipped to hosts.
#[derive(Debug, Clone)]
pub struct Binary {
    pub path: PathBuf,
    /// Lowercase hex SHA-256 of its content.
    pub sha256: String,
    pub size: u64,
    /// Its compressed forms for cold hosts, kept in the initiator's cache
    /// unless `--no-caching` ([`crate::ssh::pack`]).
    pub packer: Arc<crate::ssh::pack::Packer>,
}

/// Everything a remote run needs, validated.
#[derive(Clone)]
pub struct Plan {
    pub files: Vec<GraphFile>,
    /// Hosts reached directly.
    pub hosts: Vec<HostPlan>,
    /// Gateways, each with the hosts behind it.
    pub gateways: Vec<GatewayPlan>,
    pub settings: ClientSettings,
    /// Hosts in set-up at once; 0: no cap.
    pub cconns: usize,
    /// Every host's identity, direct or behind gateways, in the order of
    /// the `--remote` files and of each file's `remote:` list: the order of
    /// a rolling run's turns.
    pub order: Vec<String>,
    pub binary: Arc<Binary>,
    /// `--remote-prefix`.
    pub prefix: Option<String>,
    /// `!--no-caching`.
    pub caching: bool,
    /// Flags a gateway passes on to its own `mgmt run --remote`.
    pub onward: Onward,
}

/// What a gateway needs to know besides its graphs to run its group the
/// way the initiator would.
#[derive(Debug, Clone, Default)]
pub struct Onward {
    pub connect_timeout: u64,
    pub host_key_check: String,
    pub trace: bool,
    /// The user's agent (`SSH_AUTH_SOCK`), forwarded to gateways when no
    /// `-i` key was given.
    pub agent: Option<PathBuf>,
    /// `-i` keys, else the default key files: what the agent this process
    /// serves to gateways holds when the user's agent is not forwarded.
    pub key_files: Vec<PathBuf>,
}

impl Plan {
    /// The identity of every host of the run, direct or behind gateways.
    pub fn all_hosts(&self) -> impl Iterator<Item = &str> {
        self.hosts.iter().map(|h| h.name.as_str()).chain(
            self.gateways
                .iter()
                .flat_map(|g| g.leaves.iter().map(String::as_str)),
        )
    }

    /// Every host's identity with the route it is shown under.
    pub fn routes(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .hosts
            .iter()
            .map(|h| (h.name.clone(), h.name.clone()))
            .collect();
        for g in &self.gateways {
            out.extend(
                g.leaves
                    .iter()
                    .map(|l| (l.clone(), format!("{}/{l}", g.name))),
            );
        }
        out
    }
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

/// What a plan is built from: the `--remote` side of the flags, as parsed
/// (config fills it in; the fleet never sees the command line itself).
#[derive(Debug, Clone, Default)]
pub struct PlanInputs {
    /// `--remote` graph files.
    pub remotes: Vec<PathBuf>,
    /// `--remote-label`: how the initiator names each of `remotes` (a
    /// gateway's copies), so its hosts' errors name the file the user edits.
    pub labels: Vec<String>,
    /// `--via`: gateways for graphs without a `via:`.
    pub via: Vec<String>,
    pub ssh_config: Option<PathBuf>,
    pub remote_binary: Option<PathBuf>,
    /// `strict`, `accept-new` or `off`.
    pub host_key_check: String,
    pub known_hosts: Option<PathBuf>,
    /// `-i` key files.
    pub identities: Vec<PathBuf>,
    pub allow_interactive: bool,
    /// Seconds.
    pub connect_timeout: u64,
    pub cconns: usize,
    pub remote_prefix: Option<String>,
    /// `!--no-caching`.
    pub caching: bool,
    pub trace: bool,
}

/// Builds the plan for `args.remotes`; `None` when there are none.
pub fn plan(args: &PlanInputs) -> Result<Option<Plan>, PlanError> {
    if args.remotes.is_empty() {
        return Ok(None);
    }
    let ssh_config = match &args.ssh_config {
        Some(p) => SshConfigFile::load(p),
        None => SshConfigFile::load_default(),
    }
    .map_err(|e| flag("--ssh-config", e.to_string()))?;
    let via = Located::unplaced(&args.via);
    let (mut files, hosts, groups, order) = targets(&args.remotes, &via, &ssh_config)?;
    if files.len() == args.labels.len() {
        for (f, label) in files.iter_mut().zip(&args.labels) {
            f.label.clone_from(label);
        }
    }
    let binary = binary(args.remote_binary.as_deref(), args.caching)?;
    raise_open_files(hosts.len() + groups.len())?;
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
    let gateways = groups
        .into_iter()
        .map(|g| g.finish(&known_hosts.path))
        .collect();
    let agent = auth
        .agent_socket
        .clone()
        .filter(|_| auth.key_files.is_empty());
    let key_files = match auth.key_files.is_empty() {
        false => auth.key_files.clone(),
        true => crate::ssh::auth::default_key_paths(),
    };
    let mut settings = ClientSettings::new(known_hosts, Credentials::new(auth));
    settings.connect_timeout = Duration::from_secs(args.connect_timeout.max(1));
    settings.pacer = Some(Pacer::new(PACE_PER_ADDR));
    Ok(Some(Plan {
        files,
        hosts,
        gateways,
        settings,
        cconns: args.cconns,
        order,
        binary: Arc::new(binary),
        prefix: args.remote_prefix.clone(),
        caching: args.caching,
        onward: Onward {
            connect_timeout: args.connect_timeout,
            host_key_check: args.host_key_check.clone(),
            trace: args.trace,
            agent,
            key_files,
        },
    }))
}

fn flag(flag: &'static str, message: impl Into<String>) -> PlanError {
    PlanError::Flag {
        flag,
        message: message.into(),
    }
}

/// A gateway's group while the graphs are read.
struct Group {
    name: String,
    target: Target,
    files: Vec<usize>,
    rest: Vec<Vec<String>>,
    leaves: Vec<String>,
    /// Every target behind the gateway, for its known_hosts.
    behind: Vec<Target>,
}

impl Group {
    fn finish(self, known_hosts: &Path) -> GatewayPlan {
        GatewayPlan {
            name: self.name,
            target: self.target,
            files: self.files,
            rest: self.rest,
            leaves: self.leaves,
            known_hosts: crate::ssh::hostkey::entries_for(known_hosts, &self.behind),
            behind: self
                .behind
                .iter()
                .map(|t| crate::ssh::hostkey::entry_name(&t.host, t.port))
                .collect(),
        }
    }
}

/// The files, the direct hosts, the gateways' groups, and every host's
/// identity in plan order.
type Targets = (Vec<GraphFile>, Vec<HostPlan>, Vec<Group>, Vec<String>);

/// Reads every graph (duplicates removed) and resolves its `remote:` and
/// `via:` URLs; hosts behind a gateway go into that gateway's group.
/// `default_via` (`--via`) applies to graphs without a `via:`.
fn targets(
    paths: &[PathBuf],
    default_via: &[Located<String>],
    ssh_config: &SshConfigFile,
) -> Result<Targets, PlanError> {
    let mut errors = Vec::new();
    let mut files: Vec<GraphFile> = Vec::new();
    // A set: with 10,000 files a list made this loop quadratic.
    let mut seen_paths = std::collections::HashSet::new();
    for p in paths {
        let canon = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
        if !seen_paths.insert(canon) {
            continue;
        }
        match GraphFile::load(p) {
            Ok(f) => files.push(f),
            Err(GraphErrors(e)) => errors.extend(e),
        }
    }
    let user = local_user();
    let mut hosts = Vec::new();
    let mut order = Vec::new();
    let mut groups: Vec<Group> = Vec::new();
    let mut names: HashMap<String, String> = HashMap::new();
    for (i, f) in files.iter().enumerate() {
        let label = f.path.display().to_string();
        let via = if f.graph.via.is_empty() {
            default_via
        } else {
            &f.graph.via[..]
        };
        let mut chain = Vec::new();
        for url in via {
            match Target::parse(&url.value, ssh_config, user.as_deref()) {
                Ok(t) => chain.push(t),
                Err(e) => errors.push(GraphError {
                    file: label.clone(),
                    pos: url.placed(),
                    message: match url.placed() {
                        Some(_) => format!("via: {e}"),
                        None => format!("--via: {e}"),
                    },
                }),
            }
        }
        if chain.len() != via.len() {
            continue;
        }
        // Hops after the first are written into the first gateway's graphs.
        for (url, _) in via
            .iter()
            .zip(&chain)
            .skip(1)
            .filter(|(_, t)| t.password.is_some())
        {
            errors.push(behind_gateway(&label, url, "via"));
        }
        let group = chain.first().map(|gw| {
            let key = (gw.user.clone(), gw.host.clone(), gw.port);
            let at = groups
                .iter()
                .position(|g| (g.target.user.clone(), g.target.host.clone(), g.target.port) == key);
            let at = at.unwrap_or_else(|| {
                groups.push(Group {
                    name: gateway_name(gw, &groups),
                    target: gw.clone(),
                    files: Vec::new(),
                    rest: Vec::new(),
                    leaves: Vec::new(),
                    behind: Vec::new(),
                });
                groups.len() - 1
            });
            let g = &mut groups[at];
            g.files.push(i);
            g.rest
                .push(via[1..].iter().map(|u| u.value.clone()).collect());
            g.behind.extend(chain[1..].iter().cloned());
            at
        });
        if f.graph.remote.is_empty() {
            errors.push(GraphError { file: label.clone(), pos: None, message: "no remote: key; add remote: ssh://user@host (or a list of URLs) to run this graph there".into() });
        }
        let count = f.graph.remote.len();
        for (index, url) in f.graph.remote.iter().enumerate() {
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
            if group.is_some() && target.password.is_some() {
                errors.push(behind_gateway(&label, url, "remote"));
                continue;
            }
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
            order.push(name.clone());
            match group {
                Some(g) => {
                    groups[g].leaves.push(name);
                    groups[g].behind.push(target);
                }
                None => hosts.push(HostPlan {
                    name,
                    file: i,
                    target,
                    index,
                    count,
                }),
            }
        }
    }
    if errors.is_empty() {
        Ok((files, hosts, groups, order))
    } else {
        Err(PlanError::Graphs(GraphErrors(errors)))
    }
}

/// The input error for a URL with a password behind a gateway (#13): the
/// gateway gets that URL in its graph files, on its disk, so it is refused
/// before connecting anywhere.
fn behind_gateway(file: &str, url: &Located<String>, key: &str) -> GraphError {
    let key = match url.placed() {
        Some(_) => format!("{key}:"),
        None => "--via".into(),
    };
    GraphError {
        file: file.to_owned(),
        pos: url.placed(),
        message: format!(
            "{key} {:?} has a password, but it is behind a gateway, which would get it in a file on its disk; \
             authenticate hosts behind gateways with keys (your agent, or the -i keys, are forwarded to the gateway)",
            crate::ssh::target::mask_password(&url.value)
        ),
    }
}

/// A gateway's name in routes: its URL host, with the port when another
/// gateway already has that name.
fn gateway_name(gw: &Target, groups: &[Group]) -> String {
    if groups.iter().any(|g| g.name == gw.name) {
        format!("{}:{}", gw.name, gw.port)
    } else {
        gw.name.clone()
    }
}

/// The graph text a host gets in its run directory (#13), from the local
/// graph `text`. A leaf (`rest: None`) gets it without `remote:` and `via:`:
/// its child (`mgmt run --file`) reads neither, and their URLs may carry
/// `user:password@`. A gateway (`rest: Some(hops still ahead)`) gets `via:`
/// set to those hops (removed when there are none) and `remote:` kept: it
/// connects onward with them. [`plan`] refuses passwords in those URLs, so
/// none is on a gateway's disk; a live edit that adds one is not sent
/// (`None`), nor a text that is not a YAML mapping (it was validated, so
/// only on a race). The lines of the keys removed or replaced are blanked,
/// so every other value keeps its line and column and the host's template
/// errors point into the file as written (#15); where that cannot be done
/// exactly, the text is rewritten from the parsed YAML instead (comments
/// and layout go, the values, all the child reads, stay).
pub fn host_text(text: &str, rest: Option<&[String]>) -> Option<String> {
    use serde_yaml_ng::Value;
    let expected = reserialised(text, rest)?;
    let Value::Mapping(want) = serde_yaml_ng::from_str::<Value>(&expected).ok()? else {
        return None;
    };
    // The host renders templates and reports errors at the positions of
    // the file as written (#15): keep every other line where it was.
    if let Some(kept) = blank_urls(text, rest) {
        // A URL still in the text (in a comment, say) may carry a
        // password (#13): only the re-serialised text drops comments.
        let ahead = rest.unwrap_or_default();
        let leaks = urls_of(text, rest.is_none())
            .iter()
            .filter(|u| !ahead.contains(u))
            .any(|u| kept.contains(u.as_str()));
        if !leaks && serde_yaml_ng::from_str::<Value>(&kept).ok() == Some(Value::Mapping(want)) {
            return Some(kept);
        }
    }
    Some(expected)
}

/// `text` with the lines of its top-level `via:` (and, for a leaf,
/// `remote:`) blanked
/// (line numbers and columns of the rest unchanged), and `via:` set to
/// `rest` at the end when that is not empty. `None` for a layout this
/// cannot edit by lines (a flow mapping at the top, an indented key).
fn blank_urls(text: &str, rest: Option<&[String]>) -> Option<String> {
    let keys = crate::graph::top_level_keys(text)?;
    if keys.iter().any(|(_, p)| p.col != 1 || p.line == 0)
        || keys.windows(2).any(|w| w[0].1.line >= w[1].1.line)
    {
        return None;
    }
    let mut lines: Vec<String> = text.split_inclusive('\n').map(str::to_owned).collect();
    for (i, (key, pos)) in keys.iter().enumerate() {
        if !(key == "via" || (key == "remote" && rest.is_none())) {
            continue;
        }
        let end = keys
            .get(i + 1)
            .map_or(lines.len(), |(_, next)| next.line - 1);
        for line in lines.iter_mut().take(end).skip(pos.line - 1) {
            let newline = if line.ends_with('\n') { "\n" } else { "" };
            *line = newline.to_owned();
        }
    }
    let mut out = lines.concat();
    if let Some(rest) = rest.filter(|r| !r.is_empty()) {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str("via:\n");
        for url in rest {
            out.push_str(&format!("- {}\n", serde_json::to_string(url).ok()?));
        }
    }
    Some(out)
}

/// The URLs of the top-level `via:` of `text`, and of `remote:` too when
/// `remote` is true.
fn urls_of(text: &str, remote: bool) -> Vec<String> {
    use serde_yaml_ng::Value;
    let Ok(Value::Mapping(m)) = serde_yaml_ng::from_str::<Value>(text) else {
        return Vec::new();
    };
    ["remote", "via"]
        .iter()
        .filter(|k| remote || **k == "via")
        .filter_map(|k| m.get(*k))
        .flat_map(|v| match v {
            Value::String(u) => vec![u.clone()],
            Value::Sequence(us) => us
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        })
        .collect()
}

/// [`host_text`] by re-serialising the document: comments and positions
/// are lost, but any layout works.
fn reserialised(text: &str, rest: Option<&[String]>) -> Option<String> {
    use serde_yaml_ng::Value;
    let mut doc: Value = serde_yaml_ng::from_str(text).ok()?;
    let map = doc.as_mapping_mut()?;
    match rest {
        None => {
            map.remove("remote");
            map.remove("via");
        }
        Some(rest) => {
            let remote = match map.get("remote") {
                Some(Value::String(u)) => vec![u.as_str()],
                Some(Value::Sequence(us)) => us.iter().filter_map(Value::as_str).collect(),
                _ => Vec::new(),
            };
            if remote
                .into_iter()
                .chain(rest.iter().map(String::as_str))
                .any(has_password)
            {
                tracing::warn!("a graph for a gateway has a password in a url; not sending it (use keys behind gateways)");
                return None;
            }
            if rest.is_empty() {
                map.remove("via");
            } else {
                let list = rest.iter().cloned().map(Value::String).collect();
                map.insert(Value::String("via".into()), Value::Sequence(list));
            }
        }
    }
    serde_yaml_ng::to_string(&doc).ok()
}

/// Finds and hashes the binary to ship; warns when it is not static.
fn binary(given: Option<&Path>, caching: bool) -> Result<Binary, PlanError> {
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
    let sha256 = hex::encode(Sha256::digest(&data));
    let size = data.len() as u64;
    let keep = caching.then(crate::ssh::pack::default_keep_dir).flatten();
    Ok(Binary {
        packer: Arc::new(crate::ssh::pack::Packer::new(&path, &sha256, size, keep)),
        sha256,
        size,
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
        let Err(PlanError::Graphs(GraphErrors(errs))) = targets(
            &[a.clone(), b.clone(), a.clone()],
            &[],
            &SshConfigFile::none(),
        ) else {
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

    #[test]
    fn hosts_are_grouped_by_their_first_gateway() {
        let d = tempfile::tempdir().unwrap();
        let w = |name: &str, text: &str| {
            let p = d.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let a = w(
            "a.yaml",
            "graph: a\nremote: [ssh://root@w1, ssh://root@w2]\nvia: [ssh://admin@gw1, ssh://admin@gw2]\n",
        );
        let b = w(
            "b.yaml",
            "graph: b\nremote: ssh://root@w3\nvia: [ssh://admin@gw1]\n",
        );
        let c = w("c.yaml", "graph: c\nremote: ssh://root@w4\n");
        let none = SshConfigFile::none();
        let (files, hosts, groups, _) =
            match targets(&[a.clone(), b.clone(), c.clone()], &[], &none) {
                Ok(t) => t,
                Err(e) => panic!("{e}"),
            };
        assert_eq!(files.len(), 3);
        assert_eq!(
            hosts.iter().map(|h| h.name.as_str()).collect::<Vec<_>>(),
            ["w4"]
        );
        assert_eq!(groups.len(), 1);
        let g = &groups[0];
        assert_eq!((g.name.as_str(), g.files.clone()), ("gw1", vec![0, 1]));
        assert_eq!(g.rest, vec![vec!["ssh://admin@gw2".to_string()], vec![]]);
        assert_eq!(g.leaves, ["w1", "w2", "w3"]);
        // Everything behind gw1 is in its known_hosts lookup: gw2 and hosts.
        let behind: Vec<&str> = g.behind.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(behind, ["gw2", "w1", "w2", "w3"]);
        // --via applies to the graph without a via:, not to the others.
        let flag = Located::unplaced(&["ssh://admin@gw9".to_string()]);
        let Ok((_, hosts, groups, _)) = targets(&[a, c], &flag, &none) else {
            panic!("plan failed");
        };
        assert!(hosts.is_empty());
        let names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["gw1", "gw9"]);
    }

    #[test]
    fn a_bad_via_is_an_input_error_with_its_place() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a.yaml");
        std::fs::write(&a, "graph: a\nremote: ssh://root@w1\nvia:\n- http://gw\n").unwrap();
        let Err(PlanError::Graphs(GraphErrors(errs))) = targets(&[a], &[], &SshConfigFile::none())
        else {
            panic!("expected errors");
        };
        assert_eq!(errs.len(), 1);
        let text = errs[0].to_string();
        assert!(text.contains("a.yaml:4:3: via: "), "{text}");
    }

    #[test]
    fn a_gateway_gets_its_graph_with_one_hop_less() {
        let text = "graph: g\nremote: ssh://w1\nvia: [ssh://gw1, ssh://gw2]\nresources: {}\n";
        let once = host_text(text, Some(&["ssh://gw2".into()])).unwrap();
        let g = crate::graph::parse_str(&once, "g").unwrap();
        let via: Vec<&str> = g.via.iter().map(|v| v.value.as_str()).collect();
        assert_eq!(via, ["ssh://gw2"]);
        let last = host_text(&once, Some(&[])).unwrap();
        let g = crate::graph::parse_str(&last, "g").unwrap();
        assert!(g.via.is_empty());
        assert_eq!(g.remote[0].value, "ssh://w1");
    }

    // See: #13 (every host's graph carried the remote: URLs, passwords too)
    #[test]
    fn a_leaf_gets_its_graph_without_urls_and_a_gateway_never_a_password() {
        let text = "graph: g\nhostname: h1\nremote: [ssh://root:Pw9%2Fx@w1, ssh://w2]\n\
                    via: ssh://gw1\nresources:\n  file:\n  - {name: f, path: /tmp/f, mode: \"0644\"}\n";
        let leaf = host_text(text, None).unwrap();
        assert!(!leaf.contains("ssh://") && !leaf.contains("Pw9"), "{leaf}");
        let g = crate::graph::parse_str(&leaf, "g").unwrap();
        assert!(g.remote.is_empty() && g.via.is_empty());
        assert_eq!(g.hostname.as_deref(), Some("h1"));
        let orig = crate::graph::parse_str(text, "g").unwrap();
        let values = |g: &crate::graph::Graph| {
            let r = g.resources.iter();
            r.map(|r| format!("{} {} {:?}", r.kind, r.name, r.params))
                .collect::<Vec<_>>()
        };
        assert_eq!(values(&g), values(&orig));
        // A gateway's text with a password (a live edit: the plan refuses
        // it up front) is not produced at all.
        assert!(host_text(text, Some(&[])).is_none());
        assert!(host_text(
            "graph: g\nremote: ssh://w1\n",
            Some(&["ssh://a:b@gw2".into()])
        )
        .is_none());
        assert!(host_text("- not a mapping\n", None).is_none());
    }

    // See: #15 (template errors on the host point into the file as written)
    #[test]
    fn host_text_keeps_every_other_line_in_place() {
        let text = "graph: g\nremote:\n- ssh://root@w1\n- ssh://w2\nvia: [ssh://gw1, ssh://gw2]\n\
                    resources:\n  file:\n  - name: \"/tmp/{{ host.name }}\"\n";
        let leaf = host_text(text, None).unwrap();
        assert_eq!(leaf.lines().count(), text.lines().count(), "{leaf}");
        assert_eq!(leaf.lines().nth(7), text.lines().nth(7));
        assert!(!leaf.contains("ssh://"), "{leaf}");
        let gw = host_text(text, Some(&["ssh://gw2".into()])).unwrap();
        assert_eq!(gw.lines().nth(7), text.lines().nth(7));
        let g = crate::graph::parse_str(&gw, "g").unwrap();
        assert_eq!(g.via[0].value, "ssh://gw2");
        assert_eq!(g.remote.len(), 2);
        // A URL also written in a comment: the comment goes too.
        let commented = format!("# was ssh://root@w1\n{text}");
        assert!(!host_text(&commented, None).unwrap().contains("ssh://"));
    }

    // See: #13
    #[test]
    fn passwords_behind_a_gateway_are_input_errors() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a.yaml");
        std::fs::write(
            &a,
            "graph: a\nremote: [ssh://root:Pw1@w1, ssh://root@w2]\nvia: [ssh://admin:Pw2@gw1, ssh://admin:Pw3@gw2]\n",
        )
        .unwrap();
        let b = d.path().join("b.yaml");
        std::fs::write(&b, "graph: b\nremote: ssh://root:Pw4@w3\n").unwrap();
        let Err(PlanError::Graphs(GraphErrors(errs))) =
            targets(&[a.clone(), b.clone()], &[], &SshConfigFile::none())
        else {
            panic!("expected errors");
        };
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        // The first hop's password stays here, and so does a direct host's;
        // the second hop and the host behind the gateways are refused.
        assert_eq!(errs.len(), 2, "{text:#?}");
        assert!(
            text[0].contains("a.yaml:3:28: via: ") && text[0].contains("@gw2"),
            "{text:#?}"
        );
        assert!(
            text[1].contains("a.yaml:2:10: remote: ") && text[1].contains("with keys"),
            "{text:#?}"
        );
        assert!(text.iter().all(|t| !t.contains("Pw")), "{text:#?}");
        // --via gateways: the same rule for what is behind them.
        let flag = Located::unplaced(&["ssh://admin:Pw5@gw9".to_string()]);
        let Err(PlanError::Graphs(GraphErrors(errs))) =
            targets(&[b], &flag, &SshConfigFile::none())
        else {
            panic!("expected errors");
        };
        assert_eq!(errs.len(), 1);
        assert!(errs[0].to_string().contains("remote: "), "{}", errs[0]);
    }
}
