//! The thread that advances the engine epoch.
//!
//! It ticks only while some guest runs ([`Ticker::busy`]): epochs are
//! read only by running guests (their deadlines are set from the epoch at
//! their start), so an idle executor costs no wakeups. A node used to wake
//! 100 times a second doing nothing; in a process holding 100 in-process
//! nodes that was half of the idle network's CPU.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wasmtime::Engine;

/// Increments an engine's epoch every `interval` while a guest runs, until
/// stopped or dropped. Epoch ticks are what timeouts and periodic
/// `/outputs` checks count.
#[derive(Debug)]
pub struct Ticker {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// Guests running now.
    busy: usize,
    stop: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is two counters: still meaningful after a panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Held while a guest runs: the ticker ticks while any is held.
#[derive(Debug)]
pub struct Busy {
    shared: Arc<Shared>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        // The thread notices at its next tick and goes back to waiting.
        let mut st = self.shared.lock();
        st.busy = st.busy.saturating_sub(1);
    }
}

impl Ticker {
    /// Starts the thread that ticks `engine` every `interval` while busy.
    pub fn start(engine: Engine, interval: Duration) -> std::io::Result<Self> {
        Ticker::start_with(interval, move || engine.increment_epoch())
    }

    /// [`Ticker::start`] with what a tick does given (tests count them).
    fn start_with(interval: Duration, tick: impl Fn() + Send + 'static) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let thread = std::thread::Builder::new().name("shoal-epoch-ticker".to_owned()).spawn(move || {
            let mut st = s.lock();
            // When the next tick is due; `None` while idle.
            let mut next: Option<Instant> = None;
            loop {
                if st.stop {
                    return;
                }
                if st.busy == 0 {
                    next = None;
                    st = s.changed.wait(st).unwrap_or_else(|p| p.into_inner());
                    continue;
                }
                let now = Instant::now();
                let due = *next.get_or_insert(now + interval);
                if now >= due {
                    tick();
                    // Due times stay on the grid: a wakeup for another
                    // reason does not push the next tick back.
                    next = Some(due + interval);
                    continue;
                }
                st = s.changed.wait_timeout(st, due - now).unwrap_or_else(|p| p.into_inner()).0;
            }
        })?;
        Ok(Ticker { shared, thread: Some(thread) })
    }

    /// Ticks until the returned guard is dropped (and while any other
    /// guard is held).
    pub fn busy(&self) -> Busy {
        let mut st = self.shared.lock();
        st.busy += 1;
        if st.busy == 1 {
            self.shared.changed.notify_all();
        }
        Busy { shared: self.shared.clone() }
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            // The loop cannot panic; a join error would only repeat a panic
            // that already happened on that thread.
            let _ = thread.join();
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Idle, nothing ticks; busy, it ticks about once per interval (on
    /// its grid, whatever else wakes it); idle again, it stops; and
    /// stopping returns at once.
    #[test]
    fn it_ticks_only_while_busy() {
        let ticks = Arc::new(AtomicU64::new(0));
        let t = ticks.clone();
        let ticker = Ticker::start_with(Duration::from_millis(5), move || {
            t.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(ticks.load(Ordering::SeqCst), 0, "idle: no ticks");
        let busy = ticker.busy();
        // A second guest starting and ending does not delay the ticks.
        for _ in 0..20 {
            drop(ticker.busy());
            std::thread::sleep(Duration::from_millis(10));
        }
        let during = ticks.load(Ordering::SeqCst);
        assert!(during >= 10, "busy for 200 ms at 5 ms a tick: {during} ticks");
        drop(busy);
        std::thread::sleep(Duration::from_millis(20));
        let after = ticks.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(ticks.load(Ordering::SeqCst), after, "idle again: no more ticks");
        let t0 = Instant::now();
        ticker.stop();
        assert!(t0.elapsed() < Duration::from_secs(1));
    }
}
