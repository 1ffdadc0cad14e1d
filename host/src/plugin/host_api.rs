//! The host side of the WIT imports (`http`, `log`, `clock`, `kv`, `metrics`): what a
//! plugin can call.
//!
//! Every function answers from the message of the call in progress; only reading a body
//! waits (for the peer). Errors a plugin can handle are WIT results; a call outside a hook
//! is a broken invariant and traps.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue};
use sluice_bindings::sluice::plugin::{clock, http as wit_http, kv, log, metrics};
use sluice_bindings::{RequestHandle, ResponseHandle};
use wasmtime::component::Resource;
use wit_http::{BodyError, FieldError};

use super::state::PluginState;
use crate::kv::{Op, Reply};
use crate::message::{self, Body, BodyError as MsgBodyError};

/// A host call's own outcome: `Err` traps the plugin.
type HostResult<T> = wasmtime::Result<T>;

impl wit_http::Host for PluginState {}

impl wit_http::HostRequest for PluginState {
    fn method(&mut self, _: Resource<RequestHandle>) -> HostResult<String> {
        Ok(self.request()?.parts.method.as_str().to_owned())
    }

    fn set_method(
        &mut self,
        _: Resource<RequestHandle>,
        value: String,
    ) -> HostResult<Result<(), FieldError>> {
        let req = self.request()?;
        Ok(match http::Method::from_bytes(value.as_bytes()) {
            Ok(m) => {
                req.parts.method = m;
                Ok(())
            }
            Err(_) => Err(FieldError::InvalidValue),
        })
    }

    fn path(&mut self, _: Resource<RequestHandle>) -> HostResult<String> {
        Ok(self.request()?.parts.uri.path().to_owned())
    }

    fn set_path(
        &mut self,
        _: Resource<RequestHandle>,
        value: String,
    ) -> HostResult<Result<(), FieldError>> {
        let uri = &mut self.request()?.parts.uri;
        if !value.starts_with('/') || value.contains('?') {
            return Ok(Err(FieldError::InvalidValue));
        }
        Ok(message::replace_path(uri, &value).map_err(|_| FieldError::InvalidValue))
    }

    fn query(&mut self, _: Resource<RequestHandle>) -> HostResult<Option<String>> {
        Ok(self.request()?.parts.uri.query().map(str::to_owned))
    }

    fn set_query(
        &mut self,
        _: Resource<RequestHandle>,
        value: Option<String>,
    ) -> HostResult<Result<(), FieldError>> {
        let uri = &mut self.request()?.parts.uri;
        let pq = match value {
            Some(q) if q.contains('#') => return Ok(Err(FieldError::InvalidValue)),
            Some(q) => format!("{}?{q}", uri.path()),
            None => uri.path().to_owned(),
        };
        Ok(replace_path_and_query(uri, pq))
    }

    fn header(&mut self, _: Resource<RequestHandle>, name: String) -> HostResult<Option<String>> {
        Ok(get(&self.request()?.parts.headers, &name))
    }

    fn header_all(&mut self, _: Resource<RequestHandle>, name: String) -> HostResult<Vec<String>> {
        Ok(get_all(&self.request()?.parts.headers, &name))
    }

    fn header_names(&mut self, _: Resource<RequestHandle>) -> HostResult<Vec<String>> {
        Ok(names(&self.request()?.parts.headers))
    }

    fn set_header(
        &mut self,
        _: Resource<RequestHandle>,
        name: String,
        value: String,
    ) -> HostResult<Result<(), FieldError>> {
        Ok(set(&mut self.request()?.parts.headers, &name, &value, false))
    }

    fn append_header(
        &mut self,
        _: Resource<RequestHandle>,
        name: String,
        value: String,
    ) -> HostResult<Result<(), FieldError>> {
        Ok(set(&mut self.request()?.parts.headers, &name, &value, true))
    }

    fn remove_header(
        &mut self,
        _: Resource<RequestHandle>,
        name: String,
    ) -> HostResult<Result<(), FieldError>> {
        Ok(remove(&mut self.request()?.parts.headers, &name))
    }

    async fn body(&mut self, _: Resource<RequestHandle>) -> HostResult<Result<Vec<u8>, BodyError>> {
        self.read_body = true;
        let req = self.request()?;
        let limit = req.meta.max_body_bytes;
        Ok(read_body(&mut req.body, limit).await)
    }

