//! The two algorithms, over any atomic counter store, so they are unit-tested natively and
//! run unchanged against the gateway's store (local or Redis).
//!
//! - **Sliding window** (the "sliding window counter" of Cloudflare and Kong): a counter per
//!   fixed window; the estimate is this window's count plus the previous window's count
//!   weighted by how much of it still overlaps the sliding window. One `incr-and-get` (one
//!   store call, one round trip to Redis) per request, accurate to a few percent, never
//!   lets a burst of 2x through at a window edge as a fixed window does.
//! - **Token bucket**: `limit` tokens, refilled continuously at `limit` per `window`; a
//!   request takes one. State is `micro-tokens:last-ms`, updated with compare-and-swap.

use std::time::Duration;

/// What the algorithms need from the store.
pub trait Store {
    type Error;
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Self::Error>;
    fn incr(&self, key: &str, delta: i64, ttl_ms: u64) -> Result<i64, Self::Error>;
    /// `incr` of `key`, then `get` of `other`; a store that can do both in one call does.
    fn incr_and_get(
        &self,
        key: &str,
        delta: i64,
        ttl_ms: u64,
        other: &str,
    ) -> Result<(i64, Option<Vec<u8>>), Self::Error> {
        Ok((self.incr(key, delta, ttl_ms)?, self.get(other)?))
    }
    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
        ttl_ms: u64,
    ) -> Result<bool, Self::Error>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    SlidingWindow,
    TokenBucket,
}

#[derive(Debug, Clone)]
pub struct Tier {
    pub limit: u64,
    pub window: Duration,
}

impl Tier {
    fn window_ms(&self) -> u64 {
        self.window.as_millis().max(1) as u64
    }
}

/// One tier's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub limit: u64,
    /// Requests left after this one.
    pub remaining: u64,
    /// Milliseconds until the tier is back to its full allowance.
    pub reset_ms: u64,
    /// When rejected: milliseconds until a request would be allowed.
    pub retry_after_ms: u64,
}

/// A tier's charge that can be given back when a later tier rejects the request.
pub enum Charge {
    Window { key: String, ttl_ms: u64 },
    Bucket { key: String, tier: Tier },
    None,
}

const CAS_TRIES: usize = 16;
const MICRO: u64 = 1_000_000;

/// Counts one request for `key` in `tier` at wall time `now_ms`.
pub fn hit<S: Store>(
    store: &S,
    algorithm: Algorithm,
    tier: &Tier,
    key: &str,
    now_ms: u64,
) -> Result<(Verdict, Charge), S::Error> {
    match algorithm {
        Algorithm::SlidingWindow => sliding_window(store, tier, key, now_ms),
        Algorithm::TokenBucket => token_bucket(store, tier, key, now_ms),
    }
}

fn sliding_window<S: Store>(
    store: &S,
    tier: &Tier,
    key: &str,
    now_ms: u64,
) -> Result<(Verdict, Charge), S::Error> {
    let w = tier.window_ms();
    let index = now_ms / w;
    let elapsed = now_ms - index * w;
    let current_key = window_key(key, index);
    // Kept for two windows: the next window still weighs this one.
    let ttl_ms = 2 * w;
    let (current, previous) =
        store.incr_and_get(&current_key, 1, ttl_ms, &window_key(key, index.wrapping_sub(1)))?;
    let current = current.max(0) as u64;
    let previous = match previous {
        Some(v) => std::str::from_utf8(&v).ok().and_then(|t| t.parse::<u64>().ok()).unwrap_or(0),
        None => 0,
    };
    // The share of the previous window still inside the sliding window, rounded up so a
    // request is never let through early.
    let weighted_previous = (previous * (w - elapsed)).div_ceil(w);
    let used = weighted_previous + current;
    let until_next = w - elapsed;
    if used > tier.limit {
        // This hit is not counted against the client: give it back.
        store.incr(&current_key, -1, ttl_ms)?;
        let retry = retry_after(tier.limit, previous, current - 1, elapsed, w);
        let verdict = Verdict {
            allowed: false,
            limit: tier.limit,
            remaining: 0,
            reset_ms: until_next,
            retry_after_ms: retry,
        };
        return Ok((verdict, Charge::None));
    }
    let verdict = Verdict {
        allowed: true,
        limit: tier.limit,
        remaining: tier.limit - used,
        reset_ms: until_next,
        retry_after_ms: 0,
    };
    Ok((verdict, Charge::Window { key: current_key, ttl_ms }))
}

