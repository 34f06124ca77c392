//! A child's link to the process that started it over SSH (`--depth` >= 1).
//!
//! The parent hands the run's tunnel secret to the child as the first line
//! of its stdin (never in argv, the environment or a log), then keeps stdin
//! open for the life of the run. The child presents the secret first on every
//! connection to the store through the tunnel (the parent checks it before a
//! byte reaches the store), and stops cleanly by itself when stdin closes:
//! the parent, or the link to it, is gone.
//!
//! What else the parent says on stdin, after the secret: a warm start's
//! graph (exactly `--graph-stdin` bytes), then lines ([`CONVERGED_LINE`], a
//! rolling run's turns) and, for a warm start, each live edit of its graph
//! as a frame: `graph LEN`, a newline and LEN bytes ([`graph_frame`]). The
//! graph so lives in the child's memory only: no file, no directory and no
//! inotify watch on the host for it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub mod rundir;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};
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
    #[error("the graph on stdin is not UTF-8 text")]
    GraphNotText,
    #[error("a graph frame on stdin is cut or malformed: {0}")]
    BadFrame(String),
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

/// The largest graph a warm start takes on stdin, first or edited.
pub const MAX_GRAPH_STDIN: usize = 64 << 20;

/// A warm start's stdin (`--graph-stdin LEN`): the secret line, then
/// exactly `len` bytes of graph text. Returns `link` with the secret taken
/// and its stdin the rest, and the graph's text.
pub async fn take_graph(link: ParentLink, len: usize) -> Result<(ParentLink, String), LinkError> {
    if len > MAX_GRAPH_STDIN {
        return Err(LinkError::GraphTooBig(len));
    }
    let (secret, mut rest) = read_secret(link.stdin, Duration::from_secs(30)).await?;
    let mut graph = vec![0; len];
    tokio::time::timeout(Duration::from_secs(30), rest.read_exact(&mut graph))
        .await
        .map_err(|_| LinkError::NoGraph(len))??;
    let text = String::from_utf8(graph).map_err(|_| LinkError::GraphNotText)?;
    let link = ParentLink {
        stdin: Box::new(rest),
        secret: Some(secret),
        ..link
    };
    Ok((link, text))
}

/// How a live edit of a warm start's graph starts on its stdin: this, the
/// text's length in bytes, a newline, then the text.
pub const GRAPH_PREFIX: &[u8] = b"graph ";

/// A live edit's frame for a warm-started child's stdin.
pub fn graph_frame(text: &str) -> Vec<u8> {
    let mut frame = format!("graph {}\n", text.len()).into_bytes();
    frame.extend_from_slice(text.as_bytes());
    frame
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

/// Where [`follow_stdin`] passes what the parent says besides
/// `converged`: a rolling run's turns (a gateway), a warm start's edited
/// graphs (the latest text wins). Without a sink, the words are read and
/// dropped.
#[derive(Default)]
pub struct StdinSinks {
    pub turns: Option<mpsc::UnboundedSender<String>>,
    pub graphs: Option<watch::Sender<Option<Arc<str>>>>,
}

/// Cancels `root` when stdin reaches EOF (or fails): the parent is gone.
/// A `converged` line before that (the parent ends the run because the
/// whole cluster converged) sets `converged` first.
pub async fn stop_on_eof<R: AsyncRead + Unpin>(
    stdin: R,
    root: CancellationToken,
    converged: Arc<AtomicBool>,
) {
    follow_stdin(stdin, root, converged, StdinSinks::default()).await
}

/// [`stop_on_eof`], passing each `turn NAME` line's NAME and each graph
/// frame's text to `sinks`. A frame that cannot be read whole (too long,
/// cut, not text) leaves the rest of stdin unreadable: that stops the run
/// as an EOF does.
pub async fn follow_stdin<R: AsyncRead + Unpin>(
    stdin: R,
    root: CancellationToken,
    converged: Arc<AtomicBool>,
    sinks: StdinSinks,
) {
    let mut stdin = BufReader::new(stdin);
    let mut line = Vec::new();
    let why = loop {
        line.clear();
        // Bounded: a line longer than this is not ours and is skipped.
        match (&mut stdin).take(4096).read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break "stdin closed: the initiator is gone".to_owned(),
            Ok(_) if line == CONVERGED_LINE => converged.store(true, Ordering::SeqCst),
            Ok(_) if line.starts_with(TURN_PREFIX) => {
                let name = String::from_utf8_lossy(&line[TURN_PREFIX.len()..]);
                if let Some(t) = &sinks.turns {
                    let _ = t.send(name.trim_end().to_owned());
                }
            }
            Ok(_) if line.starts_with(GRAPH_PREFIX) => match read_frame(&mut stdin, &line).await {
                Ok(text) => {
                    if let Some(g) = &sinks.graphs {
                        g.send_replace(Some(text.into()));
                    }
                }
                Err(e) => break format!("stdin: {e}"),
            },
            Ok(_) => continue,
        }
    };
    tracing::info!("{why}; stopping");
    root.cancel();
}