    fn set_body(&mut self, _: Resource<RequestHandle>, body: Vec<u8>) -> HostResult<()> {
        let req = self.request()?;
        message::set_fixed_length(&mut req.parts.headers, body.len());
        req.body = Body::Full(body.into());
        Ok(())
    }

    fn client_ip(&mut self, _: Resource<RequestHandle>) -> HostResult<String> {
        Ok(self.request()?.meta.client_ip_text().to_owned())
    }

    fn request_id(&mut self, _: Resource<RequestHandle>) -> HostResult<String> {
        Ok(self.request()?.meta.id().to_owned())
    }

    fn route(&mut self, _: Resource<RequestHandle>) -> HostResult<String> {
        Ok(self.request()?.meta.route.to_string())
    }

    fn param(&mut self, _: Resource<RequestHandle>, name: String) -> HostResult<Option<String>> {
        let params = &self.request()?.meta.params;
        Ok(params.iter().find(|(n, _)| **n == *name).map(|(_, v)| v.clone()))
    }

    fn context(&mut self, _: Resource<RequestHandle>, key: String) -> HostResult<Option<String>> {
        let plugin = self.plugin.clone();
        Ok(self.request()?.context.get(&plugin, &key).map(str::to_owned))
    }

    fn set_context(
        &mut self,
        _: Resource<RequestHandle>,
        key: String,
        value: String,
    ) -> HostResult<Result<(), FieldError>> {
        let plugin = self.plugin.clone();
        let stored = self.request()?.context.set(&plugin, key, value);
        Ok(if stored { Ok(()) } else { Err(FieldError::InvalidValue) })
    }

    fn params(&mut self, _: Resource<RequestHandle>) -> HostResult<Vec<(String, String)>> {
        let params = &self.request()?.meta.params;
        Ok(params.iter().map(|(n, v)| (n.to_string(), v.clone())).collect())
    }

    fn drop(&mut self, _: Resource<RequestHandle>) -> HostResult<()> {
        // Plugins only ever borrow the request; there is nothing to free.
        Ok(())
    }
}

impl wit_http::HostResponse for PluginState {
    fn status(&mut self, _: Resource<ResponseHandle>) -> HostResult<u16> {
        Ok(self.response()?.parts.status.as_u16())
    }

    fn set_status(
        &mut self,
        _: Resource<ResponseHandle>,
        code: u16,
    ) -> HostResult<Result<(), FieldError>> {
        let resp = self.response()?;
        Ok(match http::StatusCode::from_u16(code) {
            Ok(status) => {
                resp.parts.status = status;
                Ok(())
            }
            Err(_) => Err(FieldError::InvalidValue),
        })
    }

    fn header(&mut self, _: Resource<ResponseHandle>, name: String) -> HostResult<Option<String>> {
        Ok(get(&self.response()?.parts.headers, &name))
    }

    fn header_all(&mut self, _: Resource<ResponseHandle>, name: String) -> HostResult<Vec<String>> {
        Ok(get_all(&self.response()?.parts.headers, &name))
    }

    fn header_names(&mut self, _: Resource<ResponseHandle>) -> HostResult<Vec<String>> {
        Ok(names(&self.response()?.parts.headers))
    }

    fn set_header(
        &mut self,
        _: Resource<ResponseHandle>,
        name: String,
        value: String,
    ) -> HostResult<Result<(), FieldError>> {
        Ok(set(&mut self.response()?.parts.headers, &name, &value, false))
    }

    fn append_header(
        &mut self,
        _: Resource<ResponseHandle>,
        name: String,
        value: String,
    ) -> HostResult<Result<(), FieldError>> {
        Ok(set(&mut self.response()?.parts.headers, &name, &value, true))
    }

    fn remove_header(
        &mut self,
        _: Resource<ResponseHandle>,
        name: String,
    ) -> HostResult<Result<(), FieldError>> {
        Ok(remove(&mut self.response()?.parts.headers, &name))
    }

    async fn body(
        &mut self,
        _: Resource<ResponseHandle>,
    ) -> HostResult<Result<Vec<u8>, BodyError>> {
        self.read_body = true;
        let limit = self.request()?.meta.max_body_bytes;
        Ok(read_body(&mut self.response()?.body, limit).await)
    }

    fn set_body(&mut self, _: Resource<ResponseHandle>, body: Vec<u8>) -> HostResult<()> {
        let resp = self.response()?;
        message::set_fixed_length(&mut resp.parts.headers, body.len());
        resp.body = Body::Full(body.into());
        Ok(())
    }

    fn drop(&mut self, _: Resource<ResponseHandle>) -> HostResult<()> {
        Ok(())
    }
}

