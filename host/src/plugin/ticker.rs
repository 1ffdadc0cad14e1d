//! The epoch ticker: advances the engine's epoch every [`EPOCH_TICK`] while hook calls run,
//! so deadlines fire and a busy plugin yields to other requests. When no call has run for
//! [`PARK_AFTER`] ticks it parks, so a gateway proxying without plugins is not woken a
//! thousand times a second; the next call wakes it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::Duration;

use wasmtime::Engine;

/// How often the epoch advances while calls run.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);
/// Idle ticks before the ticker parks.
const PARK_AFTER: u32 = 100;

#[derive(Default)]
struct Shared {
    active: AtomicUsize,
    stop: AtomicBool,
    thread: OnceLock<Thread>,
    /// The baseline compiler's engine, once there is one: its code checks the same deadlines.
    second: OnceLock<wasmtime::EngineWeak>,
}

/// Owns the ticker thread; dropping it stops the thread.
pub(crate) struct Ticker {
    shared: Arc<Shared>,
}

/// Held for the length of a call into a plugin; the ticker runs while any is held.
pub(crate) struct Ticking<'a>(&'a Shared);

impl Ticker {
    pub fn start(engine: &Engine) -> Self {
        let shared = Arc::new(Shared::default());
        let (weak, state) = (engine.weak(), shared.clone());
        let spawned = std::thread::Builder::new().name("sluice-epoch".into()).spawn(move || {
            let mut idle = 0;
            while !state.stop.load(Ordering::Acquire) {
                let Some(engine) = weak.upgrade() else { return };
                engine.increment_epoch();
                drop(engine);
                if let Some(second) = state.second.get().and_then(|w| w.upgrade()) {
                    second.increment_epoch();
                }
                idle = if state.active.load(Ordering::Acquire) > 0 { 0 } else { idle + 1 };
                if idle >= PARK_AFTER {
                    // A call that starts after the check above unparks us (or has already
                    // left the token that makes this return at once).
                    std::thread::park();
                    idle = 0;
                } else {
                    std::thread::sleep(EPOCH_TICK);
                }
            }
        });
        match spawned {
            Ok(handle) => {
                let _ = shared.thread.set(handle.thread().clone());
            }
            // Without a ticker deadlines never fire; say so loudly rather than fail to start.
            Err(e) => {
                tracing::error!("cannot start the epoch ticker, plugin timeouts are off: {e}")
            }
        }
        Self { shared }
    }

    /// Ticks `engine` too (once; later calls are ignored).
    pub fn also(&self, engine: &Engine) {
        let _ = self.shared.second.set(engine.weak());
    }

    /// Marks a call into a plugin as running until the guard is dropped (also when the
    /// call's future is dropped half-way).
    pub fn enter(&self) -> Ticking<'_> {
        if self.shared.active.fetch_add(1, Ordering::AcqRel) == 0
            && let Some(thread) = self.shared.thread.get()
        {
            thread.unpark();
        }
        Ticking(&self.shared)
    }
}

impl Drop for Ticking<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(thread) = self.shared.thread.get() {
            thread.unpark();
        }
    }
}
