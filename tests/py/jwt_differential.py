"""Random HMAC tokens and PyJWT's verdict on each, for tests/auth.rs's differential test.

jwt_differential.py SEED COUNT prints a JSON list of {"token", "accept", "case"}: PyJWT
decides `accept` under the settings the test gives the jwt plugin (three HS keys with kids,
issuer, audience, a 30 s leeway, `sub` required). Tokens stay inside the ground where PyJWT
and RFC 7519 agree (no numeric strings for exp/nbf, no issuer arrays, no iat or jti, no
sub-second boundaries), so any disagreement is the plugin's.
"""

import base64
import hashlib
import hmac
import json
import random
import sys
import time
import warnings

import jwt

warnings.simplefilter("ignore")  # PyJWT warns about short keys we make on purpose

KEYS = {
    "HS256": ("k256", "differential-secret-for-hs256-of-32+b"),
    "HS384": ("k384", "differential-secret-for-hs384-that-is-at-least-48-bytes!"),
    "HS512": ("k512", "differential-secret-for-hs512-that-is-at-least-sixty-four-bytes-long!!"),
}
ISSUER, AUDIENCE, LEEWAY = "https://issuer.test", "orders", 30

seed, count = int(sys.argv[1]), int(sys.argv[2])
rng = random.Random(seed)
now = int(time.time())


def pick(*options):
    return rng.choice(options)


# One way to spoil each part of a token; a token gets none (about a third of them), one or two.
CLAIM_FAULTS = {
    "sub": [7, None, "absent"],
    # Times well away from the boundaries (the test runs for a few seconds).
    "exp": [now - 600, "soon", -5, None, True],
    "nbf": [now + 600, "later", None],
    "iss": ["https://evil.test", None, 42, "absent"],
    "aud": ["billing", ["billing"], [], None, 3, "absent"],
}
# Values that keep a token valid.
CLAIM_GOOD = {
    "sub": ["user-1"],
    "exp": [now + 600, now - 10, now + 600.5, "absent"],
    "nbf": [now - 600, now + 10, "absent"],
    "iss": [ISSUER],
    "aud": [AUDIENCE, [AUDIENCE, "billing"]],
}


def claims(spoil):
    c = {}
    for name in CLAIM_GOOD:
        value = rng.choice(CLAIM_FAULTS[name] if name in spoil else CLAIM_GOOD[name])
        if value != "absent":
            c[name] = value
    if rng.random() < 0.3:
        c["role"] = pick("admin", {"nested": [1, 2]}, 3.5)
    return c


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def encode(claims, secret, alg, headers):
    """Signed by hand: PyJWT refuses to encode some of the claims we want to send."""
    header = b64(json.dumps({"alg": alg, "typ": "JWT", **headers}).encode())
    payload = b64(json.dumps(claims).encode())
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    mac = hmac.new(secret.encode(), f"{header}.{payload}".encode(), digest).digest()
    return f"{header}.{payload}.{b64(mac)}"


def tamper(token, how):
    """Changes one character inside the payload or the signature (never the last, whose
    low bits some decoders ignore), or the token's shape."""
    head, payload, sig = token.split(".")
    if how == "payload" and len(payload) > 2:
        i = rng.randrange(1, len(payload) - 1)
        payload = payload[:i] + ("A" if payload[i] != "A" else "B") + payload[i + 1:]
    elif how == "signature" and len(sig) > 2:
        i = rng.randrange(1, len(sig) - 1)
        sig = sig[:i] + ("A" if sig[i] != "A" else "B") + sig[i + 1:]
    elif how == "shape":
        return pick(f"{head}.{payload}", f"{head}.{payload}.", f"{head}.{payload}.{sig}.{sig}",
                    f"{head}.{payload}.{sig}=")
    return ".".join([head, payload, sig]), how


def verdict(token):
    try:
        header = jwt.get_unverified_header(token)
        alg = header.get("alg")
        if alg not in KEYS:
            return False
        kid, secret = KEYS[alg]
        if "kid" in header and header["kid"] != kid:
            return False
        jwt.decode(token, secret, algorithms=[alg], issuer=ISSUER, audience=AUDIENCE,
                   leeway=LEEWAY, options={"require": ["sub"]})
        return True
    except jwt.PyJWTError:
        return False


out = []
for n in range(count):
    faults = rng.sample(["sub", "exp", "nbf", "iss", "aud", "signer", "kid", "tamper"], rng.choice([0, 0, 1, 1, 2]))
    alg = pick("HS256", "HS384", "HS512")
    kid, secret = KEYS[alg]
    signer = secret
    if "signer" in faults:
        signer = pick("some-other-secret-of-plenty-bytes-0123456789abcdef",
                      *[k[1] for a, k in KEYS.items() if a != alg])
    headers = pick({"kid": kid}, {}, {"kid": kid, "cty": "x"})
    if "kid" in faults:
        headers = pick({"kid": "unknown"}, {"kid": KEYS[pick(*[a for a in KEYS if a != alg])][0]})
    c = claims(faults)
    token = encode(c, signer, alg, headers)
    how = pick("payload", "signature", "shape") if "tamper" in faults else "none"
    t = tamper(token, how)
    token = t if isinstance(t, str) else t[0]
    accept = verdict(token)
    if token.endswith("="):
        # PyJWT accepts a padded signature; RFC 7515 section 2's base64url has no padding,
        # and the plugin (like jsonwebtoken) refuses it.
        accept = False
    out.append({"token": token, "accept": accept,
                "case": f"#{n} {alg} faults={faults} headers={headers} claims={json.dumps(c)} tamper={how}"})
print(json.dumps(out))
