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
    for (i, digit) in hex.iter_mut().enumerate() {
        *digit = b"0123456789abcdef"[((id >> (60 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&hex).expect("hex digits are a valid header value")
}
