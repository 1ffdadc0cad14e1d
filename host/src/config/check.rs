//! Checks every section shares: durations, counts, one-of choices, status lists, client
//! keys. Each reports into [`Errors`] under the TOML path it is given.

use std::time::Duration;

use super::error::Errors;
use super::model::*;
use super::*;

/// A count between 1 and `max`; `default` when absent.
pub(super) fn count(
    errors: &mut Errors,
    path: &str,
    v: Option<u64>,
    default: u64,
    max: u64,
) -> u64 {
    let n = v.unwrap_or(default);
    if !(1..=max).contains(&n) {
        errors.push(path, format!("must be between 1 and {max}, got {n}"));
    }
    n.clamp(1, max)
}

/// Parses an optional humane duration (`"250ms"`, `"2s"`, `"1m 30s"`); `Some(None)` when
/// absent, `None` (with an error recorded) when malformed.
pub(super) fn duration(
    errors: &mut Errors,
    path: &str,
    v: &Option<String>,
) -> Option<Option<Duration>> {
    let Some(text) = v else { return Some(None) };
    let parsed = humantime::parse_duration(text)
        .map_err(|e| format!("not a duration ({e}): {text:?}; write e.g. \"250ms\" or \"2s\""))
        .and_then(|d| match d {
            d if d.is_zero() => Err("must be greater than zero".to_owned()),
            d if d > MAX_DURATION => Err(format!("must be at most 24h, got {text:?}")),
            d => Ok(d),
        });
    errors.check(path, parsed).map(Some)
}

/// `client-ip`, `header:NAME` or `cookie:NAME`.
pub fn key_source(text: &str) -> Result<KeySource, String> {
    if text == "client-ip" {
        return Ok(KeySource::ClientIp);
    }
    if let Some(h) = text.strip_prefix("header:")
        && let Ok(h) = http::HeaderName::try_from(h)
    {
        return Ok(KeySource::Header(h));
    }
    if let Some(c) = text.strip_prefix("cookie:").filter(|c| !c.is_empty()) {
        return Ok(KeySource::Cookie(c.to_owned()));
    }
    Err(format!("expected \"client-ip\", \"header:NAME\" or \"cookie:NAME\", got {text:?}"))
}

pub(super) fn statuses(errors: &mut Errors, path: &str, codes: &[u16]) {
    for (i, c) in codes.iter().enumerate() {
        if !(100..600).contains(c) {
            errors.push(format!("{path}[{i}]"), format!("not an HTTP status: {c}"));
        }
    }
}

/// A count that must be at least 1; `default` when absent.
pub(super) fn at_least_one(
    errors: &mut Errors,
    path: &str,
    v: Option<u32>,
    default: u32,
) -> Option<u32> {
    match v {
        Some(0) => {
            errors.push(path, "must be at least 1");
            None
        }
        v => Some(v.unwrap_or(default)),
    }
}

/// One of several named values; absent means the first.
pub fn one_of<T: Clone>(
    errors: &mut Errors,
    path: &str,
    value: &Option<String>,
    names: &[(&str, T)],
) -> Option<T> {
    let Some(v) = value.as_deref() else { return Some(names[0].1.clone()) };
    if let Some((_, t)) = names.iter().find(|(n, _)| *n == v) {
        return Some(t.clone());
    }
    let expected: Vec<String> = names.iter().map(|(n, _)| format!("{n:?}")).collect();
    let expected = match expected.as_slice() {
        [a, b] => format!("{a} or {b}"),
        all => format!("one of {}", all.join(", ")),
    };
    errors.push(path, format!("expected {expected}, got {v:?}"));
    None
}
