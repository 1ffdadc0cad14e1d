//! # sluice-pdk: write Sluice gateway plugins in Rust
//!
//! A plugin is a type that implements [`Plugin`], exported with [`export_plugin!`], built
//! to a WebAssembly component:
//!
//! ```ignore
//! use sluice_pdk::{Action, Plugin, Request, Response};
//!
//! #[derive(serde::Deserialize)]
//! struct Config { greeting: String }
//!
//! struct Hello { greeting: String }
//!
//! impl Plugin for Hello {
//!     type Config = Config;
//!
//!     fn new(config: Config) -> Result<Self, String> {
//!         Ok(Hello { greeting: config.greeting })
//!     }
//!
//!     fn on_response(&self, _req: &Request, resp: &Response) {
//!         let _ = resp.set_header("x-greeting", &self.greeting);
//!     }
//! }
//!
//! sluice_pdk::export_plugin!(Hello);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2`; the `.wasm` file in
//! `target/wasm32-wasip2/release/` is the plugin. The crate type must be `cdylib`.
//!
//! ## The contract
//! - [`Plugin::new`] runs once per instance with the `config` table from the gateway's TOML.
//!   An `Err` rejects the config: the gateway refuses to start and prints your message.
//! - [`Plugin::on_request`] runs before the upstream is called, in route order.
//!   Return [`Action::Continue`] or answer locally with [`Action::respond`].
//! - [`Plugin::on_response`] runs after the upstream (or a local response), in reverse order.
//! - An instance may serve many requests (the default) or one hook call
//!   (`instances = "fresh"`). Do not keep per-request state in `self` between the two phases:
//!   the response phase may run in another instance.
//! - A panic fails only the current request (with a 500, or skipping the plugin if it is
//!   configured `on_error = "continue"`); the gateway logs the panic message.

extern crate self as sluice_pdk;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        // Hooks without resource handles: the messages are the call's, read through the
        // `request` and `response` functions, which saves the component model's handle
        // bookkeeping on every hook call and every host call.
        world: "handler-plugin",
        pub_export_macro: true,
        export_macro_name: "__export_world",
        default_bindings_module: "sluice_pdk::bindings",
        runtime_path: "sluice_pdk::__private::wit_bindgen::rt",
        bitflags_path: "sluice_pdk::__private::wit_bindgen::rt::bitflags",
        // Arguments are borrowed: `edit-headers` takes `&[HeaderEdit<'_>]` of `&str`s and
        // `headers` takes `&[&str]`, so a batch costs the plugin no copies.
        ownership: Borrowing { duplicate_if_necessary: true },
    });
}

pub use bindings::exports::sluice::plugin::handler::{Action, Hooks, LocalResponse};
pub use bindings::sluice::plugin::http::{
    BodyError, ClientCert, EditError, FieldError, HeaderEdit,
};

use bindings::sluice::plugin::{request, response};

/// The request of the hook call in progress, as it will be sent upstream. In the response
/// phase it is read-only in effect: changes made there are not sent anywhere.
///
/// Header names are case-insensitive; values that are not valid UTF-8 come with invalid
/// bytes replaced by U+FFFD. Setters refuse what HTTP would not allow with a
/// [`FieldError`], and the headers the gateway owns (hop-by-hop headers and
/// `content-length`) with [`FieldError::Forbidden`].
#[derive(Debug)]
pub struct Request {
    _call: (),
}

/// The response of the hook call in progress: the upstream's, or a plugin's local one.
#[derive(Debug)]
pub struct Response {
    _call: (),
}

