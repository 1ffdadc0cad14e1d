//! TLS on the listeners (rustls, with the *ring* provider): certificates chosen by SNI,
//! client certificates verified against a CA bundle, and what a handshake settled handed
//! to the request path.
//!
//! A listener's [`ListenerTls`] is built with the gateway from the config, so a changed
//! certificate file is picked up as a reload is: checked first, swapped in whole for new
//! handshakes, and on any error refused while the old one keeps serving. Connections that
//! finished their handshake keep what they negotiated.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;

use crate::config::{ClientAuth, ConfigError, TlsSettings};
use crate::message::{ClientCert, ConnInfo, TlsInfo};
use crate::server::{Acceptor, Shared};

/// One TLS listener's settings, loaded: what new handshakes use.
pub struct ListenerTls {
    pub config: Arc<ServerConfig>,
    /// Each certificate's names and expiry, in config order (the first is the default).
    pub certs: Vec<CertSummary>,
    /// A digest of every file read, to tell whether a reload changed any.
    pub digest: [u8; 32],
}

#[derive(Debug, Clone)]
pub struct CertSummary {
    /// The DNS names it serves (its SANs, else its subject's CN); `*.x` for wildcards.
    pub names: Vec<String>,
    pub not_after: SystemTime,
}

impl std::fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerTls").field("certs", &self.certs).finish_non_exhaustive()
    }
}

/// Logs a listener's certificates with their expiry: a warning within 30 days of it.
pub fn log_certs(listener: &str, t: &ListenerTls) {
    let now = SystemTime::now();
    for c in &t.certs {
        let expires = chrono::DateTime::<chrono::Utc>::from(c.not_after).format("%Y-%m-%d");
        let left = c.not_after.duration_since(now).unwrap_or_default();
        if left < Duration::from_secs(30 * 86_400) {
            tracing::warn!(
                "listener {listener:?}: certificate for {:?} expires {expires} ({} days left)",
                c.names,
                left.as_secs() / 86_400
            );
        } else {
            tracing::info!(
                "listener {listener:?}: certificate for {:?} expires {expires}",
                c.names
            );
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads and checks `settings`' files. Errors name the TOML path under `at`
/// (`listeners[0].tls`).
pub fn load(settings: &TlsSettings, at: &str) -> Result<ListenerTls, Vec<ConfigError>> {
    let provider = provider();
    let mut errors = Vec::new();
    let mut digest = Sha256::new();
    let mut entries = Vec::new();
    let mut summaries = Vec::new();
    for (i, files) in settings.certs.iter().enumerate() {
        let chain = read_chain(&files.cert, &mut digest)
            .map_err(|e| errors.push(ConfigError::new(format!("{at}.certs[{i}].cert"), e)));
        let key = read_key(&files.key, &mut digest)
            .map_err(|e| errors.push(ConfigError::new(format!("{at}.certs[{i}].key"), e)));
        let (Ok(chain), Ok(key)) = (chain, key) else { continue };
        let summary = match summarize(&chain[0]) {
            Ok(s) => s,
            Err(e) => {
                errors.push(ConfigError::new(format!("{at}.certs[{i}].cert"), e));
                continue;
            }
        };
        match CertifiedKey::from_der(chain, key, &provider) {
            Ok(ck) => {
                entries.push((summary.names.clone(), Arc::new(ck)));
                summaries.push(summary);
            }
            Err(e) => errors.push(ConfigError::new(
                format!("{at}.certs[{i}].key"),
                format!("{}: does not go with the certificate: {e}", files.key.display()),
            )),
        }
    }
    let verifier = match (&settings.client_ca, settings.client_auth) {
        (Some(ca), auth) if auth != ClientAuth::None => {
            match client_verifier(ca, auth, &provider, &mut digest) {
                Ok(v) => Some(v),
                Err(e) => {
                    errors.push(ConfigError::new(format!("{at}.client_ca"), e));
                    None
                }
            }
        }
        _ => None,
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let versions: &[&rustls::SupportedProtocolVersion] = match settings.tls13_only {
        true => &[&rustls::version::TLS13],
        false => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| vec![ConfigError::new(format!("{at}.min_version"), e.to_string())])?;
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(Sni::new(entries)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(ListenerTls { config: Arc::new(config), certs: summaries, digest: digest.finalize().into() })
}

fn read(path: &Path, digest: &mut Sha256) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    digest.update(&bytes);
    Ok(bytes)
}

fn read_chain(path: &Path, digest: &mut Sha256) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read(path, digest)?;
    let chain: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate chain: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate in it (expected PEM)", path.display()));
    }
    Ok(chain)
}

fn read_key(path: &Path, digest: &mut Sha256) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = read(path, digest)?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| format!("{}: not a PEM private key: {e}", path.display()))
}

