"""The simulated practice's state and its ground-truth change log; every mutation goes through here.

Objects are plain JSON-ready dicts, replaced whole on every change (never mutated in place), so a
change-log entry can keep a reference to the version it describes without copying it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from typing import Final

from relay.sandbox.records import ChangeLog as _ChangeLog
from relay.sandbox.wire import JSON, rfc3339

OBJECT_TYPES: Final = ("document", "expense_report", "supplier", "client", "connection")
# Summary fields of /documents, in the contract's order; the full /costs and /sales object
# carries all of them too, so the summary is always a projection of the full item.
SUMMARY_FIELDS: Final = (
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


def summarize(document: JSON) -> JSON:
    """The /documents view of a full item."""
    return {name: document.get(name) for name in SUMMARY_FIELDS}


def sync_document_fields(document: JSON) -> JSON:
    """Derive the summary fields from the nested objects, so the two views can never disagree."""
    category = document.get("category")
    document["category_code"] = category.get("code") if isinstance(category, dict) else None
    publish = document.get("publish")
    if isinstance(publish, dict):
        document["publish_status"] = publish.get("status")
    approval = document.get("approval")
    if isinstance(approval, dict):
        document["approval_status"] = approval.get("status")
    # A capture still processing may know only the name it was submitted with, so the name is
    # taken from the party object only once there is one.
    party = document.get("customer" if document.get("workspace") == "sales" else "supplier")
    if isinstance(party, dict):
        document["supplier_name"] = party.get("name")
    return document


class ChangeLog(_ChangeLog):
    """The practice's ground truth (`relay.sandbox.records.ChangeLog`), one entry per object change.

    An entry's `kind` is `created`, `updated`, `deleted`, or `existing`: an object that came
    with a client added mid-run, already there before the relay could see it (history).
    """

    def append(
        self,
        *,
        at: float,
        client_id: str,
        object_type: str,
        object_id: str,
        kind: str,
        changes: JSON,
        obj: JSON,
    ) -> JSON:
        return self.add(
            {
                "at": rfc3339(at),
                "real_at": time.time(),
                "client_id": client_id,
                "object_type": object_type,
                "object_id": object_id,
                "kind": kind,
                "changes": changes,
                # The whole object after the change (before it, for a deletion).
                "object": obj,
            }
        )


class Practice:
    """Clients and everything under them, keyed by id; the one place objects change."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.clients: dict[str, JSON] = {}
        self.connections: dict[str, JSON] = {}
        self.suppliers: dict[str, dict[str, JSON]] = {}
        self.documents: dict[str, dict[str, JSON]] = {}
        self.expense_reports: dict[str, dict[str, JSON]] = {}
        # Clients whose access was withdrawn: their per-client endpoints answer 403.
        self.forbidden: set[str] = set()
        self.log = ChangeLog()
        self._owner: dict[str, tuple[str, str]] = {}
        self._id_counter = 0
        self._versions: dict[tuple[str, str], int] = {}
        self._sorted: dict[tuple[str, str], tuple[int, list[JSON]]] = {}

    # ids -----------------------------------------------------------------------------------
    def new_id(self, prefix: str) -> str:
        """A deterministic, opaque, unique id: a hash of the seed and a counter."""
        while True:
            self._id_counter += 1
            digest = hashlib.blake2b(
                f"{self.seed}:{self._id_counter}".encode(), digest_size=8
            ).hexdigest()
            candidate = f"{prefix}{digest}"
            if candidate not in self._owner:
                return candidate

    # lookups --------------------------------------------------------------------------------
    def _table(self, object_type: str, client_id: str) -> dict[str, JSON]:
        if object_type == "document":
            return self.documents.setdefault(client_id, {})
        if object_type == "supplier":
            return self.suppliers.setdefault(client_id, {})
        if object_type == "expense_report":
            return self.expense_reports.setdefault(client_id, {})
        if object_type == "client":
            return self.clients
        if object_type == "connection":
            return self.connections
        raise KeyError(object_type)

    def find(self, object_type: str, object_id: str) -> tuple[str, JSON] | None:
        """(client_id, object) for an id of the given type, or None."""
        owner = self._owner.get(object_id)
        if object_type in ("client", "connection"):
            table = self.clients if object_type == "client" else self.connections
            found = table.get(object_id)
            return (object_id, found) if found is not None else None
        if owner is None or owner[0] != object_type:
            return None
        found = self._table(object_type, owner[1]).get(object_id)
        return (owner[1], found) if found is not None else None

    def ordered(self, object_type: str, client_id: str) -> list[JSON]:
        """Objects newest first by created_at, then id descending (cached until a change)."""
        key = (object_type, client_id)
        version = self._versions.get(key, 0)
        cached = self._sorted.get(key)
        if cached is not None and cached[0] == version:
            return cached[1]
        table = self.clients if object_type == "client" else self._table(object_type, client_id)
        items = sorted(table.values(), key=lambda o: (o["created_at"], o["id"]), reverse=True)
        self._sorted[key] = (version, items)
        return items

    def select(self, object_type: str, client_id: str, keep: Callable[[JSON], bool]) -> list[JSON]:
        """Objects of one client matching `keep`, in insertion order (stable for seeded picks)."""
        return [o for o in self._table(object_type, client_id).values() if keep(o)]

    def _touch(self, object_type: str, client_id: str) -> None:
        key = (object_type, "" if object_type == "client" else client_id)
        self._versions[key] = self._versions.get(key, 0) + 1

    # mutations ------------------------------------------------------------------------------
    def create(
        self, object_type: str, client_id: str, obj: JSON, at: float, *, kind: str = "created"
    ) -> JSON:
        """Add an object. `kind` "existing" logs an object that arrives with its history (a
        client added mid-run brings its backlog): it is in the practice now, but it is no news
        a relay should report; its later changes are logged as usual."""
        object_id = obj["id"] if object_type != "connection" else client_id
        if object_type == "document":
            sync_document_fields(obj)
        self._table(object_type, client_id)[object_id] = obj
        if object_type not in ("client", "connection"):
            self._owner[object_id] = (object_type, client_id)
        else:
            self._owner.setdefault(object_id, ("client", object_id))
        self._touch(object_type, client_id)
        return self.log.append(
            at=at,
            client_id=client_id,
            object_type=object_type,
            object_id=object_id,
            kind=kind,
            changes={},
            obj=obj,
        )

    def update(self, object_type: str, object_id: str, values: JSON, at: float) -> JSON | None:
        """Replace top-level fields; returns the log entry, or None when nothing changed."""
        found = self.find(object_type, object_id)
        if found is None:
            raise KeyError(object_id)
        client_id, old = found
        new = {**old, **values}
        if object_type == "document":
            sync_document_fields(new)
        changes = {k: [old.get(k), new[k]] for k in new if old.get(k) != new[k] or k not in old}
        if not changes:
            return None
        self._table(object_type, client_id)[object_id] = new
        self._touch(object_type, client_id)
        return self.log.append(
            at=at,
            client_id=client_id,
            object_type=object_type,
            object_id=object_id,
            kind="updated",
            changes=changes,
            obj=new,
        )

    def delete(self, object_type: str, object_id: str, at: float) -> JSON:
        found = self.find(object_type, object_id)
        if found is None or object_type == "connection":
            raise KeyError(object_id)
        client_id, old = found
        del self._table(object_type, client_id)[object_id]
        self._owner.pop(object_id, None)
        self._touch(object_type, client_id)
        if object_type == "client":
            # A client takes its connection and everything under it along; only the client's
            # own deletion is logged, as a practice would see the client disappear.
            self.connections.pop(object_id, None)
            for table in (self.documents, self.suppliers, self.expense_reports):
                for child in table.pop(object_id, {}):
                    self._owner.pop(child, None)
        return self.log.append(
            at=at,
            client_id=client_id,
            object_type=object_type,
            object_id=object_id,
            kind="deleted",
            changes={},
            obj=old,
        )

    def counts(self) -> JSON:
        def total(tables: Iterable[dict[str, JSON]]) -> int:
            return sum(len(t) for t in tables)

        return {
            "clients": len(self.clients),
            "documents": total(self.documents.values()),
            "suppliers": total(self.suppliers.values()),
            "expense_reports": total(self.expense_reports.values()),
            "changes": self.log.seq,
        }
