//! The phase contract (docs/phases.md) on fake plugins: no Wasm, only the order of calls.

use std::sync::Mutex;

use super::*;
use crate::message::Body;

#[derive(Clone, Copy)]
enum Act {
    Continue,
    Respond(u16),
    Trap,
    StoreClosed,
}

struct Fake {
    name: Arc<str>,
    request: bool,
    response: bool,
    on_error: FailPolicy,
    act: Act,
    log: Arc<Mutex<Vec<String>>>,
}

impl Link for Fake {
    fn name(&self) -> &Arc<str> {
        &self.name
    }

    fn on_error(&self) -> FailPolicy {
        self.on_error
    }

    fn has_hook(&self, phase: Phase) -> bool {
        match phase {
            Phase::Request => self.request,
            Phase::Response => self.response,
        }
    }

    async fn run(
        &self,
        phase: Phase,
        call: Box<Call>,
    ) -> (Box<Call>, Result<Decision, PluginError>) {
        self.log.lock().unwrap().push(format!("{}:{phase}", self.name));
        let fail = |kind| PluginError { plugin: self.name.clone(), phase, kind };
        let result = match self.act {
            Act::Continue => Ok(Decision::Continue),
            Act::Respond(status) => Ok(Decision::Respond(response(status))),
            Act::Trap => Err(fail(FailureKind::Trap { message: "boom".into(), stderr: None })),
            Act::StoreClosed => Err(fail(FailureKind::StoreClosed("redis down".into()))),
        };
        (call, result)
    }
}

fn response(status: u16) -> ResponseMsg {
    let (parts, ()) = http::Response::builder().status(status).body(()).unwrap().into_parts();
    ResponseMsg { parts, body: Body::empty() }
}

fn request() -> RequestMsg {
    RequestMsg::for_test("/")
}

/// A chain of fakes, `(name, act, on_error)`, all taking part in both phases unless the
/// name ends in `<` (request only) or `>` (response only); and the log of their calls.
fn fakes(plugins: &[(&str, Act, FailPolicy)]) -> (Chain<Fake>, Arc<Mutex<Vec<String>>>) {
    let log = Arc::new(Mutex::default());
    let fakes = plugins
        .iter()
        .map(|&(name, act, on_error)| {
            Arc::new(Fake {
                name: name.trim_end_matches(['<', '>']).into(),
                request: !name.ends_with('>'),
                response: !name.ends_with('<'),
                on_error,
                act,
                log: log.clone(),
            })
        })
        .collect();
    (Chain::new(fakes), log)
}

fn calls(log: &Mutex<Vec<String>>) -> Vec<String> {
    std::mem::take(&mut *log.lock().unwrap())
}

use Act::*;
use FailPolicy::{Continue as Skip, Fail};

#[tokio::test]
async fn request_phases_run_in_order_and_response_phases_in_reverse() {
    let (chain, log) =
        fakes(&[("a", Continue, Fail), ("b", Continue, Fail), ("c", Continue, Fail)]);
    assert!(chain.has_response_hooks());
    let phase = chain.run_request(request()).await.unwrap();
    assert!(phase.local.is_none());
    assert_eq!(phase.reached, 3);
    assert_eq!(calls(&log), ["a:on-request", "b:on-request", "c:on-request"]);
    let resp = chain.run_response(phase.reached, phase.request, response(200)).await.unwrap();
    assert_eq!(resp.parts.status, 200);
    assert_eq!(calls(&log), ["c:on-response", "b:on-response", "a:on-response"]);
}

#[tokio::test]
async fn a_local_response_skips_the_rest_and_unwinds_only_the_plugins_before_it() {
    let (chain, log) =
        fakes(&[("a", Continue, Fail), ("b", Respond(401), Fail), ("c", Continue, Fail)]);
    let phase = chain.run_request(request()).await.unwrap();
    assert_eq!(phase.local.as_ref().map(|r| r.parts.status.as_u16()), Some(401));
    assert_eq!((phase.reached, chain.plugin_name(phase.reached).as_deref()), (1, Some("b")));
    assert_eq!(calls(&log), ["a:on-request", "b:on-request"]);
    let local = phase.local.unwrap();
    let resp = chain.run_response(phase.reached, phase.request, local).await.unwrap();
    assert_eq!(resp.parts.status, 401);
    assert_eq!(calls(&log), ["a:on-response"]);
}

#[tokio::test]
async fn a_plugin_is_called_only_in_the_phases_it_has_hooks_for() {
    let (chain, log) = fakes(&[("req<", Continue, Fail), ("resp>", Continue, Fail)]);
    let phase = chain.run_request(request()).await.unwrap();
    chain.run_response(phase.reached, phase.request, response(200)).await.unwrap();
    assert_eq!(calls(&log), ["req:on-request", "resp:on-response"]);

    let (chain, _) = fakes(&[("req<", Continue, Fail)]);
    assert!(!chain.has_response_hooks(), "the request head need not be kept");
}

#[tokio::test]
async fn a_failure_follows_the_plugins_fail_policy() {
    // `continue`: logged and skipped for this phase; the rest of the chain runs.
    let (chain, log) = fakes(&[("a", Trap, Skip), ("b", Continue, Fail)]);
    let phase = chain.run_request(request()).await.unwrap();
    assert_eq!(phase.reached, 2);
    assert_eq!(calls(&log), ["a:on-request", "b:on-request"]);
    chain.run_response(2, phase.request, response(200)).await.unwrap();
    assert_eq!(calls(&log), ["b:on-response", "a:on-response"]);

    // `fail`: the request ends with that plugin's error; nothing after it runs.
    let (chain, log) = fakes(&[("a", Trap, Fail), ("b", Continue, Fail)]);
    let err = chain.run_request(request()).await.err().unwrap();
    assert_eq!((&*err.plugin, err.phase), ("a", Phase::Request));
    assert_eq!(calls(&log), ["a:on-request"]);

    // A closed store fails the request whatever the plugin's policy.
    let (chain, _) = fakes(&[("a", StoreClosed, Skip), ("b", Continue, Fail)]);
    let err = chain.run_request(request()).await.err().unwrap();
    assert!(matches!(err.kind, FailureKind::StoreClosed(_)), "{err}");
}