fn client_verifier(
    ca: &Path,
    auth: ClientAuth,
    provider: &Arc<rustls::crypto::CryptoProvider>,
    digest: &mut Sha256,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(read_chain(ca, digest)?);
    if added == 0 {
        return Err(format!("{}: no usable CA certificate in it", ca.display()));
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    let builder = match auth {
        ClientAuth::Optional => builder.allow_unauthenticated(),
        _ => builder,
    };
    builder.build().map_err(|e| format!("{}: {e}", ca.display()))
}

/// The names a certificate serves and when it expires.
fn summarize(cert: &CertificateDer<'_>) -> Result<CertSummary, String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| format!("cannot parse the certificate: {e}"))?;
    let mut names: Vec<String> = match parsed.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names.extend(
            parsed
                .subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(|s| s.to_ascii_lowercase()),
        );
    }
    let secs = parsed.validity().not_after.timestamp();
    let not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64);
    Ok(CertSummary { names, not_after })
}

/// Picks the certificate for a handshake by SNI: an exact name, then a wildcard one label
/// deep (`*.example.com` serves `api.example.com`, not `example.com` nor `a.b.example.com`),
/// else the first certificate.
#[derive(Debug)]
struct Sni {
    certs: Vec<(Vec<String>, Arc<CertifiedKey>)>,
}

impl Sni {
    fn new(certs: Vec<(Vec<String>, Arc<CertifiedKey>)>) -> Self {
        Self { certs }
    }

    fn pick(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = name.map(str::to_ascii_lowercase) {
            let exact = self.certs.iter().find(|(names, _)| names.contains(&name));
            let wildcard = || {
                let (_, parent) = name.split_once('.')?;
                let want = format!("*.{parent}");
                self.certs.iter().find(|(names, _)| names.contains(&want))
            };
            if let Some((_, ck)) = exact.or_else(wildcard) {
                return Some(ck.clone());
            }
        }
        self.certs.first().map(|(_, ck)| ck.clone())
    }
}

impl ResolvesServerCert for Sni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

/// An upstream's TLS settings, loaded: how its connections are made.
pub struct UpstreamClient {
    pub connector: tokio_rustls::TlsConnector,
    /// The configured `server_name`; else each endpoint's host is used.
    pub server_name: Option<rustls::pki_types::ServerName<'static>>,
    /// A digest of every file read, to tell whether a reload changed any.
    pub digest: [u8; 32],
}

/// Reads `settings`' files (errors name the TOML path under `at`, `upstreams.NAME.tls`).
/// `h2`: ALPN offers `h2` alone (an upstream spoken to over HTTP/2), else `http/1.1`.
pub fn load_client(
    settings: &crate::config::UpstreamTls,
    at: &str,
    h2: bool,
) -> Result<UpstreamClient, Vec<ConfigError>> {
    let provider = provider();
    let mut digest = Sha256::new();
    let mut roots = rustls::RootCertStore::empty();
    match &settings.ca {
        Some(ca) => {
            let certs = read_chain(ca, &mut digest)
                .map_err(|e| vec![ConfigError::new(format!("{at}.ca"), e)])?;
            roots.add_parsable_certificates(certs);
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    if roots.is_empty() {
        let msg = "no usable CA certificate (set tls.ca to a PEM bundle)";
        return Err(vec![ConfigError::new(format!("{at}.ca"), msg)]);
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| vec![ConfigError::new(at.to_owned(), e.to_string())])?
        .with_root_certificates(roots);
    let mut config = match &settings.client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = read_chain(cert, &mut digest)
                .map_err(|e| vec![ConfigError::new(format!("{at}.cert"), e)])?;
            let key = read_key(key, &mut digest)
                .map_err(|e| vec![ConfigError::new(format!("{at}.key"), e)])?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| vec![ConfigError::new(format!("{at}.key"), e.to_string())])?
        }
    };
    config.alpn_protocols = vec![if h2 { b"h2".to_vec() } else { b"http/1.1".to_vec() }];
    let server_name = settings
        .server_name
        .as_ref()
        .and_then(|n| rustls::pki_types::ServerName::try_from(n.clone()).ok());
    Ok(UpstreamClient {
        connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        server_name,
        digest: digest.finalize().into(),
    })
}

