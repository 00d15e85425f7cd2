"""How the practice changes as simulated time passes: seeded per-minute ticks and follow-ups.

Time is cut into one-minute ticks. Each tick draws its spontaneous changes from a generator seeded
by (seed, tick index), so the same seed and the same clock advances give the same changes however
the advances are chunked. Follow-ups (processing finishing, a queued publish resolving, the daily
health refresh) wait in a heap keyed by simulated time and run in the tick that reaches them.
Pausing stops both; on resume, overdue follow-ups run in the first tick.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from random import Random
from typing import Any, Final

from relay.sandbox.dext import catalog
from relay.sandbox.dext.generate import (
    DAY,
    extraction,
    make_capture,
    make_expense_report,
    make_supplier,
    pick_category,
    populate_client,
    published,
)
from relay.sandbox.dext.practice import Practice
from relay.sandbox.wire import JSON, rfc3339

TICK: Final = 60.0
# Spontaneous changes per client per simulated hour at change_rate 1: a busy small business.
RATES: Final = {
    "capture": 0.4,
    "review_done": 0.15,
    "recategorize": 0.08,
    "approval_request": 0.06,
    "approval_decide": 0.12,
    "publish": 0.25,
    "retry_failed": 0.1,
    "archive": 0.05,
    "delete": 0.015,
    "supplier_create": 0.02,
    "supplier_edit": 0.03,
    "expense_create": 0.02,
    "expense_advance": 0.05,
    "connection_drift": 0.005,
}


def poisson(rng: Random, lam: float) -> int:
    """Knuth's method; lam is small here (a few events per tick at most)."""
    if lam <= 0:
        return 0
    limit, k, product = math.exp(-lam), 0, rng.random()
    while product > limit:
        k += 1
        product *= rng.random()
    return k


