//! Where to connect: `ssh://[user[:password]@]host[:port]` parsed into a
//! [`Target`], completed from `~/.ssh/config` (`HostName`, `User`, `Port`,
//! `IdentityFile`).
//!
//! Values written in the URL win over the config file, as on ssh's command
//! line. This module does no I/O beyond reading the config file, and knows
//! nothing of keys or connections. Passwords are kept in a [`Secret`] whose
//! `Debug` and `Display` never show the value, so a `{:?}` of a target in a
//! log line cannot leak it.

use std::fmt;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use ssh2_config::{ParseRule, SshConfig};
use zeroize::Zeroizing;

use super::{Hint, HostId};

/// A password or passphrase. Printing it shows `***`; the memory is wiped on
/// drop.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// Wrap a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(Zeroizing::new(value.into()))
    }

    /// The value, for the one place that needs it (the SSH library).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// One host to connect to, fully resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The host as written in the URL; used in messages and for
    /// `~/.ssh/config` lookups.
    pub name: String,
    /// The host to dial and to look up in known_hosts (`HostName` applied).
    pub host: String,
    /// TCP port, 22 unless the URL or the config says otherwise.
    pub port: u16,
    /// Remote user name.
    pub user: String,
    /// Password from the URL, if any.
    pub password: Option<Secret>,
    /// Key files named for this host by `~/.ssh/config` (`IdentityFile`), in
    /// order. Empty means "use the defaults".
    pub identity_files: Vec<PathBuf>,
}

/// What is wrong with a remote URL or the ssh config file.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The URL does not start with `ssh://`.
    #[error("invalid remote url {url:?}: expected the scheme ssh://")]
    Scheme {
        /// The URL as given, with any password replaced by `***`.
        url: String,
    },
    /// The URL is malformed.
    #[error("invalid remote url {url:?}: {reason}")]
    Invalid {
        /// The URL as given, with any password replaced by `***`.
        url: String,
        /// What is wrong, lowercase.
        reason: String,
    },
    /// The ssh config file exists but cannot be read or parsed.
    #[error("cannot read ssh config {path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        reason: String,
    },
    /// No local user name could be found to default to.
    #[error("no user in remote url {url:?} and the local user name is unknown")]
    NoUser {
        /// The URL, password masked.
        url: String,
    },
}

impl Hint for TargetError {
    fn hint(&self) -> Option<String> {
        match self {
            Self::Scheme { .. } | Self::Invalid { .. } => Some(
                "write it as ssh://[user[:password]@]host[:port], with IPv6 addresses in brackets"
                    .into(),
            ),
            Self::Config { .. } => Some("fix the file or pass another one".into()),
            Self::NoUser { .. } => Some("name the user in the url: ssh://user@host".into()),
        }
    }
}

/// A parsed `~/.ssh/config` (or another file), read once and shared.
#[derive(Clone, Debug, Default)]
pub struct SshConfigFile {
    config: Option<SshConfig>,
}

impl SshConfigFile {
    /// No config at all.
    pub fn none() -> Self {
        Self { config: None }
    }

    /// Read `path`; a missing file is the same as an empty one.
    pub fn load(path: &Path) -> Result<Self, TargetError> {
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::none()),
            Err(e) => {
                return Err(TargetError::Config {
                    path: path.to_owned(),
                    reason: e.to_string(),
                })
            }
        };
        let rules = ParseRule::ALLOW_UNKNOWN_FIELDS | ParseRule::ALLOW_UNSUPPORTED_FIELDS;
        let config = SshConfig::default()
            .parse(&mut BufReader::new(file), rules)
            .map_err(|e| TargetError::Config {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            config: Some(config),
        })
    }

    /// Read `~/.ssh/config` if there is one.
    pub fn load_default() -> Result<Self, TargetError> {
        match std::env::home_dir() {
            Some(home) => Self::load(&home.join(".ssh").join("config")),
            None => Ok(Self::none()),
        }
    }
}

/// The local user's name, the default remote user.
pub fn local_user() -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .or_else(|| std::env::var("USER").ok())
}

impl Target {
    /// Parse a URL and complete it from `config`; `default_user` is used when
    /// neither names a user (normally [`local_user`]).
    pub fn parse(
        url: &str,
        config: &SshConfigFile,
        default_user: Option<&str>,
    ) -> Result<Self, TargetError> {
        let parts = UrlParts::parse(url)?;
        let params = config.config.as_ref().map(|c| c.query(&parts.host));
        let mut host = parts.host.clone();
        let mut port = parts.port;
        let mut user = parts.user.clone();
        let mut identity_files = Vec::new();
        if let Some(p) = params {
            if let Some(h) = p.host_name {
                host = h;
            }
            if port.is_none() {
                port = p.port;
            }
            if user.is_none() {
                user = p.user;
            }
            identity_files = p.identity_file.unwrap_or_default();
        }
        let user = match user.or_else(|| default_user.map(str::to_owned)) {
            Some(u) => u,
            None => {
                return Err(TargetError::NoUser {
                    url: mask_password(url),
                })
            }
        };
        Ok(Self {
            name: parts.host,
            host,
            port: port.unwrap_or(22),
            user,
            password: parts.password,
            identity_files,
        })
    }

