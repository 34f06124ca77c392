//! Client authentication: ssh-agent, key files, the URL password, then (only
//! with `allow_interactive`) a prompt.
//!
//! [`Credentials`] is built once per run and shared by every host: key files
//! are read and parsed once, an encrypted key is decrypted at most once, and
//! the agent socket path is captured at start. Prompts are serialised across
//! all hosts by one global async mutex so that two hosts never ask at once;
//! each prompt allows three tries. Without `allow_interactive` nothing ever
//! reads the keyboard: a host that no method opens fails with a hint. This
//! module does not decide which hosts to connect to or when.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use russh::client::{AuthResult, Handle, Handler};
use russh::keys::agent::client::AgentClient;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg};
use russh::MethodKind;

use super::target::{Secret, Target};
use super::Hint;

/// How many times a prompt may be answered wrongly.
const PROMPT_TRIES: usize = 3;

/// Serialises prompts across all hosts of the process. A tokio mutex because
/// the guard is held across the (blocking, spawned) terminal read on purpose.
static PROMPT_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What authentication may use; see [`Credentials::new`].
#[derive(Clone, Debug, Default)]
pub struct AuthSettings {
    /// The agent socket; `None` means no agent. [`AuthSettings::from_env`]
    /// takes it from `SSH_AUTH_SOCK`.
    pub agent_socket: Option<PathBuf>,
    /// Key files to try in order. Empty means the defaults
    /// (`~/.ssh/id_ed25519`, `id_ecdsa`, `id_rsa`, those that exist).
    pub key_files: Vec<PathBuf>,
    /// Whether a passphrase or password may be asked on the terminal.
    pub allow_interactive: bool,
}

impl AuthSettings {
    /// Agent from `SSH_AUTH_SOCK`, default key files, no prompts.
    pub fn from_env() -> Self {
        Self {
            agent_socket: std::env::var_os("SSH_AUTH_SOCK")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
            key_files: Vec::new(),
            allow_interactive: false,
        }
    }
}

/// A key file as loaded once.
#[derive(Clone)]
enum KeyState {
    /// Parsed and ready.
    Ready(Arc<PrivateKey>),
    /// Needs a passphrase; only usable interactively.
    Encrypted,
    /// Unreadable or unparsable: why, to report once.
    Broken(String),
}

/// Shared, cheap to clone authentication material for a whole run.
#[derive(Clone)]
pub struct Credentials {
    inner: Arc<Inner>,
}

struct Inner {
    settings: AuthSettings,
    /// Key files by path. A std mutex: only held for map lookups/inserts,
    /// never across an await.
    keys: Mutex<HashMap<PathBuf, KeyState>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("agent_socket", &self.inner.settings.agent_socket)
            .field("key_files", &self.inner.settings.key_files)
            .field("allow_interactive", &self.inner.settings.allow_interactive)
            .finish()
    }
}

/// How a host let us in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    /// A key held by ssh-agent (its comment).
    Agent(String),
    /// A key file.
    KeyFile(PathBuf),
    /// The password from the URL.
    UrlPassword,
    /// A password typed at the prompt.
    PromptedPassword,
}

/// Why authentication failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Every available method was refused.
    #[error("authentication as {user:?} failed; tried: {tried}")]
    Refused {
        /// Remote user.
        user: String,
        /// What was tried, human readable (never a secret).
        tried: String,
        /// Encrypted key files that were skipped because prompting is off.
        skipped_encrypted: Vec<PathBuf>,
        /// Whether prompting was allowed.
        interactive: bool,
    },
    /// The SSH connection failed during authentication.
    #[error("connection lost during authentication")]
    Ssh(#[source] russh::Error),
    /// A prompt could not be shown or read (no terminal).
    #[error("cannot prompt for a {what}: {source}")]
    Prompt {
        /// "password" or "passphrase for KEY".
        what: String,
        /// The terminal error.
        #[source]
        source: std::io::Error,
    },
}

impl Hint for AuthError {
    fn hint(&self) -> Option<String> {
        match self {
            Self::Refused {
                skipped_encrypted,
                interactive,
                ..
            } => {
                let mut h = String::from(
                    "add the user's public key to the host's authorized_keys and load it in ssh-agent \
                     or name the key file, or put a password in the url",
                );
                if !interactive {
                    h.push_str(", or allow prompting with --allow-interactive");
                    if !skipped_encrypted.is_empty() {
                        let names: Vec<String> = skipped_encrypted
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect();
                        h.push_str(&format!(
                            " (the encrypted key {} was skipped: ssh-add it or allow prompting)",
                            names.join(", ")
                        ));
                    }
                }
                Some(h)
            }
            Self::Ssh(_) => Some("retry; if it persists check the host's sshd logs".into()),
            Self::Prompt { .. } => Some(
                "run on a terminal, or use ssh-agent or a key file without a passphrase".into(),
            ),
        }
    }
}

