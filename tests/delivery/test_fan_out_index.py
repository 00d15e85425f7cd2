"""Fan-out asks only the subscriptions that could match (an index by client and event type);
what matches must be exactly what asking every subscription finds."""

from __future__ import annotations

import random
from typing import Any

from relay.delivery.fanout import _matching
from relay.delivery.subscriptions import Matcher, MatcherIndex

TYPES = ["document.created", "document.categorized", "client.health_changed", "relay.ping"]
PATTERNS = ["*", "document.*", "client.*", "document.created", "relay.ping", "nothing.*"]
CLIENTS = ["cli_1", "cli_2", "cli_3", None]


def brute_force(matchers: list[Matcher], events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [
        (e["id"], m.id)
        for e in events
        for m in matchers
        if m.matches(e["type"], e["account_id"], e["client_id"], e["body"])
    ]


def test_indexed_matching_equals_asking_every_subscription() -> None:
    rng = random.Random(16)
    for _ in range(200):
        matchers = [
            Matcher(
                id=f"sub_{i}",
                event_types=tuple(rng.sample(PATTERNS, rng.randint(1, 3))),
                account_ids=rng.choice([None, frozenset({"acc_1"}), frozenset({"acc_2"})]),
                client_ids=rng.choice(
                    [None, frozenset(), frozenset({"cli_1"}), frozenset({"cli_2", "cli_3"})]
                ),
                filter=rng.choice([None, "data.object.n > `2`", "data.object.n == 'x'"]),
            )
            for i in range(rng.randint(0, 12))
        ]
        events = [
            {
                "id": f"evt_{j}",
                "type": rng.choice(TYPES),
                "account_id": rng.choice(["acc_1", "acc_2", None]),
                "client_id": rng.choice(CLIENTS),
                "body": {"data": {"object": {"n": rng.choice([1, 3, "x"])}}},
            }
            for j in range(rng.randint(0, 15))
        ]
        event_ids, subscription_ids = _matching(MatcherIndex(matchers), events)  # type: ignore[arg-type]
        assert list(zip(event_ids, subscription_ids, strict=True)) == brute_force(matchers, events)


def test_client_filtered_subscriptions_get_only_their_clients_events() -> None:
    matchers = [
        Matcher(f"sub_{i}", ("*",), None, frozenset({f"cli_{i}"}), None) for i in range(200)
    ]
    matchers.append(Matcher("sub_all", ("document.*",), None, None, None))
    events = [
        {
            "id": f"evt_{j}",
            "type": "document.created",
            "account_id": None,
            "client_id": f"cli_{j}",
            "body": {},
        }
        for j in range(0, 400, 7)
    ]
    event_ids, subscription_ids = _matching(MatcherIndex(matchers), events)  # type: ignore[arg-type]
    expected = []
    for e in events:
        j = int(e["id"].split("_")[1])
        expected += ([(e["id"], f"sub_{j}")] if j < 200 else []) + [(e["id"], "sub_all")]
    assert sorted(zip(event_ids, subscription_ids, strict=True)) == sorted(expected)


def test_one_index_reused_for_many_passes_answers_as_a_new_one(monkeypatch: Any) -> None:
    """The dispatcher keeps one index per load of the matchers, candidates memo and all, for
    every pass after it: reused over many batches (and its memo cleared on the way, here every
    three pairs) it must still answer exactly what asking every subscription answers."""
    monkeypatch.setattr(MatcherIndex, "MEMO", 3)
    rng = random.Random(17)
    for _ in range(40):
        matchers = [
            Matcher(
                id=f"sub_{i}",
                event_types=tuple(rng.sample(PATTERNS, rng.randint(1, 3))),
                account_ids=None,
                client_ids=rng.choice([None, frozenset({"cli_1"}), frozenset({"cli_2", "cli_3"})]),
                filter=None,
                ordering=rng.choice(["none", "object"]),
            )
            for i in range(rng.randint(0, 12))
        ]
        index = MatcherIndex(matchers)
        assert index.ordered == {m.id for m in matchers if m.ordering == "object"}
        for _ in range(10):
            events = [
                {
                    "id": f"evt_{j}",
                    "type": rng.choice(TYPES),
                    "account_id": None,
                    "client_id": rng.choice(CLIENTS),
                    "body": {},
                }
                for j in range(rng.randint(0, 8))
            ]
            event_ids, subscription_ids = _matching(index, events)  # type: ignore[arg-type]
            pairs = list(zip(event_ids, subscription_ids, strict=True))
            assert pairs == brute_force(matchers, events)
            assert len(index._candidates) <= MatcherIndex.MEMO
