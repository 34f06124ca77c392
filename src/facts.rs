//! What a host knows about itself, gathered once when its child starts
//! ([`Gathering`]) and handed to graph templates as `facts` (issue #15).
//!
//! Everything is read locally (`/etc/os-release`, `/proc`, `/sys`, the
//! interface list), so no round trip to the initiator is needed. A fact that
//! cannot be read is left empty (a string) or zero (a number) with a debug
//! line, never an error: a host without `/etc/os-release` still runs its
//! graph, and a template that needs the fact shows an empty value. The
//! host's place in the run (`host.name`, `index`, ...) is not a fact of the
//! machine and is not gathered here.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;

/// The facts of one host, as templates see them (`facts.os.id`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Facts {
    /// The kernel's host name (`/proc/sys/kernel/hostname`).
    pub hostname: String,
    /// The canonical name the resolver gives for `hostname` within
    /// [`FQDN_PATIENCE`], else `hostname`.
    pub fqdn: String,
    pub os: Os,
    /// The machine architecture this binary runs on (`x86_64`, `aarch64`).
    pub arch: String,
    /// The kernel release (`uname -r`).
    pub kernel: String,
    /// CPUs online (`/sys/devices/system/cpu/online`).
    pub cpus: u64,
    /// Total memory in MiB (`MemTotal` of `/proc/meminfo`).
    pub memory_mb: u64,
    pub addresses: Addresses,
    /// The IPv4 address of the default route's interface, else the first
    /// non-loopback one, else empty.
    pub default_ipv4: String,
}

/// `/etc/os-release`'s `ID` and `VERSION_ID`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Os {
    pub id: String,
    pub version: String,
}

/// Non-loopback addresses, as flat lists (sorted by interface, then in the
/// order the kernel lists them) and per interface.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Addresses {
    pub ipv4: Vec<String>,
    pub ipv6: Vec<String>,
    /// Interface name → its addresses, IPv4 first.
    pub interfaces: BTreeMap<String, Interface>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Interface {
    pub ipv4: Vec<String>,
    pub ipv6: Vec<String>,
}

/// How long the resolver has to give the host's canonical name before the
/// host name stands in for `facts.fqdn`. A host whose resolver drops
/// queries would otherwise hold every start of its child for the
/// resolver's own timeout (5 s with musl's defaults); a resolver that
/// answers at all usually does so in milliseconds.
pub const FQDN_PATIENCE: Duration = Duration::from_secs(1);

/// Gathers the facts of the machine this process runs on. Everything but
/// the FQDN is small files of `/proc`, `/sys` and `/etc` and the interface
/// list, read here; the FQDN waits on the resolver, on a thread of its
/// own, for at most [`FQDN_PATIENCE`].
pub async fn gather() -> Facts {
    let hostname = read_trimmed("/proc/sys/kernel/hostname");
    // Asked first, awaited last: the other facts are read meanwhile.
    let asked = ask_fqdn(&hostname);
    let addresses = addresses();
    let mut facts = Facts {
        default_ipv4: default_ipv4(&addresses),
        addresses,
        os: std::fs::read_to_string("/etc/os-release")
            .map(|t| parse_os_release(&t))
            .unwrap_or_default(),
        arch: std::env::consts::ARCH.to_owned(),
        kernel: read_trimmed("/proc/sys/kernel/osrelease"),
        cpus: std::fs::read_to_string("/sys/devices/system/cpu/online")
            .map(|t| count_cpu_list(&t))
            .unwrap_or(0),
        memory_mb: std::fs::read_to_string("/proc/meminfo")
            .map(|t| mem_total_mb(&t))
            .unwrap_or(0),
        fqdn: String::new(),
        hostname,
    };
    facts.fqdn = match tokio::time::timeout(FQDN_PATIENCE, asked).await {
        Ok(Ok(name)) => name,
        // No thread to ask on: said when it failed.
        Ok(Err(_)) => facts.hostname.clone(),
        Err(_) => {
            tracing::warn!(
                "facts: the resolver did not give the canonical name of {:?} within \
                 {FQDN_PATIENCE:?}; facts.fqdn is the host name (check /etc/resolv.conf, or \
                 name the host in /etc/hosts)",
                facts.hostname
            );
            facts.hostname.clone()
        }
    };
    facts
}

/// The facts of a run's child, gathered once in the background from its
/// start: the resolver's wait overlaps the store connect, and `--where`,
/// `when:` and the graph's templates all read the same gathering (one
/// resolver wait, one warning, on a host whose resolver never answers).
pub struct Gathering {
    task: Option<tokio::task::JoinHandle<Facts>>,
    facts: Facts,
}

impl Gathering {
    /// Starts [`gather`] on the runtime.
    pub fn start() -> Gathering {
        Gathering {
            task: Some(tokio::spawn(gather())),
            facts: Facts::default(),
        }
    }

    /// The facts, waited for the first time only.
    pub async fn get(&mut self) -> &Facts {
        if let Some(task) = self.task.take() {
            self.facts = task
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        }
        &self.facts
    }
}

