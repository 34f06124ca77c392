//! Counting what goes over the wire: a TCP stream wrapper that adds every
//! byte written to a shared counter, so the summary can say what each hop
//! really carried (the binary, graphs, output, store traffic and SSH's own
//! framing), not only what SFTP was asked to send.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A stream whose writes are counted in `sent` (and reads in `received`).
pub(crate) struct Counted<S> {
    inner: S,
    sent: Arc<AtomicU64>,
    received: Option<Arc<AtomicU64>>,
}

impl<S> Counted<S> {
    pub(crate) fn new(inner: S, sent: Arc<AtomicU64>) -> Self {
        Self {
            inner,
            sent,
            received: None,
        }
    }

    /// Counts both ways.
    pub(crate) fn both(inner: S, sent: Arc<AtomicU64>, received: Arc<AtomicU64>) -> Self {
        Self {
            inner,
            sent,
            received: Some(received),
        }
    }
}

/// Reads from `inner` into `buf`; after a read that succeeded, `then`
/// gets `inner` and how many bytes it gave (what a wrapper does on top).
pub(crate) fn poll_read_then<S: AsyncRead + Unpin>(
    inner: &mut S,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
    then: impl FnOnce(&S, usize),
) -> Poll<std::io::Result<()>> {
    let before = buf.filled().len();
    let r = Pin::new(&mut *inner).poll_read(cx, buf);
    if let Poll::Ready(Ok(())) = &r {
        then(inner, buf.filled().len() - before);
    }
    r
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        poll_read_then(&mut this.inner, cx, buf, |_, n| {
            if let Some(received) = &this.received {
                received.fetch_add(n as u64, Ordering::Relaxed);
            }
        })
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.sent.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &r {
            self.sent.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn counts_every_byte_written_and_none_read() {
        let (a, mut b) = tokio::io::duplex(1024);
        let sent = Arc::new(AtomicU64::new(0));
        let mut c = Counted::new(a, sent.clone());
        c.write_all(b"hello").await.unwrap();
        c.write_all(&[0u8; 300]).await.unwrap();
        b.write_all(b"reply").await.unwrap();
        let mut got = [0u8; 5];
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(sent.load(Ordering::Relaxed), 305);
    }
}
