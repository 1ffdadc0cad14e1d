//! The admin API, `/api/v1/...`: JSON over HTTP on the admin listener. Reads are GET;
//! every change is a POST (a GET never changes anything) and writes an audit line
//! (`sluice::audit`) naming the caller's role and address and what it did. The contract is
//! `docs/admin-openapi.json`, served at `/api/v1/openapi.json`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::AdminState;
use super::auth::{Refusal, Role};
use super::redact::redact_config;
use crate::config::EndpointState;
use crate::gateway::Gateway;
use crate::reload::{Applied, Outcome, ReloadError, Reloader};
use crate::upstream::breaker;

/// The OpenAPI 3 document of this API.
pub const OPENAPI: &str = include_str!("../../../docs/admin-openapi.json");

/// The largest request body the API reads.
const MAX_BODY: usize = 64 * 1024;

/// The API's routes: each path with the method it answers and the role it needs.
#[derive(Clone, Copy)]
enum Op {
    Server,
    Routes,
    Upstreams,
    Plugins,
    Config,
    History,
    Diff,
    OpenApi,
    Reload,
    Rollback,
    EndpointState,
    Breaker,
    EndpointWeight,
    EndpointHealth,
    Rollout,
    LogLevel,
    SetLogLevel,
    Kv,
    KvPurge,
    Events,
}

impl Op {
    fn method(self) -> Method {
        match self {
            Op::Reload
            | Op::Rollback
            | Op::EndpointState
            | Op::Breaker
            | Op::EndpointWeight
            | Op::EndpointHealth
            | Op::Rollout
            | Op::KvPurge
            | Op::SetLogLevel => Method::POST,
            _ => Method::GET,
        }
    }

    fn role(self) -> Role {
        match self.method() {
            Method::GET => Role::Read,
            _ => Role::Admin,
        }
    }
}

fn router() -> &'static matchit::Router<Op> {
    static ROUTER: std::sync::OnceLock<matchit::Router<Op>> = std::sync::OnceLock::new();
    ROUTER.get_or_init(|| {
        let mut r = matchit::Router::new();
        for (path, op) in [
            ("/api/v1/server", Op::Server),
            ("/api/v1/routes", Op::Routes),
            ("/api/v1/upstreams", Op::Upstreams),
            ("/api/v1/plugins", Op::Plugins),
            ("/api/v1/config", Op::Config),
            ("/api/v1/config/history", Op::History),
            ("/api/v1/config/diff", Op::Diff),
            ("/api/v1/openapi.json", Op::OpenApi),
            ("/api/v1/reload", Op::Reload),
            ("/api/v1/config/rollback", Op::Rollback),
            ("/api/v1/upstreams/{upstream}/endpoints/{endpoint}/state", Op::EndpointState),
            ("/api/v1/upstreams/{upstream}/endpoints/{endpoint}/breaker", Op::Breaker),
            ("/api/v1/upstreams/{upstream}/endpoints/{endpoint}/weight", Op::EndpointWeight),
            ("/api/v1/upstreams/{upstream}/endpoints/{endpoint}/health", Op::EndpointHealth),
            ("/api/v1/plugins/{plugin}/rollout", Op::Rollout),
            ("/api/v1/plugins/{plugin}/kv/purge", Op::KvPurge),
            ("/api/v1/log-level", Op::LogLevel),
            ("/api/v1/kv", Op::Kv),
            ("/api/v1/events", Op::Events),
        ] {
            r.insert(path, op).expect("distinct routes");
        }
        r
    })
}

type Reply = Response<Full<Bytes>>;