class Simulation:
    """Drives the practice forward in simulated time; see the module docstring."""

    _FOLLOW_UPS: Final = ("finish_processing", "publish_result", "health_refresh")

    def __init__(
        self, practice: Practice, *, seed: int, start: float, paused: bool, change_rate: float
    ) -> None:
        self.p = practice
        self.seed = seed
        self.start = start
        self.paused = paused
        self.change_rate = change_rate
        self.done_until = start
        self._queue: list[tuple[float, int, str, str]] = []
        self._n = 0
        # Follow-ups of changes made from outside (API and control surface) draw from here.
        self.rng = Random(f"followups:{seed}")
        self._actions: dict[str, Callable[[Random, float, str], None]] = {
            name: getattr(self, f"_do_{name}") for name in (*RATES, *self._FOLLOW_UPS)
        }
        setup = Random(f"setup:{seed}")
        for cid in self.p.clients:
            self.schedule(start + setup.uniform(0, DAY), "health_refresh", cid)
            for doc in self.p.select("document", cid, lambda d: d["status"] == "processing"):
                self.schedule(start + setup.uniform(30, 600), "finish_processing", doc["id"])

    def describe(self) -> dict[str, Any]:
        return {
            "paused": self.paused,
            "change_rate": self.change_rate,
            "done_until": rfc3339(self.done_until),
            "follow_ups": len(self._queue),
        }

    def schedule(self, at: float, action: str, target: str) -> None:
        self._n += 1
        heapq.heappush(self._queue, (float(int(at)), self._n, action, target))

    def add_client(self, items: int, at: float) -> list[JSON]:
        """A client joins the practice mid-run with `items` documents of history (and its
        suppliers and expense reports); returns its change-log entries. Only the client and its
        connection are `created`: its backlog is logged as `existing`, history a relay must
        not report as new. From now on it changes like every other client."""
        before = self.p.log.seq
        index = len(self.p.clients)
        rng = Random(f"client:{self.seed}:{index}:{before}")
        cid = populate_client(self.p, rng, index, items, at, kind="existing")
        self.schedule(at + rng.uniform(0, DAY), "health_refresh", cid)
        for doc in self.p.select("document", cid, lambda d: d["status"] == "processing"):
            self.schedule(at + rng.uniform(30, 600), "finish_processing", doc["id"])
        return self.p.log.since(before)

    def after_capture(self, doc_id: str, at: float) -> None:
        """A capture submitted from outside finishes processing a few minutes later."""
        self.schedule(at + self.rng.uniform(60, 600), "finish_processing", doc_id)

    def run_until(self, now: float) -> None:
        if self.paused:
            # Nothing happens while paused; skip the elapsed ticks without visiting them.
            whole = math.floor((now - self.start) / TICK)
            self.done_until = max(self.done_until, self.start + whole * TICK)
            return
        while self.done_until + TICK <= now:
            tick_start = self.done_until
            tick_end = tick_start + TICK
            rng = Random(f"tick:{self.seed}:{int((tick_start - self.start) // TICK)}")
            self._plan(rng, tick_start)
            while self._queue and self._queue[0][0] < tick_end:
                at, _, action, target = heapq.heappop(self._queue)
                self._actions[action](rng, max(at, tick_start), target)
            self.done_until = tick_end

    def _plan(self, rng: Random, tick_start: float) -> None:
        clients = list(self.p.clients)
        if not clients or self.change_rate <= 0:
            return
        scale = len(clients) * self.change_rate * TICK / 3600.0
        for action, rate in RATES.items():
            for _ in range(poisson(rng, rate * scale)):
                self.schedule(tick_start + rng.randrange(int(TICK)), action, rng.choice(clients))

    # helpers --------------------------------------------------------------------------------
    def _pick(
        self, rng: Random, object_type: str, cid: str, keep: Callable[[JSON], bool]
    ) -> JSON | None:
        if cid not in self.p.clients:
            return None
        found = self.p.select(object_type, cid, keep)
        return rng.choice(found) if found else None

    def _doc(self, doc_id: str) -> JSON | None:
        found = self.p.find("document", doc_id)
        return found[1] if found else None

    # follow-ups -----------------------------------------------------------------------------
    def _do_finish_processing(self, rng: Random, at: float, doc_id: str) -> None:
        doc = self._doc(doc_id)
        if doc is not None and doc["status"] == "processing":
            self.p.update("document", doc_id, extraction(self.p, rng, doc), at)

    def _do_publish_result(self, rng: Random, at: float, doc_id: str) -> None:
        doc = self._doc(doc_id)
        if doc is None or doc["publish"]["status"] != "queued":
            return
        if rng.random() < 0.85:
            values = {"publish": published(rng, doc, at), "status": "published"}
        else:
            values = {
                "publish": {
                    **doc["publish"],
                    "status": "failed",
                    "error_message": rng.choice(catalog.PUBLISH_ERRORS),
                },
                "status": "ready",
            }
        self.p.update("document", doc_id, values, at)

    def _do_health_refresh(self, rng: Random, at: float, cid: str) -> None:
        client = self.p.clients.get(cid)
        if client is None:
            return
        self.schedule(
            at + rng.uniform(0.75, 1.25) * DAY / max(1.0, self.change_rate), "health_refresh", cid
        )
        if rng.random() >= min(1.0, self.change_rate):
            return
        score = max(0, min(100, client["health_score"] + rng.randint(-14, 12)))
        gap = max(0, client["bank_reconciliation_gap"] + rng.randint(-6, 6))
        self.p.update(
            "client",
            cid,
            {
                "health_score": score,
                "alert_level": catalog.alert_level(score),
                "bank_reconciliation_gap": gap,
                "debtor_days": round(max(0.0, client["debtor_days"] + rng.uniform(-4, 4)), 1),
                "last_sync_at": rfc3339(at),
            },
            at,
        )

    # spontaneous changes --------------------------------------------------------------------
    def _do_capture(self, rng: Random, at: float, cid: str) -> None:
        if cid not in self.p.clients:
            return
        doc = make_capture(self.p, rng, cid, at)
        self.p.create("document", cid, doc, at)
        self.schedule(at + rng.uniform(120, 900), "finish_processing", doc["id"])

    def _do_review_done(self, rng: Random, at: float, cid: str) -> None:
        doc = self._pick(rng, "document", cid, lambda d: d["status"] == "review")
        if doc is None:
            return
        values: JSON = {"status": "ready"}
        if doc["category"] is None:
            values.update(_categorized(doc, pick_category(rng, doc["workspace"])))
        self.p.update("document", doc["id"], values, at)

    def _do_recategorize(self, rng: Random, at: float, cid: str) -> None:
        doc = self._pick(
            rng, "document", cid, lambda d: d["status"] in ("review", "ready", "published")
        )
        if doc is None:
            return
        roll = rng.random()
        if roll < 0.7:
            values = _categorized(doc, pick_category(rng, doc["workspace"]))
        elif roll < 0.85:
            code, name, rate = rng.choice(catalog.TAX_RATES)
            values = {"tax_rate": {"code": code, "name": name, "rate": rate}}
        else:
            key = "customer" if doc["workspace"] == "sales" else "supplier"
            kind = "customer" if key == "customer" else "supplier"
            party = self._pick(rng, "supplier", cid, lambda s: s["type"] == kind)
            if party is None:
                return
            values = {key: {"id": party["id"], "name": party["name"]}}
        self.p.update("document", doc["id"], values, at)

    def _do_approval_request(self, rng: Random, at: float, cid: str) -> None:
        doc = self._pick(
            rng,
            "document",
            cid,
            lambda d: (
                d["workspace"] == "costs"
                and d["status"] in ("review", "ready")
                and d["approval"]["status"] == "none"
                and d["publish"]["status"] in ("unpublished", "failed")
            ),
        )
        if doc is not None:
            approval = {"status": "pending", "stage": 1, "approver": None, "decided_at": None}
            self.p.update("document", doc["id"], {"approval": approval}, at)

    def _do_approval_decide(self, rng: Random, at: float, cid: str) -> None:
        doc = self._pick(rng, "document", cid, lambda d: d["approval"]["status"] == "pending")
        if doc is None:
            return
        approval = doc["approval"]
        if approval["stage"] == 1 and rng.random() < 0.2:
            new = {**approval, "stage": 2, "approver": rng.choice(catalog.APPROVERS)}
        else:
            new = {
                "status": rng.choices(("approved", "rejected"), weights=(85, 15))[0],
                "stage": approval["stage"],
                "approver": rng.choice(catalog.APPROVERS),
                "decided_at": rfc3339(at),
            }
        self.p.update("document", doc["id"], {"approval": new}, at)

    def _do_publish(self, rng: Random, at: float, cid: str) -> None:
        doc = self._pick(
            rng,
            "document",
            cid,
            lambda d: (
                d["status"] == "ready"
                and d["publish"]["status"] == "unpublished"
                and d["approval"]["status"] in ("none", "approved")
                and d["integration"] is not None
            ),
        )
        if doc is not None:
            self._queue_publish(rng, doc, at)

    def _do_retry_failed(self, rng: Random, at: float, cid: str) -> None:
        doc = self._pick(rng, "document", cid, lambda d: d["publish"]["status"] == "failed")
        if doc is not None:
            self._queue_publish(rng, doc, at)

    def _queue_publish(self, rng: Random, doc: JSON, at: float) -> None:
        publish = {**doc["publish"], "status": "queued", "error_message": None}
        self.p.update("document", doc["id"], {"publish": publish}, at)
        self.schedule(at + rng.uniform(60, 600), "publish_result", doc["id"])

    def _do_archive(self, rng: Random, at: float, cid: str) -> None:
        doc = self._pick(rng, "document", cid, lambda d: d["status"] == "published")
        if doc is not None:
            self.p.update("document", doc["id"], {"status": "archived"}, at)

    def _do_delete(self, rng: Random, at: float, cid: str) -> None:
        # Expense items stay: reports point at them, and Dext keeps claimed items.
        doc = self._pick(rng, "document", cid, lambda d: d["type"] != "expense")
        if doc is not None:
            self.p.delete("document", doc["id"], at)

    def _do_supplier_create(self, rng: Random, at: float, cid: str) -> None:
        if cid not in self.p.clients:
            return
        kind = "customer" if rng.random() < 0.3 else "supplier"
        names = catalog.CUSTOMER_NAMES if kind == "customer" else catalog.SUPPLIER_NAMES
        taken = {s["name"] for s in self.p.suppliers.get(cid, {}).values()}
        free = [n for n in names if n not in taken]
        name = rng.choice(free) if free else f"{rng.choice(names)} {len(taken) + 1}"
        self.p.create("supplier", cid, make_supplier(self.p, rng, cid, kind, name, at), at)

    def _do_supplier_edit(self, rng: Random, at: float, cid: str) -> None:
        supplier = self._pick(rng, "supplier", cid, lambda s: True)
        if supplier is None:
            return
        field = rng.choice(("email", "default_category_code", "default_tax_code", "auto_publish"))
        value: Any
        if field == "email":
            value = f"billing{rng.randint(1, 99)}@{supplier['id'][4:12]}.example"
        elif field == "default_category_code":
            value = pick_category(rng, "sales" if supplier["type"] == "customer" else "costs")[
                "code"
            ]
        elif field == "default_tax_code":
            value = rng.choice(catalog.TAX_RATES)[0]
        else:
            value = not supplier["auto_publish"]
        self.p.update("supplier", supplier["id"], {field: value}, at)

    def _do_expense_create(self, rng: Random, at: float, cid: str) -> None:
        if cid not in self.p.clients:
            return
        claimed = {i for r in self.p.expense_reports.get(cid, {}).values() for i in r["item_ids"]}
        free = [
            d["id"]
            for d in self.p.select(
                "document", cid, lambda d: d["type"] == "expense" and d["status"] != "processing"
            )
            if d["id"] not in claimed
        ]
        picked = rng.sample(free, min(len(free), rng.randint(1, 3)))
        report = make_expense_report(self.p, rng, cid, at, picked)
        self.p.create("expense_report", cid, report, at)

    def _do_expense_advance(self, rng: Random, at: float, cid: str) -> None:
        report = self._pick(
            rng, "expense_report", cid, lambda r: r["status"] in ("draft", "submitted", "approved")
        )
        if report is None:
            return
        values: JSON
        if report["status"] == "draft":
            values = {"status": "submitted", "submitted_at": rfc3339(at)}
        elif report["status"] == "submitted":
            values = {
                "status": rng.choices(("approved", "rejected"), weights=(85, 15))[0],
                "approver": rng.choice(catalog.APPROVERS),
                "decided_at": rfc3339(at),
            }
        else:
            values = {"status": "reimbursed"}
        self.p.update("expense_report", report["id"], values, at)

    def _do_connection_drift(self, rng: Random, at: float, cid: str) -> None:
        connection = self.p.connections.get(cid)
        if connection is None:
            return

        def drifted(link: JSON) -> JSON:
            if link["status"] == "connected":
                status = rng.choices(("expired", "mismatch", "unintegrated"), weights=(6, 3, 1))[0]
            else:
                status = "connected"
            return {**link, "status": status, "last_sync_at": rfc3339(at)}

        additional = connection["additional"]
        if additional and rng.random() < 0.3:
            index = rng.randrange(len(additional))
            links = [drifted(a) if i == index else a for i, a in enumerate(additional)]
            self.p.update("connection", cid, {"additional": links}, at)
        else:
            self.p.update("connection", cid, {"main": drifted(connection["main"])}, at)


def _categorized(doc: JSON, category: JSON) -> JSON:
    """A new category, carried into the line items as Dext does."""
    lines = [{**line, "category_code": category["code"]} for line in doc["line_items"]]
    return {"category": category, "line_items": lines}
