"""Drift switches: answers that change shape the way dext-api.md allows, never their meaning.

An upstream written by someone else from the contract alone sends what the contract permits and
no more: unknown fields in some responses and not in others, numbers spelled as strings, fields
Relay does not depend on retyped, nulled or gone, enum values the contract does not list yet,
and now and then an object nobody could use. Each switch makes the sandbox do one of these to a
copy of an answer, at random per object (`rate`) with the sandbox's seeded die; the practice and
its change log (the ground truth) are never touched, so every event Relay emits under drift
must still be one the change log calls for.

- `retype`: fields no rule watches and no scan needs change type (number <-> string, string
  -> list), become null or vanish; line-item `quantity` and mileage `miles` become decimal
  strings.
- `unknown`: unknown fields (`x_drift_...`) appear in objects and nested objects, different
  ones per response.
- `respell`: watched numbers re-spelled (`74` / `"74"` / `74.0`, `"20.00"` / `"20.0"`), money
  re-spelled, object keys in another order.
- `enums`: enum values the contract does not list, in fields no rule watches (`source`,
  `type`, `payment_method`, `organisation_type`, `software`).
- `unusable`: lists gain objects no one can use (a string, an object without an id, one whose
  `status` is a list); they name no real item.

Suppliers get `unknown`, `respell` (key order) and `unusable` only: every documented supplier
field is watched (`supplier.updated`), so retyping one would be a real change.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from random import Random
from typing import Any, Final

DRIFT_KINDS: Final = ("retype", "unknown", "respell", "enums", "unusable")

# Fields of each list's objects that no rule watches and no scan needs: free to drift.
_LOOSE: Final[dict[str, tuple[str, ...]]] = {
    "/clients": (
        "name",
        "practice_code",
        "organisation_type",
        "bank_reconciliation_gap",
        "debtor_days",
        "last_sync_at",
    ),
    "/documents": ("client_id", "type", "source", "total_amount", "currency", "date"),
    "/costs": (
        "client_id",
        "type",
        "source",
        "total_amount",
        "currency",
        "date",
        "invoice_number",
        "due_date",
        "net_amount",
        "tax_amount",
        "paid",
        "payment_method",
        "description",
        "project",
    ),
    "/expense_reports": (
        "client_id",
        "title",
        "submitter",
        "total_amount",
        "currency",
        "item_ids",
        "submitted_at",
        "approver",
        "decided_at",
        "created_at",
    ),
    "/connections": ("default_publishing_integration", "default_expense_claims_integration"),
    "/suppliers": (),
}
_LOOSE["/sales"] = _LOOSE["/costs"]
# Unwatched enum fields and a value the contract does not list for each.
_NEW_ENUMS: Final = {
    "source": "whatsapp",
    "type": "statement",
    "payment_method": "crypto",
    "organisation_type": "community_interest_company",
    "software": "netsuite",
}
_WATCHED_NUMBERS: Final = (("health_score",), ("approval", "stage"), ("tax_rate", "rate"))


def parse_drift(text: str) -> frozenset[str]:
    """`all`, `none`, or a comma-separated list of DRIFT_KINDS; ValueError names a bad one."""
    words = {word.strip() for word in text.split(",") if word.strip()}
    if words <= {"none"}:
        return frozenset()
    if "all" in words:
        return frozenset(DRIFT_KINDS)
    unknown = sorted(words - set(DRIFT_KINDS))
    if unknown:
        raise ValueError(f"unknown drift {', '.join(unknown)}; use all or {','.join(DRIFT_KINDS)}")
    return frozenset(words)


def _collection(path: str) -> str | None:
    """The list whose objects an answer to `path` carries (`/costs/{id}` carries a cost)."""
    for prefix in ("/costs", "/sales"):
        if path == prefix or path.startswith(prefix + "/"):
            return prefix
    return path if path in _LOOSE else None


def _retyped(rng: Random, value: Any) -> Any:
    """Another JSON type for a value, or null; `_GONE` to remove the field."""
    roll = rng.random()
    if roll < 0.25:
        return None
    if roll < 0.4:
        return _GONE
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        try:
            return float(Decimal(value)) if Decimal(value).is_finite() else [value]
        except (InvalidOperation, ValueError):
            return [value]
    return str(value)


def _respelled(rng: Random, value: Any) -> Any:
    """The same number spelled another way (`74` -> `"74"` or `74.0`, `"20.00"` -> `"20.0"`)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return str(value) if rng.random() < 0.5 else float(value)
    if isinstance(value, str):
        try:
            number = Decimal(value)
        except InvalidOperation:
            return value
        if not number.is_finite():
            return value
        if "." in value:
            return value + "0" if rng.random() < 0.5 else value.rstrip("0") + "0"
        return int(number) if rng.random() < 0.5 else value + ".0"
    return value