    /// `host:port` for dialling; IPv6 literals get brackets.
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The identity used in error messages.
    pub fn id(&self) -> HostId {
        HostId {
            name: self.name.clone(),
            addr: self.addr(),
        }
    }
}

/// The pieces of a URL before the config file is applied.
#[derive(Debug)]
struct UrlParts {
    user: Option<String>,
    password: Option<Secret>,
    host: String,
    port: Option<u16>,
}

impl UrlParts {
    fn parse(url: &str) -> Result<Self, TargetError> {
        let masked = || mask_password(url);
        let invalid = |reason: &str| TargetError::Invalid {
            url: masked(),
            reason: reason.to_owned(),
        };
        let rest = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("ssh") => rest,
            _ => return Err(TargetError::Scheme { url: masked() }),
        };
        // The authority ends at the first '/', '?' or '#'; only an empty path
        // is meaningful for a host.
        let (authority, tail) = match rest.find(['/', '?', '#']) {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if tail.contains('@') {
            return Err(invalid(
                "the user or password contains '/', '?' or '#'; write them %-escaped (%2F, %3F, %23)",
            ));
        }
        if !tail.is_empty() && tail != "/" {
            return Err(invalid(
                "a remote url names a host only, not a path or query",
            ));
        }
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(ui) => {
                let (u, p) = match ui.split_once(':') {
                    Some((u, p)) => (u, Some(p)),
                    None => (ui, None),
                };
                let u = percent_decode(u).ok_or_else(|| invalid("bad %-escape in the user"))?;
                if u.is_empty() {
                    return Err(invalid("empty user before '@'"));
                }
                let p = match p {
                    Some(p) => Some(Secret::new(
                        percent_decode(p).ok_or_else(|| invalid("bad %-escape in the password"))?,
                    )),
                    None => None,
                };
                (Some(u), p)
            }
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| invalid("missing ']' after the IPv6 address"))?;
            if h.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(invalid("not an IPv6 address between '[' and ']'"));
            }
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| invalid("expected ':' after ']'"))?,
                ),
            };
            (h.to_owned(), port)
        } else {
            match hostport.split_once(':') {
                Some((_, p)) if p.contains(':') => {
                    return Err(invalid("an IPv6 address must be written in brackets"))
                }
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (hostport.to_owned(), None),
            }
        };
        if host.is_empty() {
            return Err(invalid("no host"));
        }
        if host
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '%')
        {
            return Err(invalid(
                "the host contains a space, a control character or '%'",
            ));
        }
        let port = match port {
            None => None,
            Some(p) => match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(invalid("the port must be a number from 1 to 65535")),
                Ok(n) => Some(n),
            },
        };
        Ok(Self {
            user,
            password,
            host,
            port,
        })
    }
}