impl Request {
    /// The method, e.g. `GET`.
    pub fn method(&self) -> String {
        request::method()
    }
    /// Errors: `InvalidValue` if `value` is not an HTTP token.
    pub fn set_method(&self, value: &str) -> Result<(), FieldError> {
        request::set_method(value)
    }
    /// The path without the query, e.g. `/api/users/7`. Never empty.
    pub fn path(&self) -> String {
        request::path()
    }
    /// Errors: `InvalidValue` if it does not start with `/` or holds characters not allowed
    /// in a URI path.
    pub fn set_path(&self, value: &str) -> Result<(), FieldError> {
        request::set_path(value)
    }
    /// The raw query string without the leading `?`, if the request has one.
    pub fn query(&self) -> Option<String> {
        request::query()
    }
    /// Replaces (or with `None`, removes) the query.
    pub fn set_query(&self, value: Option<&str>) -> Result<(), FieldError> {
        request::set_query(value)
    }
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<String> {
        request::header(name)
    }
    /// Every value of header `name`, in order.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        request::header_all(name)
    }
    /// The first value of each header in `names`, in one host call (at most 128 names).
    pub fn headers(&self, names: &[&str]) -> Vec<Option<String>> {
        request::headers(names)
    }
    /// The distinct header names present, lower-case.
    pub fn header_names(&self) -> Vec<String> {
        request::header_names()
    }
    /// Replaces every value of `name` with `value`.
    pub fn set_header(&self, name: &str, value: &str) -> Result<(), FieldError> {
        request::set_header(name, value)
    }
    /// Adds a value for `name`, keeping the existing ones.
    pub fn append_header(&self, name: &str, value: &str) -> Result<(), FieldError> {
        request::append_header(name, value)
    }
    /// Removes every value of `name`.
    pub fn remove_header(&self, name: &str) -> Result<(), FieldError> {
        request::remove_header(name)
    }
    /// Makes `edits` in order in one host call: all of them, or none when one is refused
    /// (at most 128 edits).
    pub fn edit_headers(&self, edits: &[HeaderEdit<'_>]) -> Result<(), EditError> {
        request::edit_headers(edits)
    }
    /// The whole body, buffered by the host on the first call.
    pub fn body(&self) -> Result<Vec<u8>, BodyError> {
        request::body()
    }
    /// Replaces the body; the host sets `content-length` to match.
    pub fn set_body(&self, body: &[u8]) {
        request::set_body(body)
    }
    /// The client's IP address as seen by Sluice, e.g. `127.0.0.1`.
    pub fn client_ip(&self) -> String {
        request::client_ip()
    }
    /// The id of this request, also sent upstream as `x-request-id`.
    pub fn request_id(&self) -> String {
        request::request_id()
    }
    /// The name of the route that matched.
    pub fn route(&self) -> String {
        request::route()
    }
    /// The value of route parameter `name`, percent-decoded.
    pub fn param(&self, name: &str) -> Option<String> {
        request::param(name)
    }
    /// Every route parameter, in pattern order.
    pub fn params(&self) -> Vec<(String, String)> {
        request::params()
    }
    /// The verified client certificate of this request's connection (mTLS), if any.
    pub fn client_cert(&self) -> Option<ClientCert> {
        request::client_cert()
    }
    /// What this plugin stored under `key` for this request with [`Request::set_context`].
    pub fn context(&self, key: &str) -> Option<String> {
        request::context(key)
    }
    /// Keeps `value` under `key` for this plugin's later phases of this request (at most
    /// 32 keys and 16 KiB per plugin per request).
    pub fn set_context(&self, key: &str, value: &str) -> Result<(), FieldError> {
        request::set_context(key, value)
    }
}

impl Response {
    /// The status code, e.g. `200`.
    pub fn status(&self) -> u16 {
        response::status()
    }
    /// Errors: `InvalidValue` if `code` is outside 100-999.
    pub fn set_status(&self, code: u16) -> Result<(), FieldError> {
        response::set_status(code)
    }
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<String> {
        response::header(name)
    }
    /// Every value of header `name`, in order.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        response::header_all(name)
    }
    /// The first value of each header in `names`, in one host call (at most 128 names).
    pub fn headers(&self, names: &[&str]) -> Vec<Option<String>> {
        response::headers(names)
    }
    /// The distinct header names present, lower-case.
    pub fn header_names(&self) -> Vec<String> {
        response::header_names()
    }
    /// Replaces every value of `name` with `value`.
    pub fn set_header(&self, name: &str, value: &str) -> Result<(), FieldError> {
        response::set_header(name, value)
    }
    /// Adds a value for `name`, keeping the existing ones.
    pub fn append_header(&self, name: &str, value: &str) -> Result<(), FieldError> {
        response::append_header(name, value)
    }
    /// Removes every value of `name`.
    pub fn remove_header(&self, name: &str) -> Result<(), FieldError> {
        response::remove_header(name)
    }
    /// Makes `edits` in order in one host call: all of them, or none when one is refused.
    pub fn edit_headers(&self, edits: &[HeaderEdit<'_>]) -> Result<(), EditError> {
        response::edit_headers(edits)
    }
    /// The whole body, buffered by the host on the first call.
    pub fn body(&self) -> Result<Vec<u8>, BodyError> {
        response::body()
    }
    /// Replaces the body; the host sets `content-length` to match.
    pub fn set_body(&self, body: &[u8]) {
        response::set_body(body)
    }
}

