//! The request id: the client's own when it is usable, else a new one.

use std::sync::atomic::{AtomicU64, Ordering};

use http::HeaderValue;

pub static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// The client's `x-request-id` when it is short and printable (reused without a copy),
/// else a new one.
pub fn of(headers: &http::HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&X_REQUEST_ID)
        && v.to_str().is_ok()
        && !v.is_empty()
        && v.len() <= 128
    {
        return v.clone();
    }
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static PREFIX: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let prefix = PREFIX.get_or_init(|| {
        use std::hash::{BuildHasher, RandomState};
        RandomState::new().hash_one(std::process::id()) as u32
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let Ok(n) = u32::try_from(n) else {
        let id = format!("{prefix:08x}{n:08x}");
        return HeaderValue::try_from(id).expect("hex digits are a valid header value");
    };
    // 16 hex digits, written directly: `format!` cost ~1,100 instructions a request.
    let id = (u64::from(*prefix) << 32) | u64::from(n);
    let mut hex = [0u8; 16];
    crate::telemetry::trace_context::put_hex(&mut hex, u128::from(id));
    HeaderValue::from_bytes(&hex).expect("hex digits are a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_id_is_sixteen_hex_digits_counting_up_and_a_usable_one_is_kept() {
        let none = http::HeaderMap::new();
        let (a, b) = (of(&none), of(&none));
        let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
        for id in [a, b] {
            assert_eq!(id.len(), 16, "{id}");
            assert!(id.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')), "{id}");
        }
        assert_eq!(a[..8], b[..8], "one prefix per process");
        let (a, b) = (u64::from_str_radix(a, 16).unwrap(), u64::from_str_radix(b, 16).unwrap());
        assert!(b > a, "{a:x} then {b:x}");
        let mut client = http::HeaderMap::new();
        client.insert(X_REQUEST_ID.clone(), HeaderValue::from_static("abc-123"));
        assert_eq!(of(&client), "abc-123");
        client.insert(X_REQUEST_ID.clone(), HeaderValue::from_bytes(&[b'x'; 129]).unwrap());
        assert_eq!(of(&client).len(), 16, "too long: replaced");
    }
}
