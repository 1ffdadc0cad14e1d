//! TLS listeners from the outside: certificates made per run with the `openssl` command,
//! the real binary, and real clients (curl, `openssl s_client`, Python's `ssl`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::proc::Proc;
use crate::common::*;

/// `openssl req` arguments for a new P-256 key, unencrypted.
const NEW_P256_KEY: [&str; 5] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];

/// A throwaway certificate authority and the certificates it signs, in a temp folder.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let pki = Pki { dir: tempfile::tempdir().unwrap() };
        pki.ca("ca", "Sluice Test CA");
        pki
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("the openssl command");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// `NAME.pem` and `NAME.key`: a self-signed CA.
    fn ca(&self, name: &str, cn: &str) {
        let (pem, key) = (format!("{name}.pem"), format!("{name}.key"));
        let subj = format!("/CN={cn}");
        let mut args = vec!["req", "-x509"];
        args.extend(NEW_P256_KEY);
        args.extend(["-keyout", &key, "-out", &pem, "-days", "2", "-subj", &subj]);
        args.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
        args.extend(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
        self.openssl(&args);
    }

    /// `NAME.pem` and `NAME.key`, signed by `ca`: a server certificate for `sans` (DNS
    /// names), or a client one when `client`.
    fn leaf(&self, ca: &str, name: &str, cn: &str, sans: &[&str], client: bool) {
        let (pem, key, csr, ext) = (
            format!("{name}.pem"),
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.ext"),
        );
        let subj = format!("/CN={cn}");
        let mut args = vec!["req"];
        args.extend(NEW_P256_KEY);
        args.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        self.openssl(&args);
        let san: Vec<String> = sans
            .iter()
            .map(|s| match s {
                s if s.contains("://") => format!("URI:{s}"),
                s if s.contains('@') => format!("email:{s}"),
                s if s.parse::<std::net::IpAddr>().is_ok() => format!("IP:{s}"),
                s => format!("DNS:{s}"),
            })
            .collect();
        let usage = if client { "clientAuth" } else { "serverAuth" };
        std::fs::write(
            self.path(&ext),
            format!(
                "subjectAltName={}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage={usage}\n",
                san.join(",")
            ),
        )
        .unwrap();
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
    }
}

/// The address a `[[listeners]]` entry is bound to, from the log.
fn listener(p: &mut Proc, name: &str) -> SocketAddr {
    let line = p.wait_for(&format!("listener {name:?} on "));
    line.split("://").nth(1).unwrap().trim().parse().unwrap()
}

/// `curl` against `https://HOST:PORT/path` resolved to `addr`: (status, HTTP version, body),
/// or `None` when the connection failed.
fn curl(addr: SocketAddr, host: &str, path: &str, extra: &[&str]) -> Option<(u16, String, String)> {
    let url = format!("https://{host}:{}{path}", addr.port());
    let resolve = format!("{host}:{}:127.0.0.1", addr.port());
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "10",
            "--resolve",
            &resolve,
            "-w",
            "\n%{http_code} %{http_version}",
        ])
        .args(extra)
        .arg(&url)
        .output()
        .expect("curl");
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, last) = text.rsplit_once('\n').unwrap();
    let (code, version) = last.split_once(' ').unwrap();
    Some((code.parse().unwrap(), version.to_owned(), body.to_owned()))
}

/// What `openssl s_client` is shown for `servername`: the subject line and the protocol,
/// or `None` when the handshake failed.
fn s_client(
    addr: SocketAddr,
    servername: Option<&str>,
    extra: &[&str],
) -> Option<(String, String)> {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &addr.to_string()]);
    if let Some(n) = servername {
        cmd.args(["-servername", n]);
    } else {
        cmd.arg("-noservername");
    }
    let out = cmd.args(extra).stdin(Stdio::null()).output().expect("openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let subject = text.lines().find(|l| l.starts_with("subject="))?.to_owned();
    // "New, TLSv1.3, Cipher is TLS_AES_256_GCM_SHA384"
    let protocol = text
        .lines()
        .find_map(|l| l.strip_prefix("New, ")?.split(',').next())
        .unwrap_or_default()
        .to_owned();
    Some((subject, protocol))
}