impl Credentials {
    /// Capture the settings and read every configured key file now, so that
    /// the first host does not pay for it and errors show up once.
    pub fn new(settings: AuthSettings) -> Self {
        let creds = Self {
            inner: Arc::new(Inner {
                settings,
                keys: Mutex::new(HashMap::new()),
            }),
        };
        for path in creds.default_key_files() {
            creds.key(&path);
        }
        creds
    }

    /// The settings this was built from.
    pub fn settings(&self) -> &AuthSettings {
        &self.inner.settings
    }

    fn default_key_files(&self) -> Vec<PathBuf> {
        if !self.inner.settings.key_files.is_empty() {
            return self.inner.settings.key_files.clone();
        }
        default_key_paths()
    }

    /// The key at `path`, loaded on first use and cached.
    fn key(&self, path: &Path) -> KeyState {
        let mut keys = self.inner.keys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = keys.get(path) {
            return k.clone();
        }
        let state = match russh::keys::load_secret_key(path, None) {
            Ok(k) => KeyState::Ready(Arc::new(k)),
            Err(russh::keys::Error::KeyIsEncrypted) => KeyState::Encrypted,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot load key file; skipping it");
                KeyState::Broken(e.to_string())
            }
        };
        keys.insert(path.to_owned(), state.clone());
        state
    }

    fn store_key(&self, path: &Path, key: Arc<PrivateKey>) {
        let mut keys = self.inner.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.insert(path.to_owned(), KeyState::Ready(key));
    }

    /// Authenticate `target.user` on an open connection.
    pub(crate) async fn authenticate<H: Handler>(
        &self,
        handle: &mut Handle<H>,
        target: &Target,
    ) -> Result<AuthMethod, AuthError> {
        let user = target.user.as_str();
        let mut tried: Vec<String> = Vec::new();
        // Only asked when an RSA key comes up: it may wait up to a second
        // for the server's EXT_INFO.
        let mut rsa: Option<Option<HashAlg>> = None;

        // 1. ssh-agent.
        if let Some(sock) = &self.inner.settings.agent_socket {
            match AgentClient::connect_uds(sock).await {
                Ok(mut agent) => match agent.request_identities().await {
                    Ok(ids) => {
                        tried.push(format!("{} agent key(s)", ids.len()));
                        for id in ids {
                            let comment = match &id {
                                russh::keys::agent::AgentIdentity::PublicKey {
                                    comment, ..
                                } => comment.clone(),
                                russh::keys::agent::AgentIdentity::Certificate {
                                    comment, ..
                                } => comment.clone(),
                            };
                            let key = id.public_key().into_owned();
                            let hash = rsa_hash(handle, &mut rsa, key.algorithm().is_rsa()).await?;
                            match handle
                                .authenticate_publickey_with(user, key, hash, &mut agent)
                                .await
                            {
                                Ok(AuthResult::Success) => return Ok(AuthMethod::Agent(comment)),
                                Ok(_) => {}
                                Err(e) => {
                                    tracing::debug!(error = %e, "agent signing failed; trying the next method");
                                }
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(socket = %sock.display(), error = %e, "ssh-agent did not list keys")
                    }
                },
                Err(e) => {
                    tracing::warn!(socket = %sock.display(), error = %e, "cannot reach ssh-agent")
                }
            }
        }

        // 2. Key files, as OpenSSH orders them: `-i` first, then the host's
        // IdentityFile entries; the defaults only when neither names one.
        let mut files = self.inner.settings.key_files.clone();
        for f in &target.identity_files {
            if !files.contains(f) {
                files.push(f.clone());
            }
        }
        if files.is_empty() {
            files = self.default_key_files();
        }
        let mut encrypted = Vec::new();
        for path in &files {
            match self.key(path) {
                KeyState::Ready(key) => {
                    tried.push(format!("key {}", path.display()));
                    if try_key(handle, user, &mut rsa, key).await? {
                        return Ok(AuthMethod::KeyFile(path.clone()));
                    }
                }
                KeyState::Encrypted => encrypted.push(path.clone()),
                KeyState::Broken(why) => {
                    tried.push(format!("key {} (unusable: {why})", path.display()))
                }
            }
        }

        // 3. The URL password.
        if let Some(pw) = &target.password {
            tried.push("the url password".into());
            if try_password(handle, user, pw).await? {
                return Ok(AuthMethod::UrlPassword);
            }
        }

        // 4. Prompts, one host at a time.
        let interactive = self.inner.settings.allow_interactive;
        if interactive {
            for path in &encrypted {
                tried.push(format!("key {} (passphrase prompt)", path.display()));
                if let Some(key) = self.decrypt_interactively(path).await? {
                    if try_key(handle, user, &mut rsa, key).await? {
                        return Ok(AuthMethod::KeyFile(path.clone()));
                    }
                }
            }
            tried.push("password prompt".into());
            let _turn = PROMPT_LOCK.lock().await;
            for _ in 0..PROMPT_TRIES {
                let prompt = format!("password for {}@{}: ", user, target.name);
                let pw = prompt_secret(prompt, "password".into()).await?;
                if try_password(handle, user, &pw).await? {
                    return Ok(AuthMethod::PromptedPassword);
                }
            }
        }

        Err(AuthError::Refused {
            user: user.to_owned(),
            tried: if tried.is_empty() {
                "nothing (no agent, no key file, no password)".into()
            } else {
                tried.join(", ")
            },
            skipped_encrypted: if interactive { Vec::new() } else { encrypted },
            interactive,
        })
    }

    /// Ask for the passphrase of `path` (three tries) unless another host has
    /// already decrypted it while we waited for our turn.
    async fn decrypt_interactively(
        &self,
        path: &Path,
    ) -> Result<Option<Arc<PrivateKey>>, AuthError> {
        let _turn = PROMPT_LOCK.lock().await;
        if let KeyState::Ready(k) = self.key(path) {
            return Ok(Some(k));
        }
        for _ in 0..PROMPT_TRIES {
            let what = format!("passphrase for {}", path.display());
            let pass = prompt_secret(format!("{what}: "), what).await?;
            match russh::keys::load_secret_key(path, Some(pass.expose())) {
                Ok(k) => {
                    let k = Arc::new(k);
                    self.store_key(path, k.clone());
                    return Ok(Some(k));
                }
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "wrong passphrase"),
            }
        }
        Ok(None)
    }
}

