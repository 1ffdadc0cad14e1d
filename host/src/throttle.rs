//! Repeated log lines, throttled: a failing plugin or a flood of bad connections must not
//! fill the disk with the same line. Each kind of line gets a few lines a second; the rest
//! are counted, and the next line that passes says how many were suppressed.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines of one kind let through per window.
const BURST: u32 = 5;
const WINDOW: Duration = Duration::from_secs(1);
/// Kinds remembered at once; past this the memory starts over (and a few more lines pass).
const MAX_KINDS: usize = 1024;

#[derive(Clone, Copy)]
struct Window {
    started: Instant,
    passed: u32,
    suppressed: u64,
}

/// Throttles log lines by kind (a message, or any hashable key).
#[derive(Default)]
pub struct Throttle {
    kinds: Mutex<HashMap<u64, Window>>,
    hasher: std::hash::RandomState,
}

/// Whether to write the line, and how many of its kind were suppressed before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Write { suppressed: u64 },
    Suppress,
}

impl Throttle {
    pub fn check(&self, kind: impl Hash) -> Verdict {
        self.check_at(self.hasher.hash_one(kind), Instant::now())
    }

    fn check_at(&self, key: u64, now: Instant) -> Verdict {
        let mut kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        if kinds.len() >= MAX_KINDS && !kinds.contains_key(&key) {
            kinds.retain(|_, w| now.duration_since(w.started) < WINDOW || w.suppressed > 0);
            if kinds.len() >= MAX_KINDS {
                kinds.clear();
            }
        }
        let w = kinds.entry(key).or_insert(Window { started: now, passed: 0, suppressed: 0 });
        if now.duration_since(w.started) >= WINDOW {
            let suppressed = std::mem::take(&mut w.suppressed);
            *w = Window { started: now, passed: 1, suppressed: 0 };
            return Verdict::Write { suppressed };
        }
        if w.passed < BURST {
            w.passed += 1;
            return Verdict::Write { suppressed: 0 };
        }
        w.suppressed += 1;
        Verdict::Suppress
    }
}

/// ` (N similar lines suppressed)`, or nothing.
pub fn suppressed_note(n: u64) -> String {
    match n {
        0 => String::new(),
        n => format!(" ({n} similar lines suppressed)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_the_rest_is_counted_and_reported_with_the_next_line() {
        let t = Throttle::default();
        let start = Instant::now();
        for _ in 0..BURST {
            assert_eq!(t.check_at(1, start), Verdict::Write { suppressed: 0 });
        }
        for _ in 0..100 {
            assert_eq!(t.check_at(1, start), Verdict::Suppress);
        }
        // Another kind is not held back by the first.
        assert_eq!(t.check_at(2, start), Verdict::Write { suppressed: 0 });
        assert_eq!(t.check_at(1, start + WINDOW), Verdict::Write { suppressed: 100 });
        assert_eq!(t.check_at(1, start + WINDOW), Verdict::Write { suppressed: 0 });
    }

    #[test]
    fn memory_stays_bounded_under_many_kinds() {
        let t = Throttle::default();
        let now = Instant::now();
        for k in 0..(MAX_KINDS as u64 * 3) {
            t.check_at(k, now);
        }
        assert!(t.kinds.lock().unwrap().len() <= MAX_KINDS);
    }
}
