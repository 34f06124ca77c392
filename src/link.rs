//! A child's link to the process that started it over SSH (`--depth` >= 1).
//!
//! The parent hands the run's tunnel secret to the child as the first line
//! of its stdin (never in argv, the environment or a log), then keeps stdin
//! open for the life of the run. The child presents the secret first on every
//! connection to the store through the tunnel (the parent checks it before a
//! byte reaches the store), and stops cleanly by itself when stdin closes:
//! the parent, or the link to it, is gone.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub mod rundir;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;

/// The tunnel secret as the child sends it (lowercase hex).
#[derive(Clone)]
pub struct Secret(zeroize::Zeroizing<String>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Secret {
    /// The hex text, for handing down to a gateway's own children.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(
        "no tunnel secret on stdin within {0:?} (this mode is started by `mgmt run --remote`)"
    )]
    NoSecret(Duration),
    #[error("the tunnel secret on stdin is malformed (expected one line of hex)")]
    BadSecret,
    #[error("no graph of {0} bytes on stdin after the secret within 30s")]
    NoGraph(usize),
    #[error("a graph of {0} bytes on stdin is more than a warm start takes")]
    GraphTooBig(usize),
    #[error("cannot write the graph into the run directory {0}: {1}")]
    RunDir(String, #[source] std::io::Error),
    #[error("cannot read stdin: {0}")]
    Stdin(#[from] std::io::Error),
    #[error("bad store URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot reach the store at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: etcd_client::Error,
    },
}

/// Reads the secret line from `stdin`, then returns it with the rest of
/// stdin, which the caller hands to [`stop_on_eof`].
pub async fn read_secret<R: AsyncRead + Unpin>(
    stdin: R,
    wait: Duration,
) -> Result<(Secret, BufReader<R>), LinkError> {
    let mut reader = BufReader::new(stdin);
    let mut line = zeroize::Zeroizing::new(String::new());
    let n = tokio::time::timeout(wait, reader.read_line(&mut line))
        .await
        .map_err(|_| LinkError::NoSecret(wait))??;
    if n == 0 {
        return Err(LinkError::BadSecret);
    }
    Ok((Secret::parse(&line)?, reader))
}

impl Secret {
    /// The secret from its line on stdin.
    fn parse(line: &str) -> Result<Secret, LinkError> {
        let hex = line.trim_end();
        if hex.is_empty() || hex.len() > 1024 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(LinkError::BadSecret);
        }
        Ok(Secret(zeroize::Zeroizing::new(hex.to_owned())))
    }
}

/// The largest graph a warm start takes on stdin.
pub const MAX_GRAPH_STDIN: usize = 64 << 20;

/// A warm start's stdin (`--graph-stdin LEN`): the secret line, then
/// exactly `len` bytes of graph, which go to `graph.yaml` in `run_dir`
/// ([`rundir`]). Returns `link` with the secret taken and its
/// stdin the rest, and the graph's path.
pub async fn take_graph(
    link: ParentLink,
    len: usize,
    run_dir: &std::path::Path,
) -> Result<(ParentLink, std::path::PathBuf), LinkError> {
    if len > MAX_GRAPH_STDIN {
        return Err(LinkError::GraphTooBig(len));
    }
    let (secret, mut rest) = read_secret(link.stdin, Duration::from_secs(30)).await?;
    let mut graph = vec![0; len];
    tokio::time::timeout(Duration::from_secs(30), rest.read_exact(&mut graph))
        .await
        .map_err(|_| LinkError::NoGraph(len))??;
    let dir = run_dir.to_owned();
    let path = tokio::task::spawn_blocking(move || rundir::write_graph(&dir, &graph))
        .await
        .map_err(std::io::Error::other)?
        .map_err(|e| LinkError::RunDir(run_dir.display().to_string(), e))?;
    let link = ParentLink {
        stdin: Box::new(rest),
        secret: Some(secret),
        ..link
    };
    Ok((link, path))
}

/// What a parent writes on a child's stdin, before closing it, when the run
/// ends because the whole cluster converged: a gateway then reports its
/// hosts as converged rather than stopped, and tells its own children.
pub const CONVERGED_LINE: &[u8] = b"converged\n";

/// A child's exit code when `--where` or its graph's `when:` is false on
/// its host: it applied nothing, and its parent reports it as skipped.
pub const SKIPPED_EXIT: u8 = 3;

/// What a parent writes on a gateway's stdin to give a host behind it its
/// turn in a rolling run: `turn NAME`.
pub const TURN_PREFIX: &[u8] = b"turn ";

/// Cancels `root` when stdin reaches EOF (or fails): the parent is gone.
/// A `converged` line before that (the parent ends the run because the
/// whole cluster converged) sets `converged` first.
pub async fn stop_on_eof<R: AsyncRead + Unpin>(
    stdin: R,
    root: CancellationToken,
    converged: Arc<AtomicBool>,
) {
    stop_on_eof_with_turns(stdin, root, converged, None).await
}

/// [`stop_on_eof`], passing each `turn NAME` line's NAME to `turns`.
pub async fn stop_on_eof_with_turns<R: AsyncRead + Unpin>(
    stdin: R,
    root: CancellationToken,
    converged: Arc<AtomicBool>,
    turns: Option<tokio::sync::mpsc::UnboundedSender<String>>,
) {
    let mut stdin = BufReader::new(stdin);
    let mut line = Vec::new();
    loop {
        line.clear();
        // Bounded: a line longer than this is not ours and is skipped.
        match (&mut stdin).take(4096).read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) if line == CONVERGED_LINE => converged.store(true, Ordering::SeqCst),
            Ok(_) if line.starts_with(TURN_PREFIX) => {
                let name = String::from_utf8_lossy(&line[TURN_PREFIX.len()..]);
                if let Some(t) = &turns {
                    let _ = t.send(name.trim_end().to_owned());
                }
            }
            Ok(_) => continue,
        }
    }
    tracing::info!("stdin closed: the initiator is gone; stopping");
    root.cancel();
}

