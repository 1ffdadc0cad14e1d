//! Load-balancing strategies. Each picks one endpoint index among those `ok` says are
//! available; weights and loads are read through closures so the strategies are tested
//! without endpoints or sockets.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::Strategy;
use crate::message::stable_hash;

pub enum Balancer {
    RoundRobin(AtomicUsize),
    /// nginx's smooth weighted round robin: current weights, one per endpoint.
    WeightedRoundRobin(Mutex<Vec<i64>>),
    /// The counter rotates where ties start, so equal loads spread.
    LeastConnections(AtomicUsize),
    Random,
    P2c,
    /// A hash ring: (point, endpoint), sorted by point.
    ConsistentHash(Vec<(u64, usize)>),
}

/// Ring points per unit of weight.
const POINTS_PER_WEIGHT: u32 = 64;

/// What a strategy may look at for endpoint `i`.
pub struct View<'a> {
    pub n: usize,
    pub weight: &'a dyn Fn(usize) -> u32,
    /// Requests in flight.
    pub load: &'a dyn Fn(usize) -> u32,
    pub ok: &'a dyn Fn(usize) -> bool,
}

impl Balancer {
    /// `ids` name the endpoints (their addresses) for the hash ring.
    pub fn new(strategy: &Strategy, ids: &[(String, u32)]) -> Self {
        match strategy {
            Strategy::RoundRobin => Balancer::RoundRobin(AtomicUsize::new(0)),
            Strategy::WeightedRoundRobin => {
                Balancer::WeightedRoundRobin(Mutex::new(vec![0; ids.len()]))
            }
            Strategy::LeastConnections => Balancer::LeastConnections(AtomicUsize::new(0)),
            Strategy::Random => Balancer::Random,
            Strategy::P2c => Balancer::P2c,
            Strategy::ConsistentHash(_) => {
                let mut ring = Vec::new();
                for (i, (id, weight)) in ids.iter().enumerate() {
                    for v in 0..weight * POINTS_PER_WEIGHT {
                        ring.push((stable_hash(format!("{id}#{v}").as_bytes()), i));
                    }
                }
                ring.sort_unstable();
                Balancer::ConsistentHash(ring)
            }
        }
    }

    /// Whether the strategy reads in-flight counts (they are then kept until the response
    /// body ends, not just until its headers).
    pub fn uses_load(&self) -> bool {
        matches!(self, Balancer::LeastConnections(_) | Balancer::P2c)
    }

    /// The endpoint for a request; `key` is the request's hash key (consistent hashing).
    pub fn pick(&self, v: &View<'_>, key: Option<u64>) -> Option<usize> {
        match self {
            Balancer::RoundRobin(next) => {
                let start = next.fetch_add(1, Ordering::Relaxed);
                (0..v.n).map(|k| (start + k) % v.n).find(|&i| (v.ok)(i))
            }
            Balancer::WeightedRoundRobin(current) => {
                let mut current = current.lock().unwrap_or_else(|p| p.into_inner());
                let mut total = 0i64;
                let mut best: Option<usize> = None;
                for i in (0..v.n).filter(|&i| (v.ok)(i)) {
                    let w = i64::from((v.weight)(i));
                    current[i] += w;
                    total += w;
                    if best.is_none_or(|b| current[i] > current[b]) {
                        best = Some(i);
                    }
                }
                let best = best?;
                current[best] -= total;
                Some(best)
            }
            Balancer::LeastConnections(next) => {
                let start = next.fetch_add(1, Ordering::Relaxed);
                let mut best: Option<usize> = None;
                for i in (0..v.n).map(|k| (start + k) % v.n).filter(|&i| (v.ok)(i)) {
                    if best.is_none_or(|b| lighter(v, i, b)) {
                        best = Some(i);
                    }
                }
                best
            }
            Balancer::Random => weighted_random(v, None),
            Balancer::P2c => {
                let a = weighted_random(v, None)?;
                match weighted_random(v, Some(a)) {
                    Some(b) if lighter(v, b, a) => Some(b),
                    _ => Some(a),
                }
            }
            Balancer::ConsistentHash(ring) => {
                let Some(key) = key else { return weighted_random(v, None) };
                let start = ring.partition_point(|&(p, _)| p < key);
                (0..ring.len()).map(|k| ring[(start + k) % ring.len()].1).find(|&i| (v.ok)(i))
            }
        }
    }
}

