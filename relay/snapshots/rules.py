"""What counts as a change of an upstream object, and the table of which event it becomes."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from relay.exactjson import ExactNumber

Trigger = Literal["created", "changed", "deleted"]

# A rule watching ANY_FIELD fires when any top-level field the upstream contract documents for
# its object type (DOCUMENTED_FIELDS), other than `id`, changed. Unknown fields never count:
# upstreams add them to some responses and not to others.
ANY_FIELD = "*"

# The fields of a /documents summary; a stored full item projected on these hashes the same as
# the summary of the same item, which is how `snapshots.changed_summary_ids` finds what to re-fetch.
SUMMARY_FIELDS: tuple[str, ...] = (
    "id",
    "client_id",
    "workspace",
    "type",
    "source",
    "status",
    "supplier_name",
    "category_code",
    "total_amount",
    "currency",
    "date",
    "integration",
    "publish_status",
    "approval_status",
    "created_at",
)

# The top-level fields dext-api.md documents, per object type.
DOCUMENTED_FIELDS: dict[str, frozenset[str]] = {
    "client": frozenset(
        (
            "id",
            "name",
            "practice_code",
            "organisation_type",
            "health_score",
            "alert_level",
            "bank_reconciliation_gap",
            "debtor_days",
            "last_sync_at",
        )
    ),
    "connection": frozenset(
        (
            "main",
            "additional",
            "default_publishing_integration",
            "default_expense_claims_integration",
        )
    ),
    # A full /costs or /sales item: the summary's fields and the detail-only ones.
    "document": frozenset(
        (
            *SUMMARY_FIELDS,
            "supplier",
            "customer",
            "category",
            "tax_rate",
            "invoice_number",
            "due_date",
            "net_amount",
            "tax_amount",
            "paid",
            "payment_method",
            "description",
            "project",
            "line_items",
            "publish",
            "approval",
        )
    ),
    "supplier": frozenset(
        (
            "id",
            "name",
            "type",
            "tax_number",
            "default_category_code",
            "default_tax_code",
            "auto_publish",
            "integration",
            "email",
        )
    ),
    "expense_report": frozenset(
        (
            "id",
            "client_id",
            "title",
            "submitter",
            "status",
            "total_amount",
            "currency",
            "item_ids",
            "mileage_claims",
            "submitted_at",
            "approver",
            "decided_at",
        )
    ),
}

# A string that spells a number: `"74"`, `"-1332.50"`, `"0.5"`; not `"0400"` (a leading zero
# marks a code, which is text), not `"1e3"` or `" 7"` (no upstream spells numbers so).
_DECIMAL = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?")


_NUMBER_START = frozenset("-0123456789")


def _number_text(number: Decimal) -> str:
    if number.is_zero():
        return "0"
    return format(number.normalize(), "f")


def normalized(value: Any) -> Any:
    """`value` as compared for change: numbers and decimal strings as one canonical decimal
    text (`74`, `74.0` and `"74"` are `"74"`; `"1332.0"` and `"1332.00"` are `"1332"`), objects
    and lists normalized inside; every other value as it is.

    Upstreams re-spell values without changing them (relay.md, "Reading upstreams"); what a
    diff compares and hashes goes through this, so a re-spelling is neither an event nor a
    snapshot rewrite. Dict key order does not matter here either (dicts compare unordered and
    the content hash sorts keys). It runs for every new or changed object a diff sees, so the
    common cases (text, objects) are tested first, by exact type."""
    kind = type(value)
    if kind is str:
        if value and value[0] in _NUMBER_START and len(value) < 64 and _DECIMAL.fullmatch(value):
            return _number_text(Decimal(value))
        return value
    if kind is dict:
        return {key: normalized(item) for key, item in value.items()}
    if kind is list:
        return [normalized(item) for item in value]
    if kind is int:
        return str(value)
    if kind is float:
        try:
            number = Decimal(repr(value))
        except InvalidOperation:
            return value
        return _number_text(number) if number.is_finite() else value
    if kind is ExactNumber:  # InvoiceXT's money, read with its spelling (relay.exactjson)
        return _number_text(Decimal(value.text))
    return value  # None, bool, and whatever else JSON decoding may produce


@dataclass(frozen=True)
class Rule:
    """One row of the table: `trigger` on an `object_type` emits `event_type`.

    `fields` are what a "changed" rule watches: top-level names or sub-field paths
    (`approval.status`; `additional[].status` projects over a list, as in JMESPath). A rule
    fires once per object and diff when the value at any of its paths differs between the
    stored and the new version, so several rules can fire for one object, one rule only once.
    """

    object_type: str
    event_type: str
    trigger: Trigger
    fields: tuple[str, ...] = ()
    _paths: tuple[tuple[str, ...], ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        paths = tuple(tuple(f.split(".")) for f in self.fields if f != ANY_FIELD)
        object.__setattr__(self, "_paths", paths)

    def fires_on_change(
        self, before: Mapping[str, Any], after: Mapping[str, Any], changed: Mapping[str, Any]
    ) -> bool:
        """True when a watched field differs; `changed` is the top-level `previous` mapping."""
        if self.trigger != "changed":
            return False
        if ANY_FIELD in self.fields:
            documented = DOCUMENTED_FIELDS.get(self.object_type, frozenset())
            if any(key != "id" and key in documented for key in changed):
                return True
        return any(
            path[0].removesuffix("[]") in changed
            and normalized(lookup(before, path)) != normalized(lookup(after, path))
            for path in self._paths
        )


def lookup(value: Any, path: Sequence[str]) -> Any:
    """The value at a path (`a.b`, `list[].b`); None where a step is missing or not an object."""
    for depth, step in enumerate(path):
        if step.endswith("[]"):
            items = value.get(step[:-2]) if isinstance(value, dict) else None
            if not isinstance(items, list):
                return None
            return [lookup(item, path[depth + 1 :]) for item in items]
        value = value.get(step) if isinstance(value, dict) else None
    return value


# The table itself, from relay.md "Events". Summary mirrors (`category_code`, `supplier_name`,
# `approval_status`, `publish_status`) are watched alongside the full fields so that either
# form of an item triggers the rule. Clients and connections seen for the first time emit
# nothing: the contract has no event type for that.
RULES: tuple[Rule, ...] = (
    Rule("document", "document.created", "created"),
    Rule(
        "document",
        "document.categorized",
        "changed",
        (
            "category.code",
            "category_code",
            # Objects are watched by their documented sub-fields: an unknown one inside them
            # comes and goes without a change.
            "supplier.id",
            "supplier.name",
            "customer.id",  # sales items name their counterparty `customer`
            "customer.name",
            "supplier_name",
            "tax_rate.code",
            "tax_rate.name",
            "tax_rate.rate",
        ),
    ),
    Rule("document", "document.status_changed", "changed", ("status",)),
    Rule(
        "document",
        "document.approval_changed",
        "changed",
        ("approval.status", "approval.stage", "approval_status"),
    ),
    Rule(
        "document",
        "document.sync_status_changed",
        "changed",
        ("publish.status", "publish.external_id", "integration", "publish_status"),
    ),
    Rule("document", "document.deleted", "deleted"),
    Rule("expense_report", "expense_report.created", "created"),
    Rule("expense_report", "expense_report.status_changed", "changed", ("status",)),
    Rule("supplier", "supplier.created", "created"),
    Rule("supplier", "supplier.updated", "changed", (ANY_FIELD,)),
    Rule("client", "client.health_changed", "changed", ("health_score", "alert_level")),
    # Adding or removing an additional integration changes the list of statuses too: the
    # client's set of connection states changed, which is what this event reports.
    Rule(
        "connection", "connection.status_changed", "changed", ("main.status", "additional[].status")
    ),
    # InvoiceXT (invoicext-api.md): deletions by the table; the rest by `derive_events`, since
    # they depend on the transition (first seen processed) and one fires per new publication.
    Rule("invoice", "invoice.deleted", "deleted"),
)

# InvoiceXT's object types in snapshots: a `ledger` is one entry of /integrations/status (its
# event is `connection.status_changed`, about object type `connection`).
INVOICEXT_OBJECT_TYPES: tuple[str, ...] = ("invoice", "reconciliation", "ledger")
OBJECT_TYPES: tuple[str, ...] = (
    "client",
    "connection",
    "document",
    "supplier",
    "expense_report",
    *INVOICEXT_OBJECT_TYPES,
)
# The envelope's `object_type` where it is not the event type's prefix.
ENVELOPE_OBJECT_TYPE: dict[str, str] = {"reconciliation": "reconciliation", "ledger": "connection"}

# An event a transition fires: its type and what joins its `data` (the new publication).
Fired = tuple[str, dict[str, Any]]
_PROCESSED = ("processed", "published")


def _invoice_events(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> list[Fired]:
    """`invoice.processed` the first time it is seen processed or later (new, or from
    processing/failed), `invoice.failed` when it turns (or arrives) failed, and one
    `invoice.published` per publication target not seen before."""
    fired: list[Fired] = []
    old = before.get("status") if before is not None else None
    new = after.get("status")
    if new in _PROCESSED and old not in _PROCESSED:
        fired.append(("invoice.processed", {}))
    if new == "failed" and old != "failed":
        fired.append(("invoice.failed", {}))
    seen = {_target(p) for p in _publications(before)} if before is not None else set()
    for publication in _publications(after):
        target = _target(publication)
        if target is not None and target not in seen:
            seen.add(target)
            fired.append(("invoice.published", {"publication": dict(publication)}))
    return fired


def _publications(obj: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    items = obj.get("publications") if obj is not None else None
    return [p for p in items if isinstance(p, Mapping)] if isinstance(items, list) else []


def _target(publication: Mapping[str, Any]) -> str | None:
    target = publication.get("target")
    return target if isinstance(target, str) else None


def _reconciliation_events(
    before: Mapping[str, Any] | None, after: Mapping[str, Any]
) -> list[Fired]:
    """`bank.reconciled` the first time a reconciliation is seen completed."""
    old = before.get("status") if before is not None else None
    if after.get("status") == "completed" and old != "completed":
        return [("bank.reconciled", {})]
    return []


def _ledger_events(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> list[Fired]:
    """`connection.status_changed` when a known ledger's `connected` flipped (a new ledger is
    no change: there was no status before)."""
    if before is not None and bool(before.get("connected")) != bool(after.get("connected")):
        return [("connection.status_changed", {})]
    return []


# Object types whose events depend on the transition, not only on which field changed.
DERIVED: dict[str, Callable[[Mapping[str, Any] | None, Mapping[str, Any]], list[Fired]]] = {
    "invoice": _invoice_events,
    "reconciliation": _reconciliation_events,
    "ledger": _ledger_events,
}

# Fields left out of the content hash, per object type. They still land in `data` (and in an
# event's `previous`) whenever the object has a real change, but never rewrite a snapshot alone.
VOLATILE_FIELDS: dict[str, tuple[str, ...]] = {
    # Dext stamps `last_sync_at` on every ledger sync, many times a day per client: hashing it
    # would rewrite every client and connection snapshot on every poll for no event.
    "client": ("last_sync_at",),
    "connection": ("main.last_sync_at", "additional[].last_sync_at"),
    # Documents, suppliers and expense reports carry no field that moves without a real change
    # (`publish.published_at` and `approval.decided_at` change only together with a status).
    "document": (),
    "supplier": (),
    "expense_report": (),
    # InvoiceXT stamps `last_sync` on every ledger sync: hashing it would rewrite each poll.
    "invoice": (),
    "reconciliation": (),
    "ledger": ("last_sync",),
}

# The summary fields a rule watches: a summary whose only differences from the stored item are
# elsewhere (a retyped `total_amount`, a new `source` value) is not worth a detail fetch from the
# rate-limited upstream; the next sweep of full items stores what changed.
WATCHED_SUMMARY_FIELDS: tuple[str, ...] = tuple(
    name
    for name in SUMMARY_FIELDS
    if any(name in rule.fields for rule in RULES if rule.object_type == "document")
)

_VOLATILE_PATHS = {kind: [p.split(".") for p in paths] for kind, paths in VOLATILE_FIELDS.items()}


def _strip(value: Any, path: Sequence[str]) -> Any:
    """`value` without the field at `path` (`a.b`, `list[].b`), copying only along the path."""
    head, rest = path[0], path[1:]
    if not isinstance(value, dict):
        return value
    if head.endswith("[]"):
        key = head[:-2]
        items = value.get(key)
        if not isinstance(items, list) or not rest:
            return value
        return {**value, key: [_strip(item, rest) for item in items]}
    if head not in value:
        return value
    if not rest:
        return {k: v for k, v in value.items() if k != head}
    return {**value, head: _strip(value[head], rest)}


def canonical(object_type: str, obj: Mapping[str, Any]) -> Any:
    """The object without its type's volatile fields (a copy only where something is left out)."""
    for path in _VOLATILE_PATHS[object_type]:
        obj = _strip(obj, path)
    return obj


