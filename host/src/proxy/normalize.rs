//! The one normalisation of what a request asks for, applied once before routing, so that
//! the router, every plugin and the upstream read the same path, host and method.
//!
//! Path (RFC 3986 section 6.2.2, after Envoy's `normalize_path`, `merge_slashes` and
//! `path_with_escaped_slashes_action`):
//! 1. percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded, and every
//!    other escape is kept with upper-case hex digits; a malformed escape is refused;
//! 2. `%2F` and `%5C` (an encoded `/` or `\`) are refused, or with `escaped_slashes =
//!    "keep"` kept encoded, so they never separate segments for the router or a plugin;
//!    a raw `\` is always refused (some servers read it as `/`);
//! 3. dot segments (`.` and `..`, also when they were encoded) are resolved; `..` never
//!    climbs above `/`;
//! 4. runs of `/` are merged into one (`merge_slashes`, on by default).
//!
//! Host: one `Host` header at most; when the request target carries an authority
//! (absolute-form, or HTTP/2's `:authority`) the two must agree. The host is lower-cased and
//! loses a trailing dot, and is written back as the `Host` header that everything after
//! this reads.
//!
//! Method: methods are case-sensitive tokens (RFC 9110 section 9.1), but some upstreams
//! upper-case them. A method that differs from a standard one only in case (`delete`,
//! `Get`) is refused, so that a plugin matching `DELETE` and the upstream cannot disagree.

use std::borrow::Cow;

use http::HeaderValue;
use http::header::HOST;

pub use crate::config::{EscapedSlashes, PathPolicy};

/// Why a request was refused before routing. Every case is the client's fault (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("malformed percent-encoding in the path")]
    BadEscape,
    #[error("an encoded slash or backslash (%2F, %5C) in the path")]
    EscapedSlash,
    #[error("a backslash in the path")]
    Backslash,
    #[error("more than one Host header")]
    DuplicateHost,
    #[error("the Host header disagrees with the request target's authority")]
    HostMismatch,
    #[error("not a valid host")]
    BadHost,
    #[error("method {0:?} differs only in case from a standard method")]
    MethodCase(String),
    #[error("Connection names {0:?}, which the gateway sets itself")]
    ConnectionNamesOwnedHeader(String),
    #[error("header {0:?} has an underscore in its name (server.headers_with_underscores)")]
    UnderscoreHeader(String),
    #[error("a WebSocket over HTTP/2 on a route with `websocket.enabled = false`")]
    WebSocketOff,
}

/// Normalises the request head in place: method check, host, then path.
pub fn request(parts: &mut http::request::Parts, policy: PathPolicy) -> Result<(), Refused> {
    method(&parts.method)?;
    host(parts)?;
    if let Cow::Owned(path) = path(parts.uri.path(), policy)? {
        // Decoding unreserved characters and dropping segments keeps a valid path valid.
        let _ = crate::message::replace_path(&mut parts.uri, &path);
    }
    Ok(())
}

const STANDARD_METHODS: [&str; 9] =
    ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];

fn method(m: &http::Method) -> Result<(), Refused> {
    let text = m.as_str();
    let lower = text.bytes().any(|b| b.is_ascii_lowercase());
    if lower && STANDARD_METHODS.iter().any(|s| s.eq_ignore_ascii_case(text)) {
        return Err(Refused::MethodCase(text.to_owned()));
    }
    Ok(())
}

/// The normalised path; borrowed when nothing changes (the common case).
pub fn path(raw: &str, policy: PathPolicy) -> Result<Cow<'_, str>, Refused> {
    let b = raw.as_bytes();
    let suspicious = b.iter().any(|&c| c == b'%' || c == b'\\')
        || b.windows(2).any(|w| w[0] == b'/' && (w[1] == b'.' || w[1] == b'/'));
    if !suspicious || !raw.starts_with('/') {
        return Ok(Cow::Borrowed(raw));
    }
    let decoded = decode_unreserved(b, policy.escaped_slashes)?;
    let out = remove_dot_segments(&decoded, policy.merge_slashes);
    Ok(if out == raw { Cow::Borrowed(raw) } else { Cow::Owned(out) })
}

fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