/// Time, from the host.
pub mod clock {
    pub use crate::bindings::sluice::plugin::clock::{monotonic_ns, now_ms};
}

/// The gateway's key-value store: shared by all instances of this plugin on every worker
/// thread, kept across reloads, private to this plugin. Values are bytes; `incr` keeps a
/// decimal counter. `ttl_ms` of 0 means no expiry.
///
/// ```ignore
/// let hits = sluice_pdk::kv::incr(&format!("hits:{ip}"), 1, 60_000)?; // a 60 s window
/// // A hit in this window and the count of the last one, in one call (one Redis round trip):
/// let (now, last) = sluice_pdk::kv::incr_and_get("w:12", 1, 120_000, "w:11")?;
/// ```
pub mod kv {
    pub use crate::bindings::sluice::plugin::kv::{
        KvError, compare_and_swap, delete, get, incr, incr_and_get, set,
    };
}

/// Metrics recorded under this plugin's name: `counter_add("rejected", 1)`,
/// `observe("lookup_seconds", 0.002)`.
pub mod metrics {
    pub use crate::bindings::sluice::plugin::metrics::{counter_add, observe};
}

/// Shapes that plugin configs often take.
pub mod config {
    /// A config value written as one item or a list of them: `issuer = "a"` or
    /// `issuer = ["a", "b"]`.
    #[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
    #[serde(untagged)]
    pub enum OneOrMany<T = String> {
        One(T),
        Many(Vec<T>),
    }

    impl<T> OneOrMany<T> {
        pub fn into_vec(self) -> Vec<T> {
            match self {
                OneOrMany::One(one) => vec![one],
                OneOrMany::Many(many) => many,
            }
        }
    }
}

/// Logging through the gateway's log; lines are tagged with the plugin, route and request id.
pub mod log {
    pub use crate::bindings::sluice::plugin::log::{Level, enabled, log};

    /// Logs at `level` if the gateway would keep it; `args` are only formatted then.
    pub fn log_fmt(level: Level, args: std::fmt::Arguments<'_>) {
        if enabled(level) {
            log(level, &args.to_string());
        }
    }
}

/// `sluice_pdk::info!("user {}", id)`; likewise `trace!`, `debug!`, `warn!`, `error!`.
#[macro_export]
macro_rules! info {
    ($($t:tt)*) => { $crate::log::log_fmt($crate::log::Level::Info, format_args!($($t)*)) };
}
#[macro_export]
macro_rules! debug {
    ($($t:tt)*) => { $crate::log::log_fmt($crate::log::Level::Debug, format_args!($($t)*)) };
}
#[macro_export]
macro_rules! trace {
    ($($t:tt)*) => { $crate::log::log_fmt($crate::log::Level::Trace, format_args!($($t)*)) };
}
#[macro_export]
macro_rules! warn {
    ($($t:tt)*) => { $crate::log::log_fmt($crate::log::Level::Warn, format_args!($($t)*)) };
}
#[macro_export]
macro_rules! error {
    ($($t:tt)*) => { $crate::log::log_fmt($crate::log::Level::Error, format_args!($($t)*)) };
}

/// A Sluice plugin. Both phases are optional; leave out the one you do not need and narrow
/// [`Plugin::hooks`] so the gateway never calls it.
pub trait Plugin: Sized + 'static {
    /// The shape of the `config` table; `()`-like configs can use
    /// `serde::de::IgnoredAny`.
    type Config: serde::de::DeserializeOwned;

    /// The phases this plugin takes part in, decided after `new`. The default is both;
    /// the gateway never calls a phase left out here.
    fn hooks(&self) -> Hooks {
        Hooks::all()
    }

    /// Builds the plugin from its config. `Err` rejects the config with that message.
    fn new(config: Self::Config) -> Result<Self, String>;

    /// The request phase: inspect or change `req`, then continue or respond locally.
    fn on_request(&self, req: &Request) -> Action {
        let _ = req;
        Action::Continue
    }

    /// The response phase: inspect or change `resp` before the client gets it.
    fn on_response(&self, req: &Request, resp: &Response) {
        let _ = (req, resp);
    }
}

