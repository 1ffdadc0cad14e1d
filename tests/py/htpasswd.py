"""Prints htpasswd lines `user:bcrypt-hash` for `user:password` arguments, hashed with the
Python bcrypt package (cost 8), independently of Sluice's Rust code."""

import sys

import bcrypt

for arg in sys.argv[1:]:
    user, password = arg.split(":", 1)
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=8)).decode()
    print(f"{user}:{hashed}")
