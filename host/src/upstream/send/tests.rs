//! The attempt loop on a scripted transport, in paused time: back-off and timeouts take
//! no real time, and each attempt's fate is chosen by the test.

use std::collections::VecDeque;
use std::sync::Mutex;

use super::*;
use crate::config::RetryPolicy;

enum Step {
    Status(u16),
    Connect,
    Broken,
    Hang,
}

/// Answers each attempt with the next step, and notes which endpoint it went to.
#[derive(Default)]
struct Script {
    steps: Mutex<VecDeque<Step>>,
    endpoints: Mutex<Vec<String>>,
}

impl Script {
    fn new(steps: impl IntoIterator<Item = Step>) -> Self {
        Self { steps: Mutex::new(steps.into_iter().collect()), ..Self::default() }
    }
}

impl Transport for Script {
    type Body = ();

    fn request(
        &self,
        _: Request<BoxBody>,
        endpoint: &Authority,
    ) -> impl Future<Output = Result<Response<()>, TransportError>> + Send {
        let step = self.steps.lock().unwrap().pop_front().expect("a step for every attempt");
        self.endpoints.lock().unwrap().push(endpoint.to_string());
        async move {
            match step {
                Step::Status(s) => Ok(Response::builder().status(s).body(()).unwrap()),
                Step::Connect => Err(TransportError::Connect("connection refused".into())),
                Step::Broken => Err(TransportError::Broken("connection reset".into())),
                Step::Hang => std::future::pending().await,
            }
        }
    }

    fn close_connection_of(&self, _: &Response<()>) {}
}

fn upstream(retry: RetryPolicy, total_timeout: Option<Duration>) -> Arc<Upstream> {
    let mut config = super::super::test_config(retry);
    config.total_timeout = total_timeout;
    Arc::new(Upstream::new("u", config, None))
}

fn policy(attempts: u32, statuses: &[u16], budget_min_per_second: u32) -> RetryPolicy {
    RetryPolicy {
        attempts,
        statuses: statuses.to_vec(),
        backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(400),
        budget_ratio: 0.0,
        budget_min_per_second,
    }
}

async fn send(
    up: &Arc<Upstream>,
    method: http::Method,
    script: &Script,
) -> (Result<Sent<()>, SendError>, Trace) {
    send_by(up, method, script, None).await
}

/// [`send`], with the client's own deadline.
async fn send_by(
    up: &Arc<Upstream>,
    method: http::Method,
    script: &Script,
    deadline: Option<Instant>,
) -> (Result<Sent<()>, SendError>, Trace) {
    let (parts, ()) = Request::builder().method(method).uri("/x").body(()).unwrap().into_parts();
    let mut trace = Trace::default();
    let out = Outgoing {
        parts: &parts,
        body: Body::empty(),
        client_ip: std::net::Ipv4Addr::LOCALHOST.into(),
        watch: None,
        trace: None,
        deadline,
    };
    let result = up.send_with(script, up, &mut trace, out, None, |_| {}).await;
    (result, trace)
}

fn outcomes(trace: &Trace) -> Vec<Option<Outcome>> {
    trace.attempts.iter().map(|a| a.outcome).collect()
}

#[tokio::test(start_paused = true)]
async fn failures_are_retried_on_another_endpoint_after_a_jittered_back_off() {
    let up = upstream(policy(3, &[503], 10), None);
    let script = Script::new([Step::Connect, Step::Status(503), Step::Status(200)]);
    let started = Instant::now();
    let (sent, trace) = send(&up, http::Method::GET, &script).await;
    assert_eq!(sent.unwrap().response.status(), 200);
    let status = |s| Some(Outcome::Status(http::StatusCode::from_u16(s).unwrap()));
    assert_eq!(outcomes(&trace), [Some(Outcome::ConnectFailed), status(503), status(200)]);
    assert_eq!(trace.upstream.as_deref(), Some("u"));
    let endpoints = script.endpoints.lock().unwrap().clone();
    assert_ne!(endpoints[0], endpoints[1], "a retry avoids the endpoint that failed");
    // Full jitter under ceilings of 100 ms, then 200 ms.
    assert!(started.elapsed() <= Duration::from_millis(300), "{:?}", started.elapsed());
}

#[tokio::test(start_paused = true)]
async fn a_request_that_may_have_arrived_is_repeated_only_when_idempotent() {
    let up = upstream(policy(3, &[], 10), None);
    let (sent, trace) = send(&up, http::Method::POST, &Script::new([Step::Broken])).await;
    let err = sent.err().unwrap();
    assert!(matches!(err, SendError::Upstream(UpstreamError::Broken { .. })), "{err:?}");
    assert_eq!(trace.attempts.len(), 1);
    // The cause is kept, not flattened into text.
    let source = std::error::Error::source(&err).map(ToString::to_string);
    assert_eq!(source.as_deref(), Some("connection reset"));

    // Nothing was sent when the connection could not be made: any method is retried.
    let script = Script::new([Step::Connect, Step::Status(201)]);
    let (sent, _) = send(&up, http::Method::POST, &script).await;
    assert_eq!(sent.unwrap().response.status(), 201);

    let script = Script::new([Step::Broken, Step::Status(200)]);
    let (sent, _) = send(&up, http::Method::PUT, &script).await;
    assert_eq!(sent.unwrap().response.status(), 200);
}

