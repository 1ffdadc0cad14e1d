//! The sluice-pdk example: greets on `GET /hello`, and stamps every other response.
//!
//! Build: `cargo build --release --target wasm32-wasip2 -p sluice-example-hello`
//! Use:   see `plugin-sdk/rust/examples/hello/sluice.toml`.

use serde::Deserialize;
use sluice_pdk::{Action, LocalResponse, Plugin, Request, Response};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Who to greet.
    name: String,
}

struct Hello {
    name: String,
}

impl Plugin for Hello {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if config.name.trim().is_empty() {
            return Err("config.name: must not be empty".into());
        }
        Ok(Hello { name: config.name })
    }

    fn on_request(&self, req: &Request) -> Action {
        if req.method() == "GET" && req.path() == "/hello" {
            sluice_pdk::info!("greeting {}", self.name);
            let body = format!("hello, {}!\n", self.name);
            return Action::Respond(
                LocalResponse::new(200).header("content-type", "text/plain").body(body),
            );
        }
        Action::Continue
    }

    fn on_response(&self, _req: &Request, resp: &Response) {
        let _ = resp.set_header("x-hello", &self.name);
    }
}

sluice_pdk::export_plugin!(Hello);