/// The acceptor of a TLS listener: the handshake, with the gateway's current settings for
/// `listener`, inside the connection's task (bounded by `server.header_timeout`).
pub struct Terminator {
    pub listener: Arc<str>,
    pub gateway: Shared,
}

impl Acceptor for Terminator {
    type Stream = tokio_rustls::server::TlsStream<TcpStream>;

    async fn handshake(
        &self,
        tcp: TcpStream,
        info: &mut ConnInfo,
    ) -> std::io::Result<Self::Stream> {
        let config = self.gateway.load().tls(&self.listener).map(|t| t.config.clone());
        let Some(config) = config else {
            let msg = format!("listener {:?} has no TLS settings now", self.listener);
            return Err(std::io::Error::other(msg));
        };
        let stream = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await?;
        let (_, conn) = stream.get_ref();
        info.tls = Some(TlsInfo {
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
            server_name: conn.server_name().map(str::to_owned),
            version: conn.protocol_version().map(|v| match v {
                rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
                rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
                _ => "other",
            }),
            client: conn.peer_certificates().and_then(|c| c.first()).map(|c| client_cert(c).into()),
        });
        Ok(stream)
    }
}

/// A verified client certificate's identity.
fn client_cert(der: &CertificateDer<'_>) -> ClientCert {
    let fingerprint = Sha256::digest(der).iter().map(|b| format!("{b:02x}")).collect();
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(der) else {
        // rustls verified it, so x509-parser should read it too; if not, the fingerprint
        // still identifies it.
        return ClientCert { fingerprint, ..ClientCert::default() };
    };
    let sans = match parsed.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| {
                use x509_parser::extensions::GeneralName as G;
                match n {
                    G::DNSName(d) => Some(format!("DNS:{d}")),
                    G::RFC822Name(e) => Some(format!("email:{e}")),
                    G::URI(u) => Some(format!("URI:{u}")),
                    G::IPAddress(ip) => ip_text(ip).map(|ip| format!("IP:{ip}")),
                    _ => None,
                }
            })
            .collect(),
        _ => Vec::new(),
    };
    let (subject, issuer) = (parsed.subject().to_string(), parsed.issuer().to_string());
    ClientCert { subject, issuer, sans, fingerprint }
}

/// An IP address SAN's 4 or 16 bytes as text (`10.0.0.7`, `::1`).
fn ip_text(bytes: &[u8]) -> Option<std::net::IpAddr> {
    match bytes.len() {
        4 => Some(<[u8; 4]>::try_from(bytes).ok()?.into()),
        16 => Some(<[u8; 16]>::try_from(bytes).ok()?.into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_prefers_exact_then_one_label_wildcards_then_the_first() {
        let key = |n: u8| {
            // Keys are never used here: only which entry is picked matters.
            let signing = Arc::new(NoKey(n));
            Arc::new(CertifiedKey::new(vec![CertificateDer::from(vec![n])], signing))
        };
        let sni = Sni::new(vec![
            (vec!["default.test".into()], key(0)),
            (vec!["*.example.com".into()], key(1)),
            (vec!["api.example.com".into()], key(2)),
        ]);
        let picked = |name: Option<&str>| sni.pick(name).unwrap().cert[0].as_ref()[0];
        assert_eq!(picked(Some("API.example.com")), 2, "exact, any case");
        assert_eq!(picked(Some("www.example.com")), 1, "wildcard");
        assert_eq!(picked(Some("a.b.example.com")), 0, "a wildcard covers one label");
        assert_eq!(picked(Some("example.com")), 0);
        assert_eq!(picked(None), 0, "no SNI: the default");
    }

    #[derive(Debug)]
    struct NoKey(#[allow(dead_code)] u8);

    impl rustls::sign::SigningKey for NoKey {
        fn choose_scheme(
            &self,
            _: &[rustls::SignatureScheme],
        ) -> Option<Box<dyn rustls::sign::Signer>> {
            None
        }

        fn algorithm(&self) -> rustls::SignatureAlgorithm {
            rustls::SignatureAlgorithm::ED25519
        }
    }
}
