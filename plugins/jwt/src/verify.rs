//! Token verification, independent of the gateway: keys from the config, checks by
//! `jsonwebtoken` (pure-Rust crypto, so it compiles to a component).
//!
//! HMAC tokens (HS256/384/512, the common case behind a gateway) take a shorter path of
//! their own: the key's HMAC state after absorbing the key is prepared once at load, so a
//! token costs only its own hash blocks, and the header and the claims are each decoded
//! once (`jsonwebtoken::decode` decodes both twice). The claim checks there follow
//! `jsonwebtoken`'s exactly (see [`Checks::claims`]); tests/auth.rs compares the verdicts
//! with PyJWT's on random tokens.
//!
//! Each key is bound to one algorithm family (HMAC, RSA, EC, EdDSA) when it is loaded, and
//! a token is only ever checked against keys of its `alg`'s family: an RSA public key is
//! never used as an HMAC secret (the classic algorithm-confusion attack), and `alg: none`
//! is refused before any key is looked at.

use std::collections::HashSet;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Sha256, Sha384, Sha512};

/// A key as written in the config.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Matched against the token's `kid` header when both have one.
    #[serde(default)]
    pub kid: Option<String>,
    /// The algorithm(s) this key verifies; for JWKs, defaults to the JWK's `alg` or its
    /// curve's algorithm.
    #[serde(default)]
    pub alg: Option<String>,
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default)]
    pub secret_base64: Option<String>,
    /// A PEM public key (SPKI or PKCS#1 for RSA).
    #[serde(default)]
    pub pem: Option<String>,
    #[serde(default)]
    pub jwk: Option<Value>,
}

pub struct Key {
    kid: Option<String>,
    algs: Vec<Algorithm>,
    key: DecodingKey,
    /// For an HMAC key, its prepared state for each of its algorithms.
    hmac: Vec<(Algorithm, Prepared)>,
}

/// An HMAC after absorbing its key (RFC 2104's inner and outer pads), cloned per token.
enum Prepared {
    S256(Hmac<Sha256>),
    S384(Hmac<Sha384>),
    S512(Hmac<Sha512>),
}

impl Prepared {
    fn new(alg: Algorithm, secret: &[u8]) -> Option<Prepared> {
        match alg {
            Algorithm::HS256 => Hmac::new_from_slice(secret).ok().map(Prepared::S256),
            Algorithm::HS384 => Hmac::new_from_slice(secret).ok().map(Prepared::S384),
            Algorithm::HS512 => Hmac::new_from_slice(secret).ok().map(Prepared::S512),
            _ => None,
        }
    }

    /// Whether `signature` is this key's MAC of `message`, compared in constant time.
    fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        fn check<M: Mac + Clone>(mac: &M, message: &[u8], signature: &[u8]) -> bool {
            let mut mac = mac.clone();
            mac.update(message);
            mac.verify_slice(signature).is_ok()
        }
        match self {
            Prepared::S256(mac) => check(mac, message, signature),
            Prepared::S384(mac) => check(mac, message, signature),
            Prepared::S512(mac) => check(mac, message, signature),
        }
    }
}

/// Why a request is refused; `Missing` answers without `error=` (RFC 6750 section 3.1).
#[derive(Debug, PartialEq)]
pub enum Failure {
    Missing,
    Invalid(String),
}

pub struct Checks {
    pub algorithms: Option<Vec<Algorithm>>,
    pub required: Vec<String>,
    /// The claim checks for each algorithm the keys verify, built once here rather than for
    /// every token.
    validations: Vec<(Algorithm, Validation)>,
    /// The same checks, for the HMAC path's own claim validation.
    issuer: HashSet<String>,
    audience: HashSet<String>,
    leeway_s: u64,
    /// `exp`, `nbf`, `aud`, `iss` or `sub`: required by `required_claims`, or (`iss`,
    /// `aud`) by a configured issuer or audience.
    required_spec: HashSet<String>,
}

