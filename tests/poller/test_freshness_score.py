"""The freshness bench's scorer (bench/freshness.py), which decides what counts as a missed or
a false event against the sandbox's ground truth: a wrong scorer reports relay's true events as
false ones, or hides a real duplicate."""

from __future__ import annotations

from datetime import datetime
from types import SimpleNamespace
from typing import Any

from bench.freshness import score

UNPUBLISHED = {"status": "unpublished", "external_id": None, "published_at": None}
QUEUED = {"status": "queued", "external_id": None, "published_at": None}
PUBLISHED = {"status": "published", "external_id": "ZOHO-330296", "published_at": None}


def _at(clock: str) -> float:
    return datetime.fromisoformat(f"2026-04-14T{clock}+00:00").timestamp()


def _change(clock: str, **fields: list[Any]) -> dict[str, Any]:
    return {
        "object_id": "doc_1",
        "object_type": "document",
        "kind": "updated",
        "at": f"2026-04-14T{clock}+00:00",
        "changes": fields,
    }


QUEUEING = _change(
    "10:43:03", publish_status=["unpublished", "queued"], publish=[UNPUBLISHED, QUEUED]
)
PUBLISHING = _change(
    "10:44:47",
    status=["ready", "published"],
    publish_status=["queued", "published"],
    publish=[QUEUED, PUBLISHED],
)


def _scored(changes: list[dict[str, Any]], events: list[tuple[str, str, dict[str, Any]]]) -> Any:
    """Score events given as (seen at, type, object shown)."""
    records = [
        {"id": f"evt_{n}", "type": kind, "object_id": "doc_1", "object": shown, "previous": None}
        for n, (_, kind, shown) in enumerate(events)
    ]
    env = SimpleNamespace(
        seen_at={f"evt_{n}": _at(clock) for n, (clock, _, _) in enumerate(events)},
        sandbox=SimpleNamespace(clock=SimpleNamespace(now=lambda: 0.0)),
    )
    return score("scheduler", env, changes, records, 0, 0)  # type: ignore[arg-type]


def test_a_change_made_after_the_read_belongs_to_the_next_event() -> None:
    # Read while queued, stored after the upstream had already published it: the first event
    # shows only the queueing; the second, true, event is the publishing (seen in a real run).
    queued = {"publish": QUEUED, "publish_status": "queued", "status": "ready"}
    published = {"publish": PUBLISHED, "publish_status": "published", "status": "published"}
    result = _scored(
        [QUEUEING, PUBLISHING],
        [
            ("10:44:59", "document.sync_status_changed", queued),
            ("10:50:09", "document.status_changed", published),
            ("10:50:09", "document.sync_status_changed", published),
        ],
    )
    assert sum(result["false"].values()) == 0
    assert sum(result["missed"].values()) == 0
    minutes = sorted(round(m, 2) for m in result["latencies"]["document.sync_status_changed"])
    assert minutes == [1.93, 5.37]  # each change from its own event


def test_a_second_event_for_one_change_is_still_false() -> None:
    queued = {"publish": QUEUED, "publish_status": "queued", "status": "ready"}
    result = _scored(
        [QUEUEING],
        [
            ("10:44:59", "document.sync_status_changed", queued),
            ("10:46:00", "document.sync_status_changed", queued),
        ],
    )
    assert result["false"] == {"document.sync_status_changed": 1}
    assert sum(result["missed"].values()) == 0
