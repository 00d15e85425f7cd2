"""`relay rekey` with two keys: a crash half way, a rerun, and then the old key dropped."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from relay.cli.rekey import TableCount, rekey
from relay.delivery import subscriptions
from relay.errors import ConfigError
from relay.settings import Settings
from relay.sources import accounts
from relay.vault import Vault, generate_key
from tests.support.stores import TEST_SECRET_KEY

ROOT = Path(__file__).resolve().parents[2]  # the repo: `python -m relay` runs from its root
OLD = TEST_SECRET_KEY
NEW = generate_key()


async def _store(pool: asyncpg.Pool, settings: Settings, n_accounts: int, n_subs: int) -> None:
    """Accounts and subscriptions written under the old key; subscriptions rotated twice, so
    each holds a current, a previous and an `older_secrets` secret."""
    old = Vault((OLD,))
    for i in range(n_accounts):
        await accounts.create_account(
            pool,
            old,
            provider="dext",
            name=f"Practice {i}",
            base_url="https://dext.example",
            api_token=f"token-{i}",
        )
    for _ in range(n_subs):
        sub, _secret = await subscriptions.create_subscription(
            pool, old, settings, url="https://hooks.example/x", event_types=["*"]
        )
        for _ in range(2):
            await subscriptions.rotate_secret(pool, old, sub["id"])


async def _readable_with(pool: asyncpg.Pool, vault: Vault) -> tuple[int, int]:
    """How many accounts and subscriptions have every secret readable with `vault`."""
    ok_accounts = 0
    for row in await pool.fetch("SELECT api_token_enc FROM accounts"):
        try:
            assert vault.decrypt(row["api_token_enc"]).startswith("token-")
            ok_accounts += 1
        except ConfigError:
            pass
    ok_subs = 0
    for row in await pool.fetch(
        "SELECT secret_enc, previous_secret_enc, previous_secret_expires_at, older_secrets "
        "FROM subscriptions"
    ):
        assert len(row["older_secrets"]) == 1
        try:
            keys = subscriptions.signing_keys(
                vault,
                row["secret_enc"],
                row["previous_secret_enc"],
                row["previous_secret_expires_at"],
                datetime.now(UTC),
                row["older_secrets"],
            )
            assert len(keys) == 3
            ok_subs += 1
        except ConfigError:
            pass
    return ok_accounts, ok_subs


class Crash(Exception):
    pass


async def test_rekey_crash_half_way_then_rerun_then_old_key_dropped(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    await _store(pool, settings, n_accounts=9, n_subs=5)
    both = Vault((NEW, OLD))
    new_only = Vault((NEW,))
    assert await _readable_with(pool, new_only) == (0, 0)
    seen: list[tuple[str, int]] = []

    def crash_after_two_batches(table: str, count: TableCount) -> None:
        seen.append((table, count.seen))
        if len(seen) == 2:
            raise Crash  # after the second batch committed, before the third

    with pytest.raises(Crash):
        await rekey(pool, both, batch_size=4, progress=crash_after_two_batches)
    assert seen == [("accounts", 4), ("accounts", 8)]
    # Half done: what was rekeyed reads with the new key alone, the rest still needs the old.
    assert await _readable_with(pool, new_only) == (8, 0)
    assert await _readable_with(pool, both) == (9, 5)

    counts = await rekey(pool, both, batch_size=4)
    assert (counts["accounts"].seen, counts["accounts"].rekeyed) == (9, 1)
    assert (counts["subscriptions"].seen, counts["subscriptions"].rekeyed) == (5, 5)
    assert await _readable_with(pool, new_only) == (9, 5)

    again = await rekey(pool, both, batch_size=4)
    assert [c.rekeyed for c in again.values()] == [0, 0]


async def test_rekey_reports_a_secret_no_key_reads_and_goes_on(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    await _store(pool, settings, n_accounts=3, n_subs=1)
    stray = Vault((generate_key(),)).encrypt("token-lost")
    lost = await pool.fetchval(
        "UPDATE accounts SET api_token_enc = $1 WHERE id = (SELECT min(id) FROM accounts) "
        "RETURNING id",
        stray,
    )
    counts = await rekey(pool, Vault((NEW, OLD)), batch_size=2)
    assert counts["accounts"].unreadable == [lost]
    assert counts["accounts"].rekeyed == 2
    assert counts["subscriptions"].rekeyed == 1


def _env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "RELAY_SECRET_KEY": f"{NEW},{OLD}",
        "RELAY_LOG_LEVEL": "warning",
        "RELAY_LOG_FORMAT": "json",
    }


async def test_relay_rekey_killed_mid_run_then_rerun(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    await _store(pool, settings, n_accounts=400, n_subs=2)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        "rekey",
        "--batch-size",
        "1",
        env=_env(settings),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    # The first progress line is printed after the first batch committed: kill it there.
    first = await asyncio.wait_for(process.stderr.readline(), 30)
    process.kill()
    await process.wait()
    assert first.startswith(b"rekey: accounts 1/400 looked at, 1 rekeyed"), first
    assert process.returncode == -9

    rerun = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        "rekey",
        env=_env(settings),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(rerun.communicate(), 60)
    assert rerun.returncode == 0, err
    text = out.decode()
    found = re.search(r"accounts: (\d+) rekeyed, (\d+) already under the newest key, 0 ", text)
    assert found, text
    rekeyed, current = int(found[1]), int(found[2])
    assert rekeyed + current == 400
    assert current >= 1  # the killed run's finished batches stay finished
    assert "subscriptions: 2 rekeyed, 0 already under the newest key, 0 unreadable" in text
    assert "the older keys can be removed" in text
    assert b"rekey: subscriptions 2/2 looked at, 2 rekeyed" in err
    assert await _readable_with(pool, Vault((NEW,))) == (400, 2)
