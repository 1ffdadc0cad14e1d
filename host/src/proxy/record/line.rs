//! One access-log line, formatted by hand into the writer's buffer.

use std::fmt::Write as _;
use std::time::Duration;

use crate::proxy::ctx::{BodyEnd, RequestCtx};

/// One access-log line's fields. No header but the user agent and referer is ever read,
/// and no query string (where API keys and tokens travel), so no secret reaches the log.
/// Written by hand rather than through serde: it runs for every request, and this way a
/// line costs a few hundred instructions and no allocation.
pub(super) struct Line<'a> {
    time: std::time::SystemTime,
    request_id: &'a str,
    client: std::net::SocketAddr,
    method: &'a str,
    path: &'a str,
    protocol: &'static str,
    status: u16,
    bytes_in: u64,
    bytes_out: u64,
    /// From arrival to the response body's end.
    duration: Duration,
    /// Time spent in upstream attempts (to each response head), summed.
    upstream: Option<Duration>,
    route: Option<&'a str>,
    upstream_name: Option<&'a str>,
    endpoint: Option<&'a str>,
    attempts: usize,
    answered_by: Option<&'a str>,
    error_origin: Option<&'a str>,
    /// A gRPC call's status (`None` for other requests).
    pub(super) grpc_status: Option<u32>,
    /// How the response body ended: complete, failed, abandoned (by the client), or none
    /// (no response was sent).
    body: &'static str,
    trace_id: u128,
    user_agent: Option<&'a str>,
    referer: Option<&'a str>,
}

impl<'a> Line<'a> {
    pub(super) fn of(
        ctx: &'a RequestCtx,
        status: u16,
        origin: Option<&'a str>,
        bytes_in: u64,
        total: Duration,
    ) -> Self {
        let attempts = &ctx.upstream.attempts;
        let text = |v: &'a Option<http::HeaderValue>| v.as_ref().and_then(|v| v.to_str().ok());
        Line {
            time: std::time::SystemTime::now(),
            request_id: ctx.id(),
            client: ctx.conn.peer,
            method: ctx.method.as_str(),
            path: ctx.path.as_ref().map_or("", |p| p.path()),
            protocol: protocol(ctx.version),
            status,
            bytes_in,
            bytes_out: ctx.bytes_out,
            duration: total,
            upstream: (!attempts.is_empty()).then(|| attempts.iter().map(|a| a.took).sum()),
            route: ctx.route(),
            upstream_name: ctx.upstream.upstream.as_deref(),
            endpoint: attempts.last().map(|a| a.endpoint.as_str()),
            attempts: attempts.len(),
            answered_by: ctx.outcome.as_ref().and_then(|o| o.answered_by.as_deref()),
            error_origin: origin,
            grpc_status: None,
            body: match ctx.body_end {
                BodyEnd::Pending => "none",
                BodyEnd::Complete => "complete",
                BodyEnd::Failed => "failed",
                BodyEnd::Abandoned => "abandoned",
            },
            trace_id: ctx.trace.trace_id,
            user_agent: text(&ctx.user_agent),
            // Only where the client came from, not what it carried in its query.
            referer: text(&ctx.referer).map(|r| r.split(['?', '#']).next().unwrap_or_default()),
        }
    }

    /// One JSON object; absent values are `null`.
    pub(super) fn json(&self, out: &mut String) {
        out.push_str("{\"time\":\"");
        stamp(out, self.time, Stamp::Rfc3339);
        // The request id (hex), the method (an HTTP token), the protocol, the body's end
        // and the error origin cannot hold a quote, a backslash or a control character.
        out.push_str("\",\"request_id\":\"");
        out.push_str(self.request_id);
        out.push('"');
        out.push_str(",\"client\":\"");
        client(out, self.client, true);
        out.push_str("\",\"method\":\"");
        out.push_str(self.method);
        out.push('"');
        out.push_str(",\"path\":");
        json_str(out, Some(self.path));
        out.push_str(",\"protocol\":\"");
        out.push_str(self.protocol);
        out.push_str("\",\"status\":");
        num(out, self.status);
        out.push_str(",\"bytes_in\":");
        num(out, self.bytes_in);
        out.push_str(",\"bytes_out\":");
        num(out, self.bytes_out);
        out.push_str(",\"duration_ms\":");
        ms(out, Some(self.duration), "null");
        out.push_str(",\"upstream_ms\":");
        ms(out, self.upstream, "null");
        for (key, value) in [
            (",\"route\":", self.route),
            (",\"upstream\":", self.upstream_name),
            (",\"endpoint\":", self.endpoint),
        ] {
            out.push_str(key);
            json_str(out, value);
        }
        out.push_str(",\"attempts\":");
        num(out, self.attempts);
        out.push_str(",\"answered_by\":");
        json_str(out, self.answered_by);
        out.push_str(",\"error_origin\":");
        match self.error_origin {
            Some(origin) => {
                out.push('"');
                out.push_str(origin);
                out.push('"');
            }
            None => out.push_str("null"),
        }
        out.push_str(",\"grpc_status\":");
        match self.grpc_status {
            Some(code) => num(out, code),
            None => out.push_str("null"),
        }
        out.push_str(",\"body\":\"");
        out.push_str(self.body);
        out.push('"');
        out.push_str(",\"trace_id\":\"");
        hex(out, self.trace_id);
        out.push_str("\",\"user_agent\":");
        json_str(out, self.user_agent);
        out.push_str(",\"referer\":");
        json_str(out, self.referer);
        out.push('}');
    }