impl Checks {
    pub fn new(
        keys: &[Key],
        algorithms: Option<Vec<Algorithm>>,
        issuer: &[String],
        audience: &[String],
        leeway_s: u64,
        required: Vec<String>,
    ) -> Checks {
        let validation = |alg| {
            let mut v = Validation::new(alg);
            v.leeway = leeway_s;
            v.validate_nbf = true;
            v.required_spec_claims = HashSet::new();
            if !issuer.is_empty() {
                v.set_issuer(issuer);
                v.required_spec_claims.insert("iss".to_owned());
            }
            if audience.is_empty() {
                v.validate_aud = false;
            } else {
                v.set_audience(audience);
                v.required_spec_claims.insert("aud".to_owned());
            }
            for c in &required {
                if ["exp", "nbf", "aud", "iss", "sub"].contains(&c.as_str()) {
                    v.required_spec_claims.insert(c.clone());
                }
            }
            v
        };
        let mut validations: Vec<(Algorithm, Validation)> = Vec::new();
        for &alg in keys.iter().flat_map(|k| &k.algs) {
            if !validations.iter().any(|(a, _)| *a == alg) {
                validations.push((alg, validation(alg)));
            }
        }
        let required_spec = validation(Algorithm::HS256).required_spec_claims;
        Checks {
            algorithms,
            validations,
            issuer: issuer.iter().cloned().collect(),
            audience: audience.iter().cloned().collect(),
            leeway_s,
            required_spec,
            required,
        }
    }

    /// `jsonwebtoken`'s claim validation (`validation::validate` in 11.x) for the settings
    /// [`Checks::new`] gives it, on claims decoded once: required registered claims, `exp`
    /// and `nbf` with the leeway, `iss` and `aud` (a string, or an array sharing a value).
    /// A claim of the wrong type counts as absent, except a malformed `exp` or `nbf`.
    fn claims(&self, claims: &Map<String, Value>) -> Result<(), Failure> {
        let invalid = |m: &str| Err(Failure::Invalid(m.to_owned()));
        let (exp, nbf) = (numeric(claims.get("exp")), numeric(claims.get("nbf")));
        let (iss, aud) = (strings(claims.get("iss")), strings(claims.get("aud")));
        for c in &self.required_spec {
            let present = match c.as_str() {
                "exp" => matches!(exp, Claim::Parsed(_)),
                "nbf" => matches!(nbf, Claim::Parsed(_)),
                "iss" => matches!(iss, Claim::Parsed(_)),
                "aud" => matches!(aud, Claim::Parsed(_)),
                "sub" => matches!(claims.get("sub"), Some(Value::String(_))),
                _ => true,
            };
            if !present {
                return Err(Failure::Invalid(format!("missing required claim {c:?}")));
            }
        }
        if let Claim::Malformed = exp {
            return invalid("malformed claim \"exp\"");
        }
        if let Claim::Malformed = nbf {
            return invalid("malformed claim \"nbf\"");
        }
        let now = jsonwebtoken::get_current_timestamp();
        if let Claim::Parsed(exp) = exp
            && exp < now.saturating_sub(self.leeway_s)
        {
            return invalid("token expired");
        }
        if let Claim::Parsed(nbf) = nbf
            && nbf > now.saturating_add(self.leeway_s)
        {
            return invalid("token not valid yet");
        }
        if let Claim::Parsed(iss) = iss
            && !self.issuer.is_empty()
            && !iss.iter().any(|i| self.issuer.contains(*i))
        {
            return invalid("wrong issuer");
        }
        // Without a configured audience, `aud` is not checked (`validate_aud = false`).
        if let Claim::Parsed(aud) = aud
            && !self.audience.is_empty()
            && !aud.iter().any(|a| self.audience.contains(*a))
        {
            return invalid("wrong audience");
        }
        Ok(())
    }

