//! Staged rollout of a new module version for one plugin.
//!
//! The new version (the candidate) serves `percent` of the calls, chosen by a hash of the
//! request id or, when sticky, of the client IP or a header, so a client stays on one
//! version. Every call's outcome and duration is recorded per version; [`verdict`] rolls the
//! candidate back when it fails too often or is too slow, and promotes it once it has served
//! `promote_after` calls within the limits. The decision is made once: a rolled-back or
//! promoted rollout stays so until the plugin's config changes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::module::Module;
use crate::config;
use crate::message::{RequestMsg, request_key, stable_hash};

/// Durations kept per version for the latency check.
const WINDOW: usize = 1024;
/// The latency check sorts the window, so it runs every this many candidate calls.
const LATENCY_CHECK_EVERY: u64 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Stable,
    Candidate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    Active = 0,
    RolledBack = 1,
    Promoted = 2,
}

/// One version's record.
#[derive(Debug, Default)]
pub struct Series {
    pub calls: u64,
    pub failures: u64,
    recent: VecDeque<Duration>,
}

impl Series {
    pub fn record(&mut self, took: Duration, failed: bool) {
        self.calls += 1;
        self.failures += u64::from(failed);
        if self.recent.len() == WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(took);
    }

    pub fn p99(&self) -> Option<Duration> {
        if self.recent.is_empty() {
            return None;
        }
        let mut sorted: Vec<Duration> = self.recent.iter().copied().collect();
        sorted.sort_unstable();
        Some(sorted[(sorted.len() * 99).div_ceil(100) - 1])
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Undecided,
    RollBack(String),
    Promote,
}

/// Decides a rollout from the two versions' records. `check_latency` asks for the (costlier)
/// p99 comparison.
pub fn verdict(
    spec: &config::Rollout,
    stable: &Series,
    candidate: &Series,
    check_latency: bool,
) -> Verdict {
    if candidate.calls < spec.min_requests {
        return Verdict::Undecided;
    }
    let rate = candidate.failures as f64 / candidate.calls as f64;
    if rate > spec.max_error_rate {
        return Verdict::RollBack(format!(
            "error rate {rate:.3} is over max_error_rate {} ({} of {} calls failed)",
            spec.max_error_rate, candidate.failures, candidate.calls
        ));
    }
    let promote = candidate.calls >= spec.promote_after;
    if (check_latency || promote)
        && stable.calls >= spec.min_requests
        && let (Some(new), Some(old)) = (candidate.p99(), stable.p99())
        && new > old + spec.max_p99_increase
    {
        return Verdict::RollBack(format!(
            "p99 {new:?} is over the old version's {old:?} + max_p99_increase {:?}",
            spec.max_p99_increase
        ));
    }
    if promote { Verdict::Promote } else { Verdict::Undecided }
}

/// Two versions of a plugin (`B` serves a version's calls), and the record that decides
/// between them.
pub struct Rollout<B> {
    pub spec: config::Rollout,
    pub stable: B,
    pub candidate: B,
    /// The new version's module.
    pub candidate_module: Arc<Module>,
    state: AtomicU8,
    /// The new version's share of requests, in hundredths of a percent: `spec.percent`
    /// until an operator sets another (the admin API).
    share: AtomicU32,
    stats: Mutex<(Series, Series)>,
}

impl<B> Rollout<B> {
    pub fn new(spec: config::Rollout, stable: B, candidate: B, module: Arc<Module>) -> Self {
        Self {
            stable,
            candidate,
            candidate_module: module,
            state: AtomicU8::new(State::Active as u8),
            share: AtomicU32::new((spec.percent * 100.0).round() as u32),
            spec,
            stats: Mutex::default(),
        }
    }

    /// The share of requests the new version gets while the rollout is active, percent.
    pub fn percent(&self) -> f64 {
        f64::from(self.share.load(Ordering::Relaxed)) / 100.0
    }

    /// Sets the new version's share (0 to 100) while the rollout is active.
    pub fn set_percent(&self, percent: f64) {
        self.share.store((percent.clamp(0.0, 100.0) * 100.0).round() as u32, Ordering::Relaxed);
    }

    /// An operator's verdict: promote the new version, or roll it back, now.
    pub fn decide(&self, plugin: &str, promote: bool) {
        let (state, verdict) = match promote {
            true => (State::Promoted, "promoted"),
            false => (State::RolledBack, "rolled_back"),
        };
        self.state.store(state as u8, Ordering::Release);
        crate::telemetry::metrics().rollout_verdicts.with_label_values(&[plugin, verdict]).inc();
        let serving = if promote { "the new version" } else { "the old version" };
        let line = format!(
            "rollout of plugin {plugin:?} {verdict} by an operator: {serving} serves all traffic"
        );
        tracing::info!("{line}");
        crate::events::record(crate::events::Kind::Rollout, line);
    }

