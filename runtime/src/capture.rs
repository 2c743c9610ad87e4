//! Capped stdout/stderr. wasmtime-wasi's `MemoryOutputPipe` silently drops
//! what does not fit; we need to know that it happened, and we stop the job
//! rather than let it spin writing into the void.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

use crate::outcome::Captured;

/// Largest write permit handed to the guest per call. Bounds the host-side
/// copy of one write; the total is bounded by the cap.
const WRITE_PERMIT: usize = 64 << 10;

#[derive(Debug, Default)]
struct State {
    bytes: Vec<u8>,
    truncated: bool,
}

/// A pipe that keeps at most `cap` bytes and records overflow. Clones share
/// the buffer.
#[derive(Debug, Clone)]
pub(crate) struct CappedPipe {
    cap: usize,
    state: Arc<Mutex<State>>,
    tee: Option<(crate::Stream, crate::task::Tee)>,
}

impl CappedPipe {
    pub(crate) fn new(cap: usize) -> Self {
        CappedPipe { cap, state: Arc::default(), tee: None }
    }

    /// Also hands every accepted write to `tee`.
    pub(crate) fn with_tee(mut self, stream: crate::Stream, tee: Option<crate::task::Tee>) -> Self {
        self.tee = tee.map(|t| (stream, t));
        self
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means another writer panicked mid-append; the
        // buffer is still a valid prefix, so keep using it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends what fits; returns false if anything was dropped.
    fn append(&self, data: &[u8]) -> bool {
        let mut st = self.lock();
        let room = self.cap.saturating_sub(st.bytes.len());
        let take = room.min(data.len());
        st.bytes.extend_from_slice(&data[..take]);
        if let Some((stream, tee)) = &self.tee {
            (tee.0)(*stream, &data[..take]);
        }
        if take < data.len() {
            st.truncated = true;
            return false;
        }
        true
    }

    /// A host-written line (e.g. why a wasi-nn call failed), capped like the
    /// guest's own writes.
    pub(crate) fn note(&self, data: &[u8]) {
        self.append(data);
    }

    pub(crate) fn overflowed(&self) -> bool {
        self.lock().truncated
    }

    pub(crate) fn take(&self) -> Captured {
        let mut st = self.lock();
        Captured { bytes: std::mem::take(&mut st.bytes), truncated: st.truncated }
    }
}

impl IsTerminal for CappedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedPipe {
    async fn ready(&mut self) {}
}

impl OutputStream for CappedPipe {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        if self.append(&bytes) {
            Ok(())
        } else {
            // A trap ends the job; the executor sees `overflowed()` and
            // reports an output-limit failure instead of the trap.
            Err(StreamError::trap("output stream limit exceeded"))
        }
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(WRITE_PERMIT)
    }
}

impl tokio::io::AsyncWrite for CappedPipe {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        if self.append(buf) {
            Poll::Ready(Ok(buf.len()))
        } else {
            Poll::Ready(Err(std::io::Error::other("output stream limit exceeded")))
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_prefix_and_records_truncation() {
        let mut p = CappedPipe::new(5);
        assert!(p.write(Bytes::from_static(b"abc")).is_ok());
        assert!(p.write(Bytes::from_static(b"defg")).is_err());
        assert!(p.overflowed());
        let c = p.take();
        assert_eq!(c.bytes, b"abcde");
        assert!(c.truncated);
    }

    #[test]
    fn exact_fit_is_not_truncation() {
        let mut p = CappedPipe::new(3);
        assert!(p.write(Bytes::from_static(b"abc")).is_ok());
        assert!(!p.take().truncated);
    }
}
