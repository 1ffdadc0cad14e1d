//! `[admin]`, `[metrics]` and `[access_log]`: what the operator sees.

use super::check::one_of;
use super::error::Errors;
use super::model::*;
use super::*;

pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";
const MAX_BUCKETS: usize = 64;
const DEFAULT_BUFFER_LINES: u32 = 4096;

pub(super) fn validate_admin(
    a: &schema::Admin,
    base: &std::path::Path,
    errors: &mut Errors,
) -> Option<Admin> {
    let text = a.listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN);
    let listen: Option<std::net::SocketAddr> = errors
        .check("admin.listen", text.parse().map_err(|_| format!("not an address:port: {text:?}")));
    let mut tokens = Vec::new();
    let mut ok = true;
    let flat = [
        ("admin", true, "admin.token", &a.token, &a.token_file),
        ("read", false, "admin.read_token", &a.read_token, &a.read_token_file),
    ];
    for (name, may_act, path, inline, file) in flat {
        match token_source(errors, base, path, inline, file) {
            Some(Some(source)) => tokens.push(AdminToken { name: name.into(), may_act, source }),
            Some(None) => {}
            None => ok = false,
        }
    }
    for (name, t) in &a.tokens {
        let path = format!("admin.tokens.{name}");
        if name.is_empty()
            || name.len() > 64
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
        {
            let msg = "a token's name is 1-64 letters, digits, '-', '_', '.' or '@'";
            errors.push(&path, msg);
            ok = false;
            continue;
        }
        if tokens.iter().any(|k: &AdminToken| k.name == *name) {
            errors.push(
                &path,
                format!("the name {name:?} is taken by admin.token or admin.read_token"),
            );
            ok = false;
            continue;
        }
        let may_act = match t.role.as_deref() {
            Some("admin") => true,
            Some("read") => false,
            _ => {
                errors.push(format!("{path}.role"), "expected \"admin\" or \"read\"");
                ok = false;
                continue;
            }
        };
        match token_source(errors, base, &format!("{path}.token"), &t.token, &t.token_file) {
            Some(Some(source)) => tokens.push(AdminToken { name: name.clone(), may_act, source }),
            Some(None) => {
                errors.push(&path, "set token or token_file");
                ok = false;
            }
            None => ok = false,
        }
    }
    let listen = listen?;
    if !listen.ip().is_loopback() && ok && tokens.is_empty() {
        // APISIX's fixed default key was scanned for across the internet: off this
        // machine, the admin API takes a token the operator chose, or one generated here.
        let msg = format!(
            "{text:?} is not a loopback address: set admin.token, or admin.token_file (a \
             missing file gets a generated token), so the admin API is not open to the network"
        );
        errors.push("admin.listen", msg);
        return None;
    }
    let tls = match &a.tls {
        None => Some(None),
        Some(t) => super::listeners::validate_tls(t, "admin.tls", base, errors).map(Some),
    };
    (ok && tls.is_some()).then(|| Admin { listen, tokens, tls: tls.flatten() })
}

/// The shortest inline token accepted: guessing one must not be practical.
const MIN_TOKEN_LEN: usize = 16;

/// A token from `inline` or `file` (not both). `Some(None)`: neither set.
fn token_source(
    errors: &mut Errors,
    base: &std::path::Path,
    path: &str,
    inline: &Option<String>,
    file: &Option<String>,
) -> Option<Option<TokenSource>> {
    match (inline, file) {
        (Some(_), Some(_)) => {
            errors.push(path, format!("set {path} or {path}_file, not both"));
            None
        }
        (Some(t), None) if t.trim().len() < MIN_TOKEN_LEN || t.chars().any(char::is_whitespace) => {
            let msg = format!("must be at least {MIN_TOKEN_LEN} characters, without spaces");
            errors.push(path, msg);
            None
        }
        (Some(t), None) => Some(Some(TokenSource::Inline(t.clone()))),
        (None, Some(f)) if f.is_empty() => {
            errors.push(format!("{path}_file"), "must not be empty");
            None
        }
        (None, Some(f)) => Some(Some(TokenSource::File(base.join(f)))),
        (None, None) => Some(None),
    }
}

