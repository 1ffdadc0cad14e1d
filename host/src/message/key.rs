//! A request's client key: what consistent hashing, sticky splits and sticky rollouts hash
//! to keep one client on one endpoint, upstream or plugin version.

use std::net::IpAddr;

use crate::config::KeySource;

/// The hash of a request's client key, if the request has one.
pub fn request_key(
    source: &KeySource,
    parts: &http::request::Parts,
    client_ip: IpAddr,
) -> Option<u64> {
    match source {
        KeySource::ClientIp => Some(stable_hash(client_ip.to_string().as_bytes())),
        KeySource::Header(name) => parts.headers.get(name).map(|v| stable_hash(v.as_bytes())),
        KeySource::Cookie(name) => parts
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(cookie::Cookie::split_parse)
            .filter_map(Result::ok)
            .find(|c| c.name() == name)
            .map(|c| stable_hash(c.value().as_bytes())),
    }
}

/// FNV-1a with a final mix: the same in every process and build, so gateways sharing a
/// config agree on where a key goes.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // splitmix64's finalizer spreads FNV's weak low bits.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_from_the_ip_a_header_or_a_cookie() {
        let (parts, ()) = http::Request::get("/")
            .header("x-user", "u1")
            .header("cookie", "a=1; session=s9")
            .body(())
            .unwrap()
            .into_parts();
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        assert_eq!(request_key(&KeySource::ClientIp, &parts, ip), Some(stable_hash(b"10.0.0.7")));
        let header = KeySource::Header(http::HeaderName::from_static("x-user"));
        assert_eq!(request_key(&header, &parts, ip), Some(stable_hash(b"u1")));
        let cookie = KeySource::Cookie("session".into());
        assert_eq!(request_key(&cookie, &parts, ip), Some(stable_hash(b"s9")));
        assert_eq!(request_key(&KeySource::Cookie("none".into()), &parts, ip), None);
    }
}