    /// NCSA common log format (with `combined`: referer and user agent), then the
    /// gateway's fields as `key=value`.
    pub(super) fn clf(&self, out: &mut String, combined: bool) {
        client(out, self.client, false);
        out.push_str(" - - [");
        stamp(out, self.time, Stamp::Clf);
        out.push_str("] \"");
        out.push_str(self.method);
        out.push(' ');
        quoted(out, self.path);
        out.push(' ');
        out.push_str(self.protocol);
        out.push_str("\" ");
        num(out, self.status);
        out.push(' ');
        num(out, self.bytes_out);
        if combined {
            out.push_str(" \"");
            quoted(out, self.referer.unwrap_or("-"));
            out.push_str("\" \"");
            quoted(out, self.user_agent.unwrap_or("-"));
            out.push('"');
        }
        let or_dash = |v: Option<&'a str>| v.unwrap_or("-");
        for (key, value) in [
            (" request_id=", self.request_id),
            (" route=", or_dash(self.route)),
            (" upstream=", or_dash(self.upstream_name)),
            (" endpoint=", or_dash(self.endpoint)),
        ] {
            out.push_str(key);
            out.push_str(value);
        }
        out.push_str(" attempts=");
        num(out, self.attempts);
        out.push_str(" bytes_in=");
        num(out, self.bytes_in);
        out.push_str(" duration_ms=");
        ms(out, Some(self.duration), "-");
        out.push_str(" upstream_ms=");
        ms(out, self.upstream, "-");
        for (key, value) in [
            (" answered_by=", or_dash(self.answered_by)),
            (" error_origin=", or_dash(self.error_origin)),
            (" body=", self.body),
        ] {
            out.push_str(key);
            out.push_str(value);
        }
        if let Some(code) = self.grpc_status {
            out.push_str(" grpc_status=");
            num(out, code);
        }
        out.push_str(" trace_id=");
        hex(out, self.trace_id);
    }
}

/// An integer, in decimal (`itoa`: a fraction of `Display`'s cost).
fn num(out: &mut String, n: impl itoa::Integer) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// A trace id: 32 lowercase hex digits.
fn hex(out: &mut String, v: u128) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 32];
    for (half, word) in [(v >> 64) as u64, v as u64].into_iter().enumerate() {
        for i in 0..16 {
            buf[half * 16 + i] = DIGITS[(word >> (60 - 4 * i)) as usize & 0xf];
        }
    }
    out.push_str(std::str::from_utf8(&buf).unwrap_or_default());
}

/// Milliseconds with three decimals (microseconds), or `absent`.
fn ms(out: &mut String, d: Option<Duration>, absent: &str) {
    match d {
        Some(d) => {
            let micros = d.subsec_micros();
            num(out, d.as_secs() * 1000 + u64::from(micros / 1000));
            out.push('.');
            three_digits(out, (micros % 1000) as u16);
        }
        None => out.push_str(absent),
    }
}

/// `n` (below 1000) as three digits, zero-padded.
fn three_digits(out: &mut String, n: u16) {
    for d in [n / 100, n / 10 % 10, n % 10] {
        out.push(char::from(b'0' + d as u8));
    }
}