/// Answers one `/api/...` request.
pub async fn answer(state: &AdminState, peer: SocketAddr, req: http::Request<Incoming>) -> Reply {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let Ok(found) = router().at(&path) else {
        return error(StatusCode::NOT_FOUND, "no such API path: see /api/v1/openapi.json");
    };
    let mut op = *found.value;
    if matches!(op, Op::LogLevel) && req.method() == Method::POST {
        op = Op::SetLogLevel; // the one path with a GET and a POST
    }
    // Segments arrive percent-encoded as clients encode them (a browser's `:` as `%3A`).
    let params: Vec<String> = found
        .params
        .iter()
        .map(|(_, v)| percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned())
        .collect();
    if *req.method() != op.method() && !(op.method() == Method::GET && req.method() == Method::HEAD)
    {
        let mut r = error(StatusCode::METHOD_NOT_ALLOWED, &format!("use {}", op.method()));
        let allow = http::HeaderValue::from_static(match op.method() {
            Method::GET => "GET, HEAD",
            _ => "POST",
        });
        r.headers_mut().insert(header::ALLOW, allow);
        return r;
    }
    let mut role = None;
    if !matches!(op, Op::OpenApi) {
        let auth = req.headers().get(header::AUTHORIZATION);
        match state.auth().check(peer.ip(), auth, op.role()) {
            Ok(granted) => role = Some(granted),
            Err(Refusal::Unauthenticated) => {
                let mut r = error(StatusCode::UNAUTHORIZED, "a valid bearer token is needed");
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
                return r;
            }
            Err(Refusal::Forbidden) => {
                return error(StatusCode::FORBIDDEN, "this token may read, not act");
            }
            Err(Refusal::Throttled(wait)) => {
                let mut r = error(StatusCode::TOO_MANY_REQUESTS, "too many failed tokens");
                let secs = wait.as_secs().max(1).to_string();
                r.headers_mut().insert(
                    header::RETRY_AFTER,
                    http::HeaderValue::from_str(&secs).expect("digits"),
                );
                return r;
            }
        }
    }
    let Some((gateway, runtime, reloader)) = state.serving_gateway() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "starting: no config loaded yet");
    };
    let gw = gateway.load_full();
    let body = match op.method() {
        Method::POST => match read_json(req).await {
            Ok(v) => v,
            Err(r) => return r,
        },
        _ => Value::Null,
    };
    let who = match role.and_then(|g| g.name.map(|n| (n, g.role))) {
        Some((name, role)) => format!("token {name:?} ({} role) from {}", role.label(), peer.ip()),
        None => format!("{} (no tokens configured)", peer.ip()),
    };
    match op {
        Op::Server => ok(server(state, &gw, reloader)),
        Op::Routes => ok(routes(&gw)),
        Op::Upstreams => ok(upstreams(&gw, &state.recent)),
        Op::Plugins => ok(plugins(&gw)),
        Op::Config => {
            let current = reloader.current();
            let mut v = applied(&current);
            v["config"] = redact_config(current.text());
            ok(v)
        }
        Op::History => ok(Value::Array(reloader.history().iter().map(applied).collect())),
        Op::Diff => {
            let history = reloader.history();
            let number = |key: &str| {
                form_urlencoded::parse(query.as_bytes())
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| v.parse::<u64>().map_err(|_| ()))
            };
            let current = history.last().map_or(1, |a| a.version);
            let (to, from) = match (number("to"), number("from")) {
                (Some(Err(())), _) | (_, Some(Err(()))) => {
                    return error(StatusCode::BAD_REQUEST, "from and to are version numbers");
                }
                (to, from) => {
                    let to = to.map_or(current, |t| t.unwrap_or(current));
                    (to, from.map_or(to.saturating_sub(1).max(1), |f| f.unwrap_or(1)))
                }
            };
            let find = |v: u64| history.iter().find(|a| a.version == v);
            let (Some(a), Some(b)) = (find(from), find(to)) else {
                return error(
                    StatusCode::NOT_FOUND,
                    "no such version in the history (the last 16 are kept)",
                );
            };
            let text = super::redact::diff(
                a.text(),
                b.text(),
                &format!("version {from}"),
                &format!("version {to}"),
            );
            ok(json!({ "from": from, "to": to, "diff": text }))
        }
        Op::OpenApi => {
            let mut r = Response::new(Full::new(Bytes::from_static(OPENAPI.as_bytes())));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
            r
        }
        Op::Reload => {
            audit(&who, "reload");
            reloaded(reloader.reload("admin API").await)
        }
        Op::Rollback => {
            let Some(version) = body.get("version").and_then(Value::as_u64) else {
                return error(StatusCode::BAD_REQUEST, "expected {\"version\": N}");
            };
            audit(&who, &format!("rollback to config version {version}"));
            reloaded(reloader.rollback_to(version).await)
        }
        Op::EndpointState => {
            let wanted = match body.get("state").and_then(Value::as_str) {
                Some("up") => Some(EndpointState::Up),
                Some("drain") => Some(EndpointState::Drain),
                Some("down") => Some(EndpointState::Down),
                Some("config") => None,
                _ => {
                    let msg = "expected {\"state\": \"up\" | \"drain\" | \"down\" | \"config\"}";
                    return error(StatusCode::BAD_REQUEST, msg);
                }
            };
            let Some((upstream, i)) = endpoint(&gw, &params) else {
                return error(StatusCode::NOT_FOUND, "no such upstream endpoint");
            };
            let what = wanted.map_or("back to its config state", state_label);
            audit(&who, &format!("endpoint {}/{}: {what}", params[0], params[1]));
            upstream.endpoints()[i].set_override(wanted);
            ok(endpoint_view(upstream, i, &state.recent))
        }
        Op::Breaker => {
            let mode = match body.get("mode").and_then(Value::as_str) {
                Some("open") => breaker::Mode::ForcedOpen,
                Some("closed") => breaker::Mode::ForcedClosed,
                Some("auto") => breaker::Mode::Auto,
                _ => {
                    let msg = "expected {\"mode\": \"open\" | \"closed\" | \"auto\"}";
                    return error(StatusCode::BAD_REQUEST, msg);
                }
            };
            let Some((upstream, i)) = endpoint(&gw, &params) else {
                return error(StatusCode::NOT_FOUND, "no such upstream endpoint");
            };
            let Some(b) = &upstream.endpoints()[i].breaker else {
                let msg = "this upstream has no circuit_breaker configured";
                return error(StatusCode::CONFLICT, msg);
            };
            audit(&who, &format!("breaker of {}/{}: {}", params[0], params[1], mode.label()));
            b.set_mode(mode, tokio::time::Instant::now());
            ok(endpoint_view(upstream, i, &state.recent))
        }
        Op::EndpointWeight => {
            let max = crate::upstream::MAX_WEIGHT;
            let weight = match body.get("weight") {
                Some(Value::Null) => None,
                Some(w) if w.as_u64().is_some_and(|w| (1..=u64::from(max)).contains(&w)) => {
                    w.as_u64().map(|w| w as u32)
                }
                _ => {
                    let msg = format!("expected {{\"weight\": 1..{max}}} or {{\"weight\": null}}");
                    return error(StatusCode::BAD_REQUEST, &msg);
                }
            };
            let Some((upstream, i)) = endpoint(&gw, &params) else {
                return error(StatusCode::NOT_FOUND, "no such upstream endpoint");
            };
            use crate::config::Strategy;
            let why = match upstream.config().strategy {
                Strategy::RoundRobin => Some("round_robin ignores weights: use weighted_round_robin"),
                Strategy::ConsistentHash(_) => Some(
                    "consistent_hash builds its ring from the config's weights: change the weight \
                     in the config and reload",
                ),
                _ => None,
            };
            if let Some(why) = why {
                return error(StatusCode::CONFLICT, why);
            }
            let what = weight.map_or("back to its config weight".to_owned(), |w| format!("weight {w}"));
            audit(&who, &format!("endpoint {}/{}: {what}", params[0], params[1]));
            upstream.endpoints()[i].set_weight_override(weight);
            ok(endpoint_view(upstream, i, &state.recent))
        }
        Op::EndpointHealth => {
            let verdict = match body.get("health").and_then(Value::as_str) {
                Some("healthy") => Some(true),
                Some("unhealthy") => Some(false),
                Some("auto") => None,
                _ => {
                    let msg = "expected {\"health\": \"healthy\" | \"unhealthy\" | \"auto\"}";
                    return error(StatusCode::BAD_REQUEST, msg);
                }
            };
            let Some((upstream, i)) = endpoint(&gw, &params) else {
                return error(StatusCode::NOT_FOUND, "no such upstream endpoint");
            };
            let what = match verdict {
                Some(true) => "health forced healthy",
                Some(false) => "health forced unhealthy",
                None => "health back to its checks",
            };
            audit(&who, &format!("endpoint {}/{}: {what}", params[0], params[1]));
            upstream.endpoints()[i].set_health_override(verdict);
            ok(endpoint_view(upstream, i, &state.recent))
        }
        Op::Kv => ok(serde_json::to_value(runtime.capabilities.kv.describe()).unwrap_or_default()),
        Op::KvPurge => {
            let name = &params[0];
            if gw.plugin(name).is_none() {
                return error(StatusCode::NOT_FOUND, "no such plugin");
            }
            let Some(prefix) = body.get("prefix").and_then(Value::as_str) else {
                return error(StatusCode::BAD_REQUEST, "expected {\"prefix\": \"...\"} (\"\" for every key)");
            };
            if prefix.len() > crate::capability::kv::MAX_KEY_BYTES {
                return error(StatusCode::BAD_REQUEST, "the prefix is longer than any key");
            }
            audit(&who, &format!("kv of plugin {name}: purge keys starting with {prefix:?}"));
            match runtime.capabilities.kv.purge(name, prefix).await {
                Ok(n) => ok(json!({ "plugin": name, "prefix": prefix, "purged": n })),
                Err(e) => error(StatusCode::BAD_GATEWAY, &e.to_string()),
            }
        }
        Op::Events => ok(Value::Array(
            crate::events::recent()
                .into_iter()
                .map(|e| json!({ "id": e.id, "at": rfc3339(e.at), "kind": e.kind, "message": e.message }))
                .collect(),
        )),
        Op::LogLevel => match super::log_level::current() {
            Some(filter) => ok(json!({ "filter": filter })),
            None => error(StatusCode::NOT_IMPLEMENTED, "this process cannot change its log filter"),
        },
        Op::SetLogLevel => {
            let Some(filter) = body.get("filter").and_then(Value::as_str) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "expected {\"filter\": \"info,sluice::proxy=debug\"}",
                );
            };
            match super::log_level::set(filter) {
                Ok(()) => {
                    audit(&who, &format!("log filter set to {filter:?}"));
                    ok(json!({ "filter": filter }))
                }
                Err(e) => error(StatusCode::BAD_REQUEST, &e),
            }
        }
        Op::Rollout => {
            let Some(plugin) = gw.plugin(&params[0]) else {
                return error(StatusCode::NOT_FOUND, "no such plugin");
            };
            let Some(rollout) = plugin.rollout() else {
                return error(StatusCode::CONFLICT, "this plugin has no rollout configured");
            };
            let name = &params[0];
            match (body.get("action").and_then(Value::as_str), body.get("percent")) {
                (Some("promote"), _) => {
                    audit(&who, &format!("rollout of {name}: promote"));
                    rollout.decide(name, true);
                }
                (Some("abort"), _) => {
                    audit(&who, &format!("rollout of {name}: abort"));
                    rollout.decide(name, false);
                }
                (Some("share"), Some(p))
                    if p.as_f64().is_some_and(|p| (0.0..=100.0).contains(&p)) =>
                {
                    if rollout.state() != crate::plugin::RolloutState::Active {
                        return error(StatusCode::CONFLICT, "the rollout is already decided");
                    }
                    let percent = p.as_f64().unwrap_or_default();
                    audit(&who, &format!("rollout of {name}: share {percent}%"));
                    rollout.set_percent(percent);
                }
                _ => {
                    let msg = "expected {\"action\": \"promote\" | \"abort\"} or \
                               {\"action\": \"share\", \"percent\": 0..100}";
                    return error(StatusCode::BAD_REQUEST, msg);
                }
            }
            ok(plugin_view(name, plugin, &super::stats::plugin_calls()))
        }
    }
}

