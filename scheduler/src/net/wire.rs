//! Bytes on the wire, counted per node: the in-process network
//! (`shoal-sim net`) measures what discovery and gossip cost each node at
//! scale with it. Counted below encryption and multiplexing, so the figure
//! is what a real link would carry (framing and handshakes included).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::{AsyncRead, AsyncWrite};

/// A node's byte counters, shared by all its connections.
#[derive(Debug, Default)]
pub struct Wire {
    read: AtomicU64,
    written: AtomicU64,
}

impl Wire {
    /// Bytes received so far, all connections together.
    pub fn read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    /// Bytes sent so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}

/// A connection whose bytes go into a [`Wire`].
pub struct Counted<S> {
    inner: S,
    wire: Arc<Wire>,
}

impl<S> Counted<S> {
    pub fn new(inner: S, wire: Arc<Wire>) -> Counted<S> {
        Counted { inner, wire }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            self.wire.read.fetch_add(*n as u64, Ordering::Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            self.wire.written.fetch_add(*n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn both_directions_are_counted() {
        let wire = Arc::new(Wire::default());
        let mut c = Counted::new(futures::io::Cursor::new(vec![7u8; 10]), wire.clone());
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!((wire.read(), wire.written()), (4, 0));
        c.write_all(b"abc").await.unwrap();
        assert_eq!((wire.read(), wire.written()), (4, 3));
    }
}
