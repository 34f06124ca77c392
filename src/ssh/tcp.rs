//! The SSH client's TCP socket: what sshd sends is acknowledged at once.
//!
//! sshd turns Nagle's algorithm off only for interactive sessions (a pty,
//! X11); for ours it stays on, so a small packet it wants to send waits
//! until everything it sent before is acknowledged. This side's kernel
//! delays an acknowledgement by up to 40 ms when it has nothing to send
//! back, and more so once a connection looks like request/response
//! traffic. Together they held the answers to the tunnel request, the
//! child's first output and its store connection's channel open for about
//! one round trip plus 40 ms each (seen over a 50 ms link). A [`QuickAck`]
//! stream asks the kernel, after every read, to acknowledge at once
//! (`TCP_QUICKACK`, which Linux does not keep set by itself).

use std::pin::Pin;
use std::task::{Context, Poll};

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A TCP stream that acknowledges what it read right away.
pub(crate) struct QuickAck(TcpStream);

impl QuickAck {
    pub(crate) fn new(stream: TcpStream) -> QuickAck {
        ack_now(&stream);
        QuickAck(stream)
    }
}

fn ack_now(stream: &TcpStream) {
    if let Err(e) = SockRef::from(stream).set_tcp_quickack(true) {
        tracing::trace!(error = %e, "TCP_QUICKACK failed");
    }
}

impl AsyncRead for QuickAck {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        super::wire::poll_read_then(&mut self.get_mut().0, cx, buf, |s, n| {
            if n > 0 {
                ack_now(s);
            }
        })
    }
}

impl AsyncWrite for QuickAck {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A loopback connection whose far end echoes every 16 bytes at once.
    async fn echoed() -> (TcpStream, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = [0u8; 16];
            while s.read_exact(&mut buf).await.is_ok() {
                s.write_all(&buf).await.expect("answer");
            }
        });
        (TcpStream::connect(addr).await.expect("connect"), server)
    }

    /// Request/response rounds over `s`; after each, whether its socket is
    /// in quick-ack mode (Linux reports `TCP_QUICKACK` as "not in
    /// delayed-ack mode").
    async fn rounds<S>(mut s: S, tcp: fn(&S) -> &TcpStream) -> Vec<bool>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut seen = Vec::new();
        for _ in 0..8 {
            let mut buf = [7u8; 16];
            s.write_all(&buf).await.expect("ask");
            s.read_exact(&mut buf).await.expect("answer");
            seen.push(SockRef::from(tcp(&s)).tcp_quickack().expect("getsockopt"));
        }
        seen
    }

    #[tokio::test]
    async fn every_read_leaves_the_socket_acknowledging_at_once() {
        // The control: a plain socket falls into delayed-ack mode.
        let (plain, server) = echoed().await;
        let seen = rounds(plain, |s| s).await;
        server.await.expect("server");
        assert!(
            seen.contains(&false),
            "a plain socket never delayed its acks: this test cannot tell"
        );
        let (tcp, server) = echoed().await;
        let seen = rounds(QuickAck::new(tcp), |q| &q.0).await;
        server.await.expect("server");
        assert!(seen.iter().all(|q| *q), "{seen:?}");
    }
}
