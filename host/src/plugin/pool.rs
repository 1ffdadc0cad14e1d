//! A named plugin's instances: shared by every worker thread and checked out per hook call
//! (not per request), so the number of live instances follows the calls running at once,
//! not plugins x workers x connections. When a burst is over, instances left idle for
//! `idle_timeout` are dropped, so memory shrinks back (one instance stays warm).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::FailureKind;
use crate::config::{self, InstanceModel};
use crate::telemetry::metrics;

/// Idle instances kept per plugin; more than this are dropped when returned.
const MAX_IDLE: usize = 64;

pub(super) struct Pool<T> {
    /// Idle instances with when they were last used: used last in, first out, so the
    /// front holds the longest idle, which are trimmed first.
    idle: Mutex<VecDeque<(T, Instant)>>,
    /// One per live instance (`max_instances`).
    permits: Arc<Semaphore>,
    reuse: bool,
    idle_timeout: Duration,
    /// How long a call waits for a free instance before the request fails with 503.
    queue_timeout: Duration,
    max: usize,
    /// Calls that found every instance busy, and calls that found none idle to reuse.
    waits: IntCounter,
    fresh: IntCounter,
}

/// The right to use one instance, held for the length of a call.
pub(super) type Permit = OwnedSemaphorePermit;

impl<T> Pool<T> {
    /// A pool holding `first`, the instance that ran `init` at load (unless every call gets
    /// a fresh instance).
    pub fn new(first: T, spec: &config::Plugin, queue_timeout: Duration) -> Self {
        let reuse = spec.instances == InstanceModel::Reuse;
        let idle = match reuse {
            true => VecDeque::from([(first, Instant::now())]),
            false => VecDeque::new(),
        };
        let m = metrics();
        Self {
            idle: Mutex::new(idle),
            permits: Arc::new(Semaphore::new(spec.max_instances as usize)),
            reuse,
            idle_timeout: spec.idle_timeout,
            queue_timeout,
            max: spec.max_instances as usize,
            waits: m.plugin_waits.with_label_values(&[&spec.name]),
            fresh: m.plugin_instantiations.with_label_values(&[&spec.name]),
        }
    }

    /// A permit to run a call, and an idle instance if there is one to reuse (if not, the
    /// caller makes one).
    pub async fn lease(&self) -> Result<(Option<T>, Permit), FailureKind> {
        // A free instance is the common case: take it without arming a timer.
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                self.waits.inc();
                tokio::time::timeout(self.queue_timeout, self.permits.clone().acquire_owned())
                    .await
                    .map_err(|_| FailureKind::Overloaded(self.queue_timeout))?
                    .expect("the semaphore is never closed")
            }
        };
        let idle = match self.reuse {
            true => self.lock().pop_back().map(|(instance, _)| instance),
            false => None,
        };
        if idle.is_none() {
            self.fresh.inc();
        }
        Ok((idle, permit))
    }

    /// Returns an instance after a successful call that started at `used`, kept as its
    /// last use: the call's start instead of its end saves a clock read a call, and at
    /// worst trims an idle instance one call's length early. After a failed call, drop
    /// the instance with its permit instead: it may be in any state.
    pub fn checkin(&self, instance: T, permit: Permit, used: Instant) {
        if !self.reuse {
            return;
        }
        let mut stale = Vec::new();
        {
            let mut idle = self.lock();
            match idle.len() < MAX_IDLE {
                true => idle.push_back((instance, used)),
                false => stale.push(instance),
            }
            // Concurrent calls return out of order: saturating, a later start is "idle 0s".
            while idle.len() > 1
                && idle.front().is_some_and(|(_, front)| {
                    used.saturating_duration_since(*front) >= self.idle_timeout
                })
            {
                stale.extend(idle.pop_front().map(|(instance, _)| instance));
            }
        }
        // Only now may a waiting call proceed: it finds this instance in the pool instead of
        // instantiating another.
        drop(permit);
        // Dropped outside the lock: tearing down a store is not free.
        drop(stale);
    }

    pub fn idle(&self) -> usize {
        self.lock().len()
    }

    /// Calls running now (each holds a permit).
    pub fn busy(&self) -> usize {
        self.max.saturating_sub(self.permits.available_permits())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(T, Instant)>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(max_instances: u32) -> config::Plugin {
        config::Plugin {
            name: "p".into(),
            module: "p.wasm".into(),
            kind: config::PluginKind::Component,
            config_json: "{}".into(),
            files: Vec::new(),
            instances: InstanceModel::Reuse,
            on_error: config::FailPolicy::Fail,
            timeout: Duration::from_millis(100),
            max_instances,
            idle_timeout: Duration::from_secs(60),
            rollout: None,
        }
    }

    #[tokio::test]
    async fn a_full_pool_makes_callers_wait_then_fail_as_overloaded() {
        let pool = Pool::new("first", &spec(1), Duration::from_millis(50));
        let (idle, permit) = pool.lease().await.unwrap();
        assert_eq!(idle, Some("first"));
        // The one instance is out: the next call queues, and gives up after the timeout.
        match pool.lease().await {
            Err(FailureKind::Overloaded(t)) => assert_eq!(t, Duration::from_millis(50)),
            other => panic!("expected Overloaded, got {:?}", other.map(|(i, _)| i)),
        }
        // A call waiting when the instance comes back gets it, not a new one.
        let waiter = async { pool.lease().await.map(|(idle, _)| idle) };
        let giver = async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            pool.checkin("first", permit, Instant::now());
        };
        let (got, ()) = tokio::join!(waiter, giver);
        assert_eq!(got.unwrap(), Some("first"));
    }
}