/// Opens one byte stream to the parent's end of the tunnel. A real child
/// dials the forwarded port over TCP; a host emulated in-process
/// (`mgmt emulate`) opens the SSH channel itself.
pub type Dial = std::sync::Arc<
    dyn Fn() -> futures::future::BoxFuture<'static, std::io::Result<DialStream>> + Send + Sync,
>;

/// What a [`Dial`] returns.
pub type DialStream = Box<dyn Duplex>;

/// A byte stream both ways.
pub trait Duplex: AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Duplex for T {}

/// How a child (`--depth` >= 1) is joined to its parent: its stdin, and how
/// to reach the tunnel (`None`: TCP to the `--seeds` URL).
pub struct ParentLink {
    pub stdin: Box<dyn AsyncRead + Send + Unpin>,
    pub dial: Option<Dial>,
    /// The tunnel secret, when it was already read from `stdin`
    /// ([`take_graph`]).
    pub secret: Option<Secret>,
    /// Kept equal to the local engine's converged state, for whoever runs
    /// this child in-process (the emulator's counters).
    pub engine_converged: Option<Arc<AtomicBool>>,
}

impl ParentLink {
    /// A real process's link: its stdin, TCP to the tunnel port.
    pub fn stdio() -> ParentLink {
        ParentLink {
            stdin: Box::new(tokio::io::stdin()),
            dial: None,
            secret: None,
            engine_converged: None,
        }
    }
}

/// The [`Dial`] of a real child: TCP to `addr` (`host:port`).
pub fn tcp_dial(addr: String) -> Dial {
    std::sync::Arc::new(move || {
        let addr = addr.clone();
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(&addr).await?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as DialStream)
        })
    })
}

/// An etcd client whose every connection to `url` (`http://host:port`)
/// starts with the secret preamble (none for a connection that needs none,
/// such as an in-memory pipe to this process's own store); `dial` opens the
/// connections (default: TCP to `url`).
pub async fn connect_store(
    url: &str,
    secret: Option<&Secret>,
    dial: Option<Dial>,
) -> Result<etcd_client::Client, LinkError> {
    let bad = |reason: String| LinkError::Url {
        url: url.to_owned(),
        reason,
    };
    let addr = url
        .strip_prefix("http://")
        .ok_or_else(|| bad("expected http://HOST:PORT".into()))?
        .trim_end_matches('/')
        .to_owned();
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
        .map_err(|e| bad(e.to_string()))?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        // Generous: the SSH keepalive already finds a dead link, and a
        // tunnel through loaded gateways can be slow to answer a ping.
        .keep_alive_timeout(Duration::from_secs(20));
    let preamble = secret.map(|s| s.0.clone());
    let dial = dial.unwrap_or_else(|| tcp_dial(addr));
    let connector = tower::service_fn(move |_uri: tonic::transport::Uri| {
        let (dial, preamble) = (dial.clone(), preamble.clone());
        async move {
            let mut stream = dial().await?;
            if let Some(p) = &preamble {
                stream.write_all(p.as_bytes()).await?;
            }
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    let channel = endpoint.connect_with_connector_lazy(connector);
    etcd_client::Client::from_channel(etcd_client::Channel::Tonic(channel), None)
        .await
        .map_err(|source| LinkError::Connect {
            url: url.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn secret_is_the_first_line_and_eof_stops() {
        let (mut w, r) = tokio::io::duplex(64);
        w.write_all(b"00ff\nmore").await.unwrap();
        let (secret, rest) = read_secret(r, Duration::from_secs(5)).await.unwrap();
        assert_eq!(secret.0.as_str(), "00ff");
        assert!(!format!("{secret:?}").contains("00ff"));
        let root = CancellationToken::new();
        let task = tokio::spawn(stop_on_eof(rest, root.clone(), Default::default()));
        drop(w);
        task.await.unwrap();
        assert!(root.is_cancelled());
    }

    #[tokio::test]
    async fn a_converged_line_before_eof_sets_the_flag() {
        let (mut w, r) = tokio::io::duplex(64);
        let (root, flag) = (CancellationToken::new(), Arc::new(AtomicBool::new(false)));
        let task = tokio::spawn(stop_on_eof(r, root.clone(), flag.clone()));
        w.write_all(b"noise\n").await.unwrap();
        w.write_all(CONVERGED_LINE).await.unwrap();
        drop(w);
        task.await.unwrap();
        assert!(root.is_cancelled() && flag.load(Ordering::SeqCst));
        // Without the line, EOF alone does not claim convergence.
        let (w, r) = tokio::io::duplex(64);
        let flag = Arc::new(AtomicBool::new(false));
        drop(w);
        stop_on_eof(r, CancellationToken::new(), flag.clone()).await;
        assert!(!flag.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn malformed_or_missing_secret_is_refused() {
        let (mut w, r) = tokio::io::duplex(64);
        w.write_all(b"not hex\n").await.unwrap();
        assert!(matches!(
            read_secret(r, Duration::from_secs(5)).await,
            Err(LinkError::BadSecret)
        ));
        let (_w, r) = tokio::io::duplex(64);
        assert!(matches!(
            read_secret(r, Duration::from_millis(10)).await,
            Err(LinkError::NoSecret(_))
        ));
    }
}