/// Decode `%XX` escapes; `None` on a malformed escape or invalid UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The URL with the password (if any) replaced by `***`, for messages.
///
/// The user part ends at the last `@` of the URL, not at the first `/`,
/// `?` or `#` as a URL's authority does: a password may hold those
/// characters unescaped (then the URL is refused, and the message about it
/// must not show them). So anything after the first `:` before the last `@`
/// is masked, even when it was not a password.
pub fn mask_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // Without a scheme we cannot tell a password from a port; mask any
        // userinfo entirely.
        return match url.rsplit_once('@') {
            Some((_, h)) => format!("***@{h}"),
            None => url.to_owned(),
        };
    };
    match rest.rsplit_once('@') {
        Some((ui, h)) => match ui.split_once(':') {
            Some((u, _)) => format!("{scheme}://{u}:***@{h}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// Whether `url` may carry a password: something after a `:` in its user
/// part (up to the last `@`, as [`mask_password`] reads it).
pub fn has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.rsplit_once('@')
        .is_some_and(|(ui, _)| ui.split_once(':').is_some_and(|(_, p)| !p.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<Target, TargetError> {
        Target::parse(url, &SshConfigFile::none(), Some("me"))
    }

    #[test]
    fn full_url() {
        let t = parse("ssh://root:p%40ss@192.168.1.2:2222").expect("valid");
        assert_eq!(t.user, "root");
        assert_eq!(t.host, "192.168.1.2");
        assert_eq!(t.port, 2222);
        assert_eq!(t.password.as_ref().map(Secret::expose), Some("p@ss"));
        assert_eq!(t.addr(), "192.168.1.2:2222");
    }

    #[test]
    fn defaults_and_ipv6() {
        let t = parse("ssh://web1").expect("valid");
        assert_eq!((t.user.as_str(), t.port), ("me", 22));
        let t = parse("ssh://u@[::1]:2200/").expect("valid");
        assert_eq!((t.host.as_str(), t.port), ("::1", 2200));
        assert_eq!(t.addr(), "[::1]:2200");
        let t = parse("ssh://[fe80::1]").expect("valid");
        assert_eq!(t.port, 22);
    }

    #[test]
    fn errors_name_the_url_and_mask_the_password() {
        for bad in [
            "http://h",
            "h",
            "ssh://",
            "ssh://u:secret@h:0",
            "ssh://u:secret@h:99999",
            "ssh://::1",
            "ssh://[::1",
            "ssh://[nope]:22",
            "ssh://h/path",
            "ssh://@h",
        ] {
            let e = parse(bad).expect_err(bad).to_string();
            assert!(!e.contains("secret"), "{e}");
            assert!(e.starts_with("invalid remote url"), "{e}");
        }
        let e = parse("ssh://u:secret@h:0")
            .expect_err("bad port")
            .to_string();
        assert!(e.contains("u:***@h:0"), "{e}");
    }

    // See: #13 (a password with '/', '?' or '#' was printed whole)
    #[test]
    fn a_password_with_url_delimiters_is_never_printed() {
        let passwords = [
            "Kq7/Wz3",
            "Kq7?Wz3",
            "Kq7#Wz3",
            "Aa1/Bb2?Cc3#Dd4",
            "Xx9@Yy8/Zz7",
            "Ss5:Ee6/Cc4",
        ];
        for pw in passwords {
            for url in [
                format!("ssh://u:{pw}@h"),
                format!("ssh://u:{pw}@h:0"),
                format!("ssh://u:{pw}@h/path"),
                format!("http://u:{pw}@h"),
            ] {
                let e = parse(&url).expect_err(&url);
                let text = format!("{e} {e:?} {:?}", e.hint());
                for piece in pw.split(['/', '?', '#', '@', ':']) {
                    assert!(!text.contains(piece), "{piece:?} of {pw:?} in {text}");
                }
                assert!(text.contains("u:***@"), "{text}");
            }
            let e = parse(&format!("ssh://u:{pw}@h")).expect_err("raw delimiters");
            if !pw.starts_with('X') {
                assert!(e.to_string().contains("%2F, %3F, %23"), "{e}");
            }
        }
        // Escaped, the same password is accepted and kept whole.
        let t = parse("ssh://u:a%2Fb%3Fc%23d@h").expect("escaped");
        assert_eq!(t.password.as_ref().map(Secret::expose), Some("a/b?c#d"));
        assert_eq!(mask_password("ssh://u:a/b?c#d@h:22"), "ssh://u:***@h:22");
        assert_eq!(mask_password("ssh://h/x"), "ssh://h/x");
        assert!(has_password("ssh://u:a/b@h") && has_password("ssh://u:p@h:22"));
        assert!(!has_password("ssh://u@h:22") && !has_password("ssh://h:22"));
    }

    #[test]
    fn secret_never_prints() {
        let t = parse("ssh://u:hunter2@h").expect("valid");
        assert!(!format!("{t:?}").contains("hunter2"));
        assert_eq!(format!("{}", Secret::new("x")), "***");
    }

    #[test]
    fn ssh_config_fills_in_and_url_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config");
        std::fs::write(
            &path,
            "Host web*\n  HostName 10.0.0.7\n  User admin\n  Port 2201\n  IdentityFile /k/id_web\n",
        )
        .expect("write");
        let cfg = SshConfigFile::load(&path).expect("parse");
        let t = Target::parse("ssh://web3", &cfg, Some("me")).expect("valid");
        assert_eq!(t.name, "web3");
        assert_eq!(t.host, "10.0.0.7");
        assert_eq!((t.user.as_str(), t.port), ("admin", 2201));
        assert_eq!(t.identity_files, vec![PathBuf::from("/k/id_web")]);
        let t = Target::parse("ssh://root@web3:22", &cfg, Some("me")).expect("valid");
        assert_eq!((t.user.as_str(), t.port), ("root", 22));
        assert_eq!(t.id().to_string(), "web3 (10.0.0.7:22)");
    }
}
