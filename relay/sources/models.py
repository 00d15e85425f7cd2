"""Typed results of upstream calls (pages, item iterators, metrics hooks) and contract checks.

Objects stay the raw JSON dicts the upstream sent, unknown fields included, because snapshots
diff the whole object. Only the fields Relay relies on are checked: a check names the first
problem (`"approval: expected an object, got str"`). A list item that fails its check is set
aside (`SetAside`, counted per kind in a `SetAsideTally`) and its page goes on without it; a
problem with the page itself (not JSON, no `data` list, bad `pagination`) or with a single
object an endpoint returns is an UpstreamProtocolError for that call.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

JsonObject = dict[str, Any]
# A check returns a description of the first problem, or None when the value is fine.
Check = Callable[[Any], str | None]


# Why an object was set aside: not a JSON object, no usable id, or a field Relay depends on
# (the ordering field, a watched field) of a type it cannot be compared as.
SET_ASIDE_KINDS = ("not_an_object", "missing_id", "unusable_field")


@dataclass(frozen=True)
class SetAside:
    """One upstream object that could not be used at all; `reason` names the endpoint, the
    position, the id when there is one and the first problem, never another value."""

    kind: str
    reason: str


@dataclass
class SetAsideTally:
    """Objects set aside, per kind: how many and the first reason, as an example.

    Kept per kind rather than per object so that an upstream sending thousands of odd objects
    costs a counter, one log line and one warning row per kind and poll run."""

    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    def add(self, item: SetAside) -> None:
        self.counts[item.kind] += 1
        self.examples.setdefault(item.kind, item.reason)

    def drain(self) -> SetAsideTally:
        """What was counted so far, leaving this tally empty."""
        out = SetAsideTally(self.counts, self.examples)
        self.counts, self.examples = Counter(), {}
        return out


@dataclass(frozen=True)
class Page:
    """One page of a list endpoint, as the upstream computed it at request time.

    `items` are the usable objects; `set_aside` those that were not (so `len(items)` may be
    less than the page held, and an iterator over such pages is never `complete`)."""

    items: list[JsonObject]
    page: int
    per_page: int
    total: int
    total_pages: int
    set_aside: tuple[SetAside, ...] = ()

    @property
    def has_next(self) -> bool:
        return self.page < self.total_pages


class ItemIterator:
    """Every item of every page of one list, fetched page by page as the caller iterates.

    Pages are computed by the upstream at request time, so items created during the scan push
    others onto the next page (seen twice: yielded once, counted in `duplicates`) and deleted
    items pull others back (missed). `complete` is True only when the scan ran to its end,
    every page reported the same total and exactly that many distinct items were seen: only
    then may a caller treat an item it did not see as gone.
    """

    def __init__(self, fetch: Callable[[int], Awaitable[Page]]) -> None:
        self._fetch = fetch
        self._buffer: deque[JsonObject] = deque()
        self._seen: set[str] = set()
        self._next_page = 1
        self.finished = False
        self.pages = 0
        self.duplicates = 0
        self.totals: list[int] = []

    def __aiter__(self) -> ItemIterator:
        return self

    async def __anext__(self) -> JsonObject:
        while True:
            while self._buffer:
                item = self._buffer.popleft()
                if item["id"] in self._seen:
                    self.duplicates += 1
                    continue
                self._seen.add(item["id"])
                return item
            if self.finished:
                raise StopAsyncIteration
            page = await self._fetch(self._next_page)
            self.pages += 1
            self.totals.append(page.total)
            self._buffer.extend(page.items)
            self._next_page += 1
            # A page whose every object was set aside is not the end of the list.
            self.finished = page.page >= page.total_pages or not (page.items or page.set_aside)

    @property
    def seen(self) -> int:
        return len(self._seen)

    @property
    def complete(self) -> bool:
        return self.finished and len(set(self.totals)) == 1 and len(self._seen) == self.totals[0]

    async def collect(self) -> list[JsonObject]:
        return [item async for item in self]


class UpstreamMetrics(Protocol):
    """Where the connector reports what it did; the metrics module adapts this to Prometheus."""

    def request_done(self, endpoint: str, status: int | None, seconds: float) -> None:
        """One HTTP attempt finished; `status` None when no response came (timeout, drop)."""

    def count(self, name: str) -> None:
        """One of: retry, throttled, reauthenticated, auth_failed, protocol_error."""


@dataclass
class CountingMetrics:
    """UpstreamMetrics that just counts, for tests and the benchmark."""

    requests: Counter[tuple[str, int | None]] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    # Objects set aside, by kind (SET_ASIDE_KINDS); the poller fills it from the client's tally.
    set_aside: Counter[str] = field(default_factory=Counter)

    def request_done(self, endpoint: str, status: int | None, seconds: float) -> None:
        self.requests[(endpoint, status)] += 1
        self.seconds += seconds

    def count(self, name: str) -> None:
        self.events[name] += 1


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _is(name: str, test: Callable[[Any], bool]) -> Check:
    return lambda value: None if test(value) else f"expected {name}, got {_kind(value)}"


def _numeric(value: Any) -> bool:
    """A JSON number or a decimal string: the two spellings upstreams use for one number."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    if isinstance(value, float | str):
        try:
            return Decimal(value).is_finite()
        except (InvalidOperation, ValueError):
            return False
    return False