fn audit(who: &str, what: &str) {
    tracing::info!(target: "sluice::audit", "admin API: {who}: {what}");
    crate::events::record(crate::events::Kind::Admin, format!("{who}: {what}"));
}

async fn read_json(req: http::Request<Incoming>) -> Result<Value, Reply> {
    let body = tokio::time::timeout(
        Duration::from_secs(10),
        Limited::new(req.into_body(), MAX_BODY).collect(),
    )
    .await;
    let bytes = match body {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(_)) => return Err(error(StatusCode::PAYLOAD_TOO_LARGE, "body over 64 KiB")),
        Err(_) => return Err(error(StatusCode::REQUEST_TIMEOUT, "body too slow")),
    };
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| error(StatusCode::BAD_REQUEST, &format!("invalid JSON: {e}")))
}

fn reloaded(result: Result<Outcome, ReloadError>) -> Reply {
    match result {
        Ok(Outcome::Applied(a)) => {
            let mut v = applied(&a);
            v["result"] = json!("applied");
            ok(v)
        }
        Ok(Outcome::Unchanged) => ok(json!({ "result": "unchanged" })),
        Err(ReloadError::Invalid(e)) => {
            let errors: Vec<Value> =
                e.errors.iter().map(|e| json!({ "path": e.path, "message": e.message })).collect();
            json_reply(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({ "error": "refused: the running config keeps serving", "errors": errors }),
            )
        }
        Err(e @ ReloadError::NoSuchVersion(_)) => error(StatusCode::NOT_FOUND, &e.to_string()),
        Err(e @ ReloadError::NothingToRollBack) => error(StatusCode::CONFLICT, &e.to_string()),
    }
}

