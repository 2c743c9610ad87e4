//! The thread that advances the engine epoch.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::Engine;

/// Increments an engine's epoch every `interval` until stopped or dropped.
/// Epoch ticks are what timeouts and periodic `/outputs` checks count.
#[derive(Debug)]
pub struct Ticker {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    /// Starts ticking `engine` every `interval`.
    pub fn start(engine: Engine, interval: Duration) -> std::io::Result<Self> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new().name("shoal-epoch-ticker".to_owned()).spawn(move || loop {
            // Waiting on the channel (instead of sleeping) lets `stop`
            // return immediately rather than after up to one interval.
            match stopped.recv_timeout(interval) {
                Err(RecvTimeoutError::Timeout) => engine.increment_epoch(),
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            }
        })?;
        Ok(Ticker { stop: Some(stop), thread: Some(thread) })
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            // The thread may already be gone; either way it will stop.
            let _ = stop.send(());
        }
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