impl log::Host for PluginState {
    fn log(&mut self, level: log::Level, message: String) -> HostResult<()> {
        let (request_id, route) = match &self.call {
            Some(call) => (call.request.meta.id(), &*call.request.meta.route),
            None => ("", ""),
        };
        let level = match level {
            log::Level::Trace => tracing::Level::TRACE,
            log::Level::Debug => tracing::Level::DEBUG,
            log::Level::Info => tracing::Level::INFO,
            log::Level::Warn => tracing::Level::WARN,
            log::Level::Error => tracing::Level::ERROR,
        };
        plugin_log(level, &self.plugin, route, request_id, &message);
        Ok(())
    }

    fn enabled(&mut self, level: log::Level) -> HostResult<bool> {
        Ok(match level {
            log::Level::Trace => tracing::enabled!(target: "plugin", tracing::Level::TRACE),
            log::Level::Debug => tracing::enabled!(target: "plugin", tracing::Level::DEBUG),
            log::Level::Info => tracing::enabled!(target: "plugin", tracing::Level::INFO),
            log::Level::Warn => tracing::enabled!(target: "plugin", tracing::Level::WARN),
            log::Level::Error => tracing::enabled!(target: "plugin", tracing::Level::ERROR),
        })
    }
}

impl clock::Host for PluginState {
    fn now_ms(&mut self) -> HostResult<u64> {
        let since_epoch = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH);
        Ok(since_epoch.map_or(0, |d| d.as_millis() as u64))
    }

    fn monotonic_ns(&mut self) -> HostResult<u64> {
        static START: OnceLock<Instant> = OnceLock::new();
        Ok(START.get_or_init(Instant::now).elapsed().as_nanos() as u64)
    }
}

/// Each plugin's keys live under its name (see `crate::kv`). Under `fail-closed`, an
/// unreachable store fails the call (and so the request, with 503) instead of returning.
impl kv::Host for PluginState {
    async fn get(&mut self, key: String) -> HostResult<Result<Option<Vec<u8>>, kv::KvError>> {
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
    ) -> HostResult<Result<(), kv::KvError>> {
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
    ) -> HostResult<Result<i64, kv::KvError>> {
        Ok(match self.kv_run(key, Op::Incr { delta, ttl_ms }).await? {
            Ok(Reply::Number(n)) => Ok(n),
            other => Err(wit_error(other)),
        })
    }

    async fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
        ttl_ms: u64,
    ) -> HostResult<Result<bool, kv::KvError>> {
        Ok(match self.kv_run(key, Op::Cas { expected, value, ttl_ms }).await? {
            Ok(Reply::Flag(b)) => Ok(b),
            other => Err(wit_error(other)),
        })
    }

    async fn delete(&mut self, key: String) -> HostResult<Result<bool, kv::KvError>> {
        Ok(match self.kv_run(key, Op::Delete).await? {
            Ok(Reply::Flag(b)) => Ok(b),
            other => Err(wit_error(other)),
        })
    }
}

impl PluginState {
    async fn kv_run(
        &mut self,
        key: String,
        op: Op,
    ) -> HostResult<Result<Reply, crate::kv::KvError>> {
        Ok(self.kv.run(&self.plugin, &key, op).await?)
    }
}

/// The WIT error for a store answer that is not the op's own reply kind: the store's error,
/// or (cannot happen: each op has one reply kind) a reply of another shape, as `unavailable`.
fn wit_error(r: Result<Reply, crate::kv::KvError>) -> kv::KvError {
    match r {
        Err(crate::kv::KvError::Unavailable(why)) => kv::KvError::Unavailable(why),
        Err(crate::kv::KvError::NotANumber) => kv::KvError::NotANumber,
        Err(crate::kv::KvError::TooLarge) => kv::KvError::TooLarge,
        Ok(reply) => kv::KvError::Unavailable(format!("store gave an unexpected reply: {reply:?}")),
    }
}

impl metrics::Host for PluginState {
    fn counter_add(&mut self, name: String, value: u64) -> HostResult<()> {
        // A plugin counts the same few names on every request: look each up once.
        if let Some((_, counter)) = self.counters.iter().find(|(n, _)| **n == *name) {
            counter.inc_by(value as f64);
        } else if let Some(counter) = self.metrics.counter_handle(&self.plugin, &name) {
            counter.inc_by(value as f64);
            self.counters.push((name.into(), counter));
        }
        Ok(())
    }