/// `KEY:INDEX`, the store key of one window. Built by hand, as every request makes two:
/// `format!` costs several times as many instructions in a plugin.
fn window_key(key: &str, index: u64) -> String {
    let mut out = String::with_capacity(key.len() + 21);
    out.push_str(key);
    out.push(':');
    out.push_str(itoa::Buffer::new().format(index));
    out
}

/// How long until one more request fits, with `previous` and `current` counted and
/// `elapsed` ms into the current window. A count above the limit holds other refused
/// requests not yet given back (a burst arrives at once): at most `limit` were let in.
fn retry_after(limit: u64, previous: u64, current: u64, elapsed: u64, w: u64) -> u64 {
    let current = current.min(limit);
    let room = limit.saturating_sub(current + 1);
    if current < limit && previous > 0 {
        // Within this window, once the previous window weighs at most `room`:
        // previous * (w - e) / w <= room.
        let e = w - room * w / previous;
        if e < w {
            return e.saturating_sub(elapsed).max(1);
        }
    }
    // In the next window, once this one (then the previous) weighs at most limit - 1.
    let e = w.saturating_sub((limit - 1) * w / current.max(1));
    (w - elapsed) + e
}

/// Micro-tokens and the time they were counted.
fn parse_bucket(v: &[u8]) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(v).ok()?;
    let (tokens, at) = text.split_once(':')?;
    Some((tokens.parse().ok()?, at.parse().ok()?))
}

/// Tokens in the bucket at `now_ms`, refilled since it was stored.
fn refilled(state: Option<(u64, u64)>, tier: &Tier, now_ms: u64) -> u64 {
    let full = tier.limit * MICRO;
    match state {
        None => full,
        Some((tokens, at)) => {
            let since = now_ms.saturating_sub(at) as u128;
            let add = since * (tier.limit as u128) * (MICRO as u128) / tier.window_ms() as u128;
            (tokens as u128 + add).min(full as u128) as u64
        }
    }
}

fn token_bucket<S: Store>(
    store: &S,
    tier: &Tier,
    key: &str,
    now_ms: u64,
) -> Result<(Verdict, Charge), S::Error> {
    let w = tier.window_ms();
    // An idle client's bucket is full again after one window: it may expire then.
    let ttl_ms = 2 * w;
    let per_token_ms =
        |micro: u64| (micro as u128 * w as u128).div_ceil((tier.limit * MICRO) as u128) as u64;
    for _ in 0..CAS_TRIES {
        let old = store.get(key)?;
        let tokens = refilled(old.as_deref().and_then(parse_bucket), tier, now_ms);
        if tokens < MICRO {
            let verdict = Verdict {
                allowed: false,
                limit: tier.limit,
                remaining: 0,
                reset_ms: per_token_ms(tier.limit * MICRO - tokens),
                retry_after_ms: per_token_ms(MICRO - tokens),
            };
            return Ok((verdict, Charge::None));
        }
        let left = tokens - MICRO;
        let new = format!("{left}:{now_ms}");
        if store.compare_and_swap(key, old.as_deref(), new.as_bytes(), ttl_ms)? {
            let verdict = Verdict {
                allowed: true,
                limit: tier.limit,
                remaining: left / MICRO,
                reset_ms: per_token_ms(tier.limit * MICRO - left),
                retry_after_ms: 0,
            };
            return Ok((verdict, Charge::Bucket { key: key.to_owned(), tier: tier.clone() }));
        }
    }
    // Lost the race every time: that many clients share this key this very moment. Letting
    // this one through errs by one request; refusing it would punish a hot key for load.
    let verdict =
        Verdict { allowed: true, limit: tier.limit, remaining: 0, reset_ms: w, retry_after_ms: 0 };
    Ok((verdict, Charge::None))
}

