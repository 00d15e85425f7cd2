"""Pages of a list: the one `limit` check and the one opaque cursor codec every list shares.

Every list Relay serves (accounts, subscriptions, deliveries, events) is newest first with
keyset pagination: `?limit=` (1..MAX_LIMIT, DEFAULT_LIMIT when absent) and `?cursor=`, the
`next_cursor` of the previous page. A cursor is the sort key of the last row of that page, as a
JSON array in unpadded URL-safe base64: opaque to callers, and checked on the way back in, so a
cursor this API did not issue is a 400 naming the field, never a 5xx.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson

from relay.errors import InvalidInput

MAX_LIMIT = 200
DEFAULT_LIMIT = 50

_NOT_OURS = "cursor is not a cursor this API returned"


def check_limit(limit: object) -> int:
    """`limit` itself when it is an integer from 1 to MAX_LIMIT; InvalidInput(field="limit")."""
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be an integer from 1 to {MAX_LIMIT}", "limit")
    return limit


def encode_cursor(*key: str | int) -> str:
    """An opaque cursor for the page after the row whose sort key is `key`."""
    return base64.urlsafe_b64encode(orjson.dumps(key)).rstrip(b"=").decode()


def decode_cursor(cursor: str, *types: type[str] | type[int]) -> tuple[Any, ...]:
    """The key `encode_cursor` put in `cursor`, checked against `types` (one per part);
    InvalidInput(field="cursor") for anything else, the empty string included."""
    try:
        key = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except ValueError:  # binascii.Error and orjson.JSONDecodeError are ValueErrors
        key = None
    if not isinstance(key, list) or len(key) != len(types):
        raise InvalidInput(_NOT_OURS, "cursor")
    for part, kind in zip(key, types, strict=True):
        if not isinstance(part, kind) or isinstance(part, bool):
            raise InvalidInput(_NOT_OURS, "cursor")
    return tuple(key)