fn applied(a: &Applied) -> Value {
    json!({
        "version": a.version,
        "sha256": a.sha256,
        "cause": a.cause,
        "applied_at": rfc3339(a.at),
    })
}

fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn server(state: &AdminState, gw: &Gateway, reloader: &Reloader) -> Value {
    let m = crate::telemetry::metrics();
    let workers = gw
        .config
        .server
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "commit": env!("SLUICE_GIT_COMMIT"),
        "plugin_world": format!("sluice:plugin@{}", sluice_bindings::WORLD_VERSION),
        "uptime_seconds": state.started.elapsed().as_secs_f64(),
        "workers": workers,
        "listen": gw.config.server.listen.to_string(),
        "connections": m.active_connections.get(),
        "active_requests": m.active_requests.get(),
        "config_version": reloader.current().version,
        "kv_backend": match gw.config.runtime.kv.backend {
            crate::config::KvBackend::Local => "local",
            crate::config::KvBackend::Redis(_) => "redis",
        },
    })
}

fn routes(gw: &Gateway) -> Value {
    Value::Array(
        gw.config
            .routes
            .iter()
            .map(|r| {
                let rule = &r.rule;
                json!({
                    "name": &*r.name,
                    "path": rule.path.to_string(),
                    "hosts": rule.hosts.iter().map(|h| match h {
                        crate::router::HostPattern::Exact(h) => h.clone(),
                        crate::router::HostPattern::Suffix(s) => format!("*{s}"),
                    }).collect::<Vec<_>>(),
                    "methods": rule.methods.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "priority": rule.priority,
                    "upstreams": r.targets.iter().map(|(u, w)| json!({ "upstream": u, "weight": w })).collect::<Vec<_>>(),
                    "plugins": r.plugins,
                })
            })
            .collect(),
    )
}