ID = _is(
    "a non-empty string",
    lambda v: (isinstance(v, str) and bool(v)) or (isinstance(v, int) and not isinstance(v, bool)),
)
STR = _is("a string", lambda v: isinstance(v, str))
BOOL = _is("a boolean", lambda v: isinstance(v, bool))
# A watched number: `74`, `74.0` and `"74"` are one value (compared normalized, see rules).
NUMERIC = _is("a number", _numeric)
# A watched value compared as a whole: any JSON scalar (a new spelling or enum value is fine).
SCALAR = _is(
    "a string, number, boolean or null", lambda v: v is None or isinstance(v, str | int | float)
)
ANY: Check = lambda _value: None  # noqa: E731


def nullable(check: Check) -> Check:
    return lambda value: None if value is None else check(value)


def obj(required: Mapping[str, Check], optional: Mapping[str, Check] | None = None) -> Check:
    """A JSON object with `required` keys and `optional` ones checked when present."""
    extra = optional or {}

    def check(value: Any) -> str | None:
        if not isinstance(value, dict):
            return f"expected an object, got {_kind(value)}"
        for key, rule in required.items():
            if key not in value:
                return f"{key}: missing"
            if problem := rule(value[key]):
                return f"{key}: {problem}"
        for key, rule in extra.items():
            if key in value and (problem := rule(value[key])):
                return f"{key}: {problem}"
        return None

    return check


def list_of(check: Check) -> Check:
    def check_list(value: Any) -> str | None:
        if not isinstance(value, list):
            return f"expected a list, got {_kind(value)}"
        for index, item in enumerate(value):
            if problem := check(item):
                return f"[{index}]: {problem}"
        return None

    return check_list


# What Relay depends on, and nothing more (relay.md "Reading upstreams"): ids, the ordering
# field, the fields the scans route by (`workspace`) and the watched fields of
# `relay.snapshots.rules`, each only as far as comparing it needs. Every other field
# (descriptions, money, line items, `paid`, dates, unknown fields ...) is opaque JSON that
# may change type, be null or vanish: checking it would turn one upstream's spelling
# (`"quantity": "1"`) into a blind account.
OPT_STR = nullable(STR)

CLIENT = obj(
    {"id": ID, "health_score": NUMERIC, "alert_level": STR},
)

_CONNECTION = obj({"status": STR})
CONNECTIONS = obj({"main": nullable(_CONNECTION), "additional": list_of(_CONNECTION)})

_DOCUMENT_REQUIRED: dict[str, Check] = {"id": ID, "status": STR, "created_at": STR}
_DOCUMENT_OPTIONAL: dict[str, Check] = {
    "workspace": STR,
    "supplier_name": SCALAR,
    "category_code": SCALAR,
    "integration": SCALAR,
    "publish_status": SCALAR,
    "approval_status": SCALAR,
}
DOCUMENT = obj(_DOCUMENT_REQUIRED, _DOCUMENT_OPTIONAL)

_PARTY = nullable(obj({}))
FULL_DOCUMENT = obj(
    {
        **_DOCUMENT_REQUIRED,
        "publish": obj({"status": STR}, {"external_id": SCALAR}),
        "approval": obj({"status": STR}, {"stage": nullable(NUMERIC)}),
    },
    {
        **_DOCUMENT_OPTIONAL,
        "supplier": _PARTY,
        "customer": _PARTY,
        "category": nullable(obj({}, {"code": SCALAR})),
        "tax_rate": nullable(obj({})),
    },
)

SUPPLIER = obj(
    {"id": ID},
    {
        "name": SCALAR,
        "type": SCALAR,
        "tax_number": SCALAR,
        "default_category_code": SCALAR,
        "default_tax_code": SCALAR,
        "auto_publish": SCALAR,
        "integration": SCALAR,
        "email": SCALAR,
    },
)

EXPENSE_REPORT = obj({"id": ID, "status": STR})

_COUNT = _is(
    "a non-negative integer", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0
)
PAGINATION = obj({"page": _COUNT, "per_page": _COUNT, "total": _COUNT, "total_pages": _COUNT})
SESSION = obj({"session_token": ID}, {"expires_at": OPT_STR})
