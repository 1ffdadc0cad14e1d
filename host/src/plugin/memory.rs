//! Linear memory for all plugin instances together: each instance is capped at
//! `runtime.max_memory_mib`, and all of them at `runtime.memory_budget_mib`, so a plugin
//! that allocates without bound on every request fails its own requests instead of
//! growing the gateway to instances x cap.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use wasmtime::ResourceLimiter;

/// The bytes of linear memory all instances may hold at once.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: usize,
    used: AtomicUsize,
    /// Set once the budget refused a growth, so that the log says so once per episode.
    warned: AtomicBool,
}

impl MemoryBudget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self { limit, used: AtomicUsize::new(0), warned: AtomicBool::new(false) })
    }

    /// Bytes held by live instances now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn take(&self, bytes: usize) -> bool {
        let taken = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&n| n <= self.limit)
            })
            .is_ok();
        if !taken && !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "plugin memory budget ({} MiB, runtime.memory_budget_mib) is exhausted; \
                 instances that need more fail their requests",
                self.limit >> 20
            );
        }
        taken
    }

    fn give(&self, bytes: usize) {
        let before = self.used.fetch_sub(bytes, Ordering::AcqRel);
        if before - bytes < self.limit / 2 {
            self.warned.store(false, Ordering::Relaxed);
        }
    }
}

/// One store's limits: its own cap, drawn from the shared budget; what it holds goes back
/// when the store is dropped.
pub struct Limits {
    budget: Arc<MemoryBudget>,
    max_memory: usize,
    held: usize,
}

impl Limits {
    pub fn new(budget: Arc<MemoryBudget>, max_memory: usize) -> Self {
        Self { budget, max_memory, held: 0 }
    }
}

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let grow = desired.saturating_sub(current);
        if desired > self.max_memory || !self.budget.take(grow) {
            // A trap, not a silent -1 from `memory.grow`: most languages abort on that
            // anyway, and a trap names the plugin and the request.
            wasmtime::bail!(
                "plugin memory limit reached: wanted {desired} bytes (runtime.max_memory_mib, \
                 runtime.memory_budget_mib)"
            );
        }
        self.held += grow;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}

impl Drop for Limits {
    fn drop(&mut self) {
        self.budget.give(self.held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_draw_from_one_budget_and_give_back_when_dropped() {
        let budget = MemoryBudget::new(100);
        let mut a = Limits::new(budget.clone(), 80);
        let mut b = Limits::new(budget.clone(), 80);
        assert!(a.memory_growing(0, 60, None).unwrap());
        assert!(a.memory_growing(60, 90, None).is_err(), "over its own cap");
        assert!(b.memory_growing(0, 50, None).is_err(), "over the shared budget");
        assert!(b.memory_growing(0, 40, None).unwrap());
        assert_eq!(budget.used(), 100);
        drop(a);
        assert_eq!(budget.used(), 40);
        assert!(b.memory_growing(40, 80, None).unwrap());
        drop(b);
        assert_eq!(budget.used(), 0);
    }
}
