"""Injectable faults: each targets a path prefix and fires for the next N requests or at random.

One model and one parser for both upstreams; each provider says which kinds it serves (Dext
all but `500`; InvoiceXT the edge's HTML errors, `slow`, `drop` and `malformed_json`), and
`relay.sandbox.edge` plays them the same way for both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from random import Random
from typing import Any, Final

# Faults decided before the request is handled, and faults that spoil a successful answer.
BEFORE: Final = frozenset(
    {"500", "502", "503", "slow", "drop", "session_expired", "consume_budget", "processing_error"}
)
AFTER: Final = frozenset({"malformed_json", "extra_fields", "wrong_types"})
KINDS: Final = BEFORE | AFTER


@dataclass
class Fault:
    kind: str
    path: str = "/"
    count: int | None = 1  # None: unlimited (with a probability)
    probability: float | None = None
    delay: float = 0.0
    amount: int = 0
    fired: int = 0

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "path": self.path,
            "count": self.count,
            "probability": self.probability,
            "delay": self.delay,
            "amount": self.amount,
            "fired": self.fired,
        }


def parse_fault(
    body: Any, kinds: frozenset[str] = KINDS, aliases: Mapping[str, str] | None = None
) -> Fault:
    """A Fault of one of `kinds` from the control surface's JSON; ValueError says what is wrong.

    `aliases` maps a provider's older spelling of a kind to the shared one.
    """
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    kind = body.get("kind")
    if aliases and isinstance(kind, str):
        kind = aliases.get(kind, kind)
    if kind not in kinds:
        raise ValueError(f"kind must be one of {sorted(kinds | set(aliases or ()))}")
    path = body.get("path", "/")
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError("path must be a string starting with /")
    probability = body.get("probability")
    if probability is not None and (
        isinstance(probability, bool)
        or not isinstance(probability, int | float)
        or not 0 <= probability <= 1
    ):
        raise ValueError("probability must be a number from 0 to 1")
    count = body.get("count", None if probability is not None else 1)
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ValueError("count must be a positive integer")
    delay = body.get("delay", 0)
    if isinstance(delay, bool) or not isinstance(delay, int | float) or not 0 <= delay <= 600:
        raise ValueError("delay must be a number of seconds from 0 to 600")
    amount = body.get("amount", 0)
    if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
        raise ValueError("amount must be a non-negative integer")
    return Fault(kind, path, count, probability, float(delay), amount)


class Faults:
    """The armed faults; matching consumes counts and rolls a seeded die for probabilities."""

    def __init__(self, seed: int) -> None:
        self.armed: list[Fault] = []
        self._rng = Random(f"faults:{seed}")

    def add(self, fault: Fault) -> None:
        self.armed.append(fault)

    def clear(self) -> int:
        cleared = len(self.armed)
        self.armed.clear()
        return cleared

    def fire(self, path: str, kinds: frozenset[str]) -> list[Fault]:
        """The faults of `kinds` that fire for a request to `path` (spent ones are disarmed)."""
        fired = []
        for fault in self.armed:
            if fault.kind not in kinds or not path.startswith(fault.path):
                continue
            if fault.probability is not None and self._rng.random() >= fault.probability:
                continue
            fault.fired += 1
            if fault.count is not None:
                fault.count -= 1
            fired.append(fault)
        self.armed = [f for f in self.armed if f.count is None or f.count > 0]
        return fired