def previous_fields(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """Every top-level field whose value differs, with its whole old value (absent: None); a
    field that only changed its spelling (see `normalized`) did not change."""
    keys = [*before, *(key for key in after if key not in before)]
    return {
        key: before.get(key)
        for key in keys
        if (old := before.get(key, _MISSING)) != (new := after.get(key, _MISSING))
        and (old is _MISSING or new is _MISSING or normalized(old) != normalized(new))
    }


def same_content(object_type: str, before: Mapping[str, Any], after: Mapping[str, Any]) -> bool:
    """True when two versions differ at most in volatile fields, spelling and key order.

    Field by field, normalizing only the fields whose raw values differ, and stopping at the
    first real difference: a diff asks this of every object it rewrote, nearly all of which
    really changed in a field or two."""
    old, new = canonical(object_type, before), canonical(object_type, after)
    if old.keys() != new.keys():
        return False
    return all(
        value == new[key] or normalized(value) == normalized(new[key]) for key, value in old.items()
    )


def changed_event_types(
    object_type: str, before: Mapping[str, Any], after: Mapping[str, Any]
) -> tuple[list[str], dict[str, Any]]:
    """The event types a change fires, in table order, and the `previous` mapping for them."""
    previous = previous_fields(before, after)
    if not previous:
        return [], previous
    fired = [
        rule.event_type
        for rule in RULES
        if rule.object_type == object_type and rule.fires_on_change(before, after, previous)
    ]
    return fired, previous


def event_type_for(object_type: str, trigger: Trigger) -> str | None:
    """The event type of a `created` or `deleted` trigger for this object type, if it has one."""
    for rule in RULES:
        if rule.object_type == object_type and rule.trigger == trigger:
            return rule.event_type
    return None


class _Missing:
    __slots__ = ()


_MISSING = _Missing()