fn write_config(dir: &Path, upstream: SocketAddr, listeners: &str, routes: &str) -> PathBuf {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nheader_timeout = \"1s\"\nshutdown_timeout = \"2s\"\n\
         [runtime]\nplugin_dir = \"{}\"\n[upstreams.echo]\nendpoints = [\"{upstream}\"]\n\
         {listeners}\n{routes}",
        plugin_dir().display()
    );
    let path = dir.join("sluice.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_listeners_pick_certificates_by_sni_speak_h2_and_select_routes() {
    let pki = Pki::new();
    pki.leaf("ca", "site", "api.test", &["api.test"], false);
    pki.leaf("ca", "wild", "wild", &["*.wild.test"], false);
    let listeners = format!(
        "[[listeners]]\nname = \"https\"\nlisten = \"127.0.0.1:0\"\n\
         tls = {{ certs = [{{ cert = \"{0}/site.pem\", key = \"{0}/site.key\" }}, \
         {{ cert = \"{0}/wild.pem\", key = \"{0}/wild.key\" }}] }}\n\
         [[listeners]]\nname = \"modern\"\nlisten = \"127.0.0.1:0\"\n\
         tls = {{ certs = [{{ cert = \"{0}/site.pem\", key = \"{0}/site.key\" }}], min_version = \"1.3\" }}\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n",
        pki.dir.path().display()
    );
    let routes = "[[routes]]\nname = \"legacy\"\nprefix = \"/legacy\"\nupstream = \"echo\"\nhttps_redirect = 8443\n\
                  [[routes]]\nname = \"secure\"\nprefix = \"/secure\"\nupstream = \"echo\"\nlisteners = [\"https\"]\n\
                  [[routes]]\nname = \"open\"\nprefix = \"/open\"\nupstream = \"echo\"\n";
    let dir = tempfile::tempdir().unwrap();
    let mut p = Proc::start(&write_config(dir.path(), echo().await, &listeners, routes));
    let https = listener(&mut p, "https");
    let ca = pki.path("ca.pem");
    let ca = ca.to_str().unwrap();

    // HTTP/2 by ALPN, HTTP/1.1 when asked; the upstream hears the scheme.
    let (status, version, body) = curl(https, "api.test", "/secure/x", &["--cacert", ca]).unwrap();
    assert_eq!((status, version.as_str()), (200, "2"), "{body}");
    let echoed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed["headers"]["x-forwarded-proto"], "https", "{body}");
    let (status, version, _) =
        curl(https, "api.test", "/open", &["--cacert", ca, "--http1.1"]).unwrap();
    assert_eq!((status, version.as_str()), (200, "1.1"));
    // The wildcard certificate for its names; it is verified by curl.
    assert_eq!(curl(https, "x.wild.test", "/open", &["--cacert", ca]).unwrap().0, 200);
    // A route with https_redirect: 308 to HTTPS on plain HTTP, proxied over TLS.
    let moved = get(p.addr, "/legacy/x?q=1", &[("host", "api.test:8080")]).await;
    assert_eq!(
        (moved.status.as_u16(), moved.header("location")),
        (308, Some("https://api.test:8443/legacy/x?q=1"))
    );
    assert_eq!(curl(https, "api.test", "/legacy/x", &["--cacert", ca]).unwrap().0, 200);
    // A route limited to the TLS listener is not on the plain one.
    assert_eq!(get(p.addr, "/secure/x", &[]).await.status, 404);
    assert_eq!(get(p.addr, "/open", &[]).await.status, 200);

    // SNI picks the certificate: exact, wildcard, else the first (the default).
    let subject = |name| s_client(https, name, &[]).unwrap().0;
    assert!(subject(Some("api.test")).contains("CN = api.test"));
    assert!(subject(Some("a.wild.test")).contains("CN = wild"));
    assert!(subject(Some("a.b.wild.test")).contains("CN = api.test"), "one label deep only");
    assert!(subject(None).contains("CN = api.test"));
    // TLS 1.3 preferred, 1.2 accepted, unless min_version = "1.3".
    assert_eq!(s_client(https, Some("api.test"), &[]).unwrap().1, "TLSv1.3");
    assert_eq!(s_client(https, Some("api.test"), &["-tls1_2"]).unwrap().1, "TLSv1.2");
    let modern = listener(&mut p, "modern");
    assert_eq!(s_client(modern, Some("api.test"), &[]).unwrap().1, "TLSv1.3");
    assert_eq!(s_client(modern, Some("api.test"), &["-tls1_2"]), None);
    let log = p.log(Duration::from_millis(100));
    assert!(log.contains("listener \"https\": certificate for [\"*.wild.test\"] expires"), "{log}");
    // Their expiry, for alerts.
    let admin: SocketAddr = p
        .wait_for("admin listener on http://")
        .split("http://")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let metrics = get(admin, "/metrics", &[]).await.text();
    let expiry = metrics
        .lines()
        .find(|l| l.starts_with("sluice_tls_certificate_expiry_timestamp_seconds{listener=\"https\",name=\"*.wild.test\"}"))
        .unwrap_or_else(|| panic!("{metrics}"));
    let at: u64 = expiry.rsplit(' ').next().unwrap().parse().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!((now + 86_400..=now + 3 * 86_400).contains(&at), "{expiry}: issued for 2 days");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_certificate_serves_new_connections_while_old_ones_finish() {
    let pki = Pki::new();
    pki.leaf("ca", "v1", "v1", &["api.test"], false);
    pki.leaf("ca", "v2", "v2", &["api.test"], false);
    let (cert, key) = (pki.path("live.pem"), pki.path("live.key"));
    std::fs::copy(pki.path("v1.pem"), &cert).unwrap();
    std::fs::copy(pki.path("v1.key"), &key).unwrap();
    let listeners = format!(
        "[[listeners]]\nname = \"https\"\nlisten = \"127.0.0.1:0\"\n\
         tls = {{ certs = [{{ cert = \"{}\", key = \"{}\" }}] }}\n",
        cert.display(),
        key.display()
    );
    let routes = "[[routes]]\nprefix = \"/\"\nupstream = \"echo\"\n";
    let dir = tempfile::tempdir().unwrap();
    let mut p = Proc::start(&write_config(dir.path(), echo().await, &listeners, routes));
    let https = listener(&mut p, "https");
    assert!(s_client(https, Some("api.test"), &[]).unwrap().0.contains("CN = v1"));

    // A kept-alive connection made with v1, held across the rotation.
    let script = workspace().join("tests/py/tls_keepalive.py");
    let mut held = Command::new(crate::common::services::python())
        .arg(script)
        .args([&https.to_string(), "api.test", pki.path("ca.pem").to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(held.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "200 v1", "the first request on the held connection");

    // Rotate: the key, then the certificate. The watcher reloads them.
    std::fs::copy(pki.path("v2.key"), &key).unwrap();
    std::fs::copy(pki.path("v2.pem"), &cert).unwrap();
    p.wait_for("certificates of listener(s) [\"https\"] reloaded");
    assert!(
        s_client(https, Some("api.test"), &[]).unwrap().0.contains("CN = v2"),
        "new connections"
    );
    std::io::Write::write_all(held.stdin.as_mut().unwrap(), b"again\n").unwrap();
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "200 v1", "the old connection finished on what it negotiated");
    assert!(held.wait().unwrap().success());

    // A broken certificate is refused with its TOML path; v2 keeps serving.
    std::fs::write(&cert, "not a certificate\n").unwrap();
    let refused = p.wait_for("reload refused");
    assert!(refused.contains("listeners[0].tls.certs[0].cert"), "{refused}");
    assert!(s_client(https, Some("api.test"), &[]).unwrap().0.contains("CN = v2"));
    let start = Instant::now();
    assert_eq!(
        curl(https, "api.test", "/", &["--cacert", pki.path("ca.pem").to_str().unwrap()])
            .unwrap()
            .0,
        200
    );
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread")]
async fn client_certificates_required_optional_and_per_route() {
    let pki = Pki::new();
    pki.leaf("ca", "site", "api.test", &["api.test"], false);
    pki.ca("other", "Another CA");
    pki.leaf("ca", "alice", "alice", &["alice@example.com"], true);
    pki.leaf("other", "mallory", "mallory", &["mallory@example.com"], true);
    let d = pki.dir.path().display();
    let listeners = format!(
        "[[listeners]]\nname = \"mtls\"\nlisten = \"127.0.0.1:0\"\n\
         tls = {{ certs = [{{ cert = \"{d}/site.pem\", key = \"{d}/site.key\" }}], client_ca = \"{d}/ca.pem\" }}\n\
         [[listeners]]\nname = \"optional\"\nlisten = \"127.0.0.1:0\"\n\
         tls = {{ certs = [{{ cert = \"{d}/site.pem\", key = \"{d}/site.key\" }}], client_ca = \"{d}/ca.pem\", client_auth = \"optional\" }}\n"
    );
    let routes = "[[routes]]\nname = \"admin\"\nprefix = \"/admin\"\nupstream = \"echo\"\nrequire_client_cert = true\n\
                  [[routes]]\nname = \"open\"\nprefix = \"/\"\nupstream = \"echo\"\n";
    let dir = tempfile::tempdir().unwrap();
    let mut p = Proc::start(&write_config(dir.path(), echo().await, &listeners, routes));
    let (mtls, optional) = (listener(&mut p, "mtls"), listener(&mut p, "optional"));
    let ca = pki.path("ca.pem");
    let ca = ca.to_str().unwrap();
    let alice = [
        "--cacert",
        ca,
        "--cert",
        &pki.path("alice.pem").display().to_string(),
        "--key",
        &pki.path("alice.key").display().to_string(),
    ]
    .map(str::to_owned);
    let alice: Vec<&str> = alice.iter().map(String::as_str).collect();
    let mallory_cert = pki.path("mallory.pem").display().to_string();
    let mallory_key = pki.path("mallory.key").display().to_string();
    let mallory = ["--cacert", ca, "--cert", &mallory_cert, "--key", &mallory_key];

    // Required: no certificate, or one from another CA, fails the handshake.
    assert_eq!(curl(mtls, "api.test", "/", &["--cacert", ca]), None);
    assert_eq!(curl(mtls, "api.test", "/", &mallory), None);
    assert_eq!(curl(mtls, "api.test", "/admin", &alice).unwrap().0, 200);
    // Optional: served without one, but a route that requires one says 403.
    assert_eq!(curl(optional, "api.test", "/", &["--cacert", ca]).unwrap().0, 200);
    let (status, _, body) = curl(optional, "api.test", "/admin", &["--cacert", ca]).unwrap();
    assert_eq!((status, body.trim()), (403, "a client certificate is required"));
    assert_eq!(curl(optional, "api.test", "/admin", &alice).unwrap().0, 200);
    assert_eq!(curl(optional, "api.test", "/", &mallory), None, "a wrong one is still refused");
    // The plain listener has no client certificate either.
    assert_eq!(get(p.addr, "/admin", &[]).await.status, 403);
}

/// The verified client certificate reaches plugins (`request.client-cert`, world 0.2.1):
/// header-transform's `${client_cert.*}` forwards who it names, and a client without one
/// cannot claim an identity by sending the header itself.
#[tokio::test(flavor = "multi_thread")]
async fn plugins_see_the_verified_client_certificate_and_can_forward_it() {
    let pki = Pki::new();
    pki.leaf("ca", "site", "api.test", &["api.test"], false);
    let sans = ["spiffe://example.org/ns/prod/sa/alice", "alice@example.com", "10.0.0.7"];
    pki.leaf("ca", "alice", "alice", &sans, true);
    let d = pki.dir.path().display();
    let listeners = format!(
        "[[listeners]]\nname = \"optional\"\nlisten = \"127.0.0.1:0\"\n\
         tls = {{ certs = [{{ cert = \"{d}/site.pem\", key = \"{d}/site.key\" }}], client_ca = \"{d}/ca.pem\", client_auth = \"optional\" }}\n\
         [plugins.identity]\nmodule = \"header-transform\"\n\
         config = {{ request_headers = {{ \"x-client-subject\" = \"${{client_cert.subject}}\", \
         \"x-client-issuer\" = \"${{client_cert.issuer}}\", \"x-client-sans\" = \"${{client_cert.sans}}\", \
         \"x-client-fingerprint\" = \"${{client_cert.fingerprint}}\" }} }}\n"
    );
    let routes = "[[routes]]\nname = \"api\"\nprefix = \"/\"\nupstream = \"echo\"\nplugins = [\"identity\"]\n";
    let dir = tempfile::tempdir().unwrap();
    let mut p = Proc::start(&write_config(dir.path(), echo().await, &listeners, routes));
    let optional = listener(&mut p, "optional");
    let ca = pki.path("ca.pem").display().to_string();
    let (cert, key) = (pki.path("alice.pem"), pki.path("alice.key"));
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let spoof = ["-H", "x-client-subject: CN=admin"];
    let echoed = |extra: &[&str]| {
        let mut args = vec!["--cacert", &ca];
        args.extend(spoof);
        args.extend(extra);
        let (status, _, body) = curl(optional, "api.test", "/", &args).expect("served");
        assert_eq!(status, 200, "{body}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        let header = |name: &str| body["headers"][name].as_str().unwrap().to_owned();
        [
            header("x-client-subject"),
            header("x-client-issuer"),
            header("x-client-sans"),
            header("x-client-fingerprint"),
        ]
    };

    // The fingerprint as openssl computes it: "sha256 Fingerprint=AB:CD:...".
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in", cert])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let fingerprint = text.trim().rsplit('=').next().unwrap().replace(':', "").to_lowercase();
    assert_eq!(fingerprint.len(), 64, "{text}");
    let [subject, issuer, sans, fp] = echoed(&["--cert", cert, "--key", key]);
    assert_eq!(subject, "CN=alice", "the certificate's, not the client's header");
    assert_eq!(issuer, "CN=Sluice Test CA");
    assert_eq!(
        sans,
        "URI:spiffe://example.org/ns/prod/sa/alice,email:alice@example.com,IP:10.0.0.7"
    );
    assert_eq!(fp, fingerprint);
    // Without a certificate every field is empty, and the claimed subject is gone.
    assert_eq!(echoed(&[]), ["", "", "", ""].map(String::from));
    // Plain HTTP has no certificate either.
    let r = get(p.addr, "/", &[("x-client-subject", "CN=admin")]).await;
    assert_eq!(r.echoed_header("x-client-subject").as_deref(), Some(""));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_handshake_is_cut_and_other_clients_are_served() {
    let pki = Pki::new();
    pki.leaf("ca", "site", "api.test", &["api.test"], false);
    let d = pki.dir.path().display();
    let listeners = format!(
        "[[listeners]]\nname = \"https\"\nlisten = \"127.0.0.1:0\"\n\
         tls = {{ certs = [{{ cert = \"{d}/site.pem\", key = \"{d}/site.key\" }}] }}\n"
    );
    let routes = "[[routes]]\nprefix = \"/\"\nupstream = \"echo\"\n";
    let dir = tempfile::tempdir().unwrap();
    let mut p = Proc::start(&write_config(dir.path(), echo().await, &listeners, routes));
    let https = listener(&mut p, "https");
    // 50 connections that send half a ClientHello and then nothing.
    let mut stalled = Vec::new();
    for _ in 0..50 {
        let mut s = tokio::net::TcpStream::connect(https).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut s, &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
            .await
            .unwrap();
        stalled.push(s);
    }
    let ca = pki.path("ca.pem");
    let start = Instant::now();
    for _ in 0..5 {
        assert_eq!(
            curl(https, "api.test", "/", &["--cacert", ca.to_str().unwrap()]).unwrap().0,
            200
        );
    }
    assert!(start.elapsed() < Duration::from_secs(5), "others were served meanwhile");
    // header_timeout (1 s) cuts every stalled handshake.
    for mut s in stalled {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::io::AsyncReadExt::read(&mut s, &mut buf).await
        })
        .await
        .expect("closed within the header timeout");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
}

/// A Python HTTPS server (tests/py/https_upstream.py) on loopback; killed on drop.
struct HttpsUpstream {
    child: std::process::Child,
    addr: SocketAddr,
}

impl HttpsUpstream {
    fn start(pki: &Pki, name: &str, client_ca: Option<&str>) -> HttpsUpstream {
        let mut cmd = Command::new(crate::common::services::python());
        cmd.arg(workspace().join("tests/py/https_upstream.py"))
            .arg(pki.path(&format!("{name}.pem")))
            .arg(pki.path(&format!("{name}.key")));
        if let Some(ca) = client_ca {
            cmd.arg(pki.path(&format!("{ca}.pem")));
        }
        let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
        let mut port = String::new();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        std::io::BufRead::read_line(&mut out, &mut port).unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], port.trim().parse().unwrap()));
        HttpsUpstream { child, addr }
    }
}

