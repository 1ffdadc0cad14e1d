//! The `cors` plugin judged by a real browser: headless Chromium loads a page from one
//! origin, and the page's scripts call Sluice on another origin.

use std::net::SocketAddr;
use std::process::Command;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

/// Serves `html` for every request on `port` (another port: another origin).
async fn page_server(port: u16, html: String) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let html = html.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    html.len()
                );
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(html.as_bytes()).await;
            });
        }
    });
    addr
}

/// Loads `url` in headless Chromium and returns the DOM once the page's scripts are done.
fn chromium_dom(url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=15000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .output()
        .expect("chromium (Debian package chromium; ./dev test installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn cors_lets_the_browser_call_allowed_origins_and_blocks_the_rest() {
    // The page's origin is only known once its server listens, and the gateway's config
    // needs it: reserve the page's port first.
    let page_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let page_port = page_listener.local_addr().unwrap().port();
    drop(page_listener);
    let origin = format!("http://127.0.0.1:{page_port}");
    let gw = gateway(
        echo().await,
        &format!(
            r#"
[plugins.cors]
module = "cors"
[plugins.cors.config]
allow_origins = ["{origin}"]
allow_methods = ["GET", "PUT"]
allow_headers = ["x-trace"]
expose_headers = ["x-exposed"]

[plugins.elsewhere]
module = "cors"
config = {{ allow_origins = ["https://elsewhere.example"] }}

[plugins.stamp]
module = "header-transform"
config = {{ response_headers = {{ "x-exposed" = "yes", "x-unexposed" = "no" }} }}

[[routes]]
prefix = "/open"
upstream = "echo"
plugins = ["cors", "stamp"]

[[routes]]
prefix = "/closed"
upstream = "echo"
plugins = ["elsewhere", "stamp"]
"#
        ),
    )
    .await;
    let api = format!("http://{}", gw.addr);
    let html = format!(
        r#"<!doctype html><html><body><pre id="out">running</pre><script>
const calls = [
  ["simple", "{api}/open/a", {{}}],
  ["preflighted", "{api}/open/b", {{method: "PUT", headers: {{"x-trace": "1"}}}}],
  ["header_not_allowed", "{api}/open/c", {{method: "PUT", headers: {{"x-secret": "1"}}}}],
  ["method_not_allowed", "{api}/open/d", {{method: "DELETE"}}],
  ["origin_not_allowed", "{api}/closed/e", {{}}],
];
(async () => {{
  const out = [];
  for (const [name, url, opts] of calls) {{
    try {{
      const r = await fetch(url, opts);
      out.push(`${{name}}=${{r.status}}:${{r.headers.get("x-exposed")}}:${{r.headers.get("x-unexposed")}}`);
    }} catch (e) {{
      out.push(`${{name}}=blocked`);
    }}
  }}
  document.getElementById("out").textContent = out.join(" ");
}})();
</script></body></html>"#
    );
    let page = page_server(page_port, html).await;
    let dom = tokio::task::spawn_blocking(move || chromium_dom(&format!("http://{page}/")))
        .await
        .unwrap();
    let results = dom
        .split("<pre id=\"out\">")
        .nth(1)
        .and_then(|s| s.split("</pre>").next())
        .unwrap_or_else(|| panic!("no results in the page: {dom}"));
    assert_eq!(
        results,
        "simple=200:yes:null preflighted=200:yes:null header_not_allowed=blocked \
         method_not_allowed=blocked origin_not_allowed=blocked",
        "the browser disagrees with the config"
    );
    gw.shutdown().await;
}
