//! The admin dashboard in a real browser: headless Chromium driven through WebDriver
//! (Debian's `chromium-driver`), against the real gateway under light load.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use serde_json::{Value, json};

use crate::common::backend::Backend;
use crate::common::proc::Proc;
use crate::common::services::free_port;
use crate::common::*;

const TOKEN: &str = "dashboard-admin-token-0123456789";

/// A chromedriver process and one browser session.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    /// The browser's profile, removed (dropped) after the browser.
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian package chromium-driver; ./dev test installs it)");
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let req = http::Request::get(format!("{base}/status")).body(Full::default()).unwrap();
            if let Ok(r) = client().request(req).await
                && r.status() == 200
            {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::Builder::new().prefix("sluice-dashboard-").tempdir().unwrap();
        let user_data_dir = format!("--user-data-dir={}", profile.path().display());
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1440,1000",
                         "--disable-background-networking", "--no-first-run",
                         user_data_dir],
            },
        }}});
        let mut b = Browser { driver, base, session: String::new(), _profile: profile };
        let session = b.wd("POST", "/session", Some(caps)).await;
        b.session = session["sessionId"].as_str().expect("a session").to_owned();
        b
    }

    /// One WebDriver call; its `value`.
    async fn wd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = match path {
            "/session" => format!("{}/session", self.base),
            p => format!("{}/session/{}{p}", self.base, self.session),
        };
        let bytes = body.map_or(Bytes::new(), |b| Bytes::from(b.to_string()));
        let req = http::Request::builder()
            .method(method)
            .uri(url)
            .header("content-type", "application/json")
            .body(Full::new(bytes))
            .unwrap();
        let r = send(&client(), req).await;
        let v: Value = serde_json::from_slice(&r.body).expect("WebDriver answers JSON");
        v["value"].clone()
    }

    async fn find(&self, css: &str) -> Option<String> {
        let v = self
            .wd("POST", "/element", Some(json!({ "using": "css selector", "value": css })))
            .await;
        // An element reference, or an error object ("no such element").
        v.get("element-6066-11e4-a52e-4f735466cecf")?.as_str().map(str::to_owned)
    }

    /// Waits (up to 20 s) for an element matching `css`.
    async fn wait_for(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(id) = self.find(css).await {
                return id;
            }
            assert!(Instant::now() < deadline, "no element {css}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn text(&self, css: &str) -> String {
        let id = self.wait_for(css).await;
        self.wd("GET", &format!("/element/{id}/text"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    async fn screenshot(&self, name: &str) -> std::path::PathBuf {
        let png = self.wd("GET", "/screenshot", None).await;
        let bytes =
            base64::engine::general_purpose::STANDARD.decode(png.as_str().unwrap()).unwrap();
        let dir = target_dir().join("test-output");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The session's end closes the browser before its profile goes (with `_profile`).
        if !self.session.is_empty() {
            let url = format!("{}/session/{}", self.base, self.session);
            let _ = Command::new("curl").args(["-s", "-m", "5", "-X", "DELETE", &url]).output();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The value `/metrics` has for `series` summed over the lines that contain `filter`.
fn metric_sum(text: &str, series: &str, filter: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(series) && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_what_metrics_say_and_drains_with_a_click() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) =
        (Backend::start("a").await, Backend::start("b").await, Backend::start("c").await);
    let admin_port = free_port();
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[runtime]
plugin_dir = "{plugins}"
[admin]
listen = "127.0.0.1:{admin_port}"
token = "{TOKEN}"
[upstreams.pool]
endpoints = ["{a}", "{b}", "{c}"]
circuit_breaker = {{ failure_threshold = 5 }}
[plugins.tag]
module = "header-transform"
config = {{ request = {{ set = {{ "x-env" = "test" }} }} }}
[[routes]]
name = "api"
prefix = "/api"
upstream = "pool"
plugins = ["tag"]
[[routes]]
name = "web"
prefix = "/"
upstream = "pool"
"#,
        plugins = plugin_dir().display(),
        a = a.addr,
        b = b.addr,
        c = c.addr,
    );
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, text).unwrap();
    let mut p = Proc::start_with(&path, &["--no-watch"]);
    p.wait_for("admin listener on http://");
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
    for i in 0..30 {
        assert_eq!(get(p.addr, &format!("/api/{i}"), &[]).await.status, 200);
    }
    for _ in 0..12 {
        assert_eq!(get(p.addr, "/", &[]).await.status, 200);
    }

    let browser = Browser::start().await;
    browser.wd("POST", "/url", Some(json!({ "url": format!("http://{admin}/") }))).await;
    // The API needs a token: the page asks for it.
    let input = browser.wait_for("#login:not([hidden]) #token").await;
    browser.wd("POST", &format!("/element/{input}/value"), Some(json!({ "text": TOKEN }))).await;
    let submit = browser.wait_for("#login button").await;
    browser.wd("POST", &format!("/element/{submit}/click"), Some(json!({}))).await;
    browser.wait_for("body[data-loaded=yes]").await;

    // The numbers shown are the numbers /metrics has.
    let metrics = get(admin, "/metrics", &[]).await.text();
    for route in ["api", "web"] {
        let shown = browser.text(&format!("tr[data-route={route}] .total")).await;
        let scraped =
            metric_sum(&metrics, "http_server_requests_total{", &format!("http_route=\"{route}\""));
        assert_eq!(shown.parse::<f64>().unwrap(), scraped, "route {route}");
    }
    assert_eq!(browser.text("tr[data-route=api] .total").await, "30");
    let calls = browser.text("tr[data-plugin=tag] .calls").await;
    assert_eq!(
        calls.parse::<f64>().unwrap(),
        metric_sum(&metrics, "sluice_plugin_calls_total{", "plugin=\"tag\"")
    );
    assert!(
        browser.text("tr[data-route=api] .p99").await.ends_with("ms")
            || browser.text("tr[data-route=api] .p99").await.ends_with("µs")
    );
    let first = browser.screenshot("dashboard.png").await;

    // Drain a with a click (and a confirmation): no new request reaches it.
    // The table is redrawn every two seconds: a button found just before a redraw is gone
    // by the click, so click until the confirmation shows.
    let button = format!("tr[data-endpoint=\"{}\"] button.drain", a.addr);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let drain = browser.wait_for(&button).await;
        browser.wd("POST", &format!("/element/{drain}/click"), Some(json!({}))).await;
        let question = browser.wd("GET", "/alert/text", None).await;
        if let Some(q) = question.as_str() {
            assert!(q.starts_with(&format!("Drain {}?", a.addr)), "{q}");
            break;
        }
        assert!(Instant::now() < deadline, "no confirmation: {question}");
    }
    browser.wd("POST", "/alert/accept", Some(json!({}))).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ups = get_json(admin, "/api/v1/upstreams").await;
        if ups[0]["endpoints"][0]["override"] == "drain" {
            break;
        }
        if Instant::now() > deadline {
            let status = browser.text("#status").await;
            panic!(
                "the click did not drain: {ups}\npage status: {status}\nlog: {}",
                p.log(Duration::from_millis(50))
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hits = a.hits();
    for i in 0..30 {
        assert_eq!(get(p.addr, &format!("/api/{i}"), &[]).await.status, 200);
    }
    assert_eq!(a.hits(), hits, "drained from the dashboard");
    // The page rebuilds its tables on every poll: read until the drain shows (an element
    // read as it is replaced reads empty).
    let css = format!("tr[data-endpoint=\"{}\"] .state", a.addr);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut state = browser.text(&css).await;
    while state != "drain (override)" && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        state = browser.text(&css).await;
    }
    assert_eq!(state, "drain (override)");
    let log = p.log(Duration::from_millis(100));
    assert!(
        log.contains(&format!(
            "admin API: token \"admin\" (admin role) from 127.0.0.1: endpoint pool/{}: drain",
            a.addr
        )),
        "{log}"
    );
    // A reload shows up with its diff.
    let text = std::fs::read_to_string(&path).unwrap().replace(
        &format!("\"{}\"", b.addr),
        &format!("{{ address = \"{}\", weight = 2 }}", b.addr),
    );
    std::fs::write(&path, text).unwrap();
    let auth = format!("Bearer {TOKEN}");
    let req = http::Request::post(format!("http://{admin}/api/v1/reload"))
        .header("authorization", &auth)
        .body(Full::default())
        .unwrap();
    assert_eq!(send(&client(), req).await.status, 200);
    browser.wait_for("#diff:not([hidden])").await;
    let diff = browser.text("#diff").await;
    assert!(diff.contains("+address = ") || diff.contains("weight = 2"), "{diff}");
    assert!(!diff.contains(TOKEN), "{diff}");
    // The events list the reload and the drain, newest first.
    browser.wait_for("#events tr[data-event]").await;
    let in_order = |events: &str| {
        let (reload, drain) = (events.find("config version 2 applied"), events.find(": drain"));
        matches!((reload, drain), (Some(r), Some(d)) if r < d)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut events = browser.text("#events tbody").await;
    while !in_order(&events) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        events = browser.text("#events tbody").await;
    }
    assert!(in_order(&events), "{events}");
    let second = browser.screenshot("dashboard-drained.png").await;
    // Readable in dark mode too: the page follows prefers-color-scheme.
    let dark = json!({ "cmd": "Emulation.setEmulatedMedia", "params": {
        "features": [{ "name": "prefers-color-scheme", "value": "dark" }] } });
    browser.wd("POST", "/goog/cdp/execute", Some(dark)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let third = browser.screenshot("dashboard-dark.png").await;
    eprintln!("screenshots: {} {} {}", first.display(), second.display(), third.display());
}

async fn get_json(admin: SocketAddr, path: &str) -> Value {
    let r = get(admin, path, &[("authorization", &format!("Bearer {TOKEN}"))]).await;
    serde_json::from_slice(&r.body).unwrap()
}

/// The same page in headless Firefox (Debian's firefox-esr), driven over WebDriver BiDi by
/// tests/py/firefox_dashboard.py: it renders the numbers /metrics has, and its Drain
/// button drains.
#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_works_in_firefox_too() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let admin_port = free_port();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[runtime]\nplugin_dir = \"{}\"\n\
         [admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\
         [upstreams.pool]\nendpoints = [\"{}\", \"{}\"]\n\
         [[routes]]\nname = \"api\"\nprefix = \"/\"\nupstream = \"pool\"\n",
        plugin_dir().display(),
        a.addr,
        b.addr
    );
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, text).unwrap();
    let mut p = Proc::start_with(&path, &["--no-watch"]);
    p.wait_for("admin listener on http://");
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
    for i in 0..20 {
        assert_eq!(get(p.addr, &format!("/{i}"), &[]).await.status, 200);
    }
    let shot = target_dir().join("test-output").join("dashboard-firefox.png");
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    let firefox = ["firefox-esr", "firefox"]
        .into_iter()
        .find(|f| Command::new(f).arg("--version").output().is_ok_and(|o| o.status.success()))
        .expect("firefox (Debian package firefox-esr; ./dev test installs it)");
    let script = workspace().join("tests/py/firefox_dashboard.py");
    let args: Vec<String> = vec![
        firefox.to_owned(),
        free_port().to_string(),
        format!("http://{admin}/"),
        a.addr.to_string(),
        shot.display().to_string(),
    ];
    let out = tokio::task::spawn_blocking(move || {
        Command::new(crate::common::services::python())
            .arg(script)
            .args(args)
            .output()
            .expect("python")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let seen: Value = serde_json::from_str(stdout.trim()).unwrap();
    let metrics = get(admin, "/metrics", &[]).await.text();
    let scraped = metric_sum(&metrics, "http_server_requests_total{", "http_route=\"api\"");
    assert_eq!(scraped, 20.0);
    assert_eq!(seen["routes"], json!([["api", "20"]]), "{seen}");
    assert_eq!(seen["endpoints"], 2, "{seen}");
    assert!(seen["events"].as_u64().unwrap() >= 1, "{seen}");
    assert_eq!(seen["state"], "drain (override)", "{seen}");
    let ups = get(admin, "/api/v1/upstreams", &[]).await;
    let ups: Value = serde_json::from_slice(&ups.body).unwrap();
    assert_eq!(ups[0]["endpoints"][0]["override"], "drain", "drained from Firefox");
    let hits = a.hits();
    for i in 0..10 {
        assert_eq!(get(p.addr, &format!("/{i}"), &[]).await.status, 200);
    }
    assert_eq!(a.hits(), hits);
    eprintln!("screenshot: {}", shot.display());
}
