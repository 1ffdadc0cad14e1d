//! A plugin built against `sluice:plugin@0.2.0` as it was released (the WIT files in
//! `../wit` are a frozen copy, never to be edited), without the SDK, so that it stays a
//! 0.2.0 component while the world grows. Newer 0.2.x hosts must load it unchanged.
//!
//! It sends `x-world-0-2-0: ROUTE CLIENT_IP` upstream and stamps responses with
//! `x-world: 0.2.0`, touching the `http`, `log` and `kv` imports of 0.2.0.

wit_bindgen::generate!({ path: "wit", world: "plugin" });

use exports::sluice::plugin::filter::{Action, Guest, Hooks};
use sluice::plugin::http::{Request, Response};
use sluice::plugin::{kv, log};

struct Plugin;

impl Guest for Plugin {
    fn init(_config: String) -> Result<Hooks, String> {
        Ok(Hooks::ON_REQUEST | Hooks::ON_RESPONSE)
    }

    fn on_request(req: &Request) -> Action {
        let calls = kv::incr("calls", 1, 0).unwrap_or(-1);
        log::log(log::Level::Debug, &format!("0.2.0 plugin call {calls}"));
        let value = format!("{} {}", req.route(), req.client_ip());
        let _ = req.set_header("x-world-0-2-0", &value);
        Action::Continue
    }

    fn on_response(_req: &Request, resp: &Response) {
        let _ = resp.set_header("x-world", "0.2.0");
    }
}

export!(Plugin);
