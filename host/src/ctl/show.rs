//! How `sluice ctl` prints the admin API's answers: tables, columns padded to their
//! widest cell.

use serde_json::Value;

/// A table: a header row and rows, columns padded to their widest cell.
pub(super) fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<String>, out: &mut String| {
        let last = cells.len().saturating_sub(1);
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            match i == last {
                true => out.push_str(cell),
                false => out.push_str(&format!("{cell:<w$}  ")),
            }
        }
        out.push('\n');
    };
    line(header.iter().map(|h| h.to_string()).collect(), &mut out);
    for row in rows {
        line(row, &mut out);
    }
    out
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

pub(super) fn show_status(v: &Value) -> String {
    format!(
        "sluice {} (commit {}, {})\nuptime        {:.0}s\nlisten        {}\nworkers       {}\n\
         connections   {}\nin flight     {}\nconfig        version {}\nkv            {}\n",
        text(&v["version"]),
        text(&v["commit"]),
        text(&v["plugin_world"]),
        v["uptime_seconds"].as_f64().unwrap_or(0.0),
        text(&v["listen"]),
        text(&v["workers"]),
        text(&v["connections"]),
        text(&v["active_requests"]),
        text(&v["config_version"]),
        text(&v["kv_backend"]),
    )
}

fn list(v: &Value, key: &str) -> String {
    v[key].as_array().map_or(String::new(), |a| a.iter().map(text).collect::<Vec<_>>().join(", "))
}

pub(super) fn show_routes(v: &Value) -> String {
    let rows = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let upstreams = r["upstreams"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|u| text(&u["upstream"]))
                .collect::<Vec<_>>()
                .join(", ");
            vec![
                text(&r["name"]),
                text(&r["path"]),
                list(r, "hosts"),
                list(r, "methods"),
                upstreams,
                r["plugins"]
                    .as_array()
                    .map_or(String::new(), |p| p.iter().map(text).collect::<Vec<_>>().join(" -> ")),
            ]
        })
        .collect();
    table(&["ROUTE", "PATH", "HOSTS", "METHODS", "UPSTREAM", "PLUGINS"], rows)
}

fn endpoint_row(upstream: &str, e: &Value) -> Vec<String> {
    let state = match e["override"].as_str() {
        Some(o) => format!("{o} (override)"),
        None => text(&e["state"]),
    };
    let breaker = match &e["breaker"] {
        Value::Null => "-".into(),
        b => match b["mode"].as_str() {
            Some("auto") | None => text(&b["state"]),
            Some(mode) => format!("{} ({mode})", text(&b["state"])),
        },
    };
    let healthy = match e["health_override"].as_str() {
        Some(forced) => format!("{forced} (override)"),
        None => if e["healthy"].as_bool() == Some(true) { "yes" } else { "no" }.into(),
    };
    let weight = match e["weight_override"] {
        Value::Null => text(&e["weight"]),
        ref w => format!("{} (override)", text(w)),
    };
    let recent = &e["recent"];
    let (rate, errors, p99) = match recent["attempts"].as_u64() {
        None => ("-".into(), "-".into(), "-".into()),
        Some(_) => (
            format!("{:.1}", recent["per_second"].as_f64().unwrap_or(0.0)),
            format!("{:.1}%", recent["error_rate"].as_f64().unwrap_or(0.0) * 100.0),
            recent["p99_ms"].as_f64().map_or("-".into(), |ms| format!("<={ms}ms")),
        ),
    };
    vec![
        upstream.to_owned(),
        text(&e["address"]),
        state,
        healthy,
        breaker,
        text(&e["in_flight"]),
        weight,
        rate,
        errors,
        p99,
    ]
}

const ENDPOINT_HEADER: [&str; 10] = [
    "UPSTREAM",
    "ENDPOINT",
    "STATE",
    "HEALTHY",
    "BREAKER",
    "IN FLIGHT",
    "WEIGHT",
    "REQ/S",
    "ERRORS",
    "P99",
];

pub(super) fn show_upstreams(v: &Value) -> String {
    let mut rows = Vec::new();
    for u in v.as_array().into_iter().flatten() {
        for e in u["endpoints"].as_array().into_iter().flatten() {
            rows.push(endpoint_row(&text(&u["name"]), e));
        }
    }
    table(&ENDPOINT_HEADER, rows)
}