pub(super) fn validate_metrics(m: &schema::Metrics, errors: &mut Errors) -> MetricsSettings {
    let mut settings = MetricsSettings { enabled: m.enabled.unwrap_or(true), ..Default::default() };
    let lists = [
        ("metrics.duration_buckets", &m.duration_buckets, &mut settings.duration_buckets),
        ("metrics.plugin_buckets", &m.plugin_buckets, &mut settings.plugin_buckets),
        ("metrics.size_buckets", &m.size_buckets, &mut settings.size_buckets),
    ];
    for (path, given, into) in lists {
        let Some(given) = given else { continue };
        match buckets(given) {
            Ok(()) => into.clone_from(given),
            Err(msg) => errors.push(path, msg),
        }
    }
    if let Some(labels) = &m.labels {
        settings.method_label = false;
        settings.status_label = false;
        settings.endpoint_label = false;
        for (i, label) in labels.iter().enumerate() {
            match label.as_str() {
                "method" => settings.method_label = true,
                "status" => settings.status_label = true,
                "endpoint" => settings.endpoint_label = true,
                other => errors.push(
                    format!("metrics.labels[{i}]"),
                    format!(
                        "unknown label set {other:?}: expected \"method\", \"status\" or \
                         \"endpoint\" (routes, upstreams and plugins are always labelled)"
                    ),
                ),
            }
        }
    }
    settings
}

fn buckets(given: &[f64]) -> Result<(), String> {
    if given.is_empty() || given.len() > MAX_BUCKETS {
        return Err(format!("must list 1 to {MAX_BUCKETS} bucket bounds"));
    }
    if let Some(bad) = given.iter().find(|b| !b.is_finite() || **b < 0.0) {
        return Err(format!("bucket bounds are finite and not negative, got {bad}"));
    }
    if given.windows(2).any(|w| w[0] >= w[1]) {
        return Err("bucket bounds must be in increasing order, each once".into());
    }
    Ok(())
}

pub(super) fn validate_access_log(
    a: &schema::AccessLog,
    errors: &mut Errors,
) -> Option<AccessLogSettings> {
    let format = one_of(
        errors,
        "access_log.format",
        &a.format,
        &[
            ("json", AccessLogFormat::Json),
            ("common", AccessLogFormat::Common),
            ("combined", AccessLogFormat::Combined),
        ],
    );
    let every = match &a.rotate {
        None => Some(None),
        Some(_) => one_of(
            errors,
            "access_log.rotate",
            &a.rotate,
            &[("hourly", Some(RotateEvery::Hour)), ("daily", Some(RotateEvery::Day))],
        ),
    };
    let sink = match a.path.as_deref() {
        None | Some("-") | Some("stdout") => {
            let file_only = [
                ("access_log.max_size_kib", a.max_size_kib.is_some()),
                ("access_log.rotate", a.rotate.is_some()),
                ("access_log.keep", a.keep.is_some()),
            ];
            for (path, set) in file_only {
                if set {
                    errors.push(path, "only applies to a file: set access_log.path");
                }
            }
            Some(LogSink::Stdout)
        }
        Some("") => {
            errors.push("access_log.path", "must not be empty (leave it out for stdout)");
            None
        }
        Some(path) => {
            if let Some(kib) = a.max_size_kib
                && !(1..=1 << 30).contains(&kib)
            {
                errors.push("access_log.max_size_kib", "must be between 1 and 1073741824");
            }
            let keep = a.keep.unwrap_or(5);
            if !(1..=1000).contains(&keep) {
                errors.push("access_log.keep", "must be between 1 and 1000");
            }
            Some(LogSink::File {
                path: path.into(),
                max_bytes: a.max_size_kib.map(|k| k << 10),
                every: every.flatten(),
                keep: keep as usize,
            })
        }
    };
    let sample = a.sample.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample) {
        errors.push("access_log.sample", format!("must be between 0 and 1, got {sample}"));
    }
    let mut statuses = Vec::new();
    for (i, s) in a.statuses.iter().flatten().enumerate() {
        match status_range(s) {
            Some(r) => statuses.push(r),
            None => errors.push(
                format!("access_log.statuses[{i}]"),
                format!("expected a status (\"404\") or a class (\"5xx\"), got {s:?}"),
            ),
        }
    }
    let buffer_lines = a.buffer_lines.unwrap_or(DEFAULT_BUFFER_LINES);
    if !(1..=1_000_000).contains(&buffer_lines) {
        errors.push("access_log.buffer_lines", "must be between 1 and 1000000");
    }
    Some(AccessLogSettings {
        format: format?,
        sink: sink?,
        sample: sample.clamp(0.0, 1.0),
        statuses,
        buffer_lines: buffer_lines.clamp(1, 1_000_000) as usize,
    })
}

