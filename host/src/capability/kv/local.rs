//! The in-memory store: shared by every instance and worker thread of one gateway process.
//!
//! Sixteen mutex-guarded shards keep contention low; every operation is atomic per key.
//! Expired entries are dropped when read, and each shard sweeps out the rest every 1,024
//! writes, so keys that are never read again (rate-limit windows of clients that left) do
//! not pile up.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::{KvError, MAX_KEY_BYTES, MAX_VALUE_BYTES};

const SHARDS: usize = 16;
const SWEEP_EVERY: u32 = 1024;

struct Entry {
    value: Vec<u8>,
    expires: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|e| now < e)
    }
}

#[derive(Default)]
struct Shard {
    map: HashMap<String, Entry>,
    writes: u32,
}

pub struct LocalKv {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
}

impl Default for LocalKv {
    fn default() -> Self {
        Self { shards: (0..SHARDS).map(|_| Mutex::default()).collect(), hasher: RandomState::new() }
    }
}

fn expiry(now: Instant, ttl_ms: u64) -> Option<Instant> {
    (ttl_ms > 0).then(|| now + Duration::from_millis(ttl_ms))
}

impl LocalKv {
    /// Runs `f` on the shard of `namespace`'s `key`, with the full key and the time.
    fn with<T>(
        &self,
        namespace: &str,
        key: &str,
        write: bool,
        f: impl FnOnce(&mut HashMap<String, Entry>, String, Instant) -> T,
    ) -> Result<T, KvError> {
        if key.len() > MAX_KEY_BYTES {
            return Err(KvError::TooLarge);
        }
        // The namespace cannot contain NUL (plugin names are TOML keys we validated), so
        // no key of one plugin can spell another's.
        // Built by hand: `format!` cost ~1,000 instructions a call (two calls a request
        // for the rate limiter).
        let mut full = String::with_capacity(namespace.len() + 1 + key.len());
        full.push_str(namespace);
        full.push('\0');
        full.push_str(key);
        let i = self.hasher.hash_one(&full) as usize % self.shards.len();
        let mut shard = self.shards[i].lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if write {
            shard.writes += 1;
            if shard.writes >= SWEEP_EVERY {
                shard.writes = 0;
                shard.map.retain(|_, e| e.live(now));
            }
        }
        Ok(f(&mut shard.map, full, now))
    }

