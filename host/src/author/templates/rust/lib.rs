//! {{name}}: stamps requests with a greeting, answers `GET /hello`, marks responses.

use serde::Deserialize;
use sluice_pdk::{Action, LocalResponse, Plugin, Request, Response};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    greeting: String,
}

struct Greeter {
    greeting: String,
}

impl Plugin for Greeter {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if config.greeting.trim().is_empty() {
            return Err("config.greeting: must not be empty".into());
        }
        Ok(Greeter { greeting: config.greeting })
    }

    fn on_request(&self, req: &Request) -> Action {
        sluice_pdk::info!("{} {}", req.method(), req.path());
        if req.path() == "/hello" {
            let body = format!("{} from {{name}}\n", self.greeting);
            return Action::Respond(
                LocalResponse::new(200).header("content-type", "text/plain").body(body),
            );
        }
        let _ = req.set_header("x-greeting", &self.greeting);
        Action::Continue
    }

    fn on_response(&self, _req: &Request, resp: &Response) {
        let _ = resp.set_header("x-plugin", "{{name}}");
    }
}

sluice_pdk::export_plugin!(Greeter);
