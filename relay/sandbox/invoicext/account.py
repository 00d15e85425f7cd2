"""The simulated InvoiceXT account: its invoices, reconciliations, ledgers, keys and usage.

What `relay sandbox --provider invoicext` serves (routes in `relay.sandbox.invoicext.api`), built
to the harder reading of `invoicext-api.md`: a rolling one-hour limit per key in which every
request counts (429s too) and whose 429 has no `Retry-After`; a monthly allowance that answers
`429 monthly_limit_reached` until the billing period ends; scopes; revocable keys; 502/503 HTML
from the edge; unknown fields (drift); pages computed at request time that shift.

Time: the simulated clock runs `speed` times faster than real time (`SimClock`), and so do the
hour of the rate limit (in real seconds: `3600 / speed`) and the billing month. The ground truth
is `log`: one entry per change, named by the relay event it should become, so tests compare
what Relay delivered with what happened.
"""

from __future__ import annotations

import calendar
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

from relay.errors import ConfigError
from relay.sandbox.clock import SimClock
from relay.sandbox.faults import Faults
from relay.sandbox.ratelimit import Usage, Window
from relay.sandbox.records import ChangeLog, RequestLog
from relay.sandbox.wire import JSON, rfc3339

PLANS: Final = {"starter": 100, "pro": 1000, "business": 10_000, "enterprise": 100_000}
MONTHLY: Final = {"starter": 5000, "pro": 50_000, "business": 500_000, "enterprise": 5_000_000}
SCOPES: Final = ("invoices:read", "bank:read", "settings:read")
LEDGERS: Final = ("quickbooks", "xero")
SUPPLIERS: Final = (
    ("Acme Supplies Ltd", "GB123456789"),
    ("Northwind Traders", "GB987654321"),
    ("Blue Fern Stationery", "GB555000111"),
    ("Harbour Freight Co", "GB222333444"),
    ("Tallis & Sons", "GB777888999"),
)
HOUR: Final = 3600.0


@dataclass
class Key:
    """One API key: its scopes, whether it was revoked, and its requests in real time."""

    value: str
    limit: int
    scopes: tuple[str, ...] = SCOPES
    revoked: bool = False
    usage: Usage = field(default_factory=Usage)


def money(value: Decimal) -> Decimal:
    return value.quantize(Decimal("0.01"))