    fn observe(&mut self, name: String, value: f64) -> HostResult<()> {
        self.metrics.observe(&self.plugin, &name, value);
        Ok(())
    }
}

async fn read_body(body: &mut Body, limit: u64) -> Result<Vec<u8>, BodyError> {
    match body.buffer(limit).await {
        Ok(bytes) => Ok(bytes.to_vec()),
        Err(MsgBodyError::TooLarge(limit)) => Err(BodyError::TooLarge(limit)),
        Err(MsgBodyError::ReadFailed(why)) => Err(BodyError::ReadFailed(why)),
        Err(e @ MsgBodyError::TimedOut(_)) => Err(BodyError::ReadFailed(e.to_string())),
    }
}

/// [`message::replace_path_and_query`], refused as the WIT `field-error` says.
pub(super) fn replace_path_and_query(uri: &mut http::Uri, pq: String) -> Result<(), FieldError> {
    message::replace_path_and_query(uri, pq).map_err(|_| FieldError::InvalidValue)
}

fn lossy(v: &HeaderValue) -> String {
    match v.to_str() {
        // Visible ASCII, nearly every value: a plain copy.
        Ok(text) => text.to_owned(),
        Err(_) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
    }
}

fn get(map: &HeaderMap, name: &str) -> Option<String> {
    map.get(name).map(lossy)
}

fn get_all(map: &HeaderMap, name: &str) -> Vec<String> {
    map.get_all(name).iter().map(lossy).collect()
}

fn names(map: &HeaderMap) -> Vec<String> {
    map.keys().map(|k| k.as_str().to_owned()).collect()
}

fn writable_name(name: &str) -> Result<HeaderName, FieldError> {
    let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| FieldError::InvalidName)?;
    match message::is_host_owned_header(&name) {
        true => Err(FieldError::Forbidden),
        false => Ok(name),
    }
}

pub(super) fn set(
    map: &mut HeaderMap,
    name: &str,
    value: &str,
    append: bool,
) -> Result<(), FieldError> {
    let name = writable_name(name)?;
    let value = HeaderValue::from_bytes(value.as_bytes()).map_err(|_| FieldError::InvalidValue)?;
    if append {
        map.append(name, value);
    } else {
        map.insert(name, value);
    }
    Ok(())
}

pub(super) fn remove(map: &mut HeaderMap, name: &str) -> Result<(), FieldError> {
    map.remove(writable_name(name)?);
    Ok(())
}

/// A plugin's log line, as every plugin kind emits it: target `plugin`, with the plugin,
/// route and request id, at most 4 KiB.
pub(super) fn plugin_log(
    level: tracing::Level,
    plugin: &str,
    route: &str,
    request_id: &str,
    message: &str,
) {
    let mut cut = message.len().min(4096);
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    let message = &message[..cut];
    // Warnings and errors repeat when something is broken: a few a second per message.
    let mut note = String::new();
    if level <= tracing::Level::WARN {
        use crate::throttle::{Throttle, Verdict, suppressed_note};
        static THROTTLE: std::sync::LazyLock<Throttle> =
            std::sync::LazyLock::new(Throttle::default);
        match THROTTLE.check((plugin, message)) {
            Verdict::Write { suppressed } => note = suppressed_note(suppressed),
            Verdict::Suppress => return,
        }
    }
    macro_rules! emit {
        ($level:expr) => {
            tracing::event!(target: "plugin", $level, plugin, route, request_id, "{message}{note}")
        };
    }
    match level {
        tracing::Level::TRACE => emit!(tracing::Level::TRACE),
        tracing::Level::DEBUG => emit!(tracing::Level::DEBUG),
        tracing::Level::INFO => emit!(tracing::Level::INFO),
        tracing::Level::WARN => emit!(tracing::Level::WARN),
        tracing::Level::ERROR => emit!(tracing::Level::ERROR),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_reach_plugins_as_text_whatever_their_bytes() {
        let ascii = HeaderValue::from_static("Bearer abc.def\tghi");
        assert_eq!(lossy(&ascii), "Bearer abc.def\tghi");
        // UTF-8 beyond ASCII (obs-text to HTTP) is kept; invalid bytes become U+FFFD.
        let utf8 = HeaderValue::from_bytes("caf\u{e9}".as_bytes()).unwrap();
        assert_eq!(lossy(&utf8), "caf\u{e9}");
        let invalid = HeaderValue::from_bytes(b"a\xffb").unwrap();
        assert_eq!(lossy(&invalid), "a\u{fffd}b");
    }
}
