//! Native unit tests of config handling and verification. Tokens are minted here with
//! `jsonwebtoken` (HMAC); the integration tests mint every algorithm with PyJWT instead.

use super::*;
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::json;

const RSA_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAyWF2WR3Zik/jSZNqdPuj
NUnVbPPtXb0OUAbzM3HzHzBlFHtHCg2FEYT/XhECS7ypXKvmfiAMaHOJUt4L3QG2
vHtojcgE1BXVbB/C308CHDQoTiu8SusCJJQZUEtnFFqIqPrBMw1+5E/TDoQzG1Nu
uKMTVkUf9mthTDQCvxjiQe7yDjW0Z89rZA4DtzknJAcgeEQBJsGpPFBSCSMF+T25
DW6wyDCGlP84Y3/T9Nw9TiSG9cDiI1QeZWLXgD5XY1ZCg5K5qr1LKZ7jT606eqjE
sWPC9TGmb2dj/1+5qvFRAkY2yW9WwPUsRwHIKLJhc76lcsO853DiF/H+HlIdZHU9
XQIDAQAB
-----END PUBLIC KEY-----";

const ED_PEM: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAD389yh4e7qM/xF8SvqvbCv4bazu8/WSeFmYi1zr4vVE=
-----END PUBLIC KEY-----";