#[tokio::test(start_paused = true)]
async fn attempts_time_out_and_the_total_timeout_bounds_them_all() {
    let up = upstream(policy(3, &[], 10), Some(Duration::from_millis(1500)));
    let script = Script::new([Step::Hang, Step::Hang, Step::Hang]);
    let started = Instant::now();
    let (sent, trace) = send(&up, http::Method::GET, &script).await;
    let err = sent.err().unwrap();
    assert!(matches!(err, SendError::Upstream(UpstreamError::Timeout { .. })), "{err:?}");
    assert_eq!(outcomes(&trace), [Some(Outcome::TimedOut); 2]);
    assert_eq!(trace.attempts[0].took, Duration::from_secs(1), "the attempt's own timeout");
    assert!(trace.attempts[1].took <= Duration::from_millis(500), "what the total left");
    assert!(started.elapsed() <= Duration::from_millis(1500), "{:?}", started.elapsed());
}

#[tokio::test(start_paused = true)]
async fn the_clients_deadline_bounds_the_attempts_and_is_not_held_against_the_endpoint() {
    let up = upstream(policy(3, &[], 10), None);
    let script = Script::new([Step::Hang, Step::Hang, Step::Hang]);
    let started = Instant::now();
    let deadline = Some(started + Duration::from_millis(300));
    let (sent, trace) = send_by(&up, http::Method::GET, &script, deadline).await;
    let err = sent.err().unwrap();
    assert!(matches!(err, SendError::Client(ClientBodyError::Deadline(_))), "{err:?}");
    assert_eq!(started.elapsed(), Duration::from_millis(300));
    // Abandoned for the client: nothing recorded against the endpoint, no retry.
    assert_eq!(outcomes(&trace), [None]);

    // A deadline further away than the upstream's timeout leaves the timeout in charge.
    let script = Script::new([Step::Hang, Step::Hang, Step::Hang]);
    let deadline = Some(Instant::now() + Duration::from_secs(60));
    let (sent, trace) = send_by(&up, http::Method::GET, &script, deadline).await;
    assert!(matches!(sent.err().unwrap(), SendError::Upstream(UpstreamError::Timeout { .. })));
    assert_eq!(outcomes(&trace), [Some(Outcome::TimedOut); 3]);
}

#[tokio::test(start_paused = true)]
async fn when_retries_run_out_a_retryable_status_is_the_answer() {
    // Out of attempts: the last 503 goes to the client as it is.
    let up = upstream(policy(2, &[503], 10), None);
    let (sent, trace) =
        send(&up, http::Method::GET, &Script::new([Step::Status(503), Step::Status(503)])).await;
    assert_eq!(sent.unwrap().response.status(), 503);
    assert_eq!(trace.attempts.len(), 2);

    // An empty budget allows no retry at all, whatever `attempts` says.
    let up = upstream(policy(3, &[503], 0), None);
    let (sent, trace) = send(&up, http::Method::GET, &Script::new([Step::Status(503)])).await;
    assert_eq!(sent.unwrap().response.status(), 503);
    assert_eq!(trace.attempts.len(), 1);
    let (sent, _) = send(&up, http::Method::GET, &Script::new([Step::Connect])).await;
    assert!(matches!(sent.err(), Some(SendError::Upstream(UpstreamError::Connect { .. }))));
}

#[tokio::test(start_paused = true)]
async fn a_retryable_status_takes_one_retry_from_the_budget() {
    // Ten seconds of a floor of 1 a second: ten retries in the budget (and the short
    // back-off adds too little time to earn another).
    let mut quick = policy(2, &[503], 1);
    (quick.backoff, quick.max_backoff) = (Duration::from_millis(1), Duration::from_millis(1));
    let up = upstream(quick, None);
    for _ in 0..10 {
        let script = Script::new([Step::Status(503), Step::Status(200)]);
        let (sent, _) = send(&up, http::Method::GET, &script).await;
        assert_eq!(sent.unwrap().response.status(), 200);
    }
    let (sent, trace) = send(&up, http::Method::GET, &Script::new([Step::Status(503)])).await;
    assert_eq!(sent.unwrap().response.status(), 503, "the budget is spent");
    assert_eq!(trace.attempts.len(), 1);
}