impl Drop for HttpsUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_tls_is_verified_named_and_can_present_a_client_certificate() {
    let pki = Pki::new();
    // The upstream's certificate names a service, not the address Sluice dials.
    pki.leaf("ca", "svc", "svc", &["svc.internal"], false);
    pki.ca("other", "Another CA");
    pki.leaf("ca", "gateway", "gateway", &["gateway.internal"], true);
    let plain_tls = HttpsUpstream::start(&pki, "svc", None);
    let mutual = HttpsUpstream::start(&pki, "svc", Some("ca"));
    let d = pki.dir.path().display();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nrequest_timeout = \"5s\"\n\
         [runtime]\nplugin_dir = \"{plugins}\"\n\
         [upstreams.verified]\nendpoints = [\"{a}\"]\ntls = {{ ca = \"{d}/ca.pem\", server_name = \"svc.internal\" }}\n\
         [upstreams.wrong-ca]\nendpoints = [\"{a}\"]\ntls = {{ ca = \"{d}/other.pem\", server_name = \"svc.internal\" }}\n\
         [upstreams.wrong-name]\nendpoints = [\"{a}\"]\ntls = {{ ca = \"{d}/ca.pem\", server_name = \"other.internal\" }}\n\
         [upstreams.mutual]\nendpoints = [\"{m}\"]\n\
         tls = {{ ca = \"{d}/ca.pem\", server_name = \"svc.internal\", cert = \"{d}/gateway.pem\", key = \"{d}/gateway.key\" }}\n\
         [upstreams.no-client-cert]\nendpoints = [\"{m}\"]\ntls = {{ ca = \"{d}/ca.pem\", server_name = \"svc.internal\" }}\n\
         [upstreams.checked]\nendpoints = [\"{a}\"]\ntls = {{ ca = \"{d}/ca.pem\", server_name = \"svc.internal\" }}\n\
         health_check = {{ path = \"/health\", interval = \"100ms\" }}\n\
         [upstreams.checked-wrong-ca]\nendpoints = [\"{a}\"]\ntls = {{ ca = \"{d}/other.pem\", server_name = \"svc.internal\" }}\n\
         health_check = {{ path = \"/health\", interval = \"100ms\" }}\n\
         [[routes]]\nprefix = \"/verified\"\nupstream = \"verified\"\n\
         [[routes]]\nprefix = \"/wrong-ca\"\nupstream = \"wrong-ca\"\n\
         [[routes]]\nprefix = \"/wrong-name\"\nupstream = \"wrong-name\"\n\
         [[routes]]\nprefix = \"/mutual\"\nupstream = \"mutual\"\n\
         [[routes]]\nprefix = \"/no-client-cert\"\nupstream = \"no-client-cert\"\n\
         [[routes]]\nprefix = \"/checked\"\nupstream = \"checked\"\n\
         [[routes]]\nprefix = \"/checked-wrong-ca\"\nupstream = \"checked-wrong-ca\"\n",
        plugins = plugin_dir().display(),
        a = plain_tls.addr,
        m = mutual.addr,
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, text).unwrap();
    let mut p = Proc::start(&path);

    let ok = get(p.addr, "/verified/x", &[]).await;
    assert_eq!((ok.status.as_u16(), ok.text().as_str()), (200, "secure upstream\n"));
    // A certificate from a CA it does not trust, or for another name: refused, 502.
    assert_eq!(get(p.addr, "/wrong-ca/x", &[]).await.status, 502);
    assert_eq!(get(p.addr, "/wrong-name/x", &[]).await.status, 502);
    // An upstream that requires a client certificate gets the configured one.
    let m = get(p.addr, "/mutual/x", &[]).await;
    assert_eq!((m.status.as_u16(), m.header("x-client-cn")), (200, Some("gateway")));
    assert_eq!(get(p.addr, "/no-client-cert/x", &[]).await.status, 502);
    // Active health checks speak TLS and verify too: after three rounds the endpoint
    // behind a CA Sluice does not trust is out, the other one serves.
    let line = p.wait_for("unhealthy after 3 failed checks: tls:");
    assert!(line.contains("checked-wrong-ca"), "{line}");
    assert_eq!(get(p.addr, "/checked/x", &[]).await.status, 200);
    assert_eq!(get(p.addr, "/checked-wrong-ca/x", &[]).await.status, 503);
    let log = p.log(Duration::from_millis(100));
    assert!(!log.contains("upstream=checked endpoint"), "{log}");
}

