//! The recent events an operator looks for first: config versions applied or refused,
//! plugin swaps, rollout verdicts, and operators' actions through the admin API. The admin
//! API serves them (`GET /api/v1/events`) and the dashboard lists them.
//!
//! They are rare (a reload, a verdict), so one mutex-guarded ring of the last
//! [`KEPT`] is enough; nothing on the request path records here.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

/// How many events are kept.
pub const KEPT: usize = 100;

/// What kind of thing happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A config version was applied.
    Reload,
    /// A config was refused; the running one keeps serving.
    ReloadRefused,
    /// A plugin's module changed.
    Swap,
    /// A rollout was promoted or rolled back.
    Rollout,
    /// An operator acted through the admin API.
    Admin,
}

#[derive(Debug, Clone)]
pub struct Event {
    /// A number that only grows, so a poller can ask for what is new.
    pub id: u64,
    pub at: SystemTime,
    pub kind: Kind,
    pub message: String,
}

static RING: Mutex<(u64, VecDeque<Event>)> = Mutex::new((0, VecDeque::new()));

/// Records an event (the oldest goes once [`KEPT`] are held).
pub fn record(kind: Kind, message: impl Into<String>) {
    let mut ring = RING.lock().unwrap_or_else(|p| p.into_inner());
    ring.0 += 1;
    let id = ring.0;
    if ring.1.len() == KEPT {
        ring.1.pop_front();
    }
    ring.1.push_back(Event { id, at: SystemTime::now(), kind, message: message.into() });
}

/// The events held, newest first.
pub fn recent() -> Vec<Event> {
    let ring = RING.lock().unwrap_or_else(|p| p.into_inner());
    ring.1.iter().rev().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_newest_with_growing_ids() {
        for i in 0..KEPT + 5 {
            record(Kind::Admin, format!("event {i}"));
        }
        let events = recent();
        assert_eq!(events.len(), KEPT);
        assert!(events.windows(2).all(|w| w[0].id > w[1].id), "newest first");
        // Other tests may record too, but this test's last event is among the newest.
        assert!(events.iter().any(|e| e.message == format!("event {}", KEPT + 4)));
        assert!(!events.iter().any(|e| e.message == "event 0"));
    }
}
