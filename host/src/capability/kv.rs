//! The plugins' key-value store (WIT `kv`): one namespace per named plugin, kept across
//! reloads and module swaps.
//!
//! With the default `backend = "local"` it lives in this process ([`LocalKv`]), shared by
//! every instance and worker thread. With `backend = "redis"` it lives in Redis
//! ([`RedisKv`]), shared by every gateway process that points at the same server, and
//! `on_unavailable` says what happens while Redis cannot be reached:
//!
//! - `fallback-local`: operations go to the local store, so limits still hold per process;
//! - `fail-open`: operations return `unavailable` and the plugin carries on without state
//!   (the shipped plugins let the request through);
//! - `fail-closed`: the request fails with 503 at its first store operation.
//!
//! No operation waits longer than the backend's `timeout`; after a failure the backend is
//! left alone for `recheck` (every operation takes the policy at once), then tried again.

mod local;
mod redis;

pub use local::LocalKv;
pub use redis::RedisKv;

use std::sync::Arc;

use sluice_bindings::sluice::plugin::kv as wit_kv;
use wasmtime::component::{HasSelf, Linker};

use super::HostResult;
use crate::config::{KvBackend, KvSettings, OnUnavailable};

pub const MAX_KEY_BYTES: usize = 1024;
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("value is not a decimal 64-bit integer")]
    NotANumber,
    #[error("key or value over the size limit")]
    TooLarge,
}

/// A store operation failed because the backend is unreachable and the policy is
/// `fail-closed`: the host turns this into a 503 for the request.
#[derive(Debug, thiserror::Error)]
#[error("key-value store unavailable (on_unavailable = \"fail-closed\"): {0}")]
pub struct StoreClosed(pub String);

/// The store the plugins see: the configured backend and its unavailability policy.
#[derive(Default)]
pub struct Store {
    local: LocalKv,
    remote: Option<RedisKv>,
    on_unavailable: OnUnavailable,
}

/// One operation, runnable against either backend.
#[derive(Debug, Clone)]
pub enum Op {
    Get,
    Set {
        value: Vec<u8>,
        ttl_ms: u64,
    },
    Incr {
        delta: i64,
        ttl_ms: u64,
    },
    /// `Incr` of the key, then `Get` of `other`, in one round trip.
    IncrAndGet {
        delta: i64,
        ttl_ms: u64,
        other: String,
    },
    Cas {
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
        ttl_ms: u64,
    },
    Delete,
}

impl Op {
    /// The operation's name in metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Set { .. } => "set",
            Op::Incr { .. } => "incr",
            Op::IncrAndGet { .. } => "incr_and_get",
            Op::Cas { .. } => "compare_and_swap",
            Op::Delete => "delete",
        }
    }
}

/// What an [`Op`] returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Value(Option<Vec<u8>>),
    Done,
    Number(i64),
    NumberAndValue(i64, Option<Vec<u8>>),
    Flag(bool),
}

impl Store {
    /// Must be called within a tokio runtime (the Redis connection runs as a task there);
    /// it does not connect: the first operation does.
    pub fn new(settings: &KvSettings) -> Result<Self, String> {
        let remote = match &settings.backend {
            KvBackend::Local => None,
            KvBackend::Redis(r) => Some(RedisKv::new(r)?),
        };
        Ok(Self { local: LocalKv::default(), remote, on_unavailable: settings.on_unavailable })
    }

    /// Runs `op` on `namespace`'s `key`. `Err(StoreClosed)` only under `fail-closed`.
    pub async fn run(
        &self,
        namespace: &str,
        key: &str,
        op: Op,
    ) -> Result<Result<Reply, KvError>, StoreClosed> {
        let other_len = match &op {
            Op::IncrAndGet { other, .. } => other.len(),
            _ => 0,
        };
        if key.len().max(other_len) > MAX_KEY_BYTES {
            return Ok(Err(KvError::TooLarge));
        }
        let m = crate::telemetry::metrics();
        let name = op.label();
        let Some(remote) = &self.remote else {
            m.kv_operations.with_label_values(&["local", name]).inc();
            return Ok(self.local.run(namespace, key, op));
        };
        // The local fallback needs the op again: the remote call consumes it.
        let fallback = (self.on_unavailable == OnUnavailable::FallbackLocal).then(|| op.clone());
        m.kv_operations.with_label_values(&["redis", name]).inc();
        match remote.run(namespace, key, op).await {
            Err(KvError::Unavailable(why)) => {
                m.kv_errors.with_label_values(&["redis", name]).inc();
                match (self.on_unavailable, fallback) {
                    (OnUnavailable::FallbackLocal, Some(op)) => {
                        Ok(self.local.run(namespace, key, op))
                    }
                    (OnUnavailable::FailClosed, _) => Err(StoreClosed(why)),
                    _ => Ok(Err(KvError::Unavailable(why))),
                }
            }
            other => Ok(other),
        }
    }
}

/// What the admin API shows of the store.
#[derive(Debug, serde::Serialize)]
pub struct Description {
    pub backend: &'static str,
    pub on_unavailable: &'static str,
    /// Keys held in this process (the local store, or the fallback under Redis).
    pub local_keys: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisDescription>,
}

#[derive(Debug, serde::Serialize)]
pub struct RedisDescription {
    /// host:port, never the credentials.
    pub address: String,
    pub prefix: String,
    pub reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable_because: Option<String>,
}

