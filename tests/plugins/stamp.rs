// Shared source of the `stamp-v1` and `stamp-v2` test plugins, which differ only in
// `VERSION`: the reload tests swap one for the other and watch responses change.
//
// Response header `x-stamp: VERSION`, plus `x-stamp-label: LABEL` with config
// `{ label = "..." }`. With request header `x-stamp-trap: VERSION` the plugin of that version
// traps (for the rollout tests).

use serde::Deserialize;
use sluice_pdk::{Action, Hooks, Plugin, Request, Response};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    label: Option<String>,
}

struct Stamp {
    label: Option<String>,
}

impl Plugin for Stamp {
    type Config = Config;

    fn new(c: Config) -> Result<Self, String> {
        Ok(Stamp { label: c.label })
    }

    fn hooks(&self) -> Hooks {
        Hooks::all()
    }

    fn on_request(&self, req: &Request) -> Action {
        if req.header("x-stamp-trap").as_deref() == Some(VERSION) {
            panic!("stamp {VERSION} asked to trap");
        }
        Action::Continue
    }

    fn on_response(&self, _req: &Request, resp: &Response) {
        let _ = resp.set_header("x-stamp", VERSION);
        if let Some(label) = &self.label {
            let _ = resp.set_header("x-stamp-label", label);
        }
    }
}

sluice_pdk::export_plugin!(Stamp);