fn jwt(config: Value) -> Result<Jwt, String> {
    Jwt::new(sluice_pdk::parse_config(&config.to_string())?)
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

fn hs(secret: &str, kid: Option<&str>, claims: Value) -> String {
    let mut header = Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = kid.map(str::to_owned);
    encode(&header, &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
}

fn check(j: &Jwt, token: &str) -> Result<serde_json::Map<String, Value>, Failure> {
    verify::verify(token, &j.keys, &j.checks)
}

fn invalid(why: &str) -> Result<serde_json::Map<String, Value>, Failure> {
    Err(Failure::Invalid(why.to_owned()))
}

#[test]
fn config_errors_name_the_field() {
    let err = |c: Value| jwt(c).err().unwrap();
    assert_eq!(err(json!({})), "config.keys: no key; give `keys` or a `jwks` file");
    assert!(
        err(json!({"keys": [{"alg": "none", "secret": "s-a-secret-of-at-least-32-bytes!!"}]}))
            .starts_with("config.keys[0].alg: \"none\"")
    );
    assert!(
        err(json!({"keys": [{"alg": "HS256"}]})).starts_with("config.keys[0]: give exactly one")
    );
    assert!(err(json!({"keys": [{"pem": RSA_PEM}]})).starts_with("config.keys[0].pem: set `alg`"));
    // An RSA key is never an HMAC secret.
    assert!(
        err(json!({"keys": [{"alg": "HS256", "pem": RSA_PEM}]}))
            .starts_with("config.keys[0].pem: an HMAC key")
    );
    assert!(
        err(json!({"keys": [{"alg": "ES256", "pem": RSA_PEM}]})).starts_with("config.keys[0].pem:")
    );
    assert!(
        err(json!({"keys": [{"secret": "s-a-secret-of-at-least-32-bytes!!"}]}))
            .starts_with("config.keys[0].alg: required")
    );
    assert!(
        err(json!({"keys": [{"alg": "HS256", "secret": "s-a-secret-of-at-least-32-bytes!!"}], "token_from": ["body"]}))
            .starts_with("config.token_from[0]")
    );
    assert!(
        err(json!({"keys": [{"alg": "HS256", "secret": "s-a-secret-of-at-least-32-bytes!!"}], "leeway": "a bit"}))
            .starts_with("config.leeway")
    );
    assert!(
        err(
            json!({"keys": [{"alg": "HS256", "secret": "s-a-secret-of-at-least-32-bytes!!"}], "forward_claims": {"sub": "x user"}})
        )
        .starts_with("config.forward_claims.sub")
    );
    assert!(err(json!({"files": {"jwks": "{}"}})).starts_with("files.jwks: not a JWKS document"));
    // RFC 7518 section 3.2: no HMAC secret shorter than its hash, and never an empty one.
    assert_eq!(
        err(json!({"keys": [{"alg": "HS256", "secret": ""}]})),
        "config.keys[0]: a HS256 secret must be at least 32 bytes (RFC 7518 section 3.2), got 0"
    );
    assert!(
        err(json!({"keys": [{"alg": "HS512", "secret": "s-a-secret-of-at-least-32-bytes!!"}]}))
            .contains("must be at least 64 bytes")
    );
    // PEM keys of each kind load.
    jwt(json!({"keys": [{"alg": "RS256", "pem": RSA_PEM}, {"alg": "PS512", "pem": RSA_PEM}, {"alg": "EdDSA", "pem": ED_PEM}]})).unwrap();
}

#[test]
fn a_good_token_verifies_and_bad_ones_say_why() {
    let j = jwt(json!({"keys": [{"alg": "HS256", "secret": "s3cret-s3cret-s3cret-s3cret-s3cret"}], "issuer": "me", "audience": ["api"], "required_claims": ["sub"]})).unwrap();
    let good = json!({"sub": "ada", "iss": "me", "aud": "api", "exp": now() + 60});
    assert_eq!(
        check(&j, &hs("s3cret-s3cret-s3cret-s3cret-s3cret", None, good.clone())).unwrap()["sub"],
        "ada"
    );
    assert_eq!(check(&j, &hs("other", None, good.clone())), invalid("signature does not verify"));
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        hs("s3cret-s3cret-s3cret-s3cret-s3cret", None, c)
    };
    assert_eq!(check(&j, &with("exp", json!(now() - 5))), invalid("token expired"));
    assert_eq!(check(&j, &with("nbf", json!(now() + 60))), invalid("token not valid yet"));
    assert_eq!(check(&j, &with("iss", json!("you"))), invalid("wrong issuer"));
    assert_eq!(check(&j, &with("aud", json!("web"))), invalid("wrong audience"));
    let mut no_sub = good.clone();
    no_sub.as_object_mut().unwrap().remove("sub");
    assert_eq!(
        check(&j, &hs("s3cret-s3cret-s3cret-s3cret-s3cret", None, no_sub)),
        invalid("missing required claim \"sub\"")
    );
    assert_eq!(check(&j, "not.a.token"), invalid("malformed token or unsupported algorithm"));
}

#[test]
fn alg_none_and_disallowed_algorithms_are_refused() {
    let j =
        jwt(json!({"keys": [{"alg": "HS256", "secret": "s-a-secret-of-at-least-32-bytes!!"}], "algorithms": ["RS256"]})).unwrap();
    assert_eq!(
        check(&j, &hs("s-a-secret-of-at-least-32-bytes!!", None, json!({"exp": now() + 60}))),
        invalid("algorithm not allowed")
    );
    // {"alg":"none","typ":"JWT"} . {"sub":"root"} . (no signature)
    let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJyb290In0.";
    let j = jwt(json!({"keys": [{"alg": "HS256", "secret": "s-a-secret-of-at-least-32-bytes!!"}]}))
        .unwrap();
    assert_eq!(check(&j, none), invalid("malformed token or unsupported algorithm"));
}

#[test]
fn leeway_accepts_a_slightly_expired_token() {
    let token = hs("s-a-secret-of-at-least-32-bytes!!", None, json!({"exp": now() - 10}));
    let strict =
        jwt(json!({"keys": [{"alg": "HS256", "secret": "s-a-secret-of-at-least-32-bytes!!"}]}))
            .unwrap();
    let lenient = jwt(json!({"keys": [{"alg": "HS256", "secret": "s-a-secret-of-at-least-32-bytes!!"}], "leeway": "30s"})).unwrap();
    assert_eq!(check(&strict, &token), invalid("token expired"));
    assert!(check(&lenient, &token).is_ok());
}

#[test]
fn the_kid_picks_the_key() {
    let j = jwt(json!({"keys": [{"kid": "a", "alg": "HS256", "secret": "one-one-one-one-one-one-one-one-one!"}, {"kid": "b", "alg": "HS256", "secret": "two-two-two-two-two-two-two-two-two!"}]})).unwrap();
    let claims = json!({"exp": now() + 60});
    assert!(
        check(&j, &hs("two-two-two-two-two-two-two-two-two!", Some("b"), claims.clone())).is_ok()
    );
    assert!(
        check(&j, &hs("two-two-two-two-two-two-two-two-two!", None, claims.clone())).is_ok(),
        "no kid: every key is tried"
    );
    assert_eq!(
        check(&j, &hs("two-two-two-two-two-two-two-two-two!", Some("a"), claims.clone())),
        invalid("signature does not verify")
    );
    assert_eq!(
        check(&j, &hs("two-two-two-two-two-two-two-two-two!", Some("c"), claims)),
        invalid("no key for this token")
    );
}

#[test]
fn jwks_documents_and_jwks_keys_load() {
    let jwks = json!({"keys": [
        {"kty": "oct", "kid": "h", "alg": "HS384", "k": "YS00OC1ieXRlLWhzMzg0LXNlY3JldC1mb3ItdGhlLWp3a3MtdGVzdC0wMDAwMDAw"}, {"kty": "oct", "kid": "short", "alg": "HS256", "k": "c2VjcmV0"},
        {"kty": "OKP", "crv": "Ed25519", "kid": "e", "x": "D389yh4e7qM_xF8SvqvbCv4bazu8_WSeFmYi1zr4vVE"},
        {"kty": "unknown", "kid": "skipped"}
    ]});
    let j = jwt(json!({"files": {"jwks": jwks.to_string()}})).unwrap();
    assert_eq!(j.keys.len(), 2);
    let mut header = Header::new(jsonwebtoken::Algorithm::HS384);
    header.kid = Some("h".into());
    let token = encode(
        &header,
        &json!({"exp": now() + 60}),
        &EncodingKey::from_secret(b"a-48-byte-hs384-secret-for-the-jwks-test-0000000"),
    )
    .unwrap();
    assert!(check(&j, &token).is_ok());
}

#[test]
fn claims_become_header_text() {
    assert_eq!(claim_text(&json!("ada")), "ada");
    assert_eq!(claim_text(&json!(42)), "42");
    assert_eq!(claim_text(&json!(["a", "b"])), r#"["a","b"]"#);
}
