"""Typed results of upstream calls (pages, item iterators, metrics hooks) and contract checks.

Objects stay the raw JSON dicts the upstream sent, unknown fields included, because snapshots
diff the whole object. Only the fields Relay relies on are checked: a check names the first
problem (`"items[3].approval: expected an object, got str"`), which becomes the `detail` of an
UpstreamProtocolError for the whole page.
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


@dataclass(frozen=True)
class Page:
    """One page of a list endpoint, as the upstream computed it at request time."""

    items: list[JsonObject]
    page: int
    per_page: int
    total: int
    total_pages: int

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
            self.finished = not page.items or page.page >= page.total_pages

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

    def request_done(self, endpoint: str, status: int | None, seconds: float) -> None:
        self.requests[(endpoint, status)] += 1
        self.seconds += seconds

    def count(self, name: str) -> None:
        self.events[name] += 1


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _is(name: str, test: Callable[[Any], bool]) -> Check:
    return lambda value: None if test(value) else f"expected {name}, got {_kind(value)}"


ID = _is("a non-empty string", lambda v: isinstance(v, str) and bool(v))
STR = _is("a string", lambda v: isinstance(v, str))
INT = _is("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool))
NUMBER = _is("a number", lambda v: isinstance(v, int | float) and not isinstance(v, bool))
BOOL = _is("a boolean", lambda v: isinstance(v, bool))
ANY: Check = lambda _value: None  # noqa: E731


def _money(value: Any) -> str | None:
    # Money is a decimal string; a float would already have lost cents somewhere.
    if not isinstance(value, str):
        return f"expected a decimal string, got {_kind(value)}"
    try:
        amount = Decimal(value)
    except InvalidOperation:
        return f"expected a decimal string, got {value[:20]!r}"
    return None if amount.is_finite() else f"expected a finite amount, got {value[:20]!r}"


MONEY: Check = _money


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


OPT_STR = nullable(STR)

CLIENT = obj(
    {"id": ID, "health_score": INT, "alert_level": STR},
    {
        "name": OPT_STR,
        "practice_code": OPT_STR,
        "organisation_type": OPT_STR,
        "bank_reconciliation_gap": nullable(INT),
        "debtor_days": nullable(NUMBER),
        "last_sync_at": OPT_STR,
    },
)

_CONNECTION = obj(
    {"status": STR},
    {"software": OPT_STR, "organisation": OPT_STR, "last_sync_at": OPT_STR},
)
CONNECTIONS = obj(
    {"main": nullable(_CONNECTION), "additional": list_of(_CONNECTION)},
    {"default_publishing_integration": OPT_STR, "default_expense_claims_integration": OPT_STR},
)

_DOCUMENT_REQUIRED: dict[str, Check] = {"id": ID, "status": STR, "created_at": STR}
_DOCUMENT_OPTIONAL: dict[str, Check] = {
    "client_id": ID,
    "workspace": STR,
    "type": STR,
    "source": OPT_STR,
    "supplier_name": OPT_STR,
    "category_code": OPT_STR,
    "total_amount": nullable(MONEY),
    "currency": OPT_STR,
    "date": OPT_STR,
    "integration": OPT_STR,
    "publish_status": STR,
    "approval_status": STR,
}
DOCUMENT = obj(_DOCUMENT_REQUIRED, _DOCUMENT_OPTIONAL)

_PARTY = nullable(obj({"id": ANY}, {"name": OPT_STR}))
_LINE_ITEM = obj(
    {},
    {
        "description": OPT_STR,
        "quantity": nullable(NUMBER),
        "unit_price": nullable(MONEY),
        "amount": nullable(MONEY),
        "category_code": OPT_STR,
        "tax_code": OPT_STR,
    },
)
FULL_DOCUMENT = obj(
    {
        **_DOCUMENT_REQUIRED,
        "publish": obj(
            {"status": STR},
            {"external_id": OPT_STR, "published_at": OPT_STR, "error_message": OPT_STR},
        ),
        "approval": obj(
            {"status": STR},
            {"stage": nullable(INT), "approver": OPT_STR, "decided_at": OPT_STR},
        ),
    },
    {
        **_DOCUMENT_OPTIONAL,
        "supplier": _PARTY,
        "customer": _PARTY,
        "category": nullable(obj({"code": STR}, {"name": OPT_STR})),
        "tax_rate": nullable(obj({"code": STR}, {"name": OPT_STR})),
        "invoice_number": OPT_STR,
        "due_date": OPT_STR,
        "net_amount": nullable(MONEY),
        "tax_amount": nullable(MONEY),
        "paid": nullable(BOOL),
        "payment_method": OPT_STR,
        "description": OPT_STR,
        "project": OPT_STR,
        "line_items": list_of(_LINE_ITEM),
    },
)

SUPPLIER = obj(
    {"id": ID, "name": STR},
    {
        "type": STR,
        "tax_number": OPT_STR,
        "default_category_code": OPT_STR,
        "default_tax_code": OPT_STR,
        "auto_publish": nullable(BOOL),
        "integration": OPT_STR,
        "email": OPT_STR,
    },
)

EXPENSE_REPORT = obj(
    {"id": ID, "status": STR},
    {
        "client_id": ID,
        "title": OPT_STR,
        "submitter": nullable(obj({}, {"id": ANY, "name": OPT_STR})),
        "total_amount": nullable(MONEY),
        "currency": OPT_STR,
        "item_ids": list_of(STR),
        "mileage_claims": list_of(obj({}, {"miles": nullable(NUMBER), "amount": nullable(MONEY)})),
        "submitted_at": OPT_STR,
        "approver": ANY,
        "decided_at": OPT_STR,
        "created_at": STR,
    },
)

_COUNT = _is(
    "a non-negative integer", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0
)
PAGINATION = obj({"page": _COUNT, "per_page": _COUNT, "total": _COUNT, "total_pages": _COUNT})
SESSION = obj({"session_token": ID}, {"expires_at": OPT_STR})
