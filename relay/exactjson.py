"""JSON numbers carried exactly: `0.10` stays `0.10` from an upstream page to a webhook body.

orjson reads every JSON number with a fraction as a binary float and writes the float's
shortest spelling back (`0.10` -> `0.1`, `1332.00` -> `1332.0`). InvoiceXT's money is a JSON
number whose spelling its users read, so its connector parses with `loads` here: each such
number becomes an `ExactNumber`, a `float` (it compares, sorts and hashes by value, so a stored
`0.1` equals a fresh `0.10` and a mere change of spelling is no change) that remembers its
text. Every `orjson.dumps` of upstream data passes `default=json_default`, which writes that text
back as the JSON number it was (an `orjson.Fragment`); orjson calls `default` only for types it
does not know, so Dext's plain floats cost nothing extra.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


class ExactNumber(float):
    """A JSON number with a fraction, with the text it was written as."""

    __slots__ = ("text",)
    text: str

    def __new__(cls, text: str) -> ExactNumber:
        number = super().__new__(cls, text)
        number.text = text
        return number

    def __repr__(self) -> str:
        return self.text


def loads(raw: bytes | str) -> Any:
    """Parse JSON keeping the spelling of every number with a fraction (`ExactNumber`)."""
    return json.loads(raw, parse_float=ExactNumber)


def json_default(value: Any) -> Any:
    """orjson's `default` for upstream data: an `ExactNumber` is written as its own text."""
    if isinstance(value, ExactNumber):
        return orjson.Fragment(value.text)
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def dumps(value: Any) -> bytes:
    """orjson.dumps that writes `ExactNumber`s as they were read."""
    return orjson.dumps(value, default=json_default)