/// The signature hash for an RSA key (`None` for other keys), asked of the
/// server once per connection and cached in `cache`.
async fn rsa_hash<H: Handler>(
    handle: &Handle<H>,
    cache: &mut Option<Option<HashAlg>>,
    is_rsa: bool,
) -> Result<Option<HashAlg>, AuthError> {
    if !is_rsa {
        return Ok(None);
    }
    if let Some(h) = cache {
        return Ok(*h);
    }
    let h = handle
        .best_supported_rsa_hash()
        .await
        .map_err(AuthError::Ssh)?
        .flatten();
    *cache = Some(h);
    Ok(h)
}

/// Try a password with the `password` method, or `keyboard-interactive` when
/// that is all the server offers (PAM setups do that).
/// Offers one private key; true when the server accepted it.
async fn try_key<H: Handler>(
    handle: &mut Handle<H>,
    user: &str,
    rsa: &mut Option<Option<HashAlg>>,
    key: Arc<PrivateKey>,
) -> Result<bool, AuthError> {
    let hash = rsa_hash(handle, rsa, key.algorithm().is_rsa()).await?;
    let res = handle
        .authenticate_publickey(user, PrivateKeyWithHashAlg::new(key, hash))
        .await
        .map_err(AuthError::Ssh)?;
    Ok(res.success())
}

async fn try_password<H: Handler>(
    handle: &mut Handle<H>,
    user: &str,
    pw: &Secret,
) -> Result<bool, AuthError> {
    let res = handle
        .authenticate_password(user, pw.expose())
        .await
        .map_err(AuthError::Ssh)?;
    let remaining = match res {
        AuthResult::Success => return Ok(true),
        AuthResult::Failure {
            remaining_methods, ..
        } => remaining_methods,
    };
    if !remaining.contains(&MethodKind::KeyboardInteractive) {
        return Ok(false);
    }
    use russh::client::KeyboardInteractiveAuthResponse as Ki;
    let mut reply = handle
        .authenticate_keyboard_interactive_start(user, None)
        .await
        .map_err(AuthError::Ssh)?;
    // Answer at most a few rounds: a password prompt, possibly an empty info
    // round. Anything else (OTP, several prompts) is not ours to answer.
    for _ in 0..3 {
        match reply {
            Ki::Success => return Ok(true),
            Ki::Failure { .. } => return Ok(false),
            Ki::InfoRequest { prompts, .. } => {
                if prompts.len() > 1 {
                    return Ok(false);
                }
                let answers = prompts.iter().map(|_| pw.expose().to_owned()).collect();
                reply = handle
                    .authenticate_keyboard_interactive_respond(answers)
                    .await
                    .map_err(AuthError::Ssh)?;
            }
        }
    }
    Ok(false)
}

/// Read a secret from the terminal without echo, on a blocking thread.
async fn prompt_secret(prompt: String, what: String) -> Result<Secret, AuthError> {
    // The progress bars hide while the prompt is open, so that they do not
    // draw over it or over what is typed.
    crate::term::prompting(true);
    let read = tokio::task::spawn_blocking(move || rpassword::prompt_password(prompt)).await;
    crate::term::prompting(false);
    match read {
        Ok(Ok(s)) => Ok(Secret::new(s)),
        Ok(Err(source)) => Err(AuthError::Prompt { what, source }),
        Err(join) => Err(AuthError::Prompt {
            what,
            source: std::io::Error::other(join.to_string()),
        }),
    }
}

/// `~/.ssh/id_ed25519`, `id_ecdsa`, `id_rsa`: those that exist.
pub(crate) fn default_key_paths() -> Vec<PathBuf> {
    let Some(home) = std::env::home_dir() else {
        return Vec::new();
    };
    ["id_ed25519", "id_ecdsa", "id_rsa"]
        .iter()
        .map(|n| home.join(".ssh").join(n))
        .filter(|p| p.exists())
        .collect()
}