class _Gone:
    __slots__ = ()


_GONE: Final = _Gone()


@dataclass
class Drift:
    """Which switches are on, how often each touches an object, and the die it rolls."""

    kinds: frozenset[str] = frozenset()
    rate: float = 0.3
    seed: int = 1
    _rng: Random = field(init=False, repr=False)
    _serial: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = Random(f"drift:{self.seed}")

    def describe(self) -> dict[str, Any]:
        return {"kinds": sorted(self.kinds), "rate": self.rate}

    def applies(self, path: str) -> bool:
        return bool(self.kinds) and _collection(path) is not None

    def apply(self, path: str, data: Any) -> Any:
        """A drifted copy of one answer's body (a list page or a single object)."""
        collection = _collection(path)
        if collection is None or not self.kinds:
            return data
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            items = [self._object(collection, item) for item in data["data"]]
            if "unusable" in self.kinds and self._rng.random() < self.rate:
                items.insert(self._rng.randrange(len(items) + 1), self._unusable())
            return {**data, "data": items}
        return self._object(collection, data)

    # -- one object -----------------------------------------------------------------------

    def _object(self, collection: str, obj: Any) -> Any:
        if not isinstance(obj, dict):
            return obj
        rng, rate, kinds = self._rng, self.rate, self.kinds
        out = dict(obj)
        if "retype" in kinds:
            for name in _LOOSE[collection]:
                if name in out and rng.random() < rate / 2:
                    value = _retyped(rng, out[name])
                    if value is _GONE:
                        del out[name]
                    else:
                        out[name] = value
            for name, inner in (("line_items", "quantity"), ("mileage_claims", "miles")):
                if isinstance(out.get(name), list) and rng.random() < rate:
                    out[name] = [_decimal_text(item, inner) for item in out[name]]
        if "enums" in kinds and collection != "/suppliers":
            for name, value in _NEW_ENUMS.items():
                if name in out and rng.random() < rate / 2:
                    out[name] = value
            main = out.get("main")
            if isinstance(main, dict) and rng.random() < rate:
                out["main"] = {**main, "software": _NEW_ENUMS["software"]}
        if "respell" in kinds:
            for path in _WATCHED_NUMBERS:
                if rng.random() < rate:
                    out = _at(out, path, lambda v: _respelled(rng, v))
            for name in ("total_amount", "net_amount", "tax_amount"):
                if isinstance(out.get(name), str) and rng.random() < rate:
                    out[name] = _respelled(rng, out[name])
            if rng.random() < rate:
                out = dict(reversed(list(out.items())))
        if "unknown" in kinds:
            for _ in range(rng.randrange(3)):
                if rng.random() < rate:
                    self._serial += 1
                    out[f"x_drift_{rng.randrange(4)}"] = {"serial": self._serial}
            for name in ("supplier", "customer", "approval", "publish", "main", "category"):
                nested = out.get(name)
                if isinstance(nested, dict) and rng.random() < rate / 2:
                    out[name] = {**nested, "x_drift_nested": rng.randrange(1000)}
        return out

    def _unusable(self) -> Any:
        self._serial += 1
        choice = self._rng.randrange(3)
        if choice == 0:
            return f"<unusable {self._serial}>"
        if choice == 1:
            return {"name": "no id here", "status": "ready", "x_drift_serial": self._serial}
        # One field each list depends on, of an impossible type: a document's or report's
        # `status`, a client's `health_score`, a supplier's `name` (all its fields are watched).
        return {
            "id": f"x_unusable_{self._serial}",
            "status": ["ready"],
            "created_at": "2026-04-14T09:00:00Z",
            "health_score": {"not": "a number"},
            "alert_level": ["none"],
            "name": ["not", "a", "name"],
        }


def _decimal_text(item: Any, name: str) -> Any:
    """A line item (or mileage claim) with its number as a decimal string (`1` -> `"1"`)."""
    if not isinstance(item, dict) or isinstance(item.get(name), bool):
        return item
    value = item.get(name)
    if isinstance(value, int):
        return {**item, name: str(value)}
    if isinstance(value, float):
        return {**item, name: f"{value:.1f}"}
    return item


def _at(obj: dict[str, Any], path: Iterable[str], change: Any) -> dict[str, Any]:
    """`obj` with the value at `path` (if there) replaced by `change(value)`, copying the path."""
    head, *rest = path
    if head not in obj:
        return obj
    if not rest:
        return {**obj, head: change(obj[head])}
    inner = obj[head]
    if not isinstance(inner, dict):
        return obj
    return {**obj, head: _at(inner, rest, change)}
