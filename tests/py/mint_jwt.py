"""Mints JWTs with PyJWT, independently of Sluice's Rust code, for tests/jwt.rs.

Usage: mint_jwt.py OUT_DIR. Writes OUT_DIR/jwks.json (the public keys) and prints a JSON
object of named tokens: one valid token per algorithm, and tokens that must be refused.
"""

import base64
import hashlib
import hmac
import json
import sys
import time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

out_dir = sys.argv[1]
now = int(time.time())
ISS, AUD = "https://issuer.test", "orders"

rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
other_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
p256 = ec.generate_private_key(ec.SECP256R1())
p384 = ec.generate_private_key(ec.SECP384R1())
ed = ed25519.Ed25519PrivateKey.generate()
secrets = {alg: f"{alg}-shared-secret-" + "s" * 64 for alg in ("HS256", "HS384", "HS512")}


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


jwks = {"keys": []}
for kid, key, cls in (("rsa", rsa_key, RSAAlgorithm), ("p256", p256, ECAlgorithm),
                      ("p384", p384, ECAlgorithm), ("ed", ed, OKPAlgorithm)):
    jwk = cls.to_jwk(key.public_key(), as_dict=True)
    jwk["kid"] = kid
    jwks["keys"].append(jwk)
for alg, secret in secrets.items():
    jwks["keys"].append({"kty": "oct", "kid": alg.lower(), "alg": alg, "k": b64(secret.encode())})
with open(f"{out_dir}/jwks.json", "w") as f:
    json.dump(jwks, f)

signing = {
    "HS256": (secrets["HS256"], "hs256"), "HS384": (secrets["HS384"], "hs384"),
    "HS512": (secrets["HS512"], "hs512"),
    "RS256": (rsa_key, "rsa"), "RS384": (rsa_key, "rsa"), "RS512": (rsa_key, "rsa"),
    "PS256": (rsa_key, "rsa"), "PS384": (rsa_key, "rsa"), "PS512": (rsa_key, "rsa"),
    "ES256": (p256, "p256"), "ES384": (p384, "p384"), "EdDSA": (ed, "ed"),
}


def claims(**over):
    c = {"iss": ISS, "aud": AUD, "sub": "ada", "role": "admin", "iat": now, "exp": now + 300}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def mint(alg="RS256", key=None, kid=None, **over):
    k, default_kid = signing[alg]
    return jwt.encode(claims(**over), key or k, algorithm=alg, headers={"kid": kid or default_kid})


tokens = {f"valid_{alg}": mint(alg, sub=f"user-{alg}") for alg in signing}
tokens.update({
    "expired": mint(exp=now - 120),
    "expired_within_leeway": mint(exp=now - 10),
    "not_yet_valid": mint(nbf=now + 120),
    "wrong_key": mint(key=other_rsa),
    "wrong_issuer": mint(iss="https://evil.test"),
    "wrong_audience": mint(aud="billing"),
    "no_sub": mint(sub=None),
    # Valid, but a forwarded claim is missing, or cannot be a header value.
    "valid_no_role": mint("HS256", role=None),
    "valid_bad_role": mint("HS256", role="admin\r\nx-injected: 1"),
    "alg_none": jwt.encode(claims(), None, algorithm="none"),
})

# Algorithm confusion: HS256 "signed" with the RSA public key as the HMAC secret, claiming
# the RSA key's kid. A verifier that lets the token pick the algorithm would accept it.
pem = rsa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa"}).encode())
body = b64(json.dumps(claims()).encode())
sig = b64(hmac.new(pem, f"{head}.{body}".encode(), hashlib.sha256).digest())
tokens["alg_confusion"] = f"{head}.{body}.{sig}"

print(json.dumps(tokens))
