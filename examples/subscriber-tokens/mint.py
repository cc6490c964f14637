"""Mints a herald subscriber token (HS256 JWT) in your app's backend, with the
standard library only. Give it to the signed-in user's browser, which sends it
as `Authorization: Bearer <token>` to POST/GET/DELETE /v1/subscriptions.

    HERALD_SUBSCRIBER_SECRET=... HERALD_USER=u-42 python3 mint.py
"""
import base64
import hashlib
import hmac
import json
import os
import time


def subscriber_token(user, secret, ttl_seconds=3600, topics=None):
    def b64(data):
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    now = int(time.time())
    claims = {"sub": user, "aud": "herald", "iat": now, "exp": now + ttl_seconds}
    if topics:
        claims["topics"] = topics  # patterns this browser may subscribe to
    payload = b64(json.dumps(claims).encode())
    signature = hmac.new(secret.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(signature)}"


if __name__ == "__main__":
    print(subscriber_token(os.environ["HERALD_USER"], os.environ["HERALD_SUBSCRIBER_SECRET"], topics=["parking.lot-7.*"]))