    pub fn state(&self) -> State {
        match self.state.load(Ordering::Acquire) {
            0 => State::Active,
            1 => State::RolledBack,
            _ => State::Promoted,
        }
    }

    /// Which version serves this request.
    pub fn pick(&self, req: &RequestMsg) -> Which {
        match self.state() {
            State::Promoted => return Which::Candidate,
            State::RolledBack => return Which::Stable,
            State::Active => {}
        }
        // Unsticky, each request on its own; a sticky key a request lacks counts as empty,
        // so such requests stay together.
        let key = match &self.spec.sticky {
            None => stable_hash(req.meta.id_header.as_bytes()),
            Some(source) => request_key(source, &req.parts, req.meta.client_ip)
                .unwrap_or_else(|| stable_hash(b"")),
        };
        match (key % 10_000) < u64::from(self.share.load(Ordering::Relaxed)) {
            true => Which::Candidate,
            false => Which::Stable,
        }
    }

    /// Records one call and, for the candidate, applies the verdict.
    pub fn record(&self, plugin: &str, which: Which, took: Duration, failed: bool) {
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        let (stable, candidate) = &mut *stats;
        match which {
            Which::Stable => return stable.record(took, failed),
            Which::Candidate => candidate.record(took, failed),
        }
        if self.state() != State::Active {
            return;
        }
        let check_latency = candidate.calls % LATENCY_CHECK_EVERY == 0;
        let module = &self.candidate_module;
        match verdict(&self.spec, stable, candidate, check_latency) {
            Verdict::Undecided => {}
            Verdict::RollBack(why) => {
                self.state.store(State::RolledBack as u8, Ordering::Release);
                let verdicts = &crate::telemetry::metrics().rollout_verdicts;
                verdicts.with_label_values(&[plugin, "rolled_back"]).inc();
                let line = format!(
                    "rollout of plugin {plugin:?} rolled back: the new version (sha256 {}) {why}; \
                     the old version serves all traffic",
                    module.short_hash()
                );
                tracing::error!("{line}");
                crate::events::record(crate::events::Kind::Rollout, line);
            }
            Verdict::Promote => {
                self.state.store(State::Promoted as u8, Ordering::Release);
                let verdicts = &crate::telemetry::metrics().rollout_verdicts;
                verdicts.with_label_values(&[plugin, "promoted"]).inc();
                let line = format!(
                    "rollout of plugin {plugin:?} promoted after {} calls within limits: the new \
                     version (sha256 {}) serves all traffic; set plugins.{plugin}.module to {} \
                     to keep it after a restart",
                    candidate.calls,
                    module.short_hash(),
                    module.path.display()
                );
                tracing::info!("{line}");
                crate::events::record(crate::events::Kind::Rollout, line);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> config::Rollout {
        config::Rollout {
            module: "new.wasm".into(),
            percent: 10.0,
            sticky: None,
            max_error_rate: 0.05,
            max_p99_increase: Duration::from_millis(2),
            min_requests: 10,
            promote_after: 20,
        }
    }

    fn series(calls: u64, failures: u64, each: Duration) -> Series {
        let mut s = Series::default();
        for i in 0..calls {
            s.record(each, i < failures);
        }
        s
    }

    #[test]
    fn no_verdict_before_min_requests() {
        let v =
            verdict(&spec(), &series(100, 0, Duration::ZERO), &series(9, 9, Duration::ZERO), true);
        assert_eq!(v, Verdict::Undecided);
    }

    #[test]
    fn too_many_failures_roll_back() {
        let v = verdict(
            &spec(),
            &series(100, 0, Duration::ZERO),
            &series(10, 1, Duration::ZERO),
            false,
        );
        assert!(
            matches!(v, Verdict::RollBack(ref why) if why.starts_with("error rate 0.100")),
            "{v:?}"
        );
    }

    #[test]
    fn a_slower_p99_rolls_back_and_a_fast_enough_one_is_promoted() {
        let ms = Duration::from_millis;
        let stable = series(100, 0, ms(1));
        let slow = series(12, 0, ms(4));
        assert!(matches!(verdict(&spec(), &stable, &slow, true), Verdict::RollBack(_)));
        // The latency check only runs when asked (or at promotion).
        assert_eq!(verdict(&spec(), &stable, &slow, false), Verdict::Undecided);
        assert!(matches!(
            verdict(&spec(), &stable, &series(20, 0, ms(4)), false),
            Verdict::RollBack(_)
        ));
        assert_eq!(verdict(&spec(), &stable, &series(20, 0, ms(2)), false), Verdict::Promote);
        assert_eq!(verdict(&spec(), &stable, &series(19, 0, ms(2)), true), Verdict::Undecided);
    }

    #[test]
    fn p99_is_the_99th_percentile_of_the_window() {
        let mut s = Series::default();
        for i in 1..=100 {
            s.record(Duration::from_millis(i), false);
        }
        assert_eq!(s.p99(), Some(Duration::from_millis(99)));
    }
}
