//! A test-only plugin that misbehaves on demand, so the tests can prove that a failing
//! plugin fails only its own request.
//!
//! The request header `x-fault` picks the fault in the request phase, and
//! `x-fault-response` in the response phase: `panic`, `trap`, `loop` (never returns),
//! `oom` (allocates until the memory cap), `bad-status` (a local response with status 42),
//! `busy` (30 ms of wall time spinning, then continues), `work` (a fixed amount of CPU work,
//! about 20 ms alone, then continues),
//! `stderr` (writes a line, then continues). With no fault the plugin counts the calls this
//! instance has served and sends the count upstream as `x-instance-calls`. With
//! `x-read-body: 1` it reads the request body and sends `x-body-bytes: N` (or `too-large`)
//! upstream; with `x-replace-body: TEXT` it replaces the body with TEXT. With
//! `x-kv-incr: KEY` it increments KEY in the host's key-value store, sends the new count
//! upstream as `x-kv-count`, and adds 1 to its `kv_increments` metric. With
//! `x-set-header: NAME=VALUE` (or `x-append-header: NAME=VALUE`, `x-remove-header: NAME`)
//! it sets (appends, removes) that request header and sends the host's answer upstream as
//! `x-set-result` (`ok`, or the refusal). With
//! `x-context-set: VALUE` it keeps VALUE in the request context and returns it in the
//! response phase as the response header `x-context`.
//! Config: `{ reject = "why" }` makes `init` refuse the config.

use std::cell::Cell;

use serde::Deserialize;
use sluice_pdk::{Action, BodyError, HeaderEdit, LocalResponse, Plugin, Request, Response};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    reject: Option<String>,
}

struct Faults {
    calls: Cell<u64>,
}

const WORK_ITERATIONS: u64 = 20_000_000;

fn fault(kind: Option<String>) -> Option<Action> {
    match kind.as_deref()? {
        "panic" => panic!("fault injected: panic"),
        "trap" => core::arch::wasm32::unreachable(),
        "loop" => loop {
            std::hint::black_box(0u8);
        },
        "oom" => {
            let mut hog = Vec::new();
            loop {
                hog.push(std::hint::black_box(vec![1u8; 1 << 20]));
            }
        }
        "bad-status" => Some(Action::Respond(LocalResponse::new(42))),
        "busy" => {
            // Holds the instance for 30 ms of CPU, so concurrent calls need more instances.
            let until = sluice_pdk::clock::monotonic_ns() + 30_000_000;
            while sluice_pdk::clock::monotonic_ns() < until {
                std::hint::black_box(0u8);
            }
            None
        }
        "work" => {
            // A fixed amount of work (about 20 ms of CPU on the development VM), however
            // long it takes in wall time.
            let mut x = 1u64;
            for _ in 0..WORK_ITERATIONS {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            std::hint::black_box(x);
            None
        }
        "stderr" => {
            eprintln!("fault injected: a line on stderr");
            None
        }
        _ => None,
    }
}

impl Plugin for Faults {
    type Config = Config;

    fn new(c: Config) -> Result<Self, String> {
        match c.reject {
            Some(why) => Err(format!("config.reject: {why}")),
            None => Ok(Faults { calls: Cell::new(0) }),
        }
    }

    fn on_request(&self, req: &Request) -> Action {
        if let Some(action) = fault(req.header("x-fault")) {
            return action;
        }
        if req.header("x-read-body").is_some() {
            let seen = match req.body() {
                Ok(body) => body.len().to_string(),
                Err(BodyError::TooLarge(_)) => "too-large".to_owned(),
                Err(BodyError::ReadFailed(why)) => format!("failed: {why}"),
            };
            let _ = req.set_header("x-body-bytes", &seen);
        }
        for op in ["x-set-header", "x-append-header", "x-remove-header"] {
            let Some(spec) = req.header(op) else { continue };
            let (name, value) = spec.split_once('=').unwrap_or((&spec, ""));
            let result = match op {
                "x-set-header" => req.set_header(name, value),
                "x-append-header" => req.append_header(name, value),
                _ => req.remove_header(name),
            };
            let result = result.map_or_else(|e| format!("{e:?}"), |()| "ok".to_owned());
            let _ = req.set_header("x-set-result", &result);
        }
        if let Some(spec) = req.header("x-edit-headers") {
            // `set:NAME=VALUE;append:NAME=VALUE;remove:NAME`, made in one call.
            let edits: Vec<HeaderEdit> = spec
                .split(';')
                .map(|e| {
                    let (op, field) = e.split_once(':').unwrap_or((e, ""));
                    let (name, value) = field.split_once('=').unwrap_or((field, ""));
                    match op {
                        "set" => HeaderEdit::Set((name, value)),
                        "append" => HeaderEdit::Append((name, value)),
                        _ => HeaderEdit::Remove(name),
                    }
                })
                .collect();
            let result = req.edit_headers(&edits);
            let result = result.map_or_else(|e| format!("{e:?}"), |()| "ok".to_owned());
            let _ = req.set_header("x-edit-result", &result);
        }
        if let Some(names) = req.header("x-headers") {
            // Comma-separated names, read in one call; `-` for an absent one.
            let names: Vec<&str> = names.split(',').collect();
            let values: Vec<String> =
                req.headers(&names).into_iter().map(|v| v.unwrap_or_else(|| "-".into())).collect();
            let _ = req.set_header("x-headers-result", &values.join("|"));
        }
        if let Some(n) = req.header("x-append-many") {
            // A plugin that appends without end: past the map's 32,768 fields it must trap,
            // never take the gateway down.
            for i in 0..n.parse::<u32>().unwrap_or(0) {
                let _ = req.append_header(&format!("x-many-{i}"), "1");
            }
        }
        if let Some(keys) = req.header("x-kv-incr-get") {
            let (key, other) = keys.split_once(',').unwrap_or((&keys, ""));
            let got = match sluice_pdk::kv::incr_and_get(key, 1, 0, other) {
                Ok((n, v)) => format!(
                    "{n},{}",
                    v.map_or("none".into(), |v| String::from_utf8_lossy(&v).into_owned())
                ),
                Err(e) => format!("{e:?}"),
            };
            let _ = req.set_header("x-kv-incr-get", &got);
        }
        if let Some(text) = req.header("x-replace-body") {
            req.set_body(text.as_bytes());
        }
        if let Some(key) = req.header("x-kv-incr") {
            let count = match sluice_pdk::kv::incr(&key, 1, 0) {
                Ok(n) => n.to_string(),
                Err(e) => format!("{e:?}"),
            };
            let _ = req.set_header("x-kv-count", &count);
            sluice_pdk::metrics::counter_add("kv_increments", 1);
        }
        if let Some(value) = req.header("x-context-set") {
            let _ = req.set_context("seen", &value);
        }
        self.calls.set(self.calls.get() + 1);
        let _ = req.set_header("x-instance-calls", &self.calls.get().to_string());
        Action::Continue
    }

    fn on_response(&self, req: &Request, resp: &Response) {
        let _ = fault(req.header("x-fault-response"));
        if let Some(value) = req.context("seen") {
            let _ = resp.set_header("x-context", &value);
        }
    }
}

sluice_pdk::export_plugin!(Faults);