/// The client's IP address (with its port in JSON), IPv4 without the formatting
/// machinery (`Display` for an address costs more than the rest of the line).
fn client(out: &mut String, peer: std::net::SocketAddr, port: bool) {
    match peer {
        std::net::SocketAddr::V4(v4) => {
            let mut buf = itoa::Buffer::new();
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(buf.format(octet));
            }
            if port {
                out.push(':');
                out.push_str(buf.format(v4.port()));
            }
        }
        std::net::SocketAddr::V6(_) if port => {
            let _ = write!(out, "{peer}");
        }
        std::net::SocketAddr::V6(v6) => {
            let _ = write!(out, "{}", v6.ip());
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Stamp {
    /// `2026-12-03T06:00:42.123Z`
    Rfc3339,
    /// `03/Dec/2026:06:00:42 +0000`
    Clf,
}

/// The time of `at`, in UTC. The text up to the second is formatted once per second and
/// thread, and reused.
fn stamp(out: &mut String, at: std::time::SystemTime, kind: Stamp) {
    thread_local! {
        static LAST: std::cell::RefCell<(u64, Option<Stamp>, String)> =
            const { std::cell::RefCell::new((0, None, String::new())) };
    }
    let since = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    LAST.with_borrow_mut(|(at_secs, at_kind, text)| {
        if *at_secs != secs || *at_kind != Some(kind) {
            let time = chrono::DateTime::from_timestamp(secs as i64, 0).unwrap_or_default();
            text.clear();
            let pattern = match kind {
                Stamp::Rfc3339 => "%Y-%m-%dT%H:%M:%S",
                Stamp::Clf => "%d/%b/%Y:%H:%M:%S +0000",
            };
            let _ = write!(text, "{}", time.format(pattern));
            (*at_secs, *at_kind) = (secs, Some(kind));
        }
        out.push_str(text);
    });
    if kind == Stamp::Rfc3339 {
        out.push('.');
        three_digits(out, since.subsec_millis() as u16);
        out.push('Z');
    }
}

/// A JSON string (or `null`): quotes, backslashes and control characters escaped; the
/// common case, with none of them, is copied whole.
fn json_str(out: &mut String, value: Option<&str>) {
    let Some(text) = value else {
        return out.push_str("null");
    };
    out.push('"');
    // Which bytes a JSON string cannot hold as they are (a table: one load a byte).
    const ESCAPED: [bool; 256] = {
        let mut t = [false; 256];
        let mut b = 0;
        while b < 0x20 {
            t[b] = true;
            b += 1;
        }
        t[b'"' as usize] = true;
        t[b'\\' as usize] = true;
        t[0x7f] = true;
        t
    };
    if !text.bytes().any(|b| ESCAPED[b as usize]) {
        out.push_str(text);
        return out.push('"');
    }
    let mut plain = 0;
    for (i, b) in text.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..0x20 | 0x7f => "",
            _ => continue,
        };
        out.push_str(&text[plain..i]);
        match escape {
            "" => {
                let _ = write!(out, "\\u{b:04x}");
            }
            e => out.push_str(e),
        }
        plain = i + 1;
    }
    out.push_str(&text[plain..]);
    out.push('"');
}

fn protocol(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// Text inside a quoted field: `"` and `\` escaped, anything not printable ASCII as
/// `\xHH`, so no client can forge a field or a line.
fn quoted(out: &mut String, text: &str) {
    for b in text.bytes() {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\x{b:02X}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_fields_cannot_break_out() {
        let mut s = String::new();
        quoted(&mut s, "a\"b\\c\nd\u{7f}é");
        assert_eq!(s, "a\\\"b\\\\c\\x0Ad\\x7F\\xC3\\xA9");
    }

    #[test]
    fn json_strings_read_back_as_what_was_written() {
        for text in ["plain", "a\"b\\c\nd\r\t\u{1}\u{7f}é", "", "\"", "x\u{1f}"] {
            let mut s = String::new();
            json_str(&mut s, Some(text));
            assert_eq!(serde_json::from_str::<String>(&s).unwrap(), text, "{s}");
        }
        let mut s = String::new();
        json_str(&mut s, None);
        assert_eq!(s, "null");
    }

    #[test]
    fn times_and_clients_format_as_their_standards_say() {
        let at = std::time::UNIX_EPOCH + Duration::from_millis(1_764_741_642_007);
        let mut s = String::new();
        stamp(&mut s, at, Stamp::Rfc3339);
        s.push(' ');
        stamp(&mut s, at, Stamp::Clf);
        s.push(' ');
        stamp(&mut s, at + Duration::from_secs(1), Stamp::Rfc3339);
        assert_eq!(
            s,
            "2025-12-03T06:00:42.007Z 03/Dec/2025:06:00:42 +0000 2025-12-03T06:00:43.007Z"
        );
        let mut s = String::new();
        client(&mut s, "10.0.200.7:5100".parse().unwrap(), true);
        s.push(' ');
        client(&mut s, "[::1]:80".parse().unwrap(), true);
        s.push(' ');
        client(&mut s, "[::1]:80".parse().unwrap(), false);
        assert_eq!(s, "10.0.200.7:5100 [::1]:80 ::1");
        let mut s = String::new();
        ms(&mut s, Some(Duration::from_micros(12_345_678)), "-");
        s.push(' ');
        ms(&mut s, Some(Duration::from_micros(7)), "-");
        assert_eq!(s, "12345.678 0.007");
        for id in [0, 1, 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736, u128::MAX] {
            let mut s = String::new();
            hex(&mut s, id);
            assert_eq!(s, format!("{id:032x}"));
        }
    }
}