fn upstreams(gw: &Gateway, recent: &super::stats::Recent) -> Value {
    let mut names: Vec<_> = gw.upstreams().collect();
    names.sort_by(|a, b| a.0.cmp(b.0));
    Value::Array(
        names
            .into_iter()
            .map(|(name, u)| {
                let endpoints: Vec<Value> =
                    (0..u.endpoints().len()).map(|i| endpoint_view(u, i, recent)).collect();
                json!({ "name": name, "strategy": strategy(&u.config().strategy), "endpoints": endpoints })
            })
            .collect(),
    )
}

fn strategy(s: &crate::config::Strategy) -> &'static str {
    use crate::config::Strategy as S;
    match s {
        S::RoundRobin => "round_robin",
        S::WeightedRoundRobin => "weighted_round_robin",
        S::LeastConnections => "least_connections",
        S::Random => "random",
        S::P2c => "p2c",
        S::ConsistentHash(_) => "consistent_hash",
    }
}

fn state_label(s: EndpointState) -> &'static str {
    match s {
        EndpointState::Up => "up",
        EndpointState::Drain => "drain",
        EndpointState::Down => "down",
    }
}

fn endpoint_view(u: &crate::upstream::Upstream, i: usize, recent: &super::stats::Recent) -> Value {
    let e = &u.endpoints()[i];
    json!({
        "address": e.address.as_str(),
        "weight": e.effective_weight(),
        "config_weight": e.weight,
        "weight_override": e.weight_override(),
        "state": state_label(e.effective_state()),
        "config_state": state_label(e.state),
        "override": e.admin_override().map(state_label),
        "health_override": e.health_override().map(|h| if h { "healthy" } else { "unhealthy" }),
        "healthy": e.healthy(),
        "recent": recent.endpoint(u.name(), e.address.as_str()),
        "usable": u.usable_now(i),
        "in_flight": e.in_flight(),
        "breaker": e.breaker.as_ref().map(|b| json!({ "state": b.state().label(), "mode": b.mode().label() })),
    })
}