impl Store {
    pub fn describe(&self) -> Description {
        Description {
            backend: if self.remote.is_some() { "redis" } else { "local" },
            on_unavailable: match self.on_unavailable {
                OnUnavailable::FallbackLocal => "fallback-local",
                OnUnavailable::FailOpen => "fail-open",
                OnUnavailable::FailClosed => "fail-closed",
            },
            local_keys: self.local.len(),
            redis: self.remote.as_ref().map(|r| {
                let (address, prefix, down) = r.describe();
                RedisDescription {
                    address: address.to_owned(),
                    prefix: prefix.to_owned(),
                    reachable: down.is_none(),
                    unavailable_because: down,
                }
            }),
        }
    }

    /// Removes every key of `namespace` starting with `prefix`, from the backend and from
    /// this process's local store (the fallback's keys too); returns how many went.
    pub async fn purge(&self, namespace: &str, prefix: &str) -> Result<u64, KvError> {
        let local = self.local.purge(namespace, prefix);
        match &self.remote {
            None => Ok(local),
            Some(r) => Ok(local + r.purge(namespace, prefix, PURGE_DEADLINE).await?),
        }
    }
}

/// The longest a purge may take against Redis.
const PURGE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

impl LocalKv {
    pub fn run(&self, namespace: &str, key: &str, op: Op) -> Result<Reply, KvError> {
        match op {
            Op::Get => self.get(namespace, key).map(Reply::Value),
            Op::Set { value, ttl_ms } => {
                self.set(namespace, key, value, ttl_ms).map(|()| Reply::Done)
            }
            Op::Incr { delta, ttl_ms } => {
                self.incr(namespace, key, delta, ttl_ms).map(Reply::Number)
            }
            Op::IncrAndGet { delta, ttl_ms, other } => {
                let n = self.incr(namespace, key, delta, ttl_ms)?;
                Ok(Reply::NumberAndValue(n, self.get(namespace, &other)?))
            }
            Op::Cas { expected, value, ttl_ms } => self
                .compare_and_swap(namespace, key, expected.as_deref(), value, ttl_ms)
                .map(Reply::Flag),
            Op::Delete => self.delete(namespace, key).map(Reply::Flag),
        }
    }
}

/// An instance's handle on the store: its plugin's namespace.
pub struct KvCtx {
    plugin: Arc<str>,
    store: Arc<Store>,
}

impl KvCtx {
    pub fn new(plugin: Arc<str>, store: Arc<Store>) -> Self {
        Self { plugin, store }
    }
}

pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut KvCtx,
) -> wasmtime::Result<()> {
    wit_kv::add_to_linker::<T, HasSelf<KvCtx>>(linker, get)
}

/// Each plugin's keys live under its name (see `crate::kv`). Under `fail-closed`, an
/// unreachable store fails the call (and so the request, with 503) instead of returning.
impl wit_kv::Host for KvCtx {
    async fn get(&mut self, key: String) -> HostResult<Result<Option<Vec<u8>>, wit_kv::KvError>> {
        Ok(match self.kv_run(key, Op::Get).await? {
            Ok(Reply::Value(v)) => Ok(v),
            other => Err(wit_error(other)),
        })
    }

    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: u64,
    ) -> HostResult<Result<(), wit_kv::KvError>> {
        Ok(match self.kv_run(key, Op::Set { value, ttl_ms }).await? {
            Ok(Reply::Done) => Ok(()),
            other => Err(wit_error(other)),
        })
    }

    async fn incr(
        &mut self,
        key: String,
        delta: i64,
        ttl_ms: u64,
    ) -> HostResult<Result<i64, wit_kv::KvError>> {
        Ok(match self.kv_run(key, Op::Incr { delta, ttl_ms }).await? {
            Ok(Reply::Number(n)) => Ok(n),
            other => Err(wit_error(other)),
        })
    }

    async fn incr_and_get(
        &mut self,
        key: String,
        delta: i64,
        ttl_ms: u64,
        other: String,
    ) -> HostResult<Result<(i64, Option<Vec<u8>>), wit_kv::KvError>> {
        Ok(match self.kv_run(key, Op::IncrAndGet { delta, ttl_ms, other }).await? {
            Ok(Reply::NumberAndValue(n, v)) => Ok((n, v)),
            other => Err(wit_error(other)),
        })
    }

    async fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
        ttl_ms: u64,
    ) -> HostResult<Result<bool, wit_kv::KvError>> {
        Ok(match self.kv_run(key, Op::Cas { expected, value, ttl_ms }).await? {
            Ok(Reply::Flag(b)) => Ok(b),
            other => Err(wit_error(other)),
        })
    }

    async fn delete(&mut self, key: String) -> HostResult<Result<bool, wit_kv::KvError>> {
        Ok(match self.kv_run(key, Op::Delete).await? {
            Ok(Reply::Flag(b)) => Ok(b),
            other => Err(wit_error(other)),
        })
    }
}

impl KvCtx {
    async fn kv_run(&mut self, key: String, op: Op) -> HostResult<Result<Reply, KvError>> {
        Ok(self.store.run(&self.plugin, &key, op).await?)
    }
}

/// The WIT error for a store answer that is not the op's own reply kind: the store's error,
/// or (cannot happen: each op has one reply kind) a reply of another shape, as `unavailable`.
fn wit_error(r: Result<Reply, KvError>) -> wit_kv::KvError {
    match r {
        Err(KvError::Unavailable(why)) => wit_kv::KvError::Unavailable(why),
        Err(KvError::NotANumber) => wit_kv::KvError::NotANumber,
        Err(KvError::TooLarge) => wit_kv::KvError::TooLarge,
        Ok(reply) => {
            wit_kv::KvError::Unavailable(format!("store gave an unexpected reply: {reply:?}"))
        }
    }
}