    fn validation(&self, alg: Algorithm) -> Option<&Validation> {
        self.validations.iter().find(|(a, _)| *a == alg).map(|(_, v)| v)
    }
}

/// A registered claim as `jsonwebtoken` reads it.
enum Claim<T> {
    Parsed(T),
    Malformed,
    Absent,
}

/// `exp`/`nbf`: a non-negative number (a fraction rounded), else malformed; absent only
/// when missing (`null` is malformed, as in `jsonwebtoken`).
fn numeric(v: Option<&Value>) -> Claim<u64> {
    let Some(v) = v else { return Claim::Absent };
    if let Some(n) = v.as_u64() {
        return Claim::Parsed(n);
    }
    match v.as_f64() {
        Some(f) if v.is_f64() && f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => {
            Claim::Parsed(f.round() as u64)
        }
        _ => Claim::Malformed,
    }
}

/// `iss`/`aud`: a string, or an array of strings; `null` counts as absent, anything else
/// as malformed (which, for these two, is treated as absent).
fn strings(v: Option<&Value>) -> Claim<Vec<&str>> {
    match v {
        None | Some(Value::Null) => Claim::Absent,
        Some(Value::String(s)) => Claim::Parsed(vec![s.as_str()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(Value::as_str)
            .collect::<Option<Vec<_>>>()
            .map_or(Claim::Malformed, Claim::Parsed),
        Some(_) => Claim::Malformed,
    }
}

pub fn parse_alg(s: &str) -> Result<Algorithm, String> {
    match s {
        "none" => Err("\"none\" is not allowed".to_owned()),
        _ => s.parse::<Algorithm>().map_err(|_| {
            format!(
                "unknown algorithm {s:?}; expected HS256/384/512, RS256/384/512, \
                 PS256/384/512, ES256/384 or EdDSA"
            )
        }),
    }
}

impl Key {
    pub fn from_config(at: &str, k: KeyConfig) -> Result<Key, String> {
        let algs = match &k.alg {
            Some(a) => Some(vec![parse_alg(a).map_err(|e| format!("{at}.alg: {e}"))?]),
            None => None,
        };
        let (key, default_algs): (DecodingKey, Option<Vec<Algorithm>>) =
            match (&k.secret, &k.secret_base64, &k.pem, &k.jwk) {
                (Some(s), None, None, None) => (DecodingKey::from_secret(s.as_bytes()), None),
                (None, Some(b), None, None) => (
                    DecodingKey::from_base64_secret(b)
                        .map_err(|e| format!("{at}.secret_base64: {e}"))?,
                    None,
                ),
                (None, None, Some(pem), None) => {
                    let key =
                        pem_key(pem, algs.as_deref()).map_err(|e| format!("{at}.pem: {e}"))?;
                    let default = default_algs_for(&key);
                    (key, default)
                }
                (None, None, None, Some(jwk)) => {
                    let jwk: Jwk = serde_json::from_value(jwk.clone())
                        .map_err(|e| format!("{at}.jwk: {e}"))?;
                    let (key, jwk_algs) = jwk_key(&jwk).map_err(|e| format!("{at}.jwk: {e}"))?;
                    let kid = k.kid.clone().or(jwk.common.key_id.clone());
                    return Key::checked(at, kid, algs.or(jwk_algs), key);
                }
                _ => {
                    return Err(format!(
                        "{at}: give exactly one of secret, secret_base64, pem, jwk"
                    ));
                }
            };
        let algs = algs.or(default_algs);
        Key::checked(at, k.kid, algs, key)
    }

    fn checked(
        at: &str,
        kid: Option<String>,
        algs: Option<Vec<Algorithm>>,
        key: DecodingKey,
    ) -> Result<Key, String> {
        let Some(algs) = algs else {
            return Err(format!("{at}.alg: required for this key (e.g. \"HS256\" or \"RS256\")"));
        };
        if let Some(bad) = algs.iter().find(|a| a.family() != key.family()) {
            return Err(format!("{at}.alg: {bad:?} does not fit a {:?} key", key.family()));
        }
        // RFC 7518 section 3.2: an HMAC key is at least as long as the hash. A short or
        // empty secret is guessable, so tokens signed with it prove nothing.
        if key.family() == jsonwebtoken::AlgorithmFamily::Hmac {
            let len = key.try_get_as_bytes().map_or(0, <[u8]>::len);
            for alg in &algs {
                let need = match alg {
                    Algorithm::HS384 => 48,
                    Algorithm::HS512 => 64,
                    _ => 32,
                };
                if len < need {
                    return Err(format!(
                        "{at}: a {alg:?} secret must be at least {need} bytes (RFC 7518 section \
                         3.2), got {len}"
                    ));
                }
            }
        }
        let hmac = match key.family() {
            AlgorithmFamily::Hmac => {
                let secret = key.try_get_as_bytes().unwrap_or_default();
                algs.iter().filter_map(|&a| Some((a, Prepared::new(a, secret)?))).collect()
            }
            _ => Vec::new(),
        };
        Ok(Key { kid, algs, key, hmac })
    }

    fn prepared(&self, alg: Algorithm) -> Option<&Prepared> {
        self.hmac.iter().find(|(a, _)| *a == alg).map(|(_, p)| p)
    }
}

fn default_algs_for(key: &DecodingKey) -> Option<Vec<Algorithm>> {
    match key.family() {
        jsonwebtoken::AlgorithmFamily::Ed => Some(vec![Algorithm::EdDSA]),
        _ => None,
    }
}

fn pem_key(pem: &str, algs: Option<&[Algorithm]>) -> Result<DecodingKey, String> {
    let family = algs.and_then(|a| a.first()).map(|a| a.family());
    use jsonwebtoken::AlgorithmFamily as F;
    let r = match family {
        Some(F::Rsa) => DecodingKey::from_rsa_pem(pem.as_bytes()),
        Some(F::Ec) => DecodingKey::from_ec_pem(pem.as_bytes()),
        Some(F::Ed) => DecodingKey::from_ed_pem(pem.as_bytes()),
        Some(F::Hmac) => return Err("an HMAC key is a `secret`, not a PEM".to_owned()),
        None => return Err("set `alg` to say how to read this PEM key".to_owned()),
    };
    r.map_err(|e| e.to_string())
}

/// A JWK's key and the algorithms it verifies: its `alg`, else what its type allows.
fn jwk_key(jwk: &Jwk) -> Result<(DecodingKey, Option<Vec<Algorithm>>), String> {
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    if let Some(alg) = &jwk.common.key_algorithm {
        let alg = parse_alg(&alg.to_string())?;
        return Ok((key, Some(vec![alg])));
    }
    let algs = match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => Some(vec![Algorithm::ES256]),
            EllipticCurve::P384 => Some(vec![Algorithm::ES384]),
            _ => return Err(format!("unsupported curve {:?}", p.curve)),
        },
        AlgorithmParameters::OctetKeyPair(_) => Some(vec![Algorithm::EdDSA]),
        AlgorithmParameters::RSA(_) | AlgorithmParameters::OctetKey(_) => {
            Some(key.family().algorithms().to_vec())
        }
        _ => None,
    };
    Ok((key, algs))
}