class InvoicextSandbox:
    """Everything one InvoiceXT sandbox serves; the simulation runs when the clock is read."""

    def __init__(
        self,
        *,
        seed: int = 1,
        items: int = 50,
        plan: str = "starter",
        rate_limit: int | None = None,
        monthly_limit: int | None = None,
        speed: float = 1.0,
        window_seconds: float | None = None,
        start: float = 1776157200.0,
        simulate: bool = True,
        change_rate: float = 1.0,
        api_token: str | None = None,
    ) -> None:
        if plan not in PLANS:
            raise ConfigError(f"unknown InvoiceXT plan {plan!r}; one of {', '.join(PLANS)}")
        if speed <= 0 and window_seconds is None:
            raise ConfigError("speed must be positive (or give window_seconds)")
        self.plan = plan
        self.limit = rate_limit or PLANS[plan]
        self.monthly_limit = monthly_limit or MONTHLY[plan]
        self.speed = speed if speed > 0 else 1.0
        # Real seconds in the rolling window (the simulated hour).
        self.window = window_seconds if window_seconds is not None else HOUR / self.speed
        self.limiter = Window(self.window, rolling=True)
        self.clock = SimClock(start, speed)
        self.rng = random.Random(seed)
        self.simulate = simulate
        self.change_rate = change_rate
        self.keys: dict[str, Key] = {}
        self.token = self.add_key(api_token or f"sk_test_sandbox{seed}", self.limit)
        self.invoices: dict[str, JSON] = {}
        self.reconciliations: dict[str, JSON] = {}
        self.ledgers: dict[str, JSON] = {
            name: {"connected": True, "company_name": "Smith & Co", "last_sync": rfc3339(start)}
            for name in LEDGERS
        }
        self.api_calls = 0
        self.period = self._period_of(start)
        self.log = ChangeLog()
        self.faults = Faults(seed)
        self.request_log = RequestLog()
        self.drift = False  # unknown fields appear on every object
        self.shift = False  # each list page is computed as if one item arrived meanwhile
        self._counter = 0
        self._last_sim = start
        # (sim time, action, args) follow-ups: processing -> processed, running -> completed.
        self._pending: list[tuple[float, str, str]] = []
        for _ in range(items):
            self._new_invoice(start - self.rng.uniform(0, 30 * 86400), settled=True)
        self.log.clear()  # the history is no change

    # -- keys and budget --------------------------------------------------------------------

    def add_key(self, value: str, limit: int, scopes: tuple[str, ...] = SCOPES) -> Key:
        key = Key(value, limit, scopes)
        self.keys[value] = key
        return key

    def _period_of(self, at: float) -> tuple[float, float]:
        """The billing period (calendar month, UTC) holding `at`: [start, end) in sim seconds."""
        day = datetime.fromtimestamp(at, UTC)
        first = datetime(day.year, day.month, 1, tzinfo=UTC)
        last = calendar.monthrange(day.year, day.month)[1]
        end = first.timestamp() + last * 86400
        return first.timestamp(), end

    def roll_period(self, now: float) -> None:
        if now >= self.period[1]:
            self.period = self._period_of(now)
            self.api_calls = 0

    def window_state(self, key: Key) -> tuple[int, float]:
        """(requests in the rolling window, real unix time when the oldest ages out)."""
        quota = self.limiter.peek(key.usage, key.limit, time.time())
        return quota.count, quota.reset

    @property
    def requests(self) -> list[JSON]:
        return self.request_log.entries

    @property
    def changes_log(self) -> ChangeLog:
        return self.log

    def usage(self) -> JSON:
        start, end = self.period
        return {
            "plan": self.plan,
            "billing_period": {
                "from": datetime.fromtimestamp(start, UTC).date().isoformat(),
                "to": datetime.fromtimestamp(end - 86400, UTC).date().isoformat(),
            },
            "invoices_processed": sum(
                1 for i in self.invoices.values() if i["status"] != "processing"
            ),
            "invoices_limit": 10_000,
            "api_calls": self.api_calls,
            "api_calls_limit": self.monthly_limit,
        }

    # -- the simulation ---------------------------------------------------------------------

    def sync(self) -> float:
        """Bring the simulation up to the clock; returns the simulated now."""
        now = self.clock.now()
        self.roll_period(now)
        if self.simulate and now > self._last_sim:
            self._spontaneous(self._last_sim, now)
        self._run_pending(now)
        self._last_sim = max(self._last_sim, now)
        return now

    def advance(self, seconds: float) -> list[JSON]:
        mark = self.log.seq
        self.clock.advance(seconds)
        self.sync()
        return self.log.since(mark)

    def _spontaneous(self, since: float, now: float) -> None:
        """A working day's traffic: ~40 uploads an hour, publications, a few reconciliations."""
        span = min(now - since, 7 * 86400)
        rate = self.change_rate / HOUR
        for what, per_hour in (("upload", 40), ("publish", 30), ("reconcile", 1), ("ledger", 0.2)):
            for _ in range(self._poisson(span * rate * per_hour)):
                at = since + self.rng.uniform(0, span)
                self._run_pending(at)
                if what == "upload":
                    self._new_invoice(at)
                elif what == "publish":
                    # Bookkeepers publish what came in lately: one of the 30 newest processed.
                    ready = sorted(
                        (i for i in self.invoices.values() if i["status"] == "processed"),
                        key=lambda i: (i["created_at"], i["id"]),
                    )[-30:]
                    if ready:
                        self.publish(self.rng.choice(ready)["id"], self.rng.choice(LEDGERS), at)
                elif what == "reconcile":
                    self.start_reconciliation(at)
                else:
                    name = self.rng.choice(LEDGERS)
                    self.set_connected(name, not self.ledgers[name]["connected"], at)

    def _poisson(self, mean: float) -> int:
        count, total = 0, self.rng.expovariate(1.0) if mean > 0 else float("inf")
        while total < mean:
            count += 1
            total += self.rng.expovariate(1.0)
        return count

    def _run_pending(self, now: float) -> None:
        due = sorted(p for p in self._pending if p[0] <= now)
        self._pending = [p for p in self._pending if p[0] > now]
        for at, action, object_id in due:
            if action == "extract" and object_id in self.invoices:
                failed = self.rng.random() < 0.08
                self.finish_extraction(object_id, "failed" if failed else "processed", at)
            elif action == "complete" and object_id in self.reconciliations:
                self.complete_reconciliation(object_id, at)

    def _id(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}_{self._counter:05d}{self.rng.getrandbits(24):06x}"

    def _record(self, event: str, object_id: str, at: float, **extra: Any) -> None:
        self.log.add({"at": rfc3339(at), "event": event, "id": object_id, **extra})

    def _new_invoice(self, at: float, *, settled: bool = False, status: str | None = None) -> JSON:
        name, tax_id = self.rng.choice(SUPPLIERS)
        qty = self.rng.randint(1, 12)
        unit = money(Decimal(self.rng.randint(10, 50000)) / 100)
        subtotal = money(unit * qty)
        rate = Decimal("0.20")
        tax = money(subtotal * rate)
        invoice: JSON = {
            "id": self._id("inv"),
            "status": "processing",
            "supplier": {"name": name, "address": "1 High Street, London", "tax_id": tax_id},
            "invoice_number": f"INV-2026-{self._counter:04d}",
            "invoice_date": datetime.fromtimestamp(at, UTC).date().isoformat(),
            "due_date": datetime.fromtimestamp(at + 30 * 86400, UTC).date().isoformat(),
            "currency": self.rng.choice(("GBP", "GBP", "EUR", "USD")),
            "line_items": [
                {"description": "Goods", "quantity": qty, "unit_price": unit, "amount": subtotal}
            ],
            "totals": {
                "subtotal": subtotal,
                "tax_rate": rate,
                "tax_amount": tax,
                "total": money(subtotal + tax),
            },
            "confidence": round(self.rng.uniform(0.8, 0.99), 2),
            "created_at": rfc3339(at),
            "publications": [],
        }
        self.invoices[invoice["id"]] = invoice
        if settled:
            invoice["status"] = "processed"
            if self.rng.random() < 0.5:
                self.publish(invoice["id"], self.rng.choice(LEDGERS), at)
        elif status is not None:
            self.finish_extraction(invoice["id"], status, at)
        else:
            self._pending.append((at + self.rng.uniform(30, 300), "extract", invoice["id"]))
        return invoice

    def upload(self, at: float, status: str | None = None) -> JSON:
        return self._new_invoice(at, status=status)

    def finish_extraction(self, invoice_id: str, outcome: str, at: float) -> None:
        invoice = self.invoices[invoice_id]
        if invoice["status"] != "processing":
            return
        invoice["status"] = outcome
        self._record(f"invoice.{outcome}", invoice_id, at)

    def publish(self, invoice_id: str, target: str, at: float) -> JSON | None:
        invoice = self.invoices[invoice_id]
        if invoice["status"] not in ("processed", "published"):
            return None
        if any(p["target"] == target for p in invoice["publications"]):
            return None
        publication = {
            "target": target,
            "external_id": f"{target[:2].upper()}-{self.rng.randint(10000, 99999)}",
            "published_at": rfc3339(at),
        }
        invoice["publications"] = [*invoice["publications"], publication]
        invoice["status"] = "published"
        self._record("invoice.published", invoice_id, at, target=target)
        return publication

    def delete(self, invoice_id: str, at: float) -> None:
        if self.invoices.pop(invoice_id, None) is not None:
            self._record("invoice.deleted", invoice_id, at)

    def start_reconciliation(self, at: float) -> JSON:
        rec: JSON = {
            "id": self._id("rec"),
            "statement_id": self._id("bs"),
            "status": "running",
            "date_from": datetime.fromtimestamp(at - 30 * 86400, UTC).date().isoformat(),
            "date_to": datetime.fromtimestamp(at, UTC).date().isoformat(),
            "matched_count": 0,
            "unmatched_count": 0,
            "created_at": rfc3339(at),
            "completed_at": None,
        }
        self.reconciliations[rec["id"]] = rec
        self._pending.append((at + self.rng.uniform(60, 900), "complete", rec["id"]))
        return rec

    def complete_reconciliation(self, rec_id: str, at: float) -> None:
        rec = self.reconciliations[rec_id]
        if rec["status"] != "running":
            return
        rec.update(
            status="completed",
            matched_count=self.rng.randint(10, 80),
            unmatched_count=self.rng.randint(0, 5),
            completed_at=rfc3339(at),
        )
        self._record("bank.reconciled", rec_id, at)

    def set_connected(self, name: str, connected: bool, at: float) -> None:
        ledger = self.ledgers[name]
        if ledger["connected"] != connected:
            ledger["connected"] = connected
            self._record("connection.status_changed", name, at, connected=connected)

    def sync_ledgers(self, at: float) -> None:
        """Ledgers stamp `last_sync` often: a change of no interest, never an event."""
        for ledger in self.ledgers.values():
            if ledger["connected"]:
                ledger["last_sync"] = rfc3339(at)

    # -- reading, as the API shows it -------------------------------------------------------

    def shown(self, obj: JSON) -> JSON:
        if not self.drift:
            return obj
        return {**obj, "ai_tags": ["x"], "x_internal": {"shard": 3}}

    def listing(self, items: list[JSON], page: int, limit: int) -> tuple[list[JSON], JSON]:
        """Newest first by `created_at` then `id`, paged at request time (and shifted)."""
        ordered = sorted(items, key=lambda i: (i["created_at"], i["id"]), reverse=True)
        offset = (page - 1) * limit
        if self.shift and page > 1 and self.rng.random() < 0.5:
            offset = max(0, offset + self.rng.choice((-1, 1)))
        total = len(ordered)
        pages = max(1, -(-total // limit))
        shown = [self.shown(i) for i in ordered[offset : offset + limit]]
        return shown, {"page": page, "limit": limit, "total": total, "total_pages": pages}

    def state(self) -> JSON:
        now = self.sync()
        return {
            "provider": "invoicext",
            "now": rfc3339(now),
            "now_unix": now,
            "speed": self.speed,
            "window_seconds": self.window,
            "plan": self.plan,
            "rate_limit": self.limit,
            "monthly_limit": self.monthly_limit,
            "api_calls": self.api_calls,
            "counts": {
                "invoices": len(self.invoices),
                "reconciliations": len(self.reconciliations),
            },
            "tokens": [
                {
                    "api_token": k.value,
                    "rate_limit": k.limit,
                    "scopes": list(k.scopes),
                    "revoked": k.revoked,
                }
                for k in self.keys.values()
            ],
            "change_seq": self.log.seq,
            "drift": self.drift,
            "shift_pages": self.shift,
        }
