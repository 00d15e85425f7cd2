"""Request validation: small explicit field types whose declarations also feed OpenAPI.

Each route declares its body and query once (a `Body` or `Query` of named fields); the route
wrapper parses requests with it and `relay.api.openapi` renders the very same objects, so the
document cannot drift from what the server accepts. Every failure is an `InvalidInput` naming
the field, which the error middleware turns into a 400. Unknown fields and query parameters are
rejected by name, as Stripe does, so a typo (`event_type` for `event_types`) never passes
silently.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import orjson
from multidict import MultiMapping

from relay.errors import InvalidInput

_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
)
_INTEGER = re.compile(r"^-?\d{1,18}$")
_MISSING = object()


def _check_text(value: str, name: str) -> str:
    # Postgres text cannot hold NUL, and a lone surrogate cannot be encoded as UTF-8: both would
    # otherwise surface as a database error (a 500) instead of the caller's mistake.
    if "\x00" in value:
        raise InvalidInput(f"{name} must not contain NUL characters", name)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{name} must be valid UTF-8 text", name) from None
    return value


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


@dataclass(frozen=True, kw_only=True)
class Field:
    """One named input value; subclasses check a JSON value and parse a query string."""

    required: bool = False
    nullable: bool = False
    description: str = ""
    default: Any = None

    def parse(self, value: Any, name: str) -> Any:
        if value is None:
            if self.nullable:
                return None
            raise InvalidInput(f"{name} must not be null", name)
        return self.check(value, name)

    def parse_text(self, text: str, name: str) -> Any:
        """A query-string value: text by nature, converted by the field type."""
        return self.check(_check_text(text, name), name)

    def check(self, value: Any, name: str) -> Any:
        raise NotImplementedError

    def schema(self) -> dict[str, Any]:
        raise NotImplementedError

    def json_schema(self) -> dict[str, Any]:
        schema = self.schema()
        if self.nullable:
            schema["type"] = [schema["type"], "null"]
        if self.description:
            schema["description"] = self.description
        if self.default is not None:
            schema["default"] = self.default
        return schema


@dataclass(frozen=True, kw_only=True)
class String(Field):
    min_length: int = 1
    max_length: int = 1000
    enum: tuple[str, ...] = ()
    pattern: str = ""  # a regular expression the whole value must match

    def check(self, value: Any, name: str) -> str:
        if not isinstance(value, str):
            raise InvalidInput(f"{name} must be a string, not {_type_name(value)}", name)
        _check_text(value, name)
        if self.enum and value not in self.enum:
            allowed = ", ".join(repr(v) for v in self.enum)
            raise InvalidInput(f"{name} must be one of {allowed}, not {value!r}", name)
        if len(value) < self.min_length:
            raise InvalidInput(f"{name} must not be empty", name)
        if len(value) > self.max_length:
            raise InvalidInput(f"{name} must be at most {self.max_length} characters", name)
        if self.pattern and not re.fullmatch(self.pattern, value):
            raise InvalidInput(f"{name} has the wrong form: {value!r}", name)
        return value

    def schema(self) -> dict[str, Any]:
        if self.enum:
            return {"type": "string", "enum": list(self.enum)}
        schema = {"type": "string", "minLength": self.min_length, "maxLength": self.max_length}
        if self.pattern:
            schema["pattern"] = f"^(?:{self.pattern})$"
        return schema


@dataclass(frozen=True, kw_only=True)
class Url(String):
    """An absolute http(s) URL with a host."""

    max_length: int = 2048

    def check(self, value: Any, name: str) -> str:
        text = super().check(value, name)
        if any(ch.isspace() or ord(ch) < 32 for ch in text):
            raise InvalidInput(f"{name} must not contain spaces or control characters", name)
        try:
            parts = urlsplit(text)
            _ = parts.port  # raises ValueError on a port that is not a number in range
        except ValueError:
            raise InvalidInput(f"{name} is not a valid URL: {text!r}", name) from None
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise InvalidInput(f"{name} must be an http or https URL, not {text!r}", name)
        return text

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "format": "uri", "maxLength": self.max_length}


@dataclass(frozen=True, kw_only=True)
class Integer(Field):
    minimum: int | None = None
    maximum: int | None = None

    def parse_text(self, text: str, name: str) -> int:
        if not _INTEGER.match(text):
            raise InvalidInput(f"{name} must be an integer, not {text!r}", name)
        return self.check(int(text), name)

    def check(self, value: Any, name: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInput(f"{name} must be an integer, not {_type_name(value)}", name)
        if self.minimum is not None and value < self.minimum:
            raise InvalidInput(f"{name} must be at least {self.minimum}, not {value}", name)
        if self.maximum is not None and value > self.maximum:
            raise InvalidInput(f"{name} must be at most {self.maximum}, not {value}", name)
        return value

    def schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "integer"}
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        return schema


@dataclass(frozen=True, kw_only=True)
class Boolean(Field):
    def parse_text(self, text: str, name: str) -> bool:
        if text in ("true", "false"):
            return text == "true"
        raise InvalidInput(f"{name} must be true or false, not {text!r}", name)

    def check(self, value: Any, name: str) -> bool:
        if not isinstance(value, bool):
            raise InvalidInput(f"{name} must be true or false, not {_type_name(value)}", name)
        return value

    def schema(self) -> dict[str, Any]:
        return {"type": "boolean"}


@dataclass(frozen=True, kw_only=True)
class DateTime(Field):
    """An RFC 3339 timestamp with an offset (`2026-11-21T10:00:00Z`), returned in UTC."""

    def check(self, value: Any, name: str) -> datetime:
        if not isinstance(value, str):
            raise InvalidInput(f"{name} must be an RFC 3339 timestamp string", name)
        if not _RFC3339.match(value):
            raise InvalidInput(
                f"{name} must be an RFC 3339 timestamp like 2026-11-21T10:00:00Z, not {value!r}",
                name,
            )
        try:
            # Converting to UTC can overflow at the ends of the calendar (year 1 or 9999).
            return datetime.fromisoformat(value.upper()).astimezone(UTC)
        except (ValueError, OverflowError):
            raise InvalidInput(f"{name} is not a valid date and time: {value!r}", name) from None

    def schema(self) -> dict[str, Any]:
        return {"type": "string", "format": "date-time"}


@dataclass(frozen=True, kw_only=True)
class StringList(Field):
    item: String = field(default_factory=String)
    max_items: int = 100
    min_items: int = 0

    def check(self, value: Any, name: str) -> list[str]:
        if not isinstance(value, list):
            raise InvalidInput(f"{name} must be an array of strings, not {_type_name(value)}", name)
        if len(value) < self.min_items:
            raise InvalidInput(f"{name} must have at least {self.min_items} item(s)", name)
        if len(value) > self.max_items:
            raise InvalidInput(f"{name} must have at most {self.max_items} items", name)
        return [self.item.parse(v, f"{name}[{i}]") for i, v in enumerate(value)]

    def schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {
            "type": "array",
            "items": self.item.json_schema(),
            "maxItems": self.max_items,
        }
        if self.min_items:
            schema["minItems"] = self.min_items
        return schema


def _unknown(names: set[str], kind: str) -> InvalidInput:
    listed = ", ".join(sorted(names))
    first = sorted(names)[0]
    return InvalidInput(f"unknown {kind}: {listed}", first)


@dataclass(frozen=True)
class Body:
    """A JSON object body: every key declared, unknown keys rejected."""

    fields: Mapping[str, Field]
    description: str = ""

    def parse(self, raw: bytes) -> dict[str, Any]:
        """Parse the raw body; an empty body counts as `{}` (for optional-body routes)."""
        if not raw.strip():
            data: Any = {}
        else:
            try:
                data = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise InvalidInput(f"request body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise InvalidInput(f"request body must be a JSON object, not {_type_name(data)}")
        unknown = data.keys() - self.fields.keys()
        if unknown:
            raise _unknown(set(unknown), "field(s)")
        parsed: dict[str, Any] = {}
        for name, spec in self.fields.items():
            value = data.get(name, _MISSING)
            if value is _MISSING:
                if spec.required:
                    raise InvalidInput(f"{name} is required", name)
                continue
            parsed[name] = spec.parse(value, name)
        return parsed

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {
            "type": "object",
            "properties": {name: spec.json_schema() for name, spec in self.fields.items()},
            "additionalProperties": False,
        }
        required = [name for name, spec in self.fields.items() if spec.required]
        if required:
            schema["required"] = required
        return schema


@dataclass(frozen=True)
class Query:
    """Query parameters: each at most once, unknown ones rejected, defaults filled in."""

    fields: Mapping[str, Field]

    def parse(self, query: MultiMapping[str]) -> dict[str, Any]:
        unknown = set(query.keys()) - self.fields.keys()
        if unknown:
            raise _unknown(unknown, "query parameter(s)")
        parsed: dict[str, Any] = {}
        for name, spec in self.fields.items():
            values = query.getall(name, [])
            if len(values) > 1:
                raise InvalidInput(f"query parameter {name} is given more than once", name)
            if not values:
                if spec.required:
                    raise InvalidInput(f"query parameter {name} is required", name)
                parsed[name] = spec.default
                continue
            parsed[name] = spec.parse_text(values[0], name)
        return parsed

    def parameters(self) -> list[dict[str, Any]]:
        """The OpenAPI `parameters` entries for these fields."""
        return [
            {
                "name": name,
                "in": "query",
                "required": spec.required,
                "schema": spec.json_schema(),
                **({"description": spec.description} if spec.description else {}),
            }
            for name, spec in self.fields.items()
        ]


NO_BODY = Body({})