/// `upstream` and `endpoint` (its address) from the path.
fn endpoint<'g>(
    gw: &'g Gateway,
    params: &[String],
) -> Option<(&'g Arc<crate::upstream::Upstream>, usize)> {
    let u = gw.upstream(params.first()?)?;
    let address = params.get(1)?;
    let i = u.endpoints().iter().position(|e| e.address.as_str() == address)?;
    Some((u, i))
}

fn plugins(gw: &Gateway) -> Value {
    let calls = super::stats::plugin_calls();
    let mut named: Vec<_> = gw.plugins().collect();
    named.sort_by(|a, b| a.0.cmp(b.0));
    Value::Array(named.into_iter().map(|(name, p)| plugin_view(name, p, &calls)).collect())
}

fn plugin_view(
    name: &str,
    p: &crate::plugin::NamedPlugin,
    calls: &std::collections::HashMap<String, Value>,
) -> Value {
    let m = &p.module;
    json!({
        "name": name,
        "module": m.path.display().to_string(),
        "sha256": m.hash,
        "kind": format!("{:?}", m.kind()).to_lowercase(),
        "world": m.world,
        "source": match m.source {
            crate::plugin::CodeSource::Compiled => "compiled",
            crate::plugin::CodeSource::DiskCache => "cache",
            crate::plugin::CodeSource::Baseline => "baseline",
        },
        "load_ms": m.load_time.as_secs_f64() * 1e3,
        "instances": { "idle": p.idle_instances(), "busy": p.busy_instances(), "max": p.spec.max_instances },
        "on_error": format!("{:?}", p.spec.on_error).to_lowercase(),
        "calls": calls.get(name).cloned().unwrap_or_else(|| json!({})),
        "rollout": p.rollout().map(|r| json!({
            "state": match r.state() {
                crate::plugin::RolloutState::Active => "active",
                crate::plugin::RolloutState::Promoted => "promoted",
                crate::plugin::RolloutState::RolledBack => "rolled_back",
            },
            "percent": r.percent(),
            "module": r.candidate_module.path.display().to_string(),
            "sha256": r.candidate_module.hash,
        })),
    })
}

fn ok(v: Value) -> Reply {
    json_reply(StatusCode::OK, v)
}

fn error(status: StatusCode, message: &str) -> Reply {
    json_reply(status, json!({ "error": message }))
}

fn json_reply(status: StatusCode, v: Value) -> Reply {
    let mut body = serde_json::to_vec_pretty(&v).unwrap_or_default();
    body.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    r.headers_mut().insert(header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route the server answers is in the OpenAPI document, with its method, and
    /// the document lists nothing the server does not answer.
    #[test]
    fn the_openapi_document_lists_exactly_the_routes_served() {
        let doc: Value = serde_json::from_str(OPENAPI).expect("the document is JSON");
        let paths = doc["paths"].as_object().expect("paths");
        let mut served = 0;
        for (path, ops) in paths {
            let found =
                router().at(path).unwrap_or_else(|_| panic!("{path} is documented, not served"));
            let op = *found.value;
            let methods: Vec<&str> = ops.as_object().unwrap().keys().map(String::as_str).collect();
            let expected: &[&str] = match op {
                Op::LogLevel => &["get", "post"],
                op if op.method() == Method::POST => &["post"],
                _ => &["get"],
            };
            assert_eq!(methods, expected, "{path}");
            served += 1;
        }
        // Templated paths match themselves in matchit (`{upstream}` as a literal value),
        // so the count check covers the other direction.
        assert_eq!(served, 19, "routes served and documented");
    }
}
