//! The per-endpoint circuit breaker: closed, open, half-open.
//!
//! Closed counts consecutive failures; at `failure_threshold` the circuit opens and the
//! endpoint takes no requests for `open_timeout`. Then it half-opens: up to
//! `half_open_requests` trial requests at a time; `success_threshold` successes close it,
//! any failure opens it again.
//!
//! An operator can force it (the admin API): `open` refuses every request until set back
//! to `auto`; `closed` lets every request through and counts nothing.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::CircuitBreaker as Config;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub const ALL: [State; 3] = [State::Closed, State::Open, State::HalfOpen];

    /// The state's name in metrics and the admin API.
    pub fn label(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

/// How a request was let through, to report its outcome against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Closed,
    Trial,
}

#[derive(Debug)]
enum Inner {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { in_flight: u32, successes: u32 },
}

/// Transition counts, for metrics and the admin API.
#[derive(Debug, Default)]
pub struct Stats {
    pub opened: AtomicU64,
    pub half_opened: AtomicU64,
    pub closed: AtomicU64,
}

/// Who decides the breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Auto,
    ForcedOpen,
    ForcedClosed,
}

impl Mode {
    pub fn label(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::ForcedOpen => "forced_open",
            Mode::ForcedClosed => "forced_closed",
        }
    }
}

#[derive(Debug)]
pub struct Breaker {
    config: Config,
    inner: Mutex<Inner>,
    /// A [`Mode`] as a number: 0 auto, 1 forced open, 2 forced closed.
    mode: AtomicU8,
    pub stats: Stats,
}

/// How long "forced open" keeps the circuit open: until an operator says otherwise.
const FOREVER: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A state change, for the caller to log.
pub type Transition = (State, State);

impl Breaker {
    pub fn new(config: Config) -> Self {
        Self {
            config,
            inner: Mutex::new(Inner::Closed { failures: 0 }),
            mode: AtomicU8::new(0),
            stats: Stats::default(),
        }
    }

    pub fn mode(&self) -> Mode {
        match self.mode.load(Ordering::Relaxed) {
            1 => Mode::ForcedOpen,
            2 => Mode::ForcedClosed,
            _ => Mode::Auto,
        }
    }