impl Drop for Gathering {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

fn read_trimmed(path: &str) -> String {
    match std::fs::read_to_string(path) {
        Ok(t) => t.trim().to_owned(),
        Err(e) => {
            tracing::debug!("facts: cannot read {path}: {e}");
            String::new()
        }
    }
}

/// `ID=` and `VERSION_ID=`, quotes removed.
fn parse_os_release(text: &str) -> Os {
    let mut os = Os::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches(|c| c == '"' || c == '\'').to_owned();
        match k.trim() {
            "ID" => os.id = v,
            "VERSION_ID" => os.version = v,
            _ => {}
        }
    }
    os
}

/// Counts a kernel CPU list such as `0-3,8,10-11`.
fn count_cpu_list(text: &str) -> u64 {
    text.trim()
        .split(',')
        .filter(|p| !p.is_empty())
        .map(|part| match part.split_once('-') {
            Some((a, b)) => match (a.parse::<u64>(), b.parse::<u64>()) {
                (Ok(a), Ok(b)) if b >= a => b - a + 1,
                _ => 0,
            },
            None => u64::from(part.parse::<u64>().is_ok()),
        })
        .sum()
}

/// `MemTotal:  16318264 kB` → MiB.
fn mem_total_mb(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

/// Asks the resolver for `hostname`'s canonical name on a thread of its
/// own, which ends when the resolver answers or gives up by itself; an
/// answer nobody waits for any more is dropped.
fn ask_fqdn(hostname: &str) -> tokio::sync::oneshot::Receiver<String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let name = hostname.to_owned();
    let spawned = std::thread::Builder::new()
        .name("facts-fqdn".into())
        .spawn(move || {
            let _ = tx.send(canonical_name(&name));
        });
    if let Err(e) = spawned {
        tracing::warn!("facts: cannot ask the resolver ({e}); facts.fqdn is the host name");
    }
    rx
}

/// The resolver's canonical name for `hostname` (what `hostname -f` shows),
/// else `hostname`.
fn canonical_name(hostname: &str) -> String {
    use nix::libc;
    use std::ffi::{CStr, CString};
    let Ok(node) = CString::new(hostname) else {
        return hostname.to_owned();
    };
    // SAFETY: `hints` is zeroed as getaddrinfo expects; `res` is only read
    // when the call succeeded and is freed exactly once.
    unsafe {
        let mut hints: libc::addrinfo = std::mem::zeroed();
        hints.ai_flags = libc::AI_CANONNAME;
        let mut res: *mut libc::addrinfo = std::ptr::null_mut();
        if libc::getaddrinfo(node.as_ptr(), std::ptr::null(), &hints, &mut res) != 0 {
            return hostname.to_owned();
        }
        let name = match res.as_ref() {
            Some(ai) if !ai.ai_canonname.is_null() => CStr::from_ptr(ai.ai_canonname)
                .to_string_lossy()
                .into_owned(),
            _ => hostname.to_owned(),
        };
        libc::freeaddrinfo(res);
        name
    }
}

/// Every non-loopback address of every interface.
fn addresses() -> Addresses {
    let mut out = Addresses::default();
    let list = match nix::ifaddrs::getifaddrs() {
        Ok(l) => l,
        Err(e) => {
            tracing::debug!("facts: cannot list the interfaces: {e}");
            return out;
        }
    };
    for ifa in list {
        let Some(addr) = ifa.address else { continue };
        let ip: Option<IpAddr> = if let Some(v4) = addr.as_sockaddr_in() {
            Some(IpAddr::V4(v4.ip()))
        } else {
            addr.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
        };
        let Some(ip) = ip.filter(|ip| !ip.is_loopback()) else {
            continue;
        };
        let entry = out.interfaces.entry(ifa.interface_name).or_default();
        match ip {
            IpAddr::V4(a) => entry.ipv4.push(a.to_string()),
            IpAddr::V6(a) => entry.ipv6.push(a.to_string()),
        }
    }
    for i in out.interfaces.values() {
        out.ipv4.extend(i.ipv4.iter().cloned());
        out.ipv6.extend(i.ipv6.iter().cloned());
    }
    out
}

/// The first IPv4 address of the interface the default route leaves by.
fn default_ipv4(addrs: &Addresses) -> String {
    let route = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    default_interface(&route)
        .and_then(|i| addrs.interfaces.get(&i))
        .and_then(|i| i.ipv4.first())
        .or_else(|| addrs.ipv4.first())
        .cloned()
        .unwrap_or_default()
}

/// `/proc/net/route`'s interface for destination 0.0.0.0/0.
fn default_interface(route: &str) -> Option<String> {
    route.lines().skip(1).find_map(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        match cols.as_slice() {
            [iface, "00000000", _, _, _, _, _, "00000000", ..] => Some((*iface).to_owned()),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_cpu_list_and_memory() {
        let os = parse_os_release("NAME=\"Debian\"\nID=debian\nVERSION_ID=\"12\"\n");
        assert_eq!((os.id.as_str(), os.version.as_str()), ("debian", "12"));
        assert_eq!(count_cpu_list("0-3,8,10-11\n"), 7);
        assert_eq!(count_cpu_list("0\n"), 1);
        assert_eq!(mem_total_mb("MemTotal:        2048000 kB\n"), 2000);
    }

    #[test]
    fn the_default_route_names_its_interface() {
        let route = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n\
                     eth1\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n\
                     eth0\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\n";
        assert_eq!(default_interface(route).as_deref(), Some("eth0"));
    }
}
