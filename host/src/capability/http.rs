//! WIT `http`: the request and response of the hook call in progress, as a plugin reads
//! and edits them.
//!
//! Every function answers from the message of the call in progress; only reading a body
//! waits (for the peer). Errors a plugin can handle are WIT results; a call outside a hook
//! is a broken invariant and traps.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use sluice_bindings::sluice::plugin::http as wit_http;
use sluice_bindings::{RequestHandle, ResponseHandle};
use wasmtime::component::{HasSelf, Linker, Resource};
use wit_http::{BodyError, FieldError};

use super::HostResult;
use crate::message::{self, Body, BodyError as MsgBodyError, Call, RequestMsg, ResponseMsg};

/// An instance's view of the hook call in progress.
pub struct HttpCtx {
    plugin: Arc<str>,
    /// The messages of the hook call in progress; `None` between calls and during `init`.
    pub call: Option<Box<Call>>,
    /// Set when the call in progress read its message's body.
    pub read_body: bool,
}

impl HttpCtx {
    pub fn new(plugin: Arc<str>) -> Self {
        Self { plugin, call: None, read_body: false }
    }

    /// The request of the call in progress. Host functions are only reachable from a hook
    /// call, so `None` means a broken invariant: trap rather than guess.
    fn request(&mut self) -> HostResult<&mut RequestMsg> {
        match &mut self.call {
            Some(call) => Ok(&mut call.request),
            None => Err(wasmtime::format_err!("no request outside a hook call")),
        }
    }

    fn response(&mut self) -> HostResult<&mut ResponseMsg> {
        match self.call.as_mut().and_then(|c| c.response.as_mut()) {
            Some(response) => Ok(response),
            None => Err(wasmtime::format_err!("no response outside the response phase")),
        }
    }
}

pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut HttpCtx,
) -> wasmtime::Result<()> {
    wit_http::add_to_linker::<T, HasSelf<HttpCtx>>(linker, get)?;
    in_place::add_to_linker(linker, get)
}

/// The header calls every plugin makes, registered over bindgen's, which lift each `string`
/// argument into a new `String`: here names and values are read where they lie in the
/// guest's memory (a name copied to the stack, a value straight into its `HeaderValue`).
mod in_place {
    use wasmtime::StoreContextMut;
    use wasmtime::component::{LinkerInstance, WasmStr};

    use super::*;

    /// The interface as this host links it (older 0.2.x imports match it by semver).
    const HTTP: &str = "sluice:plugin/http@0.2.1";

    /// Names longer than this (none a plugin needs) take the ordinary, allocating path.
    const NAME_ON_STACK: usize = 64;

