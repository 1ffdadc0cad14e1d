"""Prints an HS256 JWT minted by PyJWT: mint_hs.py SECRET KID CLAIMS_JSON (exp added)."""

import json
import sys
import time

import jwt

secret, kid, claims = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
claims.setdefault("exp", int(time.time()) + 300)
print(jwt.encode(claims, secret, algorithm="HS256", headers={"kid": kid}))