/// Gives back what `hit` took, for a request a later tier refused.
pub fn refund<S: Store>(store: &S, charge: &Charge, now_ms: u64) -> Result<(), S::Error> {
    match charge {
        Charge::None => {}
        Charge::Window { key, ttl_ms } => {
            store.incr(key, -1, *ttl_ms)?;
        }
        Charge::Bucket { key, tier } => {
            for _ in 0..CAS_TRIES {
                let old = store.get(key)?;
                let tokens = refilled(old.as_deref().and_then(parse_bucket), tier, now_ms);
                let new = format!("{}:{now_ms}", (tokens + MICRO).min(tier.limit * MICRO));
                let ttl_ms = 2 * tier.window_ms();
                if store.compare_and_swap(key, old.as_deref(), new.as_bytes(), ttl_ms)? {
                    break;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashMap;

    /// Each key's value and when it expires (ms).
    type Entries = HashMap<String, (Vec<u8>, Option<u64>)>;

    /// The store's contract (as the gateway keeps it), with a hand-set clock for expiry.
    #[derive(Default)]
    struct Mem {
        map: RefCell<Entries>,
        now: std::cell::Cell<u64>,
    }

    impl Mem {
        fn live(&self, key: &str) -> Option<Vec<u8>> {
            let now = self.now.get();
            let map = self.map.borrow();
            map.get(key).filter(|(_, exp)| exp.is_none_or(|e| now < e)).map(|(v, _)| v.clone())
        }
        fn expiry(&self, ttl_ms: u64) -> Option<u64> {
            (ttl_ms > 0).then(|| self.now.get() + ttl_ms)
        }
    }

    impl Store for Mem {
        type Error = ();
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, ()> {
            Ok(self.live(key))
        }
        fn incr(&self, key: &str, delta: i64, ttl_ms: u64) -> Result<i64, ()> {
            let current = self.live(key);
            let mut map = self.map.borrow_mut();
            let (n, exp) = match current {
                Some(v) => {
                    let n: i64 = String::from_utf8(v).unwrap().parse().unwrap();
                    (n + delta, map[key].1)
                }
                None => (delta, self.expiry(ttl_ms)),
            };
            map.insert(key.to_owned(), (n.to_string().into_bytes(), exp));
            Ok(n)
        }
        fn compare_and_swap(
            &self,
            key: &str,
            expected: Option<&[u8]>,
            value: &[u8],
            ttl_ms: u64,
        ) -> Result<bool, ()> {
            if self.live(key).as_deref() != expected {
                return Ok(false);
            }
            let exp = self.expiry(ttl_ms);
            self.map.borrow_mut().insert(key.to_owned(), (value.to_vec(), exp));
            Ok(true)
        }
    }

    fn tier(limit: u64, ms: u64) -> Tier {
        Tier { limit, window: Duration::from_millis(ms) }
    }

    fn allowed(store: &Mem, a: Algorithm, t: &Tier, at: u64, n: usize) -> usize {
        store.now.set(at);
        (0..n).filter(|_| hit(store, a, t, "k", at).unwrap().0.allowed).count()
    }

    #[test]
    fn sliding_window_allows_the_limit_then_refuses_with_a_retry_time() {
        let s = Mem::default();
        let t = tier(5, 1000);
        assert_eq!(allowed(&s, Algorithm::SlidingWindow, &t, 10_000, 8), 5);
        let (v, _) = hit(&s, Algorithm::SlidingWindow, &t, "k", 10_400).unwrap();
        assert!(!v.allowed);
        // Refused hits are not counted: the next window weighs the 5 allowed ones, 5 x 0.8 = 4
        // of them 20% into it, when one more fits: 800 ms from now.
        assert_eq!((v.remaining, v.reset_ms, v.retry_after_ms), (0, 600, 800));
        assert_eq!(allowed(&s, Algorithm::SlidingWindow, &t, 11_100, 3), 0);
        assert_eq!(allowed(&s, Algorithm::SlidingWindow, &t, 11_200, 3), 1);
        // Two windows later nothing of the burst is left.
        assert_eq!(allowed(&s, Algorithm::SlidingWindow, &t, 13_000, 9), 5);
    }

    #[test]
    fn a_burst_of_refusals_does_not_push_retry_after_out() {
        // 20 let in, and 40 refused requests counted but not yet given back.
        let w = 3_600_000;
        assert_eq!(retry_after(20, 0, 60, 1000, w), retry_after(20, 0, 20, 1000, w));
        // Into the next window, once this one's 20 weigh at most 19: w / 20 after it starts.
        assert_eq!(retry_after(20, 0, 60, 1000, w), (w - 1000) + w / 20);
    }

    #[test]
    fn sliding_window_has_no_double_burst_at_a_window_edge() {
        let s = Mem::default();
        let t = tier(10, 1000);
        // 10 at the very end of one window, then right after the edge: a fixed window would
        // allow 10 more; the sliding window allows almost none.
        assert_eq!(allowed(&s, Algorithm::SlidingWindow, &t, 1_990, 10), 10);
        assert_eq!(allowed(&s, Algorithm::SlidingWindow, &t, 2_010, 10), 0);
        assert_eq!(allowed(&s, Algorithm::SlidingWindow, &t, 2_500, 10), 5);
    }

    #[test]
    fn token_bucket_bursts_to_the_limit_and_refills_continuously() {
        let s = Mem::default();
        let t = tier(10, 1000); // 10 tokens, one every 100 ms
        assert_eq!(allowed(&s, Algorithm::TokenBucket, &t, 5_000, 15), 10);
        let (v, _) = hit(&s, Algorithm::TokenBucket, &t, "k", 5_050).unwrap();
        assert!(!v.allowed);
        assert_eq!(v.retry_after_ms, 50);
        assert_eq!(allowed(&s, Algorithm::TokenBucket, &t, 5_100, 3), 1);
        assert_eq!(allowed(&s, Algorithm::TokenBucket, &t, 5_350, 5), 2);
        // Idle for a window: full again, and never more than full.
        let (v, _) = hit(&s, Algorithm::TokenBucket, &t, "k", 9_000).unwrap();
        assert!(v.allowed);
        assert_eq!((v.remaining, v.reset_ms), (9, 100));
    }

    #[test]
    fn refunds_give_back_exactly_one_request() {
        for a in [Algorithm::SlidingWindow, Algorithm::TokenBucket] {
            let s = Mem::default();
            let t = tier(3, 1000);
            s.now.set(1_000);
            let (_, c1) = hit(&s, a, &t, "k", 1_000).unwrap();
            let (_, c2) = hit(&s, a, &t, "k", 1_000).unwrap();
            refund(&s, &c1, 1_000).unwrap();
            refund(&s, &c2, 1_000).unwrap();
            assert_eq!(allowed(&s, a, &t, 1_000, 5), 3, "{a:?}");
        }
    }

    #[test]
    fn keys_are_independent() {
        let s = Mem::default();
        let t = tier(1, 1000);
        assert!(hit(&s, Algorithm::TokenBucket, &t, "a", 0).unwrap().0.allowed);
        assert!(hit(&s, Algorithm::TokenBucket, &t, "b", 0).unwrap().0.allowed);
        assert!(!hit(&s, Algorithm::TokenBucket, &t, "a", 0).unwrap().0.allowed);
    }
}