pub(super) fn show_endpoint(v: &Value) -> String {
    table(&ENDPOINT_HEADER[1..], vec![endpoint_row("", v)[1..].to_vec()])
}

pub(super) fn show_plugin(v: &Value) -> String {
    show_plugins(&Value::Array(vec![v.clone()]))
}

pub(super) fn show_plugins(v: &Value) -> String {
    let rows = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let mut calls = 0u64;
            let mut failed = 0u64;
            let mut seconds = 0.0;
            let mut count = 0u64;
            for phase in p["calls"].as_object().into_iter().flat_map(|o| o.values()) {
                for (outcome, n) in phase["calls"].as_object().into_iter().flatten() {
                    let n = n.as_u64().unwrap_or(0);
                    calls += n;
                    if matches!(outcome.as_str(), "trap" | "timeout" | "error" | "overloaded") {
                        failed += n;
                    }
                }
                seconds += phase["seconds_sum"].as_f64().unwrap_or(0.0);
                count += phase["count"].as_u64().unwrap_or(0);
            }
            let mean = match count {
                0 => "-".into(),
                n => format!("{:.1}us", seconds / n as f64 * 1e6),
            };
            let rollout = match &p["rollout"] {
                Value::Null => "-".into(),
                r => format!("{} {}%", text(&r["state"]), text(&r["percent"])),
            };
            vec![
                text(&p["name"]),
                text(&p["sha256"]).chars().take(12).collect(),
                format!("{}/{}", text(&p["instances"]["busy"]), text(&p["instances"]["idle"])),
                calls.to_string(),
                failed.to_string(),
                mean,
                rollout,
            ]
        })
        .collect();
    table(&["PLUGIN", "SHA256", "BUSY/IDLE", "CALLS", "FAILED", "MEAN", "ROLLOUT"], rows)
}

pub(super) fn show_history(v: &Value) -> String {
    let rows = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            vec![text(&a["version"]), text(&a["applied_at"]), text(&a["sha256"]), text(&a["cause"])]
        })
        .collect();
    table(&["VERSION", "APPLIED", "SHA256", "CAUSE"], rows)
}

pub(super) fn show_diff(v: &Value) -> String {
    match v["diff"].as_str() {
        Some("") | None => {
            format!("versions {} and {} are the same\n", text(&v["from"]), text(&v["to"]))
        }
        Some(d) => d.to_owned(),
    }
}

pub(super) fn show_kv(v: &Value) -> String {
    let mut out = format!(
        "backend         {}\non_unavailable  {}\nlocal keys      {}\n",
        text(&v["backend"]),
        text(&v["on_unavailable"]),
        text(&v["local_keys"])
    );
    if let Some(r) = v["redis"].as_object() {
        let reach = match r.get("unavailable_because") {
            Some(why) => format!("no: {}", text(why)),
            None => "yes".into(),
        };
        out.push_str(&format!(
            "redis           {} (prefix {:?})\nreachable       {reach}\n",
            text(&r["address"]),
            text(&r["prefix"])
        ));
    }
    out
}

pub(super) fn show_purged(v: &Value) -> String {
    format!(
        "purged {} keys of plugin {} starting with {:?}\n",
        text(&v["purged"]),
        text(&v["plugin"]),
        text(&v["prefix"])
    )
}

pub(super) fn show_events(v: &Value) -> String {
    let rows = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| vec![text(&e["at"]), text(&e["kind"]), text(&e["message"])])
        .collect();
    table(&["AT", "KIND", "WHAT"], rows)
}

pub(super) fn show_filter(v: &Value) -> String {
    format!("log filter: {}\n", text(&v["filter"]))
}

pub(super) fn show_applied(v: &Value) -> String {
    match v["result"].as_str() {
        Some("unchanged") => "unchanged: the config and modules are as they were\n".into(),
        _ => format!(
            "applied config version {} (sha256 {}): {}\n",
            text(&v["version"]),
            text(&v["sha256"]),
            text(&v["cause"])
        ),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tables_pad_columns() {
        let t = super::table(&["A", "BB"], vec![vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    BB\nxyz  1\n");
    }
}