fn decode_unreserved(b: &[u8], slashes: EscapedSlashes) -> Result<String, Refused> {
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => return Err(Refused::Backslash),
            b'%' => {
                let (Some(hi), Some(lo)) =
                    (b.get(i + 1).and_then(|&c| hex(c)), b.get(i + 2).and_then(|&c| hex(c)))
                else {
                    return Err(Refused::BadEscape);
                };
                let v = hi << 4 | lo;
                if is_unreserved(v) {
                    out.push(v as char);
                } else if (v == b'/' || v == b'\\') && slashes == EscapedSlashes::Reject {
                    return Err(Refused::EscapedSlash);
                } else {
                    out.push('%');
                    out.push(char::from(b"0123456789ABCDEF"[usize::from(hi)]));
                    out.push(char::from(b"0123456789ABCDEF"[usize::from(lo)]));
                }
                i += 3;
            }
            // The URI parser let only ASCII through.
            c => {
                out.push(c as char);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// RFC 3986 section 5.2.4 on an absolute path, plus optional merging of empty segments.
fn remove_dot_segments(path: &str, merge_slashes: bool) -> String {
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    let mut trailing_slash = false;
    for (i, seg) in segments.into_iter().enumerate() {
        let is_last = i == last;
        match seg {
            "." => trailing_slash = is_last,
            ".." => {
                out.pop();
                trailing_slash = is_last;
            }
            "" if is_last => trailing_slash = true,
            "" if merge_slashes => {}
            _ => {
                out.push(seg);
                trailing_slash = false;
            }
        }
    }
    let mut s = String::with_capacity(path.len());
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if trailing_slash || out.is_empty() {
        s.push('/');
    }
    s
}

/// One host at most, agreeing with the target's authority; written back normalised.
fn host(parts: &mut http::request::Parts) -> Result<(), Refused> {
    let mut all = parts.headers.get_all(HOST).iter();
    let header = all.next();
    if all.next().is_some() {
        return Err(Refused::DuplicateHost);
    }
    let header = header.map(|h| normalize_host(h.as_bytes())).transpose()?;
    let authority =
        parts.uri.authority().map(|a| normalize_host(a.as_str().as_bytes())).transpose()?;
    // `Some`: the Host header to write (it is missing, or not in normal form).
    let write = match (header, authority) {
        (Some(h), Some(a)) if h != a => return Err(Refused::HostMismatch),
        (Some(Cow::Borrowed(_)), _) => None,
        (Some(h), _) | (None, Some(h)) => Some(h.into_owned()),
        (None, None) => None,
    };
    if let Some(h) = write {
        let value = HeaderValue::try_from(h).map_err(|_| Refused::BadHost)?;
        parts.headers.insert(HOST, value);
    }
    Ok(())
}

/// `Api.Example.COM.:8080` -> `api.example.com:8080`; refuses what is not a host.
fn normalize_host(raw: &[u8]) -> Result<Cow<'_, str>, Refused> {
    let text = std::str::from_utf8(raw).map_err(|_| Refused::BadHost)?;
    let (name, port) = split_port(text)?;
    let ok = match name.strip_prefix('[') {
        Some(literal) => literal
            .strip_suffix(']')
            .filter(|ip| ip.bytes().all(|c| c.is_ascii_hexdigit() || c == b':' || c == b'.'))
            .map(|_| false),
        None => reg_name(name.as_bytes()),
    };
    let Some(upper_or_dot) = ok else { return Err(Refused::BadHost) };
    if !upper_or_dot {
        return Ok(Cow::Borrowed(text));
    }
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    let mut out = trimmed.to_ascii_lowercase();
    if let Some(port) = port {
        out.push(':');
        out.push_str(port);
    }
    Ok(Cow::Owned(out))
}

/// A host name (letters, digits, `-`, `_`, dots between non-empty labels, one trailing dot
/// allowed), in one pass: `None` if it is not one, else whether it needs rewriting
/// (upper case, or the trailing dot).
fn reg_name(name: &[u8]) -> Option<bool> {
    let mut prev_dot = true; // no leading dot
    let mut upper = false;
    for &c in name {
        match c {
            b'.' if prev_dot => return None,
            b'.' => prev_dot = true,
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => prev_dot = false,
            b'A'..=b'Z' => {
                upper = true;
                prev_dot = false;
            }
            _ => return None,
        }
    }
    // Empty, or just a dot, is no name.
    (name.len() > usize::from(prev_dot)).then_some(upper || prev_dot)
}

fn split_port(text: &str) -> Result<(&str, Option<&str>), Refused> {
    let colon = match text.starts_with('[') {
        true => text.find(']').map(|end| end + 1).filter(|&i| i < text.len()),
        false => text.rfind(':'),
    };
    let Some(i) = colon else { return Ok((text, None)) };
    let (name, port) = (&text[..i], &text[i + 1..]);
    if text.as_bytes()[i] != b':' || port.is_empty() || !port.bytes().all(|c| c.is_ascii_digit()) {
        return Err(Refused::BadHost);
    }
    Ok((name, Some(port)))
}

#[cfg(test)]
mod tests;
