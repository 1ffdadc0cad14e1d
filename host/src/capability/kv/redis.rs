//! The Redis backend: one multiplexed connection per gateway process (redis-rs's
//! `ConnectionManager`, which reconnects by itself), every operation bounded by `timeout`.
//!
//! Keys are `{prefix}:{plugin}:{key}`. `incr`, `incr-and-get` and `compare-and-swap` are
//! Lua scripts (one round trip each), so they are atomic across gateway processes exactly
//! as the local store is within one.
//! After a connection failure or timeout the backend is marked down for `recheck`: during
//! that time operations fail at once (and the store's policy applies) instead of each one
//! waiting out the timeout.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{KvError, Op, Reply};
use crate::config::RedisSettings;

/// `INCRBY` that leaves a non-integer alone (returns nil) and sets the expiry only when it
/// creates the key, as the local store does. With a second key (`incr-and-get`) it also
/// reads that one: `{count, value}`.
const INCR: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur and not string.match(cur, '^[-+]?%d+$') then return false end
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if not cur and tonumber(ARGV[2]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if KEYS[2] then return {v, redis.call('GET', KEYS[2])} end
return v
";

/// ARGV: has-expected (`1`/`0`), expected, value, ttl-ms.
const CAS: &str = r"
local cur = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if cur ~= ARGV[2] then return 0 end
elseif cur then
  return 0
end
if tonumber(ARGV[4]) > 0 then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
else
  redis.call('SET', KEYS[1], ARGV[3])
end
return 1
";

pub struct RedisKv {
    conn: ConnectionManager,
    /// The URL without credentials, for logs.
    shown: String,
    prefix: String,
    timeout: Duration,
    recheck: Duration,
    /// Until when the server is treated as unreachable, and why.
    down: Mutex<Option<(Instant, String)>>,
    incr: redis::Script,
    cas: redis::Script,
}

impl RedisKv {
    /// Does not connect; the first operation does. Needs a tokio runtime.
    pub fn new(settings: &RedisSettings) -> Result<Self, String> {
        let client = redis::Client::open(settings.url.as_str()).map_err(|e| e.to_string())?;
        let shown = {
            let info = client.get_connection_info();
            format!("{}", info.addr())
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout))
            .set_response_timeout(Some(settings.timeout))
            .set_number_of_retries(1)
            .set_max_delay(settings.recheck);
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| format!("{shown}: {e}"))?;
        Ok(Self {
            conn,
            shown,
            prefix: settings.prefix.clone(),
            timeout: settings.timeout,
            recheck: settings.recheck,
            down: Mutex::new(None),
            incr: redis::Script::new(INCR),
            cas: redis::Script::new(CAS),
        })
    }

    pub async fn run(&self, namespace: &str, key: &str, op: Op) -> Result<Reply, KvError> {
        if let Some(why) = self.still_down() {
            return Err(KvError::Unavailable(why));
        }
        let full = format!("{}:{namespace}:{key}", self.prefix);
        match tokio::time::timeout(self.timeout, self.send(namespace, &full, op)).await {
            Ok(Ok(reply)) => {
                self.up();
                reply
            }
            Ok(Err(e)) => {
                let why = format!("redis at {}: {e}", self.shown);
                if e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_refusal()
                    || e.is_connection_dropped()
                {
                    self.mark_down(&why);
                }
                Err(KvError::Unavailable(why))
            }
            Err(_elapsed) => {
                let why =
                    format!("redis at {} did not answer within {:?}", self.shown, self.timeout);
                self.mark_down(&why);
                Err(KvError::Unavailable(why))
            }
        }
    }

    /// One round trip. The outer `Result` is the transport's; the inner one the store's.
    async fn send(
        &self,
        namespace: &str,
        full: &str,
        op: Op,
    ) -> redis::RedisResult<Result<Reply, KvError>> {
        let mut conn = self.conn.clone();
        Ok(Ok(match op {
            Op::Get => Reply::Value(redis::cmd("GET").arg(full).query_async(&mut conn).await?),
            Op::Set { value, ttl_ms } => {
                let mut cmd = redis::cmd("SET");
                cmd.arg(full).arg(value);
                if ttl_ms > 0 {
                    cmd.arg("PX").arg(ttl_ms);
                }
                cmd.query_async::<()>(&mut conn).await?;
                Reply::Done
            }
            Op::Incr { delta, ttl_ms } => {
                let n: Option<i64> =
                    self.incr.key(full).arg(delta).arg(ttl_ms).invoke_async(&mut conn).await?;
                match n {
                    Some(n) => Reply::Number(n),
                    None => return Ok(Err(KvError::NotANumber)),
                }
            }
            Op::IncrAndGet { delta, ttl_ms, other } => {
                let reply: Option<(i64, Option<Vec<u8>>)> = self
                    .incr
                    .key(full)
                    .key(format!("{}:{namespace}:{other}", self.prefix))
                    .arg(delta)
                    .arg(ttl_ms)
                    .invoke_async(&mut conn)
                    .await?;
                match reply {
                    Some((n, value)) => Reply::NumberAndValue(n, value),
                    None => return Ok(Err(KvError::NotANumber)),
                }
            }
            Op::Cas { expected, value, ttl_ms } => {
                let swapped: i64 = self
                    .cas
                    .key(full)
                    .arg(if expected.is_some() { "1" } else { "0" })
                    .arg(expected.unwrap_or_default())
                    .arg(value)
                    .arg(ttl_ms)
                    .invoke_async(&mut conn)
                    .await?;
                Reply::Flag(swapped == 1)
            }
            Op::Delete => {
                let n: i64 = redis::cmd("DEL").arg(full).query_async(&mut conn).await?;
                Reply::Flag(n > 0)
            }
        }))
    }

    /// Removes `namespace`'s keys that start with `prefix` (SCAN then UNLINK, in batches,
    /// so Redis is never blocked by one big command); returns how many went. Bounded by
    /// `deadline` in all.
    pub async fn purge(
        &self,
        namespace: &str,
        prefix: &str,
        deadline: Duration,
    ) -> Result<u64, KvError> {
        let pattern = format!("{}*", glob_escape(&format!("{}:{namespace}:{prefix}", self.prefix)));
        let work = async {
            let mut conn = self.conn.clone();
            let mut cursor: u64 = 0;
            let mut purged = 0u64;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(500)
                    .query_async(&mut conn)
                    .await?;
                if !keys.is_empty() {
                    let n: u64 = redis::cmd("UNLINK").arg(&keys).query_async(&mut conn).await?;
                    purged += n;
                }
                if next == 0 {
                    return redis::RedisResult::Ok(purged);
                }
                cursor = next;
            }
        };
        match tokio::time::timeout(deadline, work).await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(KvError::Unavailable(format!("redis at {}: {e}", self.shown))),
            Err(_) => Err(KvError::Unavailable(format!(
                "redis at {}: the purge did not finish within {deadline:?}",
                self.shown
            ))),
        }
    }

    /// The server (without credentials), the key prefix, and why it is unreachable if it
    /// is marked so.
    pub fn describe(&self) -> (&str, &str, Option<String>) {
        (&self.shown, &self.prefix, self.still_down())
    }

    fn still_down(&self) -> Option<String> {
        let down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        match &*down {
            Some((until, why)) if Instant::now() < *until => Some(why.clone()),
            _ => None,
        }
    }

    fn mark_down(&self, why: &str) {
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        if down.is_none() {
            tracing::warn!("key-value store unavailable: {why}; retrying every {:?}", self.recheck);
        }
        *down = Some((Instant::now() + self.recheck, why.to_owned()));
    }

    fn up(&self) {
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        if down.take().is_some() {
            tracing::info!("key-value store at {} reachable again", self.shown);
        }
    }
}

/// `text` with Redis glob characters escaped, so a prefix matches only itself.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\' | '^') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(super::glob_escape("sluice:rl:a*b?[c]\\"), "sluice:rl:a\\*b\\?\\[c\\]\\\\");
    }
}
