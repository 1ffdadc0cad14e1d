//! The Extism contract, documented for authors in docs/extism.md: a hook gets the phase's
//! messages as JSON ([`Input`]) and returns JSON edits ([`Output`]), or nothing at all to
//! let the message go on unchanged.

use std::borrow::Cow;
use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use sluice_bindings::exports::sluice::plugin::filter::LocalResponse;

use super::super::error::{FailureKind, Phase};
use super::super::hook::{Decision, local_response};
use crate::capability::http::writable_name;
use crate::message::{self, Body, BodyError, Call};

/// What a hook gets: the phase, the request, and in `on_response` the response.
#[derive(Serialize)]
struct Input<'a> {
    phase: &'static str,
    request: RequestIn<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<ResponseIn<'a>>,
}

#[derive(Serialize)]
struct RequestIn<'a> {
    id: &'a str,
    route: &'a str,
    client_ip: String,
    /// The verified client certificate (mTLS), absent without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    client_cert: Option<&'a crate::message::ClientCert>,
    method: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    params: BTreeMap<&'a str, &'a str>,
    headers: Vec<(&'a str, Cow<'a, str>)>,
    /// Only in the request phase: by the response phase the body has gone upstream.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    body: Option<BodyIn<'a>>,
}

#[derive(Serialize)]
struct ResponseIn<'a> {
    status: u16,
    headers: Vec<(&'a str, Cow<'a, str>)>,
    #[serde(flatten)]
    body: BodyIn<'a>,
}

/// `body` as text when it is UTF-8, else `body_base64`; both null when there is none to
/// give (`body_error` says why).
#[derive(Serialize)]
struct BodyIn<'a> {
    body: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body_error: Option<String>,
}

/// The plugin's edits. Every field is optional; no output at all, `{}` or `null` leave the
/// message as it was.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Output {
    /// Request phase: answer the client now; later plugins and the upstream are skipped.
    respond: Option<Respond>,
    /// Headers to set on the phase's message (request or response), replacing any values.
    #[serde(default)]
    set_headers: BTreeMap<String, String>,
    #[serde(default)]
    remove_headers: Vec<String>,
    /// Request phase: the new path, with its query if any (`/v2/users?id=1`).
    path: Option<String>,
    /// Request phase: the new method.
    method: Option<String>,
    /// Response phase: the new status.
    status: Option<u16>,
    /// The new body of the phase's message, as text or as base64.
    body: Option<String>,
    body_base64: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Respond {
    status: u16,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    body: Option<String>,
    body_base64: Option<String>,
}

pub async fn input(phase: Phase, call: &mut Call) -> Result<Vec<u8>, FailureKind> {
    let limit = call.request.meta.max_body_bytes;
    let request_body = match phase {
        Phase::Request => Some(buffer(&mut call.request.body, limit).await),
        Phase::Response => None,
    };
    let response_body = match (&mut call.response, phase) {
        (Some(resp), Phase::Response) => Some(buffer(&mut resp.body, limit).await),
        _ => None,
    };
    let req = &call.request;
    let request = RequestIn {
        id: req.meta.id(),
        route: &req.meta.route,
        client_ip: req.meta.client_ip_text().to_owned(),
        client_cert: req.meta.client_cert.as_deref(),
        method: req.parts.method.as_str(),
        path: req.parts.uri.path(),
        query: req.parts.uri.query(),
        params: req.meta.params.iter().map(|(k, v)| (&**k, v.as_str())).collect(),
        headers: headers_in(&req.parts.headers),
        body: request_body.as_ref().map(body_in),
    };
    let response = match (&call.response, &response_body) {
        (Some(resp), Some(body)) => Some(ResponseIn {
            status: resp.parts.status.as_u16(),
            headers: headers_in(&resp.parts.headers),
            body: body_in(body),
        }),
        _ => None,
    };
    let phase = match phase {
        Phase::Request => "request",
        Phase::Response => "response",
    };
    serde_json::to_vec(&Input { phase, request, response }).map_err(|e| FailureKind::Trap {
        message: format!("encoding the input: {e}"),
        stderr: None,
    })
}

/// The body, buffered up to the route's limit; a larger body is left streaming, untouched, a
/// failed one is never sent on, and the plugin is told why it got none.
async fn buffer(body: &mut Body, limit: u64) -> Result<bytes::Bytes, String> {
    match body.buffer(limit).await {
        Ok(bytes) => Ok(bytes.clone()),
        Err(BodyError::TooLarge(limit)) => Err(format!("larger than max_body_bytes ({limit})")),
        Err(BodyError::ReadFailed(why)) => Err(format!("cannot be read: {why}")),
        Err(e @ BodyError::TimedOut(_)) => Err(format!("cannot be read: {e}")),
    }
}

fn body_in(body: &Result<bytes::Bytes, String>) -> BodyIn<'_> {
    match body {
        Ok(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => BodyIn { body: Some(text), body_base64: None, body_error: None },
            Err(_) => {
                BodyIn { body: None, body_base64: Some(BASE64.encode(bytes)), body_error: None }
            }
        },
        Err(why) => BodyIn { body: None, body_base64: None, body_error: Some(why.clone()) },
    }
}

