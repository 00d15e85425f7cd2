"""DextClient against the sandbox's unpleasant parts: sessions, revoked tokens, faults, 429s."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
import structlog
from structlog.testing import capture_logs

from relay.errors import (
    UpstreamAuthError,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from relay.sources.dext import CountingMetrics, DextClient
from relay.sources.ratelimit import RateLimiter
from tests.support.polling import MakeClient
from tests.support.sandbox import SandboxFactory, SandboxHandle


def log_since(handle: SandboxHandle, start: int) -> list[dict[str, Any]]:
    return handle.sandbox.access.requests[start:]


def calls(handle: SandboxHandle, start: int = 0) -> list[tuple[str, int]]:
    return [(r["path"], r["status"]) for r in log_since(handle, start)]


def events(client: DextClient) -> CountingMetrics:
    assert isinstance(client.metrics, CountingMetrics)
    return client.metrics


async def test_concurrent_calls_share_one_session(dext: DextClient, sandbox: SandboxHandle) -> None:
    await asyncio.gather(*(dext.clients() for _ in range(10)))
    assert calls(sandbox).count(("/authenticate", 200)) == 1
    assert calls(sandbox).count(("/clients", 200)) == 10


async def test_an_expired_session_is_renewed_once(dext: DextClient, sandbox: SandboxHandle) -> None:
    await dext.clients()
    mark = len(sandbox.sandbox.access.requests)
    await sandbox.http.post(f"{sandbox.url}/_sandbox/sessions/expire")
    page = await dext.clients()
    assert page.total == 3
    assert calls(sandbox, mark) == [("/clients", 401), ("/authenticate", 200), ("/clients", 200)]
    assert events(dext).events["reauthenticated"] == 1


async def test_session_expired_twice_in_a_row_raises(
    dext: DextClient, sandbox: SandboxHandle
) -> None:
    await sandbox.fault(kind="session_expired", path="/clients", count=2)
    with pytest.raises(UpstreamAuthError) as caught:
        await dext.clients()
    assert caught.value.code == "session_expired"
    assert calls(sandbox) == [
        ("/authenticate", 200),
        ("/clients", 401),
        ("/authenticate", 200),
        ("/clients", 401),
    ]


async def test_sessions_are_renewed_before_they_expire(
    sandbox_factory: SandboxFactory, make_client: MakeClient
) -> None:
    # expires_at has whole-second precision, so the TTL must outlast that truncation; the client
    # renews at 90% of what it is told, which is before 2.6 s whatever the rounding was.
    handle = await sandbox_factory(session_ttl=2.5)
    client = make_client(handle)
    await client.clients()
    await asyncio.sleep(2.6)
    await client.clients()
    assert calls(handle) == [
        ("/authenticate", 200),
        ("/clients", 200),
        ("/authenticate", 200),
        ("/clients", 200),
    ]


async def test_a_revoked_token_raises_at_once_without_a_retry_storm(
    dext: DextClient, sandbox: SandboxHandle
) -> None:
    await dext.clients()
    mark = len(sandbox.sandbox.access.requests)
    await sandbox.http.post(f"{sandbox.url}/_sandbox/tokens/{sandbox.token}/revoke")
    for _ in range(5):
        with pytest.raises(UpstreamAuthError) as caught:
            await asyncio.gather(dext.clients(), dext.documents("cl_any"))
        assert caught.value.code == "invalid_token"
    # Only the calls already on their way were sent; every later one failed without a request.
    assert len(log_since(sandbox, mark)) <= 2
    assert {status for _, status in calls(sandbox, mark)} == {401}


async def test_a_revoked_token_is_refused_at_authenticate(
    sandbox: SandboxHandle, make_client: MakeClient
) -> None:
    await sandbox.http.post(f"{sandbox.url}/_sandbox/tokens/{sandbox.token}/revoke")
    client = make_client(sandbox)
    for _ in range(3):
        with pytest.raises(UpstreamAuthError) as caught:
            await client.clients()
        assert caught.value.code == "invalid_token"
    assert calls(sandbox) == [("/authenticate", 401)]


async def test_an_unknown_token_is_invalid(sandbox: SandboxHandle, make_client: MakeClient) -> None:
    client = make_client(sandbox, token="not-a-token")
    with pytest.raises(UpstreamAuthError) as caught:
        await client.authenticate()
    assert caught.value.code == "invalid_token"


@pytest.mark.parametrize("kind", ["502", "503"])
async def test_edge_errors_with_html_are_retried(
    dext: DextClient, sandbox: SandboxHandle, kind: str
) -> None:
    await sandbox.fault(kind=kind, path="/clients", count=2)
    page = await dext.clients()
    assert page.total == 3
    status = int(kind)
    assert calls(sandbox)[1:] == [("/clients", status), ("/clients", status), ("/clients", 200)]
    assert events(dext).events["retry"] == 2


async def test_persistent_edge_errors_give_up_after_max_retries(
    sandbox: SandboxHandle, make_client: MakeClient
) -> None:
    client = make_client(sandbox, max_retries=2)
    await sandbox.fault(kind="503", path="/clients", count=10)
    with pytest.raises(UpstreamUnavailable) as caught:
        await client.clients()
    assert caught.value.status == 503
    assert calls(sandbox)[1:] == [("/clients", 503)] * 3


async def test_a_slow_answer_times_out_and_is_retried(
    sandbox: SandboxHandle, make_client: MakeClient
) -> None:
    client = make_client(sandbox, timeout=0.3)
    await client.authenticate()
    await sandbox.fault(kind="slow", path="/clients", delay=1.0, count=1)
    page = await client.clients()
    assert page.total == 3
    # The sandbox logs a request when its answer is done: the slow one finishes last.
    for _ in range(40):
        if len(log_since(sandbox, 1)) == 2:
            break
        await asyncio.sleep(0.05)
    assert [r["path"] for r in log_since(sandbox, 1)] == ["/clients", "/clients"]
    assert ("clients", None) in events(client).requests  # the attempt that got no answer


async def test_dropped_connections_are_retried(dext: DextClient, sandbox: SandboxHandle) -> None:
    await sandbox.fault(kind="drop", path="/clients", count=2)
    page = await dext.clients()
    assert page.total == 3
    assert calls(sandbox)[1:] == [("/clients", 0), ("/clients", 0), ("/clients", 200)]


async def test_processing_errors_are_retried(dext: DextClient, sandbox: SandboxHandle) -> None:
    await sandbox.fault(kind="processing_error", path="/suppliers", count=1)
    client_id = next(iter(sandbox.sandbox.practice.clients))
    assert (await dext.suppliers(client_id)).total > 0
    assert calls(sandbox)[1:] == [("/suppliers", 500), ("/suppliers", 200)]


async def test_malformed_json_is_a_protocol_error_and_logged(
    dext: DextClient, sandbox: SandboxHandle
) -> None:
    client_id = next(iter(sandbox.sandbox.practice.clients))
    await sandbox.fault(kind="malformed_json", path="/costs", count=1)
    with capture_logs() as logs, pytest.raises(UpstreamProtocolError) as caught:
        await dext.costs(client_id)
    assert "malformed JSON" in caught.value.detail
    assert caught.value.status == 200
    logged = [e for e in logs if e["event"] == "upstream_protocol_error"]
    assert len(logged) == 1
    assert logged[0]["url"].endswith("/costs")
    assert logged[0]["status"] == 200
    assert "malformed JSON" in logged[0]["detail"]
    assert (await dext.costs(client_id)).total > 0  # the next read is fine


async def test_unknown_extra_fields_are_kept_and_ignored(
    dext: DextClient, sandbox: SandboxHandle
) -> None:
    client_id = next(iter(sandbox.sandbox.practice.clients))
    await sandbox.fault(kind="extra_fields", path="/costs", count=1)
    page = await dext.costs(client_id)
    assert page.items
    assert all(
        item["x_sandbox_unknown"] == {"note": "an unknown field; ignore it"} for item in page.items
    )
    assert all(item["x_sandbox_flag"] is True for item in page.items)


async def test_objects_of_impossible_types_are_set_aside_and_the_page_goes_on(
    dext: DextClient, sandbox: SandboxHandle
) -> None:
    client_id = next(iter(sandbox.sandbox.practice.clients))
    clean = await dext.costs(client_id)
    await sandbox.fault(kind="wrong_types", path="/costs", count=1)  # `supplier` becomes a str
    page = await dext.costs(client_id)
    assert page.items == []
    assert len(page.set_aside) == len(clean.items) > 0
    assert (page.total, page.total_pages) == (clean.total, clean.total_pages)
    assert {s.kind for s in page.set_aside} == {"unusable_field"}
    assert "supplier: expected an object, got str" in page.set_aside[0].reason
    assert dext.set_aside.counts == {"unusable_field": len(clean.items)}
    assert (await dext.costs(client_id)).items == clean.items  # the next read is fine


async def test_a_single_object_of_an_impossible_type_is_a_protocol_error(
    dext: DextClient, sandbox: SandboxHandle
) -> None:
    client_id = next(iter(sandbox.sandbox.practice.clients))
    await sandbox.fault(kind="wrong_types", path="/connections", count=1)
    with pytest.raises(UpstreamProtocolError) as caught:
        await dext.connections(client_id)
    assert "main" in caught.value.detail
    assert "expected" in caught.value.detail
    assert dext.set_aside.counts == {"unusable_field": 1}


async def test_a_number_spelled_as_a_string_is_read(
    dext: DextClient, sandbox: SandboxHandle
) -> None:
    clean = await dext.clients()
    await sandbox.fault(kind="wrong_types", path="/clients", count=1)  # health_score: "74"
    page = await dext.clients()
    assert page.set_aside == ()
    assert [c["health_score"] for c in page.items] == [str(c["health_score"]) for c in clean.items]


async def test_429_with_and_without_retry_after_waits_for_the_window(
    sandbox_factory: SandboxFactory, make_client: MakeClient
) -> None:
    handle = await sandbox_factory(rate_limit=5, window_seconds=2.0)
    client = make_client(handle, limit=5, window_seconds=2.0)
    await client.authenticate()
    for expect_retry_after in (True, False):
        # Another tool burns the window's budget just as our request arrives.
        await handle.fault(kind="consume_budget", path="/clients", amount=10, count=1)
        mark = len(handle.sandbox.access.requests)
        with capture_logs() as logs:
            page = await client.clients()
        assert page.total == 3
        entries = log_since(handle, mark)
        assert [e["status"] for e in entries] == [429, 200]  # one 429, then patience
        assert entries[1]["window_start"] > entries[0]["window_start"]
        throttled = [e for e in logs if e["event"] == "upstream_throttled"]
        assert (throttled[0]["retry_after"] is not None) is expect_retry_after
    assert events(client).events["throttled"] == 2
    assert (await client.rate_limit_state()).throttled_last_hour == 2


async def test_too_many_429s_raise_rate_limited(
    sandbox_factory: SandboxFactory, make_client: MakeClient
) -> None:
    handle = await sandbox_factory(rate_limit=5, window_seconds=2.0)
    client = make_client(handle, limit=5, window_seconds=2.0, max_throttled=0)
    await handle.fault(kind="consume_budget", path="/authenticate", amount=10, count=1)
    with pytest.raises(UpstreamRateLimited) as caught:
        await client.clients()
    assert caught.value.status == 429
    assert calls(handle) == [("/authenticate", 429)]


async def test_other_tools_on_the_token_shrink_our_share(
    sandbox_factory: SandboxFactory, make_client: MakeClient, redis_client: aioredis.Redis
) -> None:
    handle = await sandbox_factory(rate_limit=20, window_seconds=60.0)
    client = make_client(handle, limit=20, window_seconds=60.0)
    await handle.fault(kind="consume_budget", path="/authenticate", amount=12, count=1)
    await client.authenticate()  # the server now says 7 remain
    state = await client.rate_limit_state()
    assert state.remaining == 7
    unpaced = RateLimiter(redis_client, handle.token, limit=20, window_seconds=60.0, burst=20)
    grants = 0
    while (await unpaced.try_acquire()).granted:
        grants += 1
    assert grants == 7


@pytest.fixture
def all_logs() -> Iterator[None]:
    """Let info and debug events through to capture_logs for one test."""
    previous = structlog.get_config()["wrapper_class"]
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    yield
    structlog.configure(wrapper_class=previous)


@pytest.mark.usefixtures("all_logs")
async def test_logs_never_carry_the_token(sandbox: SandboxHandle, make_client: MakeClient) -> None:
    client = make_client(sandbox)
    await sandbox.fault(kind="503", path="/clients", count=1)
    with capture_logs() as logs:
        await client.clients()
        await sandbox.http.post(f"{sandbox.url}/_sandbox/sessions/expire")
        await client.clients()
        await sandbox.http.post(f"{sandbox.url}/_sandbox/tokens/{sandbox.token}/revoke")
        with pytest.raises(UpstreamAuthError):
            await client.clients()
    assert {
        "upstream_authenticated",
        "upstream_session_expired",
        "upstream_retry",
        "upstream_request",
        "upstream_auth_failed",
    } <= {e["event"] for e in logs}
    session_tokens = list(sandbox.sandbox.access.sessions)
    text = repr(logs)
    assert sandbox.token not in text
    assert not any(token in text for token in session_tokens)
