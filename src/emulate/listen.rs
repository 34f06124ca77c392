//! How connections reach the emulated hosts: one listener per host (its
//! own address), or one shared socket on `0.0.0.0:PORT` that accepts only
//! loopback peers and picks the host by the address dialled (so 10,000
//! hosts cost 10,000 descriptors, not 20,000); and, for this process's own
//! in-process gateways, in-memory streams with no descriptor at all.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use super::{server, Emulator, Host};

/// A host and its SSH server configuration (its host key).
#[derive(Clone)]
pub(crate) struct Served {
    pub host: Arc<Host>,
    pub cfg: Arc<russh::server::Config>,
}

/// Runs one SSH session of `s.host` on `stream`, counting its bytes.
pub(crate) fn serve<S>(stream: S, s: &Served, emu: &Arc<Emulator>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let c = &s.host.counters;
    c.connections.fetch_add(1, Ordering::Relaxed);
    let counted = crate::ssh::wire::Counted::both(stream, c.bytes_out.clone(), c.bytes_in.clone());
    let handler = server::Conn::new(emu.clone(), s.host.clone());
    let cfg = s.cfg.clone();
    tokio::spawn(async move {
        match russh::server::run_stream(cfg, counted, handler).await {
            Ok(session) => {
                let _ = session.await;
            }
            Err(e) => tracing::debug!("ssh handshake: {e}"),
        }
    });
}

/// Accepts until `cancel`; `pick` names the host of a connection (or
/// refuses it).
pub(crate) async fn accept(
    listener: tokio::net::TcpListener,
    emu: Arc<Emulator>,
    cancel: CancellationToken,
    pick: impl Fn(&tokio::net::TcpStream, SocketAddr) -> Option<Served>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(served) = pick(&stream, peer) else {
            tracing::warn!("refused a connection from {peer}: not for an emulated host");
            continue;
        };
        let _ = stream.set_nodelay(true);
        serve(stream, &served, &emu);
    }
}

/// The host a connection to the shared socket dialled, if its peer is on
/// loopback.
pub(crate) fn by_destination(
    map: Arc<HashMap<Ipv4Addr, Served>>,
) -> impl Fn(&tokio::net::TcpStream, SocketAddr) -> Option<Served> {
    move |stream, peer| {
        if !peer.ip().is_loopback() {
            return None;
        }
        match stream.local_addr().ok()? {
            SocketAddr::V4(a) => map.get(a.ip()).cloned(),
            SocketAddr::V6(_) => None,
        }
    }
}

/// In-memory connections from this process to its own hosts.
pub(crate) fn local_dial(
    map: Arc<HashMap<Ipv4Addr, Served>>,
    emu: Arc<Emulator>,
    port: u16,
) -> crate::ssh::connect::LocalDial {
    Box::new(move |addr| {
        let SocketAddr::V4(a) = addr else {
            return None;
        };
        let served = map.get(a.ip()).filter(|_| a.port() == port)?;
        let (near, far) = tokio::io::duplex(256 * 1024);
        serve(far, served, &emu);
        Some(Box::new(near) as crate::link::DialStream)
    })
}
