//! A byte stream the store serves as one client connection: an SSH tunnel
//! channel, or an in-memory pipe from this process's own client. Such a
//! connection has no socket address to report; what it reports instead is
//! whom it speaks for ([`super::access`]), set by whoever accepted it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::access::{Peer, Speaker};

/// One connection for [`super::Store::serve_incoming`].
pub struct Conn<IO> {
    io: IO,
    peer: Peer,
}

impl<IO> Conn<IO> {
    /// A connection with no restriction (this process's own client).
    pub fn new(io: IO) -> Self {
        Conn {
            io,
            peer: Peer(None),
        }
    }

    /// A connection that speaks for `speaker` only.
    pub fn speaking_for(io: IO, speaker: Arc<Speaker>) -> Self {
        Conn {
            io,
            peer: Peer(Some(speaker)),
        }
    }
}

impl<IO> tonic::transport::server::Connected for Conn<IO> {
    type ConnectInfo = Peer;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.peer.clone()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Conn<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Conn<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