impl Action {
    /// A local response with a `text/plain` body.
    pub fn respond(status: u16, body: impl Into<Vec<u8>>) -> Action {
        Action::Respond(LocalResponse::new(status).header("content-type", "text/plain").body(body))
    }
}

impl LocalResponse {
    pub fn new(status: u16) -> Self {
        LocalResponse { status, headers: Vec::new(), body: Vec::new() }
    }

    /// Adds a header (repeat a name to send it several times).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let name = name.into();
        if name.eq_ignore_ascii_case("content-type") {
            self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case("content-type"));
        }
        self.headers.push((name, value.into()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }
}

/// Whether `name` can be an HTTP header name (an RFC 9110 token), for checking names in a
/// plugin's config at `init` rather than failing at request time.
pub fn is_header_name(name: &str) -> bool {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    !name.is_empty() && name.bytes().all(token)
}

/// The raw (not percent-decoded) value of the first `name` parameter in `query`; a bare
/// `name` without `=` has the empty value.
pub fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| match pair.split_once('=') {
        Some((k, v)) if k == name => Some(v),
        None if pair == name => Some(""),
        _ => None,
    })
}

/// A config value with `${...}` variables taken from the request, parsed once at `init` and
/// rendered per request: `${request_id}`, `${client_ip}`, `${route}`, `${param.NAME}` (a
/// route parameter), the verified mTLS certificate's `${client_cert.subject}`,
/// `${client_cert.issuer}`, `${client_cert.fingerprint}` and `${client_cert.sans}` (its
/// SANs joined with `,`; all four empty without a certificate), and `${latency}` where the
/// plugin measures it (see [`Latency`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Template(Vec<TemplatePart>);

#[derive(Debug, Clone, PartialEq)]
enum TemplatePart {
    Text(String),
    RequestId,
    ClientIp,
    Route,
    Param(String),
    Cert(CertField),
    Latency,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum CertField {
    Subject,
    Issuer,
    Fingerprint,
    Sans,
}

/// Whether a template may use `${latency}` (the upstream's time, which only a plugin that
/// measures it can fill in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Latency {
    /// Allowed: the plugin passes the latency to [`Template::render`].
    Known,
    /// Refused with "only known in the response": a request-phase value.
    OnlyInResponse,
    /// Not a variable of this plugin at all.
    Unknown,
}

impl Template {
    /// Parses `value`. Errors name the bad variable and the known ones; prefix them with the
    /// config path.
    pub fn parse(value: &str, latency: Latency) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = value;
        while let Some(start) = rest.find("${") {
            if start > 0 {
                parts.push(TemplatePart::Text(rest[..start].to_owned()));
            }
            let Some(len) = rest[start..].find('}') else {
                return Err(format!("unclosed `${{` in {value:?}"));
            };
            let var = &rest[start + 2..start + len];
            parts.push(match (var, latency) {
                ("request_id", _) => TemplatePart::RequestId,
                ("client_ip", _) => TemplatePart::ClientIp,
                ("route", _) => TemplatePart::Route,
                ("client_cert.subject", _) => TemplatePart::Cert(CertField::Subject),
                ("client_cert.issuer", _) => TemplatePart::Cert(CertField::Issuer),
                ("client_cert.fingerprint", _) => TemplatePart::Cert(CertField::Fingerprint),
                ("client_cert.sans", _) => TemplatePart::Cert(CertField::Sans),
                ("latency", Latency::Known) => TemplatePart::Latency,
                ("latency", Latency::OnlyInResponse) => {
                    return Err("${latency} is only known in the response".into());
                }
                _ => match var.strip_prefix("param.") {
                    Some(name) if !name.is_empty() => TemplatePart::Param(name.to_owned()),
                    _ => {
                        let extra = if latency == Latency::Unknown { "" } else { ", latency" };
                        return Err(format!(
                            "unknown variable ${{{var}}} in {value:?} (known: request_id, \
                             client_ip, route, param.NAME, client_cert.subject, \
                             client_cert.issuer, client_cert.fingerprint, \
                             client_cert.sans{extra})"
                        ));
                    }
                },
            });
            rest = &rest[start + len + 1..];
        }
        if !rest.is_empty() {
            parts.push(TemplatePart::Text(rest.to_owned()));
        }
        Ok(Template(parts))
    }

    /// The value for this request; plain text is borrowed, not copied. `latency_ms` fills
    /// `${latency}` (empty when `None`).
    pub fn render(&self, req: &Request, latency_ms: Option<u64>) -> std::borrow::Cow<'_, str> {
        match self.0.as_slice() {
            [] => return "".into(),
            [TemplatePart::Text(t)] => return t.as_str().into(),
            _ => {}
        }
        let mut out = String::new();
        for p in &self.0 {
            match p {
                TemplatePart::Text(t) => out.push_str(t),
                TemplatePart::RequestId => out.push_str(&req.request_id()),
                TemplatePart::ClientIp => out.push_str(&req.client_ip()),
                TemplatePart::Route => out.push_str(&req.route()),
                TemplatePart::Param(n) => out.push_str(&req.param(n).unwrap_or_default()),
                TemplatePart::Cert(field) => {
                    if let Some(cert) = req.client_cert() {
                        match field {
                            CertField::Subject => out.push_str(&cert.subject),
                            CertField::Issuer => out.push_str(&cert.issuer),
                            CertField::Fingerprint => out.push_str(&cert.fingerprint),
                            CertField::Sans => out.push_str(&cert.sans.join(",")),
                        }
                    }
                }
                TemplatePart::Latency => {
                    if let Some(ms) = latency_ms {
                        out.push_str(&ms.to_string());
                    }
                }
            }
        }
        out.into()
    }

    /// Whether rendering needs the latency (so the plugin knows to measure it).
    pub fn uses_latency(&self) -> bool {
        self.0.contains(&TemplatePart::Latency)
    }
}