/// Every key of a JWKS document (`{"keys": [...]}`); keys of unsupported types are skipped.
pub fn jwks_keys(text: &str) -> Result<Vec<Key>, String> {
    let set: JwkSet =
        serde_json::from_str(text).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        // A key this plugin cannot use (an unknown type, an HMAC key shorter than its
        // hash) is skipped, as JWKS consumers do; the document's other keys still serve.
        if let Ok((key, Some(algs))) = jwk_key(jwk)
            && let Ok(key) = Key::checked("", jwk.common.key_id.clone(), Some(algs), key)
        {
            keys.push(key);
        }
    }
    if keys.is_empty() {
        return Err("no usable key in the JWKS document".to_owned());
    }
    Ok(keys)
}

/// Verifies `token` with one of `keys` and returns its claims.
pub fn verify(token: &str, keys: &[Key], checks: &Checks) -> Result<Map<String, Value>, Failure> {
    let invalid = |m: &str| Failure::Invalid(m.to_owned());
    let header = jsonwebtoken::decode_header(token)
        .map_err(|_| invalid("malformed token or unsupported algorithm"))?;
    if let Some(allowed) = &checks.algorithms
        && !allowed.contains(&header.alg)
    {
        return Err(invalid("algorithm not allowed"));
    }
    let mut candidates = keys
        .iter()
        .filter(|k| k.algs.contains(&header.alg))
        .filter(|k| match (&header.kid, &k.kid) {
            (Some(want), Some(have)) => want == have,
            _ => true,
        })
        .peekable();
    if candidates.peek().is_none() {
        return Err(invalid("no key for this token"));
    }
    if header.alg.family() == AlgorithmFamily::Hmac {
        return verify_hmac(token, header.alg, candidates, checks);
    }
    // Some key verifies this algorithm (checked above), so its checks were built.
    let Some(validation) = checks.validation(header.alg) else {
        return Err(invalid("no key for this token"));
    };
    let mut last = invalid("signature does not verify");
    for key in candidates {
        match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation) {
            Ok(data) => {
                if let Some(missing) =
                    checks.required.iter().find(|c| !data.claims.contains_key(*c))
                {
                    return Err(Failure::Invalid(format!("missing required claim {missing:?}")));
                }
                return Ok(data.claims);
            }
            Err(e) => {
                use jsonwebtoken::errors::ErrorKind as K;
                last = Failure::Invalid(match e.kind() {
                    K::InvalidSignature => "signature does not verify".to_owned(),
                    K::ExpiredSignature => "token expired".to_owned(),
                    K::ImmatureSignature => "token not valid yet".to_owned(),
                    K::InvalidIssuer => "wrong issuer".to_owned(),
                    K::InvalidAudience => "wrong audience".to_owned(),
                    K::MissingRequiredClaim(c) => format!("missing required claim {c:?}"),
                    K::InvalidClaimFormat(c) => format!("malformed claim {c:?}"),
                    _ => "invalid token".to_owned(),
                });
                // Only a bad signature may mean "another key": anything else is final.
                if !matches!(e.kind(), K::InvalidSignature) {
                    return Err(last);
                }
            }
        }
    }
    Err(last)
}