pub const DEFAULT_OTLP_ENDPOINT: &str = "http://127.0.0.1:4318/v1/traces";

pub(super) fn validate_tracing(
    t: &schema::Tracing,
    errors: &mut Errors,
) -> Option<TracingSettings> {
    let text = t.endpoint.as_deref().unwrap_or(DEFAULT_OTLP_ENDPOINT);
    let endpoint = match text.parse::<http::Uri>() {
        Ok(uri) if uri.scheme_str() == Some("http") && uri.host().is_some() => Some(uri),
        Ok(uri) if uri.scheme_str() == Some("https") => {
            let msg = "https is not supported yet: export to a collector on http:// (on this \
                       host or a trusted network)";
            errors.push("tracing.endpoint", msg);
            None
        }
        _ => {
            let msg = format!("expected a URL like {DEFAULT_OTLP_ENDPOINT:?}, got {text:?}");
            errors.push("tracing.endpoint", msg);
            None
        }
    };
    let sample_ratio = t.sample_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample_ratio) {
        let msg = format!("must be between 0 and 1, got {sample_ratio}");
        errors.push("tracing.sample_ratio", msg);
    }
    let service_name = t.service_name.clone().unwrap_or_else(|| "sluice".into());
    if service_name.is_empty() || service_name.len() > 255 {
        errors.push("tracing.service_name", "must be 1 to 255 characters");
    }
    let max_queue = t.max_queue_spans.unwrap_or(2048);
    if !(1..=1_000_000).contains(&max_queue) {
        errors.push("tracing.max_queue_spans", "must be between 1 and 1000000");
    }
    let timeout = super::check::duration(errors, "tracing.timeout", &t.timeout)?;
    Some(TracingSettings {
        endpoint: endpoint?,
        sample_ratio: sample_ratio.clamp(0.0, 1.0),
        parent_based: t.parent_based.unwrap_or(true),
        service_name,
        max_queue_spans: max_queue.clamp(1, 1_000_000) as usize,
        timeout: timeout.unwrap_or(std::time::Duration::from_secs(5)),
    })
}

/// `"404"` is that status; `"5xx"` is 500 to 599.
fn status_range(s: &str) -> Option<(u16, u16)> {
    if let Some(class) = s.strip_suffix("xx").or_else(|| s.strip_suffix("XX")) {
        let c: u16 = class.parse().ok().filter(|c| (1..=5).contains(c))?;
        return Some((c * 100, c * 100 + 99));
    }
    let code: u16 = s.parse().ok().filter(|c| (100..600).contains(c))?;
    Some((code, code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_codes_or_classes() {
        assert_eq!(status_range("5xx"), Some((500, 599)));
        assert_eq!(status_range("404"), Some((404, 404)));
        assert_eq!(status_range("6xx"), None);
        assert_eq!(status_range("99"), None);
        assert_eq!(status_range("abc"), None);
    }

    #[test]
    fn buckets_must_increase() {
        assert!(buckets(&[0.1, 0.5, 1.0]).is_ok());
        assert!(buckets(&[]).is_err());
        assert!(buckets(&[0.5, 0.1]).is_err());
        assert!(buckets(&[0.1, 0.1]).is_err());
        assert!(buckets(&[f64::NAN]).is_err());
        assert!(buckets(&[-1.0]).is_err());
    }
}
