"""The CLI covers every admin route, and its destructive commands ask first.

The coverage test walks `GET /openapi.json` and builds the request of every `relay` command,
so a route added without a command (or a command whose path drifted) fails here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pty
import re
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from relay.cli.client import Call
from relay.cli.main import build_parser
from relay.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
_ID_SEGMENT = re.compile(r"^[a-z]+_[^/]*$")
_SKIP = {"help", "json", "yes"}


def _subcommands(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every leaf parser under `parser`."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found += _subcommands(child) or [child]
    return found


def _dummy(action: argparse.Action) -> Any:
    if action.choices:
        return next(iter(action.choices))
    if action.type is int:
        return 1
    if action.dest == "url":
        return "https://hooks.example/x"
    return "x_1"


def _variants(parser: argparse.ArgumentParser) -> list[argparse.Namespace]:
    """The parser's defaults with every required argument filled, then once more with each
    optional argument set on its own (a flag like --all-failed may change the route)."""
    base = argparse.Namespace(**{a.dest: a.default for a in parser._actions if a.dest != "help"})
    for name, value in parser._defaults.items():  # set_defaults: build, show, confirm
        setattr(base, name, value)
    optional = []
    for action in parser._actions:
        if action.dest in _SKIP:
            continue
        if action.required or not action.option_strings:
            setattr(base, action.dest, _dummy(action))
        else:
            optional.append(action)
    variants = [base]
    for action in optional:
        variant = argparse.Namespace(**vars(base))
        value = True if isinstance(action, argparse._StoreTrueAction) else _dummy(action)
        setattr(variant, action.dest, value)
        variants.append(variant)
    return variants


def _routes_of_commands() -> set[tuple[str, str]]:
    """(method, path template) of every request some `relay` command sends."""
    routes: set[tuple[str, str]] = set()
    for parser in _subcommands(build_parser()):
        declared = parser.get_default("routes")  # a command that sends no single Call
        if declared:
            routes.update(declared)
        if parser.get_default("build") is None:
            continue
        for args in _variants(parser):
            try:
                call: Call = args.build(args)
            except ConfigError:
                continue  # e.g. `update` with nothing to change: another variant covers it
            path = "/".join("{id}" if _ID_SEGMENT.match(p) else p for p in call.path.split("/"))
            routes.add((call.method, path))
    return routes


async def test_every_admin_route_has_a_cli_command(client: TestClient[Any, Any]) -> None:
    response = await client.get("/openapi.json")
    assert response.status == 200
    document = await response.json()
    admin = {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        if path.startswith("/v1/")
        for method in operations
        if method in ("get", "post", "patch", "put", "delete")
    }
    assert ("PATCH", "/v1/subscriptions/{id}") in admin  # the document is what we think it is
    covered = _routes_of_commands()
    assert admin - covered == set(), "admin routes without a `relay` command"
    assert covered - admin == set(), "`relay` commands calling routes the API does not have"


@pytest.fixture
def relay(cli: Any) -> Any:
    """`relay ARGS...` in a thread against the served API; stdin is empty and not a terminal."""
    return cli


async def _subscription(relay: Any) -> str:
    added = await relay(
        "subscriptions", "add", "--url", "http://127.0.0.1:9/hook", "--event-types", "*", "--json"
    )
    assert added.code == 0, added.err
    sub_id: str = added.json()["id"]
    return sub_id


async def test_accounts_update_and_delete(relay: Any) -> None:
    added = await relay(
        "accounts", "add", "--name", "Old", "--base-url", "https://d.example", "--api-token", "t",
        "--json",
    )  # fmt: skip
    account_id = added.json()["id"]
    nothing = await relay("accounts", "update", account_id)
    assert nothing.code == 2
    assert "nothing to change" in nothing.err

    updated = await relay("accounts", "update", account_id, "--name", "New name", "--json")
    assert updated.code == 0, updated.err
    assert updated.json()["name"] == "New name"
    assert "New name" in (await relay("accounts", "show", account_id)).out

    refused = await relay("accounts", "delete", account_id)
    assert refused.code == 2
    assert "refusing without --yes" in refused.err
    assert "stdin is not a terminal" in refused.err
    assert (await relay("accounts", "show", account_id)).code == 0  # still there

    deleted = await relay("accounts", "delete", account_id, "--yes")
    assert deleted.code == 0, deleted.err
    assert deleted.out.strip() == "deleted"
    gone = await relay("accounts", "show", account_id)
    assert gone.code == 1
    assert "not_found" in gone.err


async def test_subscriptions_update_enable_disable_delete(relay: Any) -> None:
    sub_id = await _subscription(relay)
    updated = await relay(
        "subscriptions", "update", sub_id, "--event-types", "document.*,relay.ping",
        "--client-ids", "cli_1,cli_2", "--filter", "data.object.status == 'ready'", "--json",
    )  # fmt: skip
    assert updated.code == 0, updated.err
    record = updated.json()
    assert record["event_types"] == ["document.*", "relay.ping"]
    assert record["client_ids"] == ["cli_1", "cli_2"]
    assert record["filter"] == "data.object.status == 'ready'"

    cleared = await relay(
        "subscriptions", "update", sub_id, "--client-ids", "any", "--filter", "", "--json"
    )
    assert cleared.code == 0, cleared.err
    assert (cleared.json()["client_ids"], cleared.json()["filter"]) == (None, None)

    assert (await relay("subscriptions", "disable", sub_id)).code == 2  # needs --yes here
    disabled = await relay("subscriptions", "disable", sub_id, "--yes", "--json")
    assert disabled.code == 0, disabled.err
    assert disabled.json()["enabled"] is False
    enabled = await relay("subscriptions", "enable", sub_id, "--json")
    assert enabled.json()["enabled"] is True

    assert (await relay("subscriptions", "delete", sub_id, "--yes")).code == 0
    assert (await relay("subscriptions", "show", sub_id)).code == 1


async def test_bulk_retry_goes_in_steps_with_progress(relay: Any, pool: asyncpg.Pool) -> None:
    sub_id = await _subscription(relay)
    await pool.execute(
        "WITH e AS (INSERT INTO events (type, object_type, object_id, body, fanned_out_at) "
        "SELECT 'relay.ping', 'ping', 'p' || i, '{}', now() FROM generate_series(1, 25) i "
        "RETURNING id) INSERT INTO deliveries (event_id, subscription_id, status, attempt_count) "
        "SELECT id, $1, 'failed', 6 FROM e",
        sub_id,
    )
    retried = await relay("deliveries", "retry", "--all-failed", "--step", "10", "--json")
    assert retried.code == 0, retried.err
    assert retried.json() == {"queued": 25}
    assert "retry: 25 failed deliveries queued" in retried.err
    statuses = await pool.fetch("SELECT status, count(*) AS n FROM deliveries GROUP BY status")
    assert {r["status"]: r["n"] for r in statuses} == {"pending": 25}


async def _on_a_terminal(argv: list[str], env: dict[str, str], answer: bytes) -> tuple[int, str]:
    """Run `relay ARGV` with a pseudo-terminal as stdin and stdout, type `answer`."""
    leader, follower = pty.openpty()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", *argv,
        stdin=follower, stdout=follower, stderr=follower, env=env, cwd=ROOT,
    )  # fmt: skip
    os.close(follower)
    loop = asyncio.get_running_loop()
    seen = b""
    try:
        while b"[y/N]" not in seen:
            chunk = await asyncio.wait_for(loop.run_in_executor(None, os.read, leader, 1024), 20)
            assert chunk, seen
            seen += chunk
        os.write(leader, answer)
        code = await asyncio.wait_for(process.wait(), 20)
        with contextlib.suppress(OSError):  # the terminal closes with the process
            seen += os.read(leader, 4096)
    finally:
        os.close(leader)
        if process.returncode is None:
            process.kill()
            await process.wait()
    return code, seen.decode(errors="replace")


async def test_destructive_commands_ask_on_a_terminal(relay: Any, api_env: dict[str, str]) -> None:
    sub_id = await _subscription(relay)
    code, screen = await _on_a_terminal(["subscriptions", "delete", sub_id], api_env, b"n\n")
    assert f"Delete subscription {sub_id}" in screen
    assert code == 1
    assert "not done" in screen
    assert (await relay("subscriptions", "show", sub_id)).code == 0

    code, screen = await _on_a_terminal(["subscriptions", "delete", sub_id], api_env, b"y\n")
    assert code == 0, screen
    assert "deleted" in screen
    assert (await relay("subscriptions", "show", sub_id)).code == 1
