//! WIT `http`: the request and response of the hook call in progress, as a plugin reads
//! and edits them.
//!
//! Every function answers from the message of the call in progress; only reading a body
//! waits (for the peer). Errors a plugin can handle are WIT results; a call outside a hook
//! is a broken invariant and traps.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use sluice_bindings::sluice::plugin::http as wit_http;
use sluice_bindings::sluice::plugin::{request as wit_request, response as wit_response};
use sluice_bindings::{RequestHandle, ResponseHandle};
use wasmtime::component::{HasSelf, Linker, Resource};
use wit_http::{BodyError, EditError, FieldError, HeaderEdit};

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
    wit_request::add_to_linker::<T, HasSelf<HttpCtx>>(linker, get)?;
    wit_response::add_to_linker::<T, HasSelf<HttpCtx>>(linker, get)?;
    in_place::add_to_linker(linker, get)
}

/// The header calls every plugin makes, registered over bindgen's, which lift each `string`
/// argument into a new `String`: here names and values are read where they lie in the
/// guest's memory (a name copied to the stack, a value straight into its `HeaderValue`).
/// Each is registered twice: as a method of `http`'s resource (world `plugin`) and as a
/// function of the `request` or `response` interface (world `handler-plugin`).
mod in_place {
    use wasmtime::StoreContextMut;
    use wasmtime::component::{ComponentType, Lift, LinkerInstance, WasmList, WasmStr};

    use super::*;

    /// The interfaces as this host links them (older 0.2.x imports match them by semver).
    const HTTP: &str = "sluice:plugin/http@0.2.3";
    const REQUEST: &str = "sluice:plugin/request@0.2.3";
    const RESPONSE: &str = "sluice:plugin/response@0.2.3";

    /// Names longer than this (none a plugin needs) take the ordinary, allocating path.
    const NAME_ON_STACK: usize = 64;

    /// Where a message's headers are, in the call in progress.
    type MapOf = fn(&mut HttpCtx) -> HostResult<&mut HeaderMap>;