/// The text of the graph frame whose first line is `head`.
async fn read_frame<R: AsyncRead + Unpin>(
    stdin: &mut BufReader<R>,
    head: &[u8],
) -> Result<String, LinkError> {
    let len = std::str::from_utf8(&head[GRAPH_PREFIX.len()..])
        .ok()
        .and_then(|n| n.trim_end().parse::<usize>().ok())
        .ok_or_else(|| LinkError::BadFrame("expected `graph LEN`".into()))?;
    if len > MAX_GRAPH_STDIN {
        return Err(LinkError::GraphTooBig(len));
    }
    let mut text = vec![0; len];
    stdin
        .read_exact(&mut text)
        .await
        .map_err(|e| LinkError::BadFrame(format!("{len} bytes announced: {e}")))?;
    String::from_utf8(text).map_err(|_| LinkError::GraphNotText)
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
    async fn graph_frames_carry_edits_between_the_lines() {
        let (mut w, r) = tokio::io::duplex(64);
        let (root, flag) = (CancellationToken::new(), Arc::new(AtomicBool::new(false)));
        let (turns_tx, mut turns) = mpsc::unbounded_channel();
        let (graphs_tx, mut graphs) = watch::channel(None);
        let sinks = StdinSinks {
            turns: Some(turns_tx),
            graphs: Some(graphs_tx),
        };
        let task = tokio::spawn(follow_stdin(r, root.clone(), flag.clone(), sinks));
        // A text with newlines and a line that looks like a word of ours.
        let first = "graph: g\nconverged\nresources: {}\n";
        w.write_all(&graph_frame(first)).await.unwrap();
        graphs.changed().await.unwrap();
        assert_eq!(graphs.borrow_and_update().as_deref(), Some(first));
        assert!(
            !flag.load(Ordering::SeqCst),
            "a line inside a frame was read as a word"
        );
        w.write_all(b"turn h1\n").await.unwrap();
        assert_eq!(turns.recv().await.as_deref(), Some("h1"));
        // The latest text wins; an empty graph is a text too.
        w.write_all(&graph_frame("one")).await.unwrap();
        w.write_all(&graph_frame("")).await.unwrap();
        w.write_all(CONVERGED_LINE).await.unwrap();
        drop(w);
        task.await.unwrap();
        assert_eq!(graphs.borrow_and_update().as_deref(), Some(""));
        assert!(root.is_cancelled() && flag.load(Ordering::SeqCst));
        // Without a sink a frame is read and dropped: the words after it count.
        let (mut w, r) = tokio::io::duplex(64);
        let flag = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(stop_on_eof(r, CancellationToken::new(), flag.clone()));
        w.write_all(&graph_frame("x\ny\n")).await.unwrap();
        w.write_all(CONVERGED_LINE).await.unwrap();
        drop(w);
        task.await.unwrap();
        assert!(flag.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_frame_that_cannot_be_read_whole_stops_the_run() {
        let too_long = format!("graph {}\n", MAX_GRAPH_STDIN + 1).into_bytes();
        let cut = b"graph 10\nabc".to_vec();
        let not_text = [b"graph 2\n".as_slice(), &[0xff, 0xfe]].concat();
        let no_length = b"graph ten\n".to_vec();
        for bytes in [too_long, cut, not_text, no_length] {
            let (mut w, r) = tokio::io::duplex(64);
            let (graphs_tx, graphs) = watch::channel(None);
            let sinks = StdinSinks {
                turns: None,
                graphs: Some(graphs_tx),
            };
            let root = CancellationToken::new();
            let flag = Arc::new(AtomicBool::new(false));
            let task = tokio::spawn(follow_stdin(r, root.clone(), flag.clone(), sinks));
            w.write_all(&bytes).await.unwrap();
            // Only a cut frame needs the end of the stream to be known cut.
            if bytes.starts_with(b"graph 10") {
                drop(w);
            }
            task.await.unwrap();
            let shown = String::from_utf8_lossy(&bytes);
            assert!(root.is_cancelled(), "{shown:?} did not stop the run");
            assert!(graphs.borrow().is_none(), "{shown:?} was taken as a graph");
        }
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
