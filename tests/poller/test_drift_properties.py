"""Property: whatever drift the contract allows, over many polls, Relay reports exactly the
changes the sandbox's ground-truth log holds: no false event, none missed, no false delete,
and the account keeps polling.

Hypothesis draws the drift (which switches, how often, the sandbox's seed) and the practice's
history (how long and how busy each stretch between polls is); each example is a fresh
sandbox and account against the real Postgres, derandomized so a run is repeatable.
"""

from __future__ import annotations

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.poller import Poller
from relay.sandbox.dext.drift import DRIFT_KINDS
from relay.sources import accounts
from relay.vault import Vault
from tests.support.polling import check_round, events_after, last_seq, same_meaning, settle
from tests.support.sandbox import SandboxFactory

_DRIFTS = st.frozensets(st.sampled_from(DRIFT_KINDS), min_size=1)
# (simulated seconds, change rate) of each stretch between two polls.
_HISTORY = st.lists(
    st.tuples(st.sampled_from((600, 3600, 7200)), st.sampled_from((2.0, 8.0))),
    min_size=1,
    max_size=2,
)


@settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    kinds=_DRIFTS,
    rate=st.sampled_from((0.1, 0.3, 0.6)),
    seed=st.integers(1, 10_000),
    history=_HISTORY,
)
async def test_no_false_or_missed_event_whatever_the_drift(
    pool: asyncpg.Pool,
    poller: Poller,
    vault: Vault,
    sandbox_factory: SandboxFactory,
    kinds: frozenset[str],
    rate: float,
    seed: int,
    history: list[tuple[int, float]],
) -> None:
    handle = await sandbox_factory(seed=seed, clients=2, items=30, drift=kinds, drift_rate=rate)
    account = await accounts.create_account(
        pool, vault, provider="dext", name="prop", base_url=handle.url, api_token=handle.token
    )
    await settle(poller, account.id)
    polled = await accounts.get_account(pool, account.id)
    assert polled.status == "active", polled.last_error  # the baseline finished under drift
    for seconds, change_rate in history:
        seq, since = await last_seq(pool), int((await handle.state())["change_seq"])
        await handle.simulate(paused=False, change_rate=change_rate)
        await handle.advance(seconds)
        await handle.simulate(paused=True)
        await settle(poller, account.id)
        if "unusable" in kinds:
            # A scan that set an object aside deletes nothing; the next clean one does.
            await handle.drift(sorted(kinds - {"unusable"}))
            await settle(poller, account.id)
            await handle.drift(sorted(kinds))
        check_round(await handle.changes(since), await events_after(pool, seq), same_meaning)
        after = await accounts.get_account(pool, account.id)
        assert after.last_error is None
        assert after.last_poll_at is not None
        assert polled.last_poll_at is not None
        assert after.last_poll_at >= polled.last_poll_at
        polled = after