/// `sluice ctl status` against an https:// admin URL with `flags` (--cacert, --cert, --key).
fn ctl_https(admin: SocketAddr, flags: &[&str]) -> (bool, String) {
    let out = Command::new(sluice_bin())
        .args(["ctl", "--admin", &format!("https://{admin}")])
        .args(flags)
        .arg("status")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_listener_speaks_https_and_requires_client_certificates() {
    let pki = Pki::new();
    pki.leaf("ca", "admin", "admin", &["127.0.0.1"], false);
    pki.leaf("ca", "ops", "ops", &["ops@example.com"], true);
    pki.ca("other", "Another CA");
    pki.leaf("other", "mallory", "mallory", &["mallory@example.com"], true);
    let port = crate::common::services::free_port();
    let d = pki.dir.path().display();
    let admin_section = format!(
        "[admin]\nlisten = \"127.0.0.1:{port}\"\n\
         tls = {{ certs = [{{ cert = \"{d}/admin.pem\", key = \"{d}/admin.key\" }}], client_ca = \"{d}/ca.pem\" }}\n"
    );
    let routes = "[[routes]]\nprefix = \"/\"\nupstream = \"echo\"\n";
    let dir = tempfile::tempdir().unwrap();
    let mut p = Proc::start(&write_config(dir.path(), echo().await, &admin_section, routes));
    let line = p.wait_for("admin listener on https://");
    assert!(line.contains("client certificates required"), "{line}");
    let admin: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    let curl_admin = |extra: &[&str]| {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5"])
            .args(["--cacert", &format!("{d}/ca.pem")])
            .args(extra)
            .arg(format!("https://{admin}/api/v1/server"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let ops =
        ["--cert", &format!("{d}/ops.pem"), "--key", &format!("{d}/ops.key")].map(String::from);
    let ops: Vec<&str> = ops.iter().map(String::as_str).collect();
    assert_eq!(curl_admin(&ops), "200");
    assert_eq!(curl_admin(&[]), "000", "no client certificate: no handshake");
    let mallory = ["--cert", &format!("{d}/mallory.pem"), "--key", &format!("{d}/mallory.key")]
        .map(String::from);
    let mallory: Vec<&str> = mallory.iter().map(String::as_str).collect();
    assert_eq!(curl_admin(&mallory), "000", "a certificate from another CA");

    // sluice ctl over HTTPS, with the CA and a client certificate.
    let ca = format!("{d}/ca.pem");
    let (ok, out) = ctl_https(admin, &[&["--cacert", &ca][..], &ops].concat());
    assert!(ok && out.contains("config        version 1"), "{out}");
    let (ok, out) = ctl_https(admin, &["--cacert", &ca]);
    assert!(!ok && out.contains("CertificateRequired"), "{out}");
    let (ok, out) = ctl_https(admin, &ops);
    assert!(!ok, "the system's roots do not know the test CA: {out}");
}

/// `protocol = "h2"` over TLS: ALPN h2 to another Sluice's TLS listener, verified, with
/// health checks over h2; an upstream that only speaks HTTP/1.1 is refused, not misread.
#[tokio::test(flavor = "multi_thread")]
async fn h2_upstreams_over_tls_agree_on_h2_by_alpn() {
    let pki = Pki::new();
    pki.leaf("ca", "svc", "svc", &["svc.internal"], false);
    let d = pki.dir.path().display();
    let inner_dir = tempfile::tempdir().unwrap();
    let listeners = format!(
        "[[listeners]]\nname = \"https\"\nlisten = \"127.0.0.1:0\"\n\
         tls = {{ certs = [{{ cert = \"{d}/svc.pem\", key = \"{d}/svc.key\" }}] }}\n"
    );
    let routes = "[[routes]]\nprefix = \"/\"\nupstream = \"echo\"\n";
    let mut inner = Proc::start(&write_config(inner_dir.path(), echo().await, &listeners, routes));
    let inner_https = listener(&mut inner, "https");
    let h1_only = HttpsUpstream::start(&pki, "svc", None);
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nrequest_timeout = \"5s\"\n\
         [upstreams.h2]\nendpoints = [\"{inner_https}\"]\nprotocol = \"h2\"\n\
         tls = {{ ca = \"{d}/ca.pem\", server_name = \"svc.internal\" }}\n\
         health_check = {{ path = \"/health\", interval = \"100ms\" }}\n\
         [upstreams.h1-only]\nendpoints = [\"{h1}\"]\nprotocol = \"h2\"\n\
         tls = {{ ca = \"{d}/ca.pem\", server_name = \"svc.internal\" }}\n\
         [[routes]]\nprefix = \"/h2\"\nupstream = \"h2\"\n\
         [[routes]]\nprefix = \"/h1-only\"\nupstream = \"h1-only\"\n",
        h1 = h1_only.addr,
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, text).unwrap();
    let mut p = Proc::start(&path);

    let reply = get(p.addr, "/h2/x", &[("host", "api.example")]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    // Through the inner gateway's TLS listener, which hands the upstream its scheme.
    assert_eq!(reply.echoed_header("x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(reply.echoed_header("host").as_deref(), Some("api.example"));
    assert_eq!(get(p.addr, "/h1-only/x", &[]).await.status, 502);
    p.wait_for("the upstream did not agree to h2 (TLS ALPN)");
    // Health probes go over h2 too: they pass, so the endpoint stays in.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!p.log(Duration::from_millis(100)).contains("unhealthy"));
    assert_eq!(get(p.addr, "/h2/y", &[]).await.status, 200);
}