    pub fn add_to_linker<T: Send + 'static>(
        linker: &mut Linker<T>,
        get: fn(&mut T) -> &mut HttpCtx,
    ) -> wasmtime::Result<()> {
        let request: MapOf = |c| Ok(&mut c.request()?.parts.headers);
        let response: MapOf = |c| Ok(&mut c.response()?.parts.headers);
        linker.allow_shadowing(true);
        let mut http = linker.instance(HTTP)?;
        methods::<T, RequestHandle>(&mut http, "request", get, request)?;
        methods::<T, ResponseHandle>(&mut http, "response", get, response)?;
        functions(&mut linker.instance(REQUEST)?, get, request)?;
        functions(&mut linker.instance(RESPONSE)?, get, response)?;
        linker.allow_shadowing(false);
        Ok(())
    }

    /// `header`, `headers`, `set-header`, `append-header`, `remove-header` and
    /// `edit-headers` as methods of resource `kind`, whose headers `map` finds.
    fn methods<T: Send + 'static, R: 'static>(
        http: &mut LinkerInstance<'_, T>,
        kind: &str,
        get: fn(&mut T) -> &mut HttpCtx,
        map: MapOf,
    ) -> wasmtime::Result<()> {
        http.func_wrap(
            &format!("[method]{kind}.header"),
            move |s: StoreContextMut<'_, T>, (_, name): (Resource<R>, WasmStr)| {
                header(s, get, map, name)
            },
        )?;
        http.func_wrap(
            &format!("[method]{kind}.headers"),
            move |s: StoreContextMut<'_, T>, (_, names): (Resource<R>, WasmList<WasmStr>)| {
                headers(s, get, map, names)
            },
        )?;
        http.func_wrap(
            &format!("[method]{kind}.edit-headers"),
            move |s: StoreContextMut<'_, T>, (_, edits): (Resource<R>, WasmList<EditIn>)| {
                edit_headers(s, get, map, edits)
            },
        )?;
        for (method, append) in [("set-header", false), ("append-header", true)] {
            http.func_wrap(
                &format!("[method]{kind}.{method}"),
                move |s: StoreContextMut<'_, T>,
                      (_, name, value): (Resource<R>, WasmStr, WasmStr)| {
                    put_header(s, get, map, name, value, append)
                },
            )?;
        }
        http.func_wrap(
            &format!("[method]{kind}.remove-header"),
            move |s: StoreContextMut<'_, T>, (_, name): (Resource<R>, WasmStr)| {
                remove_header(s, get, map, name)
            },
        )
    }

    /// The same calls as functions of the `request` or `response` interface.
    fn functions<T: Send + 'static>(
        interface: &mut LinkerInstance<'_, T>,
        get: fn(&mut T) -> &mut HttpCtx,
        map: MapOf,
    ) -> wasmtime::Result<()> {
        interface.func_wrap("header", move |s: StoreContextMut<'_, T>, (name,): (WasmStr,)| {
            header(s, get, map, name)
        })?;
        interface.func_wrap(
            "headers",
            move |s: StoreContextMut<'_, T>, (names,): (WasmList<WasmStr>,)| {
                headers(s, get, map, names)
            },
        )?;
        interface.func_wrap(
            "edit-headers",
            move |s: StoreContextMut<'_, T>, (edits,): (WasmList<EditIn>,)| {
                edit_headers(s, get, map, edits)
            },
        )?;
        for (function, append) in [("set-header", false), ("append-header", true)] {
            interface.func_wrap(
                function,
                move |s: StoreContextMut<'_, T>, (name, value): (WasmStr, WasmStr)| {
                    put_header(s, get, map, name, value, append)
                },
            )?;
        }
        interface
            .func_wrap("remove-header", move |s: StoreContextMut<'_, T>, (name,): (WasmStr,)| {
                remove_header(s, get, map, name)
            })
    }

    type Out<R> = wasmtime::Result<(R,)>;

    fn header<T: 'static>(
        mut s: StoreContextMut<'_, T>,
        get: fn(&mut T) -> &mut HttpCtx,
        map: MapOf,
        name: WasmStr,
    ) -> Out<Option<String>> {
        let name = Name::read(&s, &name)?;
        Ok((super::get(map(get(s.data_mut()))?, name.as_str()),))
    }

    fn headers<T: 'static>(
        mut s: StoreContextMut<'_, T>,
        get: fn(&mut T) -> &mut HttpCtx,
        map: MapOf,
        names: WasmList<WasmStr>,
    ) -> Out<Vec<Option<String>>> {
        batch_len(names.len())?;
        let names = names.iter(&mut s)?.collect::<wasmtime::Result<Vec<_>>>()?;
        let names =
            names.iter().map(|n| Name::read(&s, n)).collect::<wasmtime::Result<Vec<_>>>()?;
        let map = map(get(s.data_mut()))?;
        Ok((names.iter().map(|name| super::get(map, name.as_str())).collect(),))
    }

    fn edit_headers<T: 'static>(
        mut s: StoreContextMut<'_, T>,
        get: fn(&mut T) -> &mut HttpCtx,
        map: MapOf,
        edits: WasmList<EditIn>,
    ) -> Out<Result<(), EditError>> {
        batch_len(edits.len())?;
        let edits = edits.iter(&mut s)?.collect::<wasmtime::Result<Vec<_>>>()?;
        // Checked as they are read: no list of the texts in between.
        let checked = check_edits(edits.iter().map(|edit| {
            Ok(match edit {
                EditIn::Set((name, value)) => Edit::Put(name.to_str(&s)?, value.to_str(&s)?, false),
                EditIn::Append((name, value)) => {
                    Edit::Put(name.to_str(&s)?, value.to_str(&s)?, true)
                }
                EditIn::Remove(name) => Edit::Remove(name.to_str(&s)?),
            })
        }))?;
        Ok((match checked {
            Ok(checked) => Ok(apply_edits(map(get(s.data_mut()))?, checked)?),
            Err(e) => Err(e),
        },))
    }

    fn put_header<T: 'static>(
        mut s: StoreContextMut<'_, T>,
        get: fn(&mut T) -> &mut HttpCtx,
        map: MapOf,
        name: WasmStr,
        value: WasmStr,
        append: bool,
    ) -> Out<Result<(), FieldError>> {
        let field = super::field(&name.to_str(&s)?, &value.to_str(&s)?);
        Ok((match field {
            Ok((name, value)) => Ok(put(map(get(s.data_mut()))?, name, value, append)?),
            Err(e) => Err(e),
        },))
    }

    fn remove_header<T: 'static>(
        mut s: StoreContextMut<'_, T>,
        get: fn(&mut T) -> &mut HttpCtx,
        map: MapOf,
        name: WasmStr,
    ) -> Out<Result<(), FieldError>> {
        let name = writable_name(&name.to_str(&s)?);
        let map = map(get(s.data_mut()))?;
        Ok((name.map(|name| drop(map.remove(name))),))
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

    /// A `header-edit` lifted where it lies: its names and values are read in place.
    #[derive(ComponentType, Lift)]
    #[component(variant)]
    enum EditIn {
        #[component(name = "set")]
        Set((WasmStr, WasmStr)),
        #[component(name = "append")]
        Append((WasmStr, WasmStr)),
        #[component(name = "remove")]
        Remove(WasmStr),
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

    fn headers(
        &mut self,
        _: Resource<RequestHandle>,
        names: Vec<String>,
    ) -> HostResult<Vec<Option<String>>> {
        get_each(&self.request()?.parts.headers, &names)
    }

    fn edit_headers(
        &mut self,
        _: Resource<RequestHandle>,
        edits: Vec<HeaderEdit>,
    ) -> HostResult<Result<(), EditError>> {
        edit(&mut self.request()?.parts.headers, &edits)
    }

    fn set_header(
        &mut self,
        _: Resource<RequestHandle>,
        name: String,
        value: String,
    ) -> HostResult<Result<(), FieldError>> {
        set(&mut self.request()?.parts.headers, &name, &value, false)
    }

    fn append_header(
        &mut self,
        _: Resource<RequestHandle>,
        name: String,
        value: String,
    ) -> HostResult<Result<(), FieldError>> {
        set(&mut self.request()?.parts.headers, &name, &value, true)
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

    fn headers(
        &mut self,
        _: Resource<ResponseHandle>,
        names: Vec<String>,
    ) -> HostResult<Vec<Option<String>>> {
        get_each(&self.response()?.parts.headers, &names)
    }

    fn edit_headers(
        &mut self,
        _: Resource<ResponseHandle>,
        edits: Vec<HeaderEdit>,
    ) -> HostResult<Result<(), EditError>> {
        edit(&mut self.response()?.parts.headers, &edits)
    }

    fn set_header(
        &mut self,
        _: Resource<ResponseHandle>,
        name: String,
        value: String,
    ) -> HostResult<Result<(), FieldError>> {
        set(&mut self.response()?.parts.headers, &name, &value, false)
    }

    fn append_header(
        &mut self,
        _: Resource<ResponseHandle>,
        name: String,
        value: String,
    ) -> HostResult<Result<(), FieldError>> {
        set(&mut self.response()?.parts.headers, &name, &value, true)
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

/// The request and response of world `handler-plugin`, whose functions are `http`'s methods
/// without the handle: the handle's methods above ignore it (there is only ever the call in
/// progress), so these pass a placeholder. The hot header calls are [`in_place`]'s.
fn req() -> Resource<RequestHandle> {
    Resource::new_borrow(0)
}

fn resp() -> Resource<ResponseHandle> {
    Resource::new_borrow(0)
}

type Field = HostResult<Result<(), FieldError>>;

impl wit_request::Host for HttpCtx {
    fn method(&mut self) -> HostResult<String> {
        wit_http::HostRequest::method(self, req())
    }
    fn set_method(&mut self, value: String) -> Field {
        wit_http::HostRequest::set_method(self, req(), value)
    }
    fn path(&mut self) -> HostResult<String> {
        wit_http::HostRequest::path(self, req())
    }
    fn set_path(&mut self, value: String) -> Field {
        wit_http::HostRequest::set_path(self, req(), value)
    }
    fn query(&mut self) -> HostResult<Option<String>> {
        wit_http::HostRequest::query(self, req())
    }
    fn set_query(&mut self, value: Option<String>) -> Field {
        wit_http::HostRequest::set_query(self, req(), value)
    }
    fn header(&mut self, name: String) -> HostResult<Option<String>> {
        wit_http::HostRequest::header(self, req(), name)
    }
    fn header_all(&mut self, name: String) -> HostResult<Vec<String>> {
        wit_http::HostRequest::header_all(self, req(), name)
    }
    fn headers(&mut self, names: Vec<String>) -> HostResult<Vec<Option<String>>> {
        wit_http::HostRequest::headers(self, req(), names)
    }
    fn header_names(&mut self) -> HostResult<Vec<String>> {
        wit_http::HostRequest::header_names(self, req())
    }
    fn set_header(&mut self, name: String, value: String) -> Field {
        wit_http::HostRequest::set_header(self, req(), name, value)
    }
    fn append_header(&mut self, name: String, value: String) -> Field {
        wit_http::HostRequest::append_header(self, req(), name, value)
    }
    fn remove_header(&mut self, name: String) -> Field {
        wit_http::HostRequest::remove_header(self, req(), name)
    }
    fn edit_headers(&mut self, edits: Vec<HeaderEdit>) -> HostResult<Result<(), EditError>> {
        wit_http::HostRequest::edit_headers(self, req(), edits)
    }
    async fn body(&mut self) -> HostResult<Result<Vec<u8>, BodyError>> {
        wit_http::HostRequest::body(self, req()).await
    }
    fn set_body(&mut self, body: Vec<u8>) -> HostResult<()> {
        wit_http::HostRequest::set_body(self, req(), body)
    }
    fn client_ip(&mut self) -> HostResult<String> {
        wit_http::HostRequest::client_ip(self, req())
    }
    fn request_id(&mut self) -> HostResult<String> {
        wit_http::HostRequest::request_id(self, req())
    }
    fn route(&mut self) -> HostResult<String> {
        wit_http::HostRequest::route(self, req())
    }
    fn param(&mut self, name: String) -> HostResult<Option<String>> {
        wit_http::HostRequest::param(self, req(), name)
    }
    fn params(&mut self) -> HostResult<Vec<(String, String)>> {
        wit_http::HostRequest::params(self, req())
    }
    fn client_cert(&mut self) -> HostResult<Option<wit_http::ClientCert>> {
        wit_http::HostRequest::client_cert(self, req())
    }
    fn context(&mut self, key: String) -> HostResult<Option<String>> {
        wit_http::HostRequest::context(self, req(), key)
    }
    fn set_context(&mut self, key: String, value: String) -> Field {
        wit_http::HostRequest::set_context(self, req(), key, value)
    }
}

impl wit_response::Host for HttpCtx {
    fn status(&mut self) -> HostResult<u16> {
        wit_http::HostResponse::status(self, resp())
    }
    fn set_status(&mut self, code: u16) -> Field {
        wit_http::HostResponse::set_status(self, resp(), code)
    }
    fn header(&mut self, name: String) -> HostResult<Option<String>> {
        wit_http::HostResponse::header(self, resp(), name)
    }
    fn header_all(&mut self, name: String) -> HostResult<Vec<String>> {
        wit_http::HostResponse::header_all(self, resp(), name)
    }
    fn headers(&mut self, names: Vec<String>) -> HostResult<Vec<Option<String>>> {
        wit_http::HostResponse::headers(self, resp(), names)
    }
    fn header_names(&mut self) -> HostResult<Vec<String>> {
        wit_http::HostResponse::header_names(self, resp())
    }
    fn set_header(&mut self, name: String, value: String) -> Field {
        wit_http::HostResponse::set_header(self, resp(), name, value)
    }
    fn append_header(&mut self, name: String, value: String) -> Field {
        wit_http::HostResponse::append_header(self, resp(), name, value)
    }
    fn remove_header(&mut self, name: String) -> Field {
        wit_http::HostResponse::remove_header(self, resp(), name)
    }
    fn edit_headers(&mut self, edits: Vec<HeaderEdit>) -> HostResult<Result<(), EditError>> {
        wit_http::HostResponse::edit_headers(self, resp(), edits)
    }
    async fn body(&mut self) -> HostResult<Result<Vec<u8>, BodyError>> {
        wit_http::HostResponse::body(self, resp()).await
    }
    fn set_body(&mut self, body: Vec<u8>) -> HostResult<()> {
        wit_http::HostResponse::set_body(self, resp(), body)
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

/// The most entries one `headers` or `edit-headers` call takes. A host call is not
/// interrupted, and a list's entries may all point at one large string: without a bound one
/// call could copy it millions of times. Past this the plugin traps.
pub const MAX_BATCH: usize = 128;

fn batch_len(len: usize) -> HostResult<()> {
    match len <= MAX_BATCH {
        true => Ok(()),
        false => Err(wasmtime::format_err!(
            "a plugin passed {len} headers in one call; at most {MAX_BATCH}"
        )),
    }
}

fn get_each(map: &HeaderMap, names: &[String]) -> HostResult<Vec<Option<String>>> {
    batch_len(names.len())?;
    Ok(names.iter().map(|name| get(map, name)).collect())
}

/// `edit-headers` with its list lifted by bindgen (the linker uses [`in_place`]'s).
fn edit(map: &mut HeaderMap, edits: &[HeaderEdit]) -> HostResult<Result<(), EditError>> {
    batch_len(edits.len())?;
    let checked = check_edits(edits.iter().map(|e| {
        Ok(match e {
            HeaderEdit::Set((name, value)) => Edit::Put(name, value, false),
            HeaderEdit::Append((name, value)) => Edit::Put(name, value, true),
            HeaderEdit::Remove(name) => Edit::Remove(name),
        })
    }))?;
    match checked {
        Ok(checked) => apply_edits(map, checked).map(Ok),
        Err(e) => Ok(Err(e)),
    }
}

fn names(map: &HeaderMap) -> Vec<String> {
    map.keys().map(|k| k.as_str().to_owned()).collect()
}

/// A header name a plugin may write: valid, and not one the gateway owns.
pub fn writable_name(name: &str) -> Result<HeaderName, FieldError> {
    if let Some(known) = recent::get(name) {
        return Ok(known);
    }
    let parsed = HeaderName::from_bytes(name.as_bytes()).map_err(|_| FieldError::InvalidName)?;
    if message::is_host_owned_header(&parsed) {
        return Err(FieldError::Forbidden);
    }
    // Only a name written as it is kept (lower case): an exact match then finds it.
    if parsed.as_str() == name {
        recent::keep(&parsed);
    }
    Ok(parsed)
}

/// The names plugins wrote lately on this thread, checked and ready to clone. Plugins write
/// the same few names on every request, and making a name from bytes validates each byte
/// and, for a name outside the standard set, allocates; a clone of a kept one is a
/// reference count. Only names that passed [`writable_name`]'s checks are kept.
mod recent {
    use std::cell::RefCell;

    use http::HeaderName;

    const SLOTS: usize = 16;

    struct Names {
        slots: [Option<HeaderName>; SLOTS],
        next: usize,
    }

    thread_local! {
        static NAMES: RefCell<Names> =
            const { RefCell::new(Names { slots: [const { None }; SLOTS], next: 0 }) };
    }

    pub(super) fn get(name: &str) -> Option<HeaderName> {
        NAMES.with_borrow(|n| n.slots.iter().flatten().find(|k| k.as_str() == name).cloned())
    }

    pub(super) fn keep(name: &HeaderName) {
        NAMES.with_borrow_mut(|n| {
            let at = n.next;
            n.slots[at] = Some(name.clone());
            n.next = (at + 1) % SLOTS;
        });
    }
}

/// The header a `set-header` or `append-header` asks for, checked: the name first.
fn field(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), FieldError> {
    let name = writable_name(name)?;
    let value = HeaderValue::from_bytes(value.as_bytes()).map_err(|_| FieldError::InvalidValue)?;
    Ok((name, value))
}

fn set(
    map: &mut HeaderMap,
    name: &str,
    value: &str,
    append: bool,
) -> HostResult<Result<(), FieldError>> {
    match field(name, value) {
        Ok((name, value)) => put(map, name, value, append).map(Ok),
        Err(e) => Ok(Err(e)),
    }
}

/// Sets or appends a checked header. A map holds at most 32,768 fields (`http`'s limit,
/// where its `insert` and `append` panic): a plugin that would pass it traps instead.
fn put(map: &mut HeaderMap, name: HeaderName, value: HeaderValue, append: bool) -> HostResult<()> {
    let added = match append {
        true => map.try_append(name, value).map(drop),
        false => map.try_insert(name, value).map(drop),
    };
    added.map_err(|_| wasmtime::format_err!("a plugin took a message past 32768 header fields"))
}

/// One `header-edit` as the plugin wrote it, wherever its text was read from.
enum Edit<S> {
    /// Set (`false`) or append (`true`) a value.
    Put(S, S, bool),
    Remove(S),
}

/// One `header-edit`, checked.
enum Checked {
    Put(HeaderName, HeaderValue, bool),
    Remove(HeaderName),
}

/// Every edit checked before any is made, so a refused batch changes nothing; the error
/// names the first refused edit. The outer error is one reading an edit (a trap).
fn check_edits<S: AsRef<str>>(
    edits: impl ExactSizeIterator<Item = HostResult<Edit<S>>>,
) -> HostResult<Result<Vec<Checked>, EditError>> {
    let mut checked = Vec::with_capacity(edits.len());
    for (index, edit) in edits.enumerate() {
        let edit = match edit? {
            Edit::Put(name, value, append) => field(name.as_ref(), value.as_ref())
                .map(|(name, value)| Checked::Put(name, value, append)),
            Edit::Remove(name) => writable_name(name.as_ref()).map(Checked::Remove),
        };
        match edit {
            Ok(edit) => checked.push(edit),
            Err(error) => {
                let index = u32::try_from(index).unwrap_or(u32::MAX);
                return Ok(Err(EditError { index, error }));
            }
        }
    }
    Ok(Ok(checked))
}

fn apply_edits(map: &mut HeaderMap, checked: Vec<Checked>) -> HostResult<()> {
    for edit in checked {
        match edit {
            Checked::Put(name, value, append) => put(map, name, value, append)?,
            Checked::Remove(name) => drop(map.remove(name)),
        }
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

    #[test]
    fn writable_names_are_kept_only_after_their_checks() {
        // Twice each: the second answer may come from the names kept on this thread.
        for _ in 0..2 {
            assert_eq!(writable_name("x-ratelimit-limit").unwrap().as_str(), "x-ratelimit-limit");
            assert_eq!(writable_name("X-Mixed-Case").unwrap().as_str(), "x-mixed-case");
            assert_eq!(writable_name("vary").unwrap(), http::header::VARY);
            assert!(matches!(writable_name("content-length"), Err(FieldError::Forbidden)));
            assert!(matches!(writable_name("Transfer-Encoding"), Err(FieldError::Forbidden)));
            assert!(matches!(writable_name("bad name"), Err(FieldError::InvalidName)));
            assert!(matches!(writable_name(""), Err(FieldError::InvalidName)));
        }
        // More names than slots: every one still comes back as itself.
        for i in 0..40 {
            let name = format!("x-name-{i}");
            assert_eq!(writable_name(&name).unwrap().as_str(), name);
        }
        assert_eq!(writable_name("x-ratelimit-limit").unwrap().as_str(), "x-ratelimit-limit");
    }
}
