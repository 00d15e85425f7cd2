"""The two records every sandbox keeps: the ground truth of what changed, and the requests served.

The change log is what tests and benchmarks compare a relay's events with; the request log is
what they count a relay's traffic with (`/_sandbox/changes`, `/_sandbox/requests`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import overload

from relay.sandbox.wire import JSON


class ChangeLog:
    """Append-only record of every change, each entry numbered by `seq` from 1."""

    def __init__(self) -> None:
        self.entries: list[JSON] = []

    @property
    def seq(self) -> int:
        return len(self.entries)

    def add(self, fields: JSON) -> JSON:
        entry = {"seq": len(self.entries) + 1, **fields}
        self.entries.append(entry)
        return entry

    def since(self, seq: int, limit: int | None = None) -> list[JSON]:
        """The entries after `seq` (at most `limit` of them), oldest first."""
        start = max(seq, 0)
        end = None if limit is None else start + limit
        return self.entries[start:end]

    def clear(self) -> None:
        self.entries.clear()

    def __iter__(self) -> Iterator[JSON]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    @overload
    def __getitem__(self, index: int) -> JSON: ...

    @overload
    def __getitem__(self, index: slice) -> list[JSON]: ...

    def __getitem__(self, index: int | slice) -> JSON | list[JSON]:
        return self.entries[index]


class RequestLog:
    """Every request the upstream's edge saw, in the provider's own entry shape.

    `numbered` gives each entry its place (`n`, from 1) when it is recorded.
    """

    def __init__(self, *, numbered: bool = False) -> None:
        self.entries: list[JSON] = []
        self.numbered = numbered

    def record(self, entry: JSON) -> JSON:
        if self.numbered:
            entry["n"] = len(self.entries) + 1
        self.entries.append(entry)
        return entry

    def by_status(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for entry in self.entries:
            counts[str(entry["status"])] = counts.get(str(entry["status"]), 0) + 1
        return counts
