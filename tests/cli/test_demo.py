"""`relay demo`: a newcomer sees verified webhooks arrive, and every child stops afterwards."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import asyncpg

from relay.settings import Settings


async def test_demo_shows_verified_webhooks_then_stops(
    settings: Settings, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "RELAY_QUEUE_NAME": settings.queue_name,
    }
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "relay", "demo", "--minutes", "0.5"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Relay demo is running." in result.stdout
    assert re.search(r"console   http://127.0.0.1:\d+/ui/", result.stdout), result.stdout
    # The receiver prints one line per webhook whose signature it verified.
    received = re.findall(
        r"^\S+Z\s+(document\.\w+|client\.\w+|supplier\.\w+|expense_report\.\w+"
        r"|connection\.\w+)\s+(evt_\w+)",
        result.stdout,
        re.MULTILINE,
    )
    assert received, result.stdout
    assert all(event_id.startswith("evt_") for _, event_id in received)
    stored = await pool.fetchval(
        "SELECT count(*) FROM events WHERE id = ANY($1::text[])",
        [event_id for _, event_id in received],
    )
    assert stored == len({event_id for _, event_id in received})
    assert (tmp_path / ".relay-demo" / "worker.log").exists()
    # InvoiceXT beside Dext: its account is polled and its events arrive in the seed's payload.
    polled = await pool.fetchval(
        "SELECT count(*) FROM accounts WHERE provider = 'invoicext'"
        " AND baseline_completed_at IS NOT NULL AND last_poll_at IS NOT NULL"
    )
    assert polled == 1, result.stdout
    invoicext = re.findall(
        r"^\S+Z\s+(invoice\.\w+|bank\.\w+)\s+(evt_\w+)\s+account=acc_", result.stdout, re.MULTILINE
    )
    assert invoicext, result.stdout