/// The HMAC path: the signature checked with each candidate key's prepared state, then the
/// claims decoded once and checked. Errors read as `jsonwebtoken`'s do on the other path.
fn verify_hmac<'k>(
    token: &str,
    alg: Algorithm,
    mut candidates: impl Iterator<Item = &'k Key>,
    checks: &Checks,
) -> Result<Map<String, Value>, Failure> {
    let invalid = |m: &str| Failure::Invalid(m.to_owned());
    // Split as `jsonwebtoken` does: the signature after the last dot, the payload before it.
    let (message, signature) = token.rsplit_once('.').ok_or_else(|| invalid("invalid token"))?;
    let (_, payload) = message.rsplit_once('.').ok_or_else(|| invalid("invalid token"))?;
    let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| invalid("invalid token"))?;
    let signed =
        |k: &Key| k.prepared(alg).is_some_and(|p| p.verifies(message.as_bytes(), &signature));
    if !candidates.any(signed) {
        return Err(invalid("signature does not verify"));
    }
    let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| invalid("invalid token"))?;
    let claims: Map<String, Value> =
        serde_json::from_slice(&payload).map_err(|_| invalid("invalid token"))?;
    checks.claims(&claims)?;
    if let Some(missing) = checks.required.iter().find(|c| !claims.contains_key(*c)) {
        return Err(Failure::Invalid(format!("missing required claim {missing:?}")));
    }
    Ok(claims)
}