    /// Forces the circuit open or closed, or hands it back to its failure counts (closed,
    /// counting from zero).
    pub fn set_mode(&self, mode: Mode, now: Instant) {
        let mut inner = self.lock();
        self.mode.store(
            match mode {
                Mode::Auto => 0,
                Mode::ForcedOpen => 1,
                Mode::ForcedClosed => 2,
            },
            Ordering::Relaxed,
        );
        *inner = match mode {
            Mode::ForcedOpen => Inner::Open { until: now + FOREVER },
            Mode::Auto | Mode::ForcedClosed => Inner::Closed { failures: 0 },
        };
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn state(&self) -> State {
        match *self.lock() {
            Inner::Closed { .. } => State::Closed,
            Inner::Open { .. } => State::Open,
            Inner::HalfOpen { .. } => State::HalfOpen,
        }
    }

    /// Would a request be let through now? Changes nothing.
    pub fn admits(&self, now: Instant) -> bool {
        match *self.lock() {
            Inner::Closed { .. } => true,
            Inner::Open { until } => now >= until,
            Inner::HalfOpen { in_flight, .. } => in_flight < self.config.half_open_requests,
        }
    }

    /// How long until a request may be tried, while the circuit refuses them.
    pub fn retry_after(&self, now: Instant) -> Option<Duration> {
        match *self.lock() {
            Inner::Closed { .. } => None,
            Inner::Open { until } => {
                Some(until.saturating_duration_since(now)).filter(|d| !d.is_zero())
            }
            Inner::HalfOpen { in_flight, .. } => {
                (in_flight >= self.config.half_open_requests).then_some(Duration::from_secs(1))
            }
        }
    }

    /// Lets a request through, or says how long until one may be tried.
    pub fn try_acquire(&self, now: Instant) -> Result<(Admit, Option<Transition>), Duration> {
        let mut inner = self.lock();
        match *inner {
            Inner::Closed { .. } => Ok((Admit::Closed, None)),
            Inner::Open { until } if now < until => Err(until - now),
            Inner::Open { .. } => {
                *inner = Inner::HalfOpen { in_flight: 1, successes: 0 };
                self.stats.half_opened.fetch_add(1, Ordering::Relaxed);
                Ok((Admit::Trial, Some((State::Open, State::HalfOpen))))
            }
            Inner::HalfOpen { ref mut in_flight, .. } => {
                if *in_flight >= self.config.half_open_requests {
                    return Err(Duration::from_secs(1));
                }
                *in_flight += 1;
                Ok((Admit::Trial, None))
            }
        }
    }

    /// Reports how a request let through by `admit` went.
    pub fn record(&self, admit: Admit, failed: bool, now: Instant) -> Option<Transition> {
        let mut inner = self.lock();
        if self.mode() == Mode::ForcedClosed {
            return None;
        }
        match (&mut *inner, admit) {
            (Inner::Closed { failures }, Admit::Closed) => {
                if !failed {
                    *failures = 0;
                    return None;
                }
                *failures += 1;
                if *failures < self.config.failure_threshold {
                    return None;
                }
                *inner = Inner::Open { until: now + self.config.open_timeout };
                self.stats.opened.fetch_add(1, Ordering::Relaxed);
                Some((State::Closed, State::Open))
            }
            (Inner::HalfOpen { in_flight, successes }, Admit::Trial) => {
                *in_flight = in_flight.saturating_sub(1);
                if failed {
                    *inner = Inner::Open { until: now + self.config.open_timeout };
                    self.stats.opened.fetch_add(1, Ordering::Relaxed);
                    return Some((State::HalfOpen, State::Open));
                }
                *successes += 1;
                if *successes < self.config.success_threshold {
                    return None;
                }
                *inner = Inner::Closed { failures: 0 };
                self.stats.closed.fetch_add(1, Ordering::Relaxed);
                Some((State::HalfOpen, State::Closed))
            }
            // A request admitted before the state changed: its outcome is stale.
            _ => None,
        }
    }

    /// A trial request that ended without an outcome (the client went away).
    pub fn release(&self, admit: Admit) {
        if let (Inner::HalfOpen { in_flight, .. }, Admit::Trial) = (&mut *self.lock(), admit) {
            *in_flight = in_flight.saturating_sub(1);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod forced {
    use super::*;
    use crate::config::FailureKinds;

    #[test]
    fn forced_states_hold_until_auto() {
        let b = Breaker::new(Config {
            failure_threshold: 1,
            success_threshold: 1,
            open_timeout: Duration::from_millis(10),
            half_open_requests: 1,
            failures: FailureKinds::default(),
        });
        let now = Instant::now();
        b.set_mode(Mode::ForcedOpen, now);
        assert_eq!(b.state(), State::Open);
        assert!(b.try_acquire(now + Duration::from_secs(3600)).is_err(), "no half-open trial");
        b.set_mode(Mode::ForcedClosed, now);
        let (admit, _) = b.try_acquire(now).unwrap();
        assert_eq!(b.record(admit, true, now), None, "failures do not open a forced-closed one");
        assert_eq!(b.state(), State::Closed);
        b.set_mode(Mode::Auto, now);
        let (admit, _) = b.try_acquire(now).unwrap();
        assert_eq!(b.record(admit, true, now), Some((State::Closed, State::Open)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FailureKinds;

    fn breaker() -> Breaker {
        Breaker::new(Config {
            failure_threshold: 3,
            success_threshold: 2,
            open_timeout: Duration::from_secs(10),
            half_open_requests: 2,
            failures: FailureKinds::default(),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn opens_half_opens_and_closes() {
        let b = breaker();
        let now = Instant::now();
        for _ in 0..2 {
            assert_eq!(b.record(Admit::Closed, true, now), None);
        }
        // A success resets the consecutive count.
        assert_eq!(b.record(Admit::Closed, false, now), None);
        for _ in 0..2 {
            assert_eq!(b.record(Admit::Closed, true, now), None);
        }
        assert_eq!(b.record(Admit::Closed, true, now), Some((State::Closed, State::Open)));
        assert!(!b.admits(now));
        assert_eq!(b.try_acquire(now), Err(Duration::from_secs(10)));

        tokio::time::advance(Duration::from_secs(10)).await;
        let now = Instant::now();
        assert!(b.admits(now));
        assert_eq!(b.try_acquire(now), Ok((Admit::Trial, Some((State::Open, State::HalfOpen)))));
        assert_eq!(b.try_acquire(now), Ok((Admit::Trial, None)));
        // Only `half_open_requests` trials at a time.
        assert!(b.try_acquire(now).is_err());
        assert_eq!(b.record(Admit::Trial, false, now), None);
        assert_eq!(b.record(Admit::Trial, false, now), Some((State::HalfOpen, State::Closed)));
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.stats.opened.load(Ordering::Relaxed), 1);
        assert_eq!(b.stats.closed.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_trial_opens_again_and_stale_outcomes_are_ignored() {
        let b = breaker();
        let now = Instant::now();
        for _ in 0..3 {
            b.record(Admit::Closed, true, now);
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        let now = Instant::now();
        let (admit, _) = b.try_acquire(now).unwrap();
        assert_eq!(b.record(admit, true, now), Some((State::HalfOpen, State::Open)));
        assert_eq!(b.try_acquire(now), Err(Duration::from_secs(10)));
        // A request let through while closed, finishing now, changes nothing.
        assert_eq!(b.record(Admit::Closed, true, now), None);
        assert_eq!(b.state(), State::Open);
        // A cancelled trial frees its slot.
        tokio::time::advance(Duration::from_secs(10)).await;
        let now = Instant::now();
        let (a1, _) = b.try_acquire(now).unwrap();
        let (_a2, _) = b.try_acquire(now).unwrap();
        assert!(b.try_acquire(now).is_err());
        b.release(a1);
        assert!(b.try_acquire(now).is_ok());
    }
}