/// Parses a plugin's JSON config, naming the offending field on error, e.g.
/// `config.response.set: invalid type: integer, expected a string`.
pub fn parse_config<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, String> {
    let de = &mut serde_json::Deserializer::from_str(json);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        // serde_json appends " at line L column C", meaningless for a TOML author.
        let msg = inner.to_string();
        let msg = msg.split(" at line ").next().unwrap_or(&msg).to_owned();
        match path.as_str() {
            "." => format!("config: {msg}"),
            p => format!("config.{p}: {msg}"),
        }
    })
}

/// Exports a [`Plugin`] implementation as the component's `sluice:plugin/handler`.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        const _: () = {
            static SLOT: $crate::__private::Slot<$plugin> = $crate::__private::Slot::new();

            struct Export;

            impl $crate::__private::Guest for Export {
                fn init(config: String) -> Result<$crate::Hooks, String> {
                    SLOT.init(&config)
                }
                fn on_request() -> $crate::Action {
                    <$plugin as $crate::Plugin>::on_request(SLOT.get(), &$crate::__private::REQUEST)
                }
                fn on_response() {
                    let (req, resp) = (&$crate::__private::REQUEST, &$crate::__private::RESPONSE);
                    <$plugin as $crate::Plugin>::on_response(SLOT.get(), req, resp)
                }
            }

    $crate::bindings::__export_world!(Export with_types_in $crate::bindings);
        };
    };
}

#[doc(hidden)]
pub mod __private {
    use std::cell::UnsafeCell;

    pub use crate::bindings::exports::sluice::plugin::handler::Guest;
    pub use wit_bindgen;

    /// The messages of the call in progress, as the hooks are given them.
    pub static REQUEST: crate::Request = crate::Request { _call: () };
    pub static RESPONSE: crate::Response = crate::Response { _call: () };

    /// The plugin value of this instance.
    pub struct Slot<P>(UnsafeCell<Option<P>>);

    // SAFETY: a component instance runs on one thread and is never re-entered (the
    // component model forbids it), so there is never concurrent access to the slot.
    unsafe impl<P> Sync for Slot<P> {}

    impl<P: crate::Plugin> Slot<P> {
        #[allow(clippy::new_without_default)]
        pub const fn new() -> Self {
            Slot(UnsafeCell::new(None))
        }

        pub fn init(&self, config: &str) -> Result<crate::Hooks, String> {
            let config = crate::parse_config::<P::Config>(config)?;
            let plugin = P::new(config)?;
            let hooks = plugin.hooks();
            // SAFETY: see `Sync` above; no reference into the slot outlives a call.
            unsafe { *self.0.get() = Some(plugin) };
            Ok(hooks)
        }

        pub fn get(&self) -> &P {
            // SAFETY: see `Sync` above.
            match unsafe { &*self.0.get() } {
                Some(p) => p,
                None => panic!("the host called a hook before init"),
            }
        }
    }
}
