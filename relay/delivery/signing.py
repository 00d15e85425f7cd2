"""Standard Webhooks signatures (standardwebhooks.com): secrets, signing and verification."""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping, Sequence

from relay.errors import SignatureError

SECRET_PREFIX = "whsec_"  # noqa: S105 - the public prefix of every secret, not a secret
SECRET_BYTES = 32
# Receivers reject timestamps further than this from their clock, which stops replayed requests.
DEFAULT_TOLERANCE = 300


def generate_secret() -> str:
    """A new signing secret: `whsec_` and the base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_...` secret (the base64 part, decoded)."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError("the secret must be whsec_ followed by base64") from exc


@functools.lru_cache(maxsize=1024)
def _keyed_mac(key: bytes) -> hmac.HMAC:
    # Keying HMAC hashes the key pads each time; a copy of a keyed one halves the cost of a
    # signature, which the dispatcher pays on every attempt.
    return hmac.new(key, digestmod=hashlib.sha256)


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """One `v1,<base64>` signature of `{id}.{timestamp}.{body}`."""
    mac = _keyed_mac(key).copy()
    mac.update(b"%s.%d." % (msg_id.encode(), timestamp))
    mac.update(body)  # not concatenated first: no copy of the body
    return "v1," + base64.b64encode(mac.digest()).decode()


def sign(keys: Sequence[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: one signature per key, space-separated (rotation overlap)."""
    if len(keys) == 1:  # the usual case, on every attempt
        return signature(keys[0], msg_id, timestamp, body)
    return " ".join(signature(key, msg_id, timestamp, body) for key in keys)


def webhook_headers(
    keys: Sequence[bytes], msg_id: str, body: bytes, *, timestamp: int | None = None
) -> dict[str, str]:
    """Every header of one webhook request; `timestamp` defaults to now (per attempt)."""
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(keys, msg_id, ts, body),
    }


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance: int = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> str:
    """Check a received webhook; returns its `webhook-id` or raises SignatureError saying why.

    `headers` must look names up case-insensitively (aiohttp's and multidict's do).
    """
    msg_id = headers.get("webhook-id")
    raw_ts = headers.get("webhook-timestamp")
    raw_sig = headers.get("webhook-signature")
    if not msg_id or not raw_ts or not raw_sig:
        raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature header")
    try:
        timestamp = int(raw_ts)
    except ValueError:
        raise SignatureError(f"webhook-timestamp is not unix seconds: {raw_ts[:40]!r}") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise SignatureError(f"webhook-timestamp is more than {tolerance} s from now")
    expected = signature(secret_key(secret), msg_id, timestamp, body).encode()
    for candidate in raw_sig.split(" "):
        if candidate.startswith("v1,") and hmac.compare_digest(candidate.encode(), expected):
            return msg_id
    raise SignatureError("no signature in webhook-signature matches the secret")