    pub fn get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.with(namespace, key, false, |map, full, now| match map.get(&full) {
            Some(e) if e.live(now) => Some(e.value.clone()),
            Some(_) => {
                map.remove(&full);
                None
            }
            None => None,
        })
    }

    pub fn set(
        &self,
        namespace: &str,
        key: &str,
        value: Vec<u8>,
        ttl_ms: u64,
    ) -> Result<(), KvError> {
        if value.len() > MAX_VALUE_BYTES {
            return Err(KvError::TooLarge);
        }
        self.with(namespace, key, true, |map, full, now| {
            map.insert(full, Entry { value, expires: expiry(now, ttl_ms) });
        })
    }

    pub fn incr(
        &self,
        namespace: &str,
        key: &str,
        delta: i64,
        ttl_ms: u64,
    ) -> Result<i64, KvError> {
        use std::collections::hash_map::Entry as Slot;
        // One lookup: the count is rewritten in place, in the text Redis would hold.
        self.with(namespace, key, true, |map, full, now| {
            let fresh = || Entry {
                value: itoa::Buffer::new().format(delta).as_bytes().to_vec(),
                expires: expiry(now, ttl_ms),
            };
            match map.entry(full) {
                Slot::Occupied(mut slot) if slot.get().live(now) => {
                    let entry = slot.get_mut();
                    let current = std::str::from_utf8(&entry.value)
                        .ok()
                        .and_then(|t| t.parse::<i64>().ok())
                        .ok_or(KvError::NotANumber)?;
                    let value = current.saturating_add(delta);
                    entry.value.clear();
                    entry.value.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
                    Ok(value)
                }
                // Expired: a new window.
                Slot::Occupied(mut slot) => {
                    slot.insert(fresh());
                    Ok(delta)
                }
                Slot::Vacant(slot) => {
                    slot.insert(fresh());
                    Ok(delta)
                }
            }
        })?
    }

    pub fn compare_and_swap(
        &self,
        namespace: &str,
        key: &str,
        expected: Option<&[u8]>,
        value: Vec<u8>,
        ttl_ms: u64,
    ) -> Result<bool, KvError> {
        if value.len() > MAX_VALUE_BYTES {
            return Err(KvError::TooLarge);
        }
        self.with(namespace, key, true, |map, full, now| {
            let current = map.get(&full).filter(|e| e.live(now)).map(|e| e.value.as_slice());
            if current != expected {
                return false;
            }
            map.insert(full, Entry { value, expires: expiry(now, ttl_ms) });
            true
        })
    }

    pub fn delete(&self, namespace: &str, key: &str) -> Result<bool, KvError> {
        self.with(namespace, key, true, |map, full, now| {
            map.remove(&full).is_some_and(|e| e.live(now))
        })
    }

    /// Removes every key of `namespace` that starts with `prefix`; returns how many live
    /// ones went.
    pub fn purge(&self, namespace: &str, prefix: &str) -> u64 {
        let start = format!("{namespace}\0{prefix}");
        let now = Instant::now();
        let mut purged = 0;
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            shard.map.retain(|k, e| {
                let goes = k.starts_with(&start);
                purged += u64::from(goes && e.live(now));
                !goes
            });
        }
        purged
    }

    /// Live and expired-but-not-yet-swept entries, for tests and metrics.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).map.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn values_expire_and_namespaces_are_separate() {
        let kv = LocalKv::default();
        kv.set("a", "k", b"1".to_vec(), 100).unwrap();
        kv.set("b", "k", b"2".to_vec(), 0).unwrap();
        assert_eq!(kv.get("a", "k").unwrap(), Some(b"1".to_vec()));
        assert_eq!(kv.get("b", "k").unwrap(), Some(b"2".to_vec()));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(kv.get("a", "k").unwrap(), None);
        assert_eq!(kv.get("b", "k").unwrap(), Some(b"2".to_vec()));
        assert!(kv.delete("b", "k").unwrap());
        assert!(!kv.delete("b", "k").unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn incr_counts_in_a_window_that_starts_at_the_first_hit() {
        let kv = LocalKv::default();
        assert_eq!(kv.incr("p", "ip", 1, 1000).unwrap(), 1);
        tokio::time::advance(Duration::from_millis(600)).await;
        // A later hit does not push the window's end out.
        assert_eq!(kv.incr("p", "ip", 5, 1000).unwrap(), 6);
        tokio::time::advance(Duration::from_millis(400)).await;
        assert_eq!(kv.incr("p", "ip", 1, 1000).unwrap(), 1);
        kv.set("p", "text", b"abc".to_vec(), 0).unwrap();
        assert_eq!(kv.incr("p", "text", 1, 0), Err(KvError::NotANumber));
    }

    #[tokio::test(start_paused = true)]
    async fn purge_takes_one_namespace_prefix_and_nothing_else() {
        let kv = LocalKv::default();
        for (ns, key) in [("a", "rl:1"), ("a", "rl:2"), ("a", "other"), ("b", "rl:1")] {
            kv.set(ns, key, b"1".to_vec(), 0).unwrap();
        }
        kv.set("a", "rl:old", b"1".to_vec(), 10).unwrap();
        tokio::time::advance(Duration::from_millis(20)).await;
        assert_eq!(kv.purge("a", "rl:"), 2, "live keys counted, the expired one dropped too");
        assert_eq!(kv.get("a", "rl:1").unwrap(), None);
        assert_eq!(kv.get("a", "other").unwrap(), Some(b"1".to_vec()));
        assert_eq!(kv.get("b", "rl:1").unwrap(), Some(b"1".to_vec()));
        assert_eq!(kv.len(), 2);
    }

    #[test]
    fn compare_and_swap_only_stores_over_the_expected_value() {
        let kv = LocalKv::default();
        assert!(kv.compare_and_swap("p", "k", None, b"v1".to_vec(), 0).unwrap());
        assert!(!kv.compare_and_swap("p", "k", None, b"v2".to_vec(), 0).unwrap());
        assert!(!kv.compare_and_swap("p", "k", Some(b"v0"), b"v2".to_vec(), 0).unwrap());
        assert!(kv.compare_and_swap("p", "k", Some(b"v1"), b"v2".to_vec(), 0).unwrap());
        assert_eq!(kv.get("p", "k").unwrap(), Some(b"v2".to_vec()));
        let big = "k".repeat(MAX_KEY_BYTES + 1);
        assert_eq!(kv.get("p", &big), Err(KvError::TooLarge));
        assert_eq!(kv.set("p", "k", vec![0; MAX_VALUE_BYTES + 1], 0), Err(KvError::TooLarge));
    }

    #[test]
    fn increments_from_many_threads_are_not_lost() {
        let kv = std::sync::Arc::new(LocalKv::default());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let kv = kv.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        kv.incr("p", "n", 1, 0).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(kv.get("p", "n").unwrap(), Some(b"8000".to_vec()));
    }

    #[tokio::test(start_paused = true)]
    async fn expired_keys_that_are_never_read_again_are_swept() {
        let kv = LocalKv::default();
        for i in 0..SHARDS * SWEEP_EVERY as usize {
            kv.set("p", &format!("client-{i}"), b"1".to_vec(), 10).unwrap();
        }
        tokio::time::advance(Duration::from_millis(20)).await;
        for i in 0..SHARDS * SWEEP_EVERY as usize {
            kv.set("p", &format!("fresh-{i}"), b"1".to_vec(), 0).unwrap();
        }
        assert!(kv.len() < 2 * SHARDS * SWEEP_EVERY as usize, "{} entries", kv.len());
    }
}
