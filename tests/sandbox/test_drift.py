"""The sandbox's drift switches: answers change shape as the contract allows, data does not."""

from __future__ import annotations

from typing import Any

import pytest

from relay.errors import ConfigError
from relay.sandbox.dext.drift import DRIFT_KINDS, parse_drift
from relay.sandbox.server import SandboxOptions, create_sandbox_app
from tests.support.sandbox import Dext, SandboxFactory


def test_parse_drift_takes_all_none_and_lists() -> None:
    assert parse_drift("all") == frozenset(DRIFT_KINDS)
    assert parse_drift("none") == frozenset()
    assert parse_drift("retype, unknown") == {"retype", "unknown"}
    with pytest.raises(ValueError, match="unknown drift bogus"):
        parse_drift("retype,bogus")


def test_bad_drift_options_are_a_config_error() -> None:
    with pytest.raises(ConfigError):
        create_sandbox_app(SandboxOptions(drift=frozenset({"bogus"})))
    with pytest.raises(ConfigError):
        create_sandbox_app(SandboxOptions(drift_rate=2.0))


def _ids(items: list[Any]) -> list[str]:
    return [i["id"] for i in items if isinstance(i, dict) and isinstance(i.get("id"), str)]


async def test_every_drift_changes_answers_and_never_the_practice(
    sandbox_factory: SandboxFactory,
) -> None:
    handle = await sandbox_factory()
    dext = Dext(handle.http, handle.url, handle.token)
    await dext.login()
    cid = (await dext.ok("/clients"))["data"][0]["id"]
    clean = await dext.ok("/costs", client_id=cid, per_page=50)
    assert (await handle.drift("all", rate=1.0))["kinds"] == sorted(DRIFT_KINDS)
    seq = int((await handle.state())["change_seq"])
    drifted = await dext.ok("/costs", client_id=cid, per_page=50)
    assert drifted["pagination"] == clean["pagination"]
    assert [i for i in _ids(drifted["data"]) if not i.startswith("x_unusable")] == _ids(
        clean["data"]
    )
    unusable = [i for i in drifted["data"] if not isinstance(i, dict) or "x_unusable" in str(i)]
    unusable += [i for i in drifted["data"] if isinstance(i, dict) and "id" not in i]
    assert len(unusable) == 1
    real = [
        i for i in drifted["data"] if isinstance(i, dict) and i.get("id") in _ids(clean["data"])
    ]
    assert any(isinstance(line.get("quantity"), str) for i in real for line in i["line_items"])
    assert any(k.startswith("x_drift") for i in real for k in i)
    clients = [
        c
        for c in (await dext.ok("/clients"))["data"]
        if isinstance(c, dict) and "x_unusable" not in str(c.get("id"))
    ]
    assert any(type(c.get("health_score")) is not int for c in clients)  # "74" or 74.0
    assert int((await handle.state())["change_seq"]) == seq  # nothing changed upstream
    assert (await dext.ok("/costs", client_id=cid, per_page=50)) != clean
    await handle.drift("none")
    assert await dext.ok("/costs", client_id=cid, per_page=50) == clean


async def test_the_drift_control_rejects_bad_input(sandbox_factory: SandboxFactory) -> None:
    handle = await sandbox_factory()
    for body in ({"kinds": "bogus"}, {"kinds": 3}, {"rate": 7}, {"rate": "x"}):
        async with handle.http.post(f"{handle.url}/_sandbox/drift", json=body) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["code"] == "validation_error"