    pub fn add_to_linker<T: Send + 'static>(
        linker: &mut Linker<T>,
        get: fn(&mut T) -> &mut HttpCtx,
    ) -> wasmtime::Result<()> {
        linker.allow_shadowing(true);
        let mut http = linker.instance(HTTP)?;
        header_calls::<T, RequestHandle>(&mut http, "request", get, |c| {
            Ok(&mut c.request()?.parts.headers)
        })?;
        header_calls::<T, ResponseHandle>(&mut http, "response", get, |c| {
            Ok(&mut c.response()?.parts.headers)
        })?;
        linker.allow_shadowing(false);
        Ok(())
    }

    /// `header`, `set-header`, `append-header` and `remove-header` of resource `kind`,
    /// whose headers `map` finds.
    fn header_calls<T: Send + 'static, R: 'static>(
        http: &mut LinkerInstance<'_, T>,
        kind: &str,
        get: fn(&mut T) -> &mut HttpCtx,
        map: fn(&mut HttpCtx) -> HostResult<&mut HeaderMap>,
    ) -> wasmtime::Result<()> {
        http.func_wrap(
            &format!("[method]{kind}.header"),
            move |mut s: StoreContextMut<'_, T>, (_, name): (Resource<R>, WasmStr)| {
                let name = Name::read(&s, &name)?;
                Ok((super::get(map(get(s.data_mut()))?, name.as_str()),))
            },
        )?;
        for (method, append) in [("set-header", false), ("append-header", true)] {
            http.func_wrap(
                &format!("[method]{kind}.{method}"),
                move |mut s: StoreContextMut<'_, T>,
                      (_, name, value): (Resource<R>, WasmStr, WasmStr)| {
                    let field = field(&s, &name, &value)?;
                    let map = map(get(s.data_mut()))?;
                    Ok((field.map(|(name, value)| match append {
                        true => drop(map.append(name, value)),
                        false => drop(map.insert(name, value)),
                    }),))
                },
            )?;
        }
        http.func_wrap(
            &format!("[method]{kind}.remove-header"),
            move |mut s: StoreContextMut<'_, T>, (_, name): (Resource<R>, WasmStr)| {
                let name = writable_name(&name.to_str(&s)?);
                let map = map(get(s.data_mut()))?;
                Ok((name.map(|name| drop(map.remove(name))),))
            },
        )
    }

    /// A header name read from the guest, on the stack when short (all but absurd ones).
    enum Name {
        Stack([u8; NAME_ON_STACK], usize),
        Heap(String),
    }

    impl Name {
        fn read<T: 'static>(s: &StoreContextMut<'_, T>, name: &WasmStr) -> wasmtime::Result<Self> {
            let text = name.to_str(s)?;
            Ok(match text.len() <= NAME_ON_STACK {
                true => {
                    let mut buf = [0; NAME_ON_STACK];
                    buf[..text.len()].copy_from_slice(text.as_bytes());
                    Name::Stack(buf, text.len())
                }
                false => Name::Heap(text.into_owned()),
            })
        }

        fn as_str(&self) -> &str {
            match self {
                // Copied whole from a `str`, so still UTF-8.
                Name::Stack(buf, len) => std::str::from_utf8(&buf[..*len]).unwrap_or_default(),
                Name::Heap(name) => name,
            }
        }
    }

    /// The header a `set-header` asks for, checked as [`super::set`] checks it (the name
    /// first).
    fn field<T: 'static>(
        s: &StoreContextMut<'_, T>,
        name: &WasmStr,
        value: &WasmStr,
    ) -> wasmtime::Result<Result<(HeaderName, HeaderValue), FieldError>> {
        let name = writable_name(&name.to_str(s)?);
        let value = HeaderValue::from_bytes(value.to_str(s)?.as_bytes())
            .map_err(|_| FieldError::InvalidValue);
        Ok(name.and_then(|name| Ok((name, value?))))
    }
}

impl wit_http::Host for HttpCtx {}

impl wit_http::HostRequest for HttpCtx {
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

    fn client_cert(
        &mut self,
        _: Resource<RequestHandle>,
    ) -> HostResult<Option<wit_http::ClientCert>> {
        let cert = self.request()?.meta.client_cert.as_deref();
        Ok(cert.map(|c| wit_http::ClientCert {
            subject: c.subject.clone(),
            issuer: c.issuer.clone(),
            sans: c.sans.clone(),
            fingerprint: c.fingerprint.clone(),
        }))
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

impl wit_http::HostResponse for HttpCtx {
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

async fn read_body(body: &mut Body, limit: u64) -> Result<Vec<u8>, BodyError> {
    match body.buffer(limit).await {
        Ok(bytes) => Ok(bytes.to_vec()),
        Err(MsgBodyError::TooLarge(limit)) => Err(BodyError::TooLarge(limit)),
        Err(MsgBodyError::ReadFailed(why)) => Err(BodyError::ReadFailed(why)),
        Err(e @ MsgBodyError::TimedOut(_)) => Err(BodyError::ReadFailed(e.to_string())),
    }
}

/// [`message::replace_path_and_query`], refused as the WIT `field-error` says.
fn replace_path_and_query(uri: &mut http::Uri, pq: String) -> Result<(), FieldError> {
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

/// A header name a plugin may write: valid, and not one the gateway owns.
pub fn writable_name(name: &str) -> Result<HeaderName, FieldError> {
    let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| FieldError::InvalidName)?;
    match message::is_host_owned_header(&name) {
        true => Err(FieldError::Forbidden),
        false => Ok(name),
    }
}

fn set(map: &mut HeaderMap, name: &str, value: &str, append: bool) -> Result<(), FieldError> {
    let name = writable_name(name)?;
    let value = HeaderValue::from_bytes(value.as_bytes()).map_err(|_| FieldError::InvalidValue)?;
    if append {
        map.append(name, value);
    } else {
        map.insert(name, value);
    }
    Ok(())
}

fn remove(map: &mut HeaderMap, name: &str) -> Result<(), FieldError> {
    map.remove(writable_name(name)?);
    Ok(())
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
