//! W3C Trace Context (`traceparent`, `tracestate`): a request continues its client's trace,
//! or starts one; the gateway is one hop of it, with a span id of its own, and the
//! upstream gets a `traceparent` naming that span as its parent.
//!
//! ```text
//! traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01
//!              version-trace id (16 bytes)-parent span id (8 bytes)-flags
//! ```

use std::fmt::Write as _;

use http::{HeaderMap, HeaderName, HeaderValue};

pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

const SAMPLED: u8 = 0x01;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: u128,
    /// The client's span, when it sent a valid `traceparent`.
    pub parent_id: Option<u64>,
    /// The gateway's span for this request.
    pub span_id: u64,
    pub flags: u8,
}

impl TraceContext {
    /// Continues the trace in `headers` if its `traceparent` is valid (exactly one, version
    /// 00 or a later version read as 00, ids not all zero); otherwise starts a new trace,
    /// not sampled (the gateway records no spans of its own yet).
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut values = headers.get_all(&TRACEPARENT).iter();
        let parsed = match (values.next(), values.next()) {
            (Some(v), None) => parse(v.as_bytes()),
            _ => None,
        };
        let span_id = nonzero_u64();
        match parsed {
            Some((trace_id, parent, flags)) => {
                Self { trace_id, parent_id: Some(parent), span_id, flags }
            }
            None => {
                let trace_id = loop {
                    let id = fastrand::u128(..);
                    if id != 0 {
                        break id;
                    }
                };
                Self { trace_id, parent_id: None, span_id, flags: 0 }
            }
        }
    }

    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// Records the gateway's sampling decision, which the next hop inherits.
    pub fn set_sampled(&mut self, sampled: bool) {
        self.flags = (self.flags & !SAMPLED) | if sampled { SAMPLED } else { 0 };
    }

    /// The same trace, with `span_id` as the span the next hop is a child of.
    pub fn with_span(&self, span_id: u64) -> Self {
        Self { span_id, ..*self }
    }

    /// A new span id (never zero).
    pub fn new_span_id() -> u64 {
        nonzero_u64()
    }

    /// The `traceparent` for the upstream: this trace, with the gateway's span as parent.
    pub fn traceparent(&self) -> HeaderValue {
        // Written directly: `format!` cost ~2,500 instructions a request, on every request.
        let mut text = *b"00-00000000000000000000000000000000-0000000000000000-00";
        put_hex(&mut text[3..35], self.trace_id);
        put_hex(&mut text[36..52], u128::from(self.span_id));
        put_hex(&mut text[53..55], u128::from(self.flags));
        HeaderValue::from_bytes(&text).expect("hex digits and dashes")
    }

    /// The trace id as 32 lowercase hex digits, as logs and trace backends show it.
    pub fn trace_id_hex(&self) -> String {
        let mut s = String::with_capacity(32);
        let _ = write!(s, "{:032x}", self.trace_id);
        s
    }

    /// Sets `traceparent` for the next hop. A `tracestate` is kept only when the client's
    /// `traceparent` was valid (it belongs to that trace).
    pub fn propagate(&self, headers: &mut HeaderMap) {
        headers.insert(TRACEPARENT.clone(), self.traceparent());
        if self.parent_id.is_none() {
            headers.remove(&TRACESTATE);
        }
    }
}

/// `n`'s low digits in lowercase hex, filling `out` (ids written without `format!`, which
/// costs thousands of instructions a request).
pub(crate) fn put_hex(out: &mut [u8], mut n: u128) {
    for digit in out.iter_mut().rev() {
        *digit = b"0123456789abcdef"[(n & 0xf) as usize];
        n >>= 4;
    }
}

fn nonzero_u64() -> u64 {
    loop {
        let id = fastrand::u64(..);
        if id != 0 {
            return id;
        }
    }
}

/// `version-traceid-parentid-flags`, by the W3C rules: lowercase hex, version `ff` invalid,
/// version 00 exactly 55 bytes, a later version at least that and followed by `-`.
fn parse(v: &[u8]) -> Option<(u128, u64, u8)> {
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = hex(&v[0..2])? as u8;
    if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let trace_id = hex(&v[3..35])?;
    let parent = hex(&v[36..52])? as u64;
    let flags = hex(&v[53..55])? as u8;
    (trace_id != 0 && parent != 0).then_some((trace_id, parent, flags))
}

fn hex(digits: &[u8]) -> Option<u128> {
    let mut n: u128 = 0;
    for &d in digits {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        n = (n << 4) | u128::from(v);
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(tp: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT.clone(), HeaderValue::from_str(tp).unwrap());
        h
    }

    #[test]
    fn continues_a_valid_trace_with_a_new_span() {
        let h = headers("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let t = TraceContext::from_headers(&h);
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.parent_id, Some(0x00f067aa0ba902b7));
        assert!(t.sampled());
        let out = t.traceparent();
        let out = out.to_str().unwrap();
        assert!(out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{out}");
        assert!(out.ends_with("-01"));
        assert_ne!(&out[36..52], "00f067aa0ba902b7", "the gateway's own span");
    }

    #[test]
    fn traceparent_is_the_w3c_text() {
        let edge = [(1, 1, 0), (u128::MAX, u64::MAX, 0xff), (0xab << 120, 0xcd << 56, 0x01)];
        let random = (0..1000).map(|_| (fastrand::u128(..), fastrand::u64(..), fastrand::u8(..)));
        for (trace_id, span_id, flags) in edge.into_iter().chain(random) {
            let t = TraceContext { trace_id, parent_id: None, span_id, flags };
            let want = format!("00-{trace_id:032x}-{span_id:016x}-{flags:02x}");
            assert_eq!(t.traceparent(), want.as_str());
        }
    }

    #[test]
    fn refuses_malformed_and_starts_anew() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "garbage",
        ] {
            let t = TraceContext::from_headers(&headers(bad));
            assert_eq!(t.parent_id, None, "{bad}");
            assert_ne!(t.trace_id, 0);
            assert!(!t.sampled());
        }
        // A later version may carry more fields.
        let t = TraceContext::from_headers(&headers(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more",
        ));
        assert_eq!(t.parent_id, Some(0x00f067aa0ba902b7));
    }

    #[test]
    fn two_traceparents_are_refused_and_tracestate_follows_only_a_valid_parent() {
        let mut h = headers("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        h.append(
            TRACEPARENT.clone(),
            HeaderValue::from_static("00-aaf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        h.insert(TRACESTATE.clone(), HeaderValue::from_static("vendor=1"));
        let t = TraceContext::from_headers(&h);
        assert_eq!(t.parent_id, None);
        t.propagate(&mut h);
        assert_eq!(h.get_all(&TRACEPARENT).iter().count(), 1);
        assert!(h.get(&TRACESTATE).is_none());
    }
}
