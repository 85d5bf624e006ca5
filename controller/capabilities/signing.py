"""HMAC-SHA256 signatures of what the operator sends: approval notifications and custom Capability
endpoints share one scheme, so a receiver needs one verifier (docs/capabilities.md, for backend authors)."""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-Airun-Signature"
TIMESTAMP_HEADER = "X-Airun-Timestamp"


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """`sha256=HEX` of HMAC(secret, "TIMESTAMP.BODY"): receivers check it and reject old timestamps."""
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def signed_headers(secret: bytes, body: bytes) -> dict[str, str]:
    timestamp = str(int(time.time()))
    return {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: sign(secret, timestamp, body)}
