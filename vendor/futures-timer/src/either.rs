//! Shoal's change to futures-timer: a [`Delay`] made inside a tokio
//! runtime is a tokio timer; one made anywhere else is the original
//! helper-thread timer ([`super::native::Delay`]).
//!
//! Why: libp2p makes and drops a `Delay` for every substream it opens or
//! accepts and for every request-response exchange, and each of those
//! wakes futures-timer's helper thread (on creation and again on drop).
//! On a node busy with small jobs that thread and its wake-ups were about
//! a tenth of the process's CPU; tokio's timer wheel, which the runtime
//! already drives, costs no thread switch.
//!
//! Caveats, both met by Shoal: the runtime must have its time driver
//! enabled (`enable_all`), and a tokio `Delay` must not be polled after its
//! runtime has shut down.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use super::native;

/// A future that completes once a duration has elapsed.
///
/// Made inside a tokio runtime, it is a `tokio::time::Sleep` (millisecond
/// granularity); elsewhere, the original futures-timer `Delay`.
pub struct Delay(Inner);

enum Inner {
    Tokio(Pin<Box<tokio::time::Sleep>>),
    Helper(native::Delay),
}

/// What tokio itself uses for "never" (about 30 years).
const FAR_FUTURE: Duration = Duration::from_secs(86400 * 365 * 30);

impl Delay {
    /// Creates a new future which will fire at `dur` time into the future.
    pub fn new(dur: Duration) -> Delay {
        match tokio::runtime::Handle::try_current() {
            Ok(_) => Delay(Inner::Tokio(Box::pin(tokio::time::sleep(dur)))),
            Err(_) => Delay(Inner::Helper(native::Delay::new(dur))),
        }
    }

    /// Resets this timeout to fire `dur` from now.
    pub fn reset(&mut self, dur: Duration) {
        match &mut self.0 {
            Inner::Tokio(sleep) => {
                let now = tokio::time::Instant::now();
                let at = now.checked_add(dur).unwrap_or(now + FAR_FUTURE);
                sleep.as_mut().reset(at);
            }
            Inner::Helper(d) => d.reset(dur),
        }
    }
}

impl Future for Delay {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.0 {
            Inner::Tokio(sleep) => sleep.as_mut().poll(cx),
            Inner::Helper(d) => Pin::new(d).poll(cx),
        }
    }
}

impl fmt::Debug for Delay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Inner::Tokio(sleep) => f.debug_tuple("Delay").field(&sleep.deadline()).finish(),
            Inner::Helper(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn inside_a_runtime_a_delay_is_a_tokio_timer_and_fires() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let d = Delay::new(Duration::from_millis(20));
            assert!(matches!(d.0, Inner::Tokio(_)));
            let t = Instant::now();
            d.await;
            assert!(t.elapsed() >= Duration::from_millis(19), "{:?}", t.elapsed());
            let mut d = Delay::new(Duration::from_secs(3600));
            d.reset(Duration::from_millis(10));
            let t = Instant::now();
            d.await;
            assert!(t.elapsed() < Duration::from_secs(60), "reset did not take: {:?}", t.elapsed());
            let mut d = Delay::new(Duration::MAX);
            d.reset(Duration::MAX);
            assert!(futures_poll_once(&mut d).is_pending());
        });
    }

    #[test]
    fn outside_a_runtime_a_delay_is_the_helper_thread_timer_and_fires() {
        let d = Delay::new(Duration::from_millis(20));
        assert!(matches!(d.0, Inner::Helper(_)));
        let t = Instant::now();
        block_on(d);
        assert!(t.elapsed() >= Duration::from_millis(19), "{:?}", t.elapsed());
    }

    fn futures_poll_once(d: &mut Delay) -> Poll<()> {
        Pin::new(d).poll(&mut Context::from_waker(std::task::Waker::noop()))
    }

    /// Polls on this thread, parking between wake-ups.
    fn block_on<F: Future>(f: F) -> F::Output {
        use std::sync::Arc;
        use std::task::Wake;
        struct Unpark(std::thread::Thread);
        impl Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut f = Box::pin(f);
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
            std::thread::park_timeout(Duration::from_secs(1));
        }
    }
}