fn headers_in(headers: &http::HeaderMap) -> Vec<(&str, Cow<'_, str>)> {
    headers.iter().map(|(n, v)| (n.as_str(), String::from_utf8_lossy(v.as_bytes()))).collect()
}

/// Applies the plugin's output to the phase's message. Everything is checked before
/// anything changes: a refused output fails the call and leaves the message as it was, so
/// `on_error = "continue"` never goes on with half an edit.
pub fn apply(phase: Phase, output: &[u8], call: &mut Call) -> Result<Decision, FailureKind> {
    let out: Output = match output.trim_ascii() {
        b"" | b"null" => Output::default(),
        json => serde_json::from_slice(json)
            .map_err(|e| bad(format!("output is not the JSON Sluice expects: {e}")))?,
    };
    match phase {
        Phase::Request => apply_to_request(out, call),
        Phase::Response => apply_to_response(out, call),
    }
}

fn bad(what: String) -> FailureKind {
    FailureKind::BadReturn(what)
}

fn apply_to_request(out: Output, call: &mut Call) -> Result<Decision, FailureKind> {
    if out.status.is_some() {
        return Err(bad("`status` is for on_response; use `respond` in on_request".into()));
    }
    let body = body_out(out.body, out.body_base64, "")?;
    if let Some(respond) = out.respond {
        let body = body_out(respond.body, respond.body_base64, "respond.")?;
        let local = LocalResponse {
            status: respond.status,
            headers: respond.headers.into_iter().collect(),
            body: body.unwrap_or_default(),
        };
        return local_response(local);
    }
    let req = &mut call.request;
    let headers = HeaderEdits::check(&out.set_headers, &out.remove_headers)?;
    let uri = match out.path {
        None => None,
        Some(path) => {
            let refused = || bad(format!("`path` {path:?} is not an absolute path"));
            if !path.starts_with('/') {
                return Err(refused());
            }
            let mut uri = req.parts.uri.clone();
            message::replace_path_and_query(&mut uri, path.clone()).map_err(|_| refused())?;
            Some(uri)
        }
    };
    let method = match out.method {
        None => None,
        Some(m) => Some(
            http::Method::from_bytes(m.as_bytes())
                .map_err(|_| bad(format!("`method` {m:?} is not a method")))?,
        ),
    };
    // Everything was checked: now it applies, whole.
    headers.apply(&mut req.parts.headers);
    if let Some(uri) = uri {
        req.parts.uri = uri;
    }
    if let Some(method) = method {
        req.parts.method = method;
    }
    if let Some(body) = body {
        message::set_fixed_length(&mut req.parts.headers, body.len());
        req.body = Body::Full(body.into());
    }
    Ok(Decision::Continue)
}

fn apply_to_response(out: Output, call: &mut Call) -> Result<Decision, FailureKind> {
    for (field, set) in [
        ("respond", out.respond.is_some()),
        ("path", out.path.is_some()),
        ("method", out.method.is_some()),
    ] {
        if set {
            return Err(bad(format!("`{field}` is for on_request")));
        }
    }
    let body = body_out(out.body, out.body_base64, "")?;
    let headers = HeaderEdits::check(&out.set_headers, &out.remove_headers)?;
    let status = match out.status {
        None => None,
        Some(s) => Some(
            http::StatusCode::from_u16(s)
                .map_err(|_| bad(format!("`status` {s} is not 100-999")))?,
        ),
    };
    // Everything was checked: now it applies, whole.
    let resp = call.response.as_mut().expect("the response phase has a response");
    headers.apply(&mut resp.parts.headers);
    if let Some(status) = status {
        resp.parts.status = status;
    }
    if let Some(body) = body {
        message::set_fixed_length(&mut resp.parts.headers, body.len());
        resp.body = Body::Full(body.into());
    }
    Ok(Decision::Continue)
}

fn body_out(
    text: Option<String>,
    base64: Option<String>,
    at: &str,
) -> Result<Option<Vec<u8>>, FailureKind> {
    match (text, base64) {
        (Some(_), Some(_)) => {
            Err(FailureKind::BadReturn(format!("set `{at}body` or `{at}body_base64`, not both")))
        }
        (Some(text), None) => Ok(Some(text.into_bytes())),
        (None, Some(b64)) => BASE64
            .decode(b64.as_bytes())
            .map(Some)
            .map_err(|e| FailureKind::BadReturn(format!("`{at}body_base64` is not base64: {e}"))),
        (None, None) => Ok(None),
    }
}

