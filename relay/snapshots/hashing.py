"""Hashes of upstream objects: of their canonical form, of their summary fields; and their ids."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson
from xxhash import xxh3_128_digest

from relay.errors import InvalidInput
from relay.exactjson import json_default
from relay.snapshots.rules import SUMMARY_FIELDS, canonical, normalized


def _summary_digest(value: Any) -> bytes:
    try:
        raw = orjson.dumps(value, default=json_default, option=orjson.OPT_SORT_KEYS)
    except TypeError as exc:  # orjson.JSONEncodeError: not JSON (e.g. an int beyond 64 bits)
        raise InvalidInput(f"object is not representable as JSON: {exc}", field="objects") from exc
    return hashlib.sha256(raw).digest()[:16]


def _canonical_json(object_type: str, obj: Mapping[str, Any], what: str) -> bytes:
    try:
        return orjson.dumps(
            normalized(canonical(object_type, obj)),
            default=json_default,
            option=orjson.OPT_SORT_KEYS,
        )
    except TypeError as exc:  # orjson.JSONEncodeError: e.g. an int beyond 64 bits
        raise InvalidInput(f"{what} is not representable as JSON: {exc}", field="objects") from exc


def content_hash(object_type: str, obj: Mapping[str, Any]) -> bytes:
    """A stable 16-byte hash of the object's canonical form: sorted keys, volatile fields out,
    values `normalized` (a number re-spelled `74` / `"74"` hashes the same, so it rewrites no
    snapshot and the rules, which compare normalized too, see no change).

    XXH3-128: a diff hashes every object it sees, and this digest costs a twentieth of SHA-256
    on a 1.5 KB document. It only tells versions of one object apart (it guards against chance,
    not against a forger, who could at most hide a change of data they write themselves)."""
    return xxh3_128_digest(_canonical_json(object_type, obj, f"a {object_type}"))


def quick_hash(object_type: str, obj: Mapping[str, Any]) -> bytes:
    """XXH3-128 of the object's JSON in the order upstream sent its keys, volatile fields out.

    What a diff compares first, for every object it sees: without the key sort it costs about
    60% of `content_hash`. Equal quick hashes mean equal canonical forms; a different one is
    settled by `content_hash` (a reordering alone is no change)."""
    try:
        return xxh3_128_digest(orjson.dumps(canonical(object_type, obj), default=json_default))
    except TypeError as exc:  # orjson.JSONEncodeError: e.g. an int beyond 64 bits
        raise InvalidInput(
            f"a {object_type} is not representable as JSON: {exc}", field="objects"
        ) from exc


def summary_hash(obj: Mapping[str, Any]) -> bytes:
    """A hash of the /documents summary fields of a summary or of a full /costs|/sales item.

    Still SHA-256: stored summary hashes decide which details are fetched again, and a new
    digest would send every stored document back to the rate-limited upstream once."""
    return _summary_digest([obj.get(name) for name in SUMMARY_FIELDS])


def _object_id(raw: Any, what: str) -> str:
    if isinstance(raw, str) and raw:
        return raw
    if isinstance(raw, int) and not isinstance(raw, bool):
        return str(raw)
    raise InvalidInput(f"{what} has no usable id: {raw!r}", field="id")