/// `a` carries less load per unit of weight than `b`.
fn lighter(v: &View<'_>, a: usize, b: usize) -> bool {
    u64::from((v.load)(a)) * u64::from((v.weight)(b))
        < u64::from((v.load)(b)) * u64::from((v.weight)(a))
}

/// A random available endpoint, in proportion to weight; `other_than` is skipped when any
/// other endpoint is available.
fn weighted_random(v: &View<'_>, other_than: Option<usize>) -> Option<usize> {
    let eligible = |i: usize| (v.ok)(i) && Some(i) != other_than;
    let total: u64 = (0..v.n).filter(|&i| eligible(i)).map(|i| u64::from((v.weight)(i))).sum();
    if total == 0 {
        return None;
    }
    let mut r = fastrand::u64(0..total);
    for i in (0..v.n).filter(|&i| eligible(i)) {
        let w = u64::from((v.weight)(i));
        if r < w {
            return Some(i);
        }
        r -= w;
    }
    None
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::config::KeySource;

    const WEIGHTS: [u32; 3] = [1, 2, 5];

    fn ids(weights: &[u32]) -> Vec<(String, u32)> {
        weights.iter().enumerate().map(|(i, w)| (format!("10.0.0.{i}:80"), *w)).collect()
    }

    /// Runs `n` picks; each picked request stays in flight for `hold` picks (so load-aware
    /// strategies see load). Returns each endpoint's share.
    fn shares(b: &Balancer, weights: &[u32], down: &[usize], n: usize, hold: usize) -> Vec<f64> {
        let load = RefCell::new(vec![0u32; weights.len()]);
        let mut live = std::collections::VecDeque::new();
        let mut counts = vec![0usize; weights.len()];
        for k in 0..n {
            let i = {
                let load_now = load.borrow().clone();
                let view = View {
                    n: weights.len(),
                    weight: &|i| weights[i],
                    load: &|i| load_now[i],
                    ok: &|i| !down.contains(&i),
                };
                b.pick(&view, Some(stable_hash(&k.to_le_bytes()))).unwrap()
            };
            counts[i] += 1;
            load.borrow_mut()[i] += 1;
            live.push_back(i);
            if live.len() > hold {
                let done = live.pop_front().unwrap();
                load.borrow_mut()[done] -= 1;
            }
        }
        counts.iter().map(|&c| c as f64 / n as f64).collect()
    }

    fn expected(weights: &[u32], down: &[usize]) -> Vec<f64> {
        let total: u32 =
            weights.iter().enumerate().filter(|(i, _)| !down.contains(i)).map(|(_, w)| w).sum();
        let share = |(i, w): (usize, &u32)| match down.contains(&i) {
            true => 0.0,
            false => f64::from(*w) / f64::from(total),
        };
        weights.iter().enumerate().map(share).collect()
    }

    /// Fails when any share is off its target by more than `tolerance` (absolute).
    fn assert_close(got: &[f64], want: &[f64], tolerance: f64, what: &str) {
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= tolerance, "{what}: endpoint {i} got {g:.3}, want {w:.3}");
        }
    }

    fn strategy(s: Strategy, weights: &[u32]) -> Balancer {
        Balancer::new(&s, &ids(weights))
    }

    #[test]
    fn round_robin_is_exactly_even_and_skips_unavailable() {
        let b = strategy(Strategy::RoundRobin, &[1, 1, 1]);
        assert_close(&shares(&b, &[1, 1, 1], &[], 3000, 0), &[1.0 / 3.0; 3], 0.0, "round_robin");
        let s = shares(&b, &[1, 1, 1], &[1], 3000, 0);
        assert_eq!(s[1], 0.0);
    }

    #[test]
    fn weighted_round_robin_is_exact_and_smooth() {
        let b = strategy(Strategy::WeightedRoundRobin, &WEIGHTS);
        // Over each cycle of 8 picks, the shares are exact.
        assert_close(&shares(&b, &WEIGHTS, &[], 8000, 0), &expected(&WEIGHTS, &[]), 0.0, "wrr");
        // Smooth: the heavy endpoint is never picked more than twice in a row here.
        let picks: Vec<usize> = (0..16)
            .map(|_| {
                let v = View { n: 3, weight: &|i| WEIGHTS[i], load: &|_| 0, ok: &|_| true };
                b.pick(&v, None).unwrap()
            })
            .collect();
        assert!(!picks.windows(3).any(|w| w.iter().all(|&i| i == 2)), "{picks:?}");
        let want = expected(&WEIGHTS, &[0]);
        assert_close(&shares(&b, &WEIGHTS, &[0], 7000, 0), &want, 0.001, "wrr with one down");
    }

    #[test]
    fn random_and_p2c_follow_weights_within_three_points() {
        for s in [Strategy::Random, Strategy::P2c] {
            let b = strategy(s.clone(), &WEIGHTS);
            let got = shares(&b, &WEIGHTS, &[], 40_000, 0);
            assert_close(&got, &expected(&WEIGHTS, &[]), 0.03, &format!("{s:?}"));
            let got = shares(&b, &WEIGHTS, &[2], 40_000, 0);
            assert_close(&got, &expected(&WEIGHTS, &[2]), 0.03, &format!("{s:?}, one down"));
        }
    }

    #[test]
    fn load_aware_strategies_balance_in_flight_requests_by_weight() {
        // With requests held in flight, least_connections keeps load/weight level, so
        // shares follow the weights.
        let b = strategy(Strategy::LeastConnections, &WEIGHTS);
        let got = shares(&b, &WEIGHTS, &[], 40_000, 80);
        assert_close(&got, &expected(&WEIGHTS, &[]), 0.03, "least_connections");
        let b = strategy(Strategy::P2c, &WEIGHTS);
        let got = shares(&b, &WEIGHTS, &[], 40_000, 80);
        assert_close(&got, &expected(&WEIGHTS, &[]), 0.05, "p2c under load");
        // Unweighted, with no load: ties rotate, so least_connections is even.
        let b = strategy(Strategy::LeastConnections, &[1, 1, 1]);
        assert_close(&shares(&b, &[1, 1, 1], &[], 3000, 0), &[1.0 / 3.0; 3], 0.0, "lc ties");
    }

    #[test]
    fn consistent_hash_follows_weights_and_moves_only_affected_keys() {
        let s = Strategy::ConsistentHash(KeySource::ClientIp);
        let b = strategy(s.clone(), &WEIGHTS);
        assert_close(&shares(&b, &WEIGHTS, &[], 40_000, 0), &expected(&WEIGHTS, &[]), 0.05, "hash");

        let pick = |b: &Balancer, n: usize, down: &[usize], key: u64| {
            let v = View { n, weight: &|_| 1, load: &|_| 0, ok: &|i| !down.contains(&i) };
            b.pick(&v, Some(key)).unwrap()
        };
        let four = Balancer::new(&s, &ids(&[1, 1, 1, 1]));
        let five = Balancer::new(&s, &ids(&[1, 1, 1, 1, 1]));
        let keys: Vec<u64> = (0..10_000u64).map(|k| stable_hash(&k.to_le_bytes())).collect();
        let moved: Vec<&u64> =
            keys.iter().filter(|&&k| pick(&four, 4, &[], k) != pick(&five, 5, &[], k)).collect();
        // Adding a fifth endpoint moves about a fifth of the keys, all to the new one.
        let share = moved.len() as f64 / keys.len() as f64;
        assert!((share - 0.2).abs() < 0.05, "moved {share:.3}");
        assert!(moved.iter().all(|&&k| pick(&five, 5, &[], k) == 4));
        // An unavailable endpoint's keys go elsewhere; nobody else's move.
        for &k in &keys {
            let before = pick(&four, 4, &[], k);
            let after = pick(&four, 4, &[1], k);
            assert!(before == 1 || before == after);
            assert_ne!(after, 1);
        }
    }

    #[test]
    fn nothing_available_picks_nothing() {
        for s in [
            Strategy::RoundRobin,
            Strategy::WeightedRoundRobin,
            Strategy::LeastConnections,
            Strategy::Random,
            Strategy::P2c,
            Strategy::ConsistentHash(KeySource::ClientIp),
        ] {
            let b = strategy(s, &[1, 1]);
            let v = View { n: 2, weight: &|_| 1, load: &|_| 0, ok: &|_| false };
            assert_eq!(b.pick(&v, Some(1)), None);
        }
    }
}