/// Header edits, checked (names a plugin may write, valid values) but not yet applied.
struct HeaderEdits {
    remove: Vec<http::HeaderName>,
    set: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl HeaderEdits {
    fn check(set: &BTreeMap<String, String>, remove: &[String]) -> Result<Self, FailureKind> {
        let remove = remove
            .iter()
            .map(|name| {
                writable_name(name)
                    .map_err(|_| FailureKind::BadReturn(format!("cannot remove header {name:?}")))
            })
            .collect::<Result<_, _>>()?;
        let set = set
            .iter()
            .map(|(name, value)| {
                let refused = || FailureKind::BadReturn(format!("cannot set header {name:?}"));
                let n = writable_name(name).map_err(|_| refused())?;
                let v = http::HeaderValue::from_bytes(value.as_bytes()).map_err(|_| refused())?;
                Ok((n, v))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { remove, set })
    }

    fn apply(self, headers: &mut http::HeaderMap) {
        for name in self.remove {
            headers.remove(name);
        }
        for (name, value) in self.set {
            headers.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_text_or_base64_never_both() {
        assert!(body_out(Some("a".into()), Some("YQ==".into()), "").is_err());
        assert_eq!(body_out(None, Some("YQ==".into()), "").unwrap(), Some(b"a".to_vec()));
        assert!(body_out(None, Some("%%%".into()), "respond.").is_err());
        let binary = Ok(bytes::Bytes::from_static(&[0xff, 0x00]));
        let b = body_in(&binary);
        assert_eq!((b.body, b.body_base64.as_deref()), (None, Some("/wA=")));
    }

    fn call(path: &str) -> Call {
        Call { request: crate::message::RequestMsg::for_test(path), response: None }
    }

    #[test]
    fn a_refused_edit_fails_the_call_and_leaves_the_request_as_it_was() {
        let mut c = call("/orig?q=1");
        let out = br#"{"path":"/new?x=2","set_headers":{"x-a":"1"}}"#;
        assert!(matches!(apply(Phase::Request, out, &mut c), Ok(Decision::Continue)));
        assert_eq!(c.request.parts.uri, "/new?x=2");
        assert_eq!(c.request.parts.headers["x-a"], "1");
        for bad in [r#"{"path":"relative"}"#, r#"{"path":"/a b"}"#, r#"{"status":200}"#] {
            let mut c = call("/orig?q=1");
            assert!(apply(Phase::Request, bad.as_bytes(), &mut c).is_err(), "{bad}");
            assert_eq!(c.request.parts.uri, "/orig?q=1", "{bad}");
        }
    }

    #[test]
    fn a_refused_output_applies_none_of_its_edits() {
        // Header edits with a path that is refused: the headers stay as they were.
        let mut c = call("/orig");
        c.request.parts.headers.insert("x-keep", http::HeaderValue::from_static("1"));
        let out = br#"{"set_headers":{"x-new":"1"},"remove_headers":["x-keep"],"path":"rel"}"#;
        assert!(apply(Phase::Request, out, &mut c).is_err());
        assert_eq!(c.request.parts.headers.get("x-new"), None);
        assert_eq!(c.request.parts.headers["x-keep"], "1");
        // A bad header value after a good one, or a bad method: nothing changes either.
        let out = br#"{"set_headers":{"a-ok":"1","b-bad":"x
y"}}"#;
        assert!(apply(Phase::Request, out, &mut c).is_err());
        assert_eq!(c.request.parts.headers.get("a-ok"), None);
        let out = br#"{"set_headers":{"x-new":"1"},"method":"BAD METHOD"}"#;
        assert!(apply(Phase::Request, out, &mut c).is_err());
        assert_eq!(c.request.parts.headers.get("x-new"), None);

        // Response phase: header edits plus an invalid status.
        let (parts, ()) = http::Response::builder()
            .status(200)
            .header("x-up", "1")
            .body(())
            .unwrap()
            .into_parts();
        c.response = Some(crate::message::ResponseMsg { parts, body: Body::empty() });
        let out = br#"{"set_headers":{"x-new":"1"},"remove_headers":["x-up"],"status":1000}"#;
        let err = apply(Phase::Response, out, &mut c).err().unwrap();
        assert!(err.to_string().contains("`status` 1000 is not 100-999"), "{err}");
        let resp = c.response.as_ref().unwrap();
        assert_eq!(resp.parts.status, 200);
        assert_eq!(resp.parts.headers["x-up"], "1");
        assert_eq!(resp.parts.headers.get("x-new"), None);
        // The same edits with a valid status apply whole.
        let out = br#"{"set_headers":{"x-new":"1"},"remove_headers":["x-up"],"status":201}"#;
        assert!(apply(Phase::Response, out, &mut c).is_ok());
        let resp = c.response.as_ref().unwrap();
        assert_eq!((resp.parts.status.as_u16(), resp.parts.headers.get("x-up")), (201, None));
        assert_eq!(resp.parts.headers["x-new"], "1");
    }

    #[test]
    fn unknown_output_fields_are_refused() {
        let err = serde_json::from_slice::<Output>(br#"{"set_header":{"a":"b"}}"#).err().unwrap();
        assert!(err.to_string().contains("unknown field `set_header`"), "{err}");
    }
}
