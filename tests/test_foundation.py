"""Settings, migration and the CLI's behaviour when a store is missing."""

from __future__ import annotations

import os
import subprocess
import sys

import asyncpg
import pytest

from relay.db import create_pool, migrate, schema_is_current
from relay.errors import ConfigError, ServiceUnavailable
from relay.settings import DEFAULT_RETRY_SCHEDULE, Settings, redact_url
from relay.vault import Vault, generate_key


def test_settings_defaults_follow_the_contract() -> None:
    settings = Settings.from_env({})
    assert settings.database_url == "postgresql://postgres@127.0.0.1:5432/relay"
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.retry_schedule == DEFAULT_RETRY_SCHEDULE == (60, 300, 1800, 7200, 43200)
    assert settings.delivery_timeout == 10
    assert settings.allow_private_targets is False


def test_settings_parse_every_variable() -> None:
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://u:pw@db/x",
            "REDIS_URL": "redis://r:6379/3",
            "RELAY_ADMIN_TOKEN": "t",
            "RELAY_SECRET_KEY": "k1, k2",
            "RELAY_ALLOW_PRIVATE_TARGETS": "true",
            "RELAY_LOG_FORMAT": "json",
            "RELAY_RETRY_SCHEDULE": "1,2.5",
            "RELAY_DELIVERY_TIMEOUT": "3",
        }
    )
    assert settings.secret_keys == ("k1", "k2")
    assert settings.allow_private_targets is True
    assert settings.retry_schedule == (1.0, 2.5)
    assert settings.delivery_timeout == 3.0
    assert "k1" not in repr(settings)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RELAY_RETRY_SCHEDULE", "1,soon"),
        ("RELAY_DELIVERY_TIMEOUT", "-1"),
        ("RELAY_ALLOW_PRIVATE_TARGETS", "maybe"),
        ("RELAY_LOG_FORMAT", "xml"),
    ],
)
def test_bad_settings_are_one_clear_error(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def test_redact_url_hides_passwords() -> None:
    assert redact_url("postgresql://u:secret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_vault_round_trips_and_rotates() -> None:
    old, new = generate_key(), generate_key()
    sealed = Vault((old,)).encrypt("tok_123")
    assert "tok_123" not in sealed
    both = Vault((new, old))
    assert both.decrypt(sealed) == "tok_123"
    assert Vault((new,)).decrypt(both.rotate(sealed)) == "tok_123"
    with pytest.raises(ConfigError):
        Vault((new,)).decrypt(sealed)
    with pytest.raises(ConfigError, match="relay keygen"):
        Vault(())


async def test_migrate_creates_a_missing_database_and_is_idempotent(database_url: str) -> None:
    name = "relay_test_migrate_" + os.urandom(3).hex()
    url = database_url.rsplit("/", 1)[0] + "/" + name
    settings = Settings(database_url=url)
    try:
        first = await migrate(settings)
        second = await migrate(settings)
        assert first["database_created"] is True
        assert second["database_created"] is False
        pool = await create_pool(settings)
        try:
            assert await schema_is_current(pool)
            assert await pool.fetchval("SELECT relay_id('evt') LIKE 'evt\\_%'")
        finally:
            await pool.close()
    finally:
        conn = await asyncpg.connect(database_url.rsplit("/", 1)[0] + "/postgres")
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


async def test_unreachable_postgres_names_the_url() -> None:
    settings = Settings(database_url="postgresql://postgres:pw@127.0.0.1:1/relay")
    with pytest.raises(ServiceUnavailable) as info:
        await create_pool(settings)
    assert "127.0.0.1:1" in str(info.value)
    assert "pw" not in str(info.value)


def _relay(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_unreachable_postgres_is_one_line_not_a_traceback() -> None:
    result = _relay("migrate", env={"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/relay"})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "cannot reach Postgres at postgresql://postgres@127.0.0.1:1/relay" in lines[0]
    assert "docker compose up -d postgres redis" in lines[0]


def test_cli_bad_setting_is_one_line() -> None:
    result = _relay("migrate", env={"RELAY_RETRY_SCHEDULE": "soon"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "relay: RELAY_RETRY_SCHEDULE must be comma-separated seconds, like 60,300,1800; got 'soon'"
    ]


def test_cli_keygen_prints_a_usable_key() -> None:
    result = _relay("keygen", env={})
    assert result.returncode == 0
    key = result.stdout.strip()
    assert Vault((key,)).decrypt(Vault((key,)).encrypt("x")) == "x"


def test_cli_migrate_against_a_live_server(database_url: str) -> None:
    result = _relay("migrate", env={"DATABASE_URL": database_url, "RELAY_LOG_FORMAT": "json"})
    assert result.returncode == 0, result.stderr
    assert "applied schema.sql" in result.stdout
    assert (
        '"event": "schema_applied"' in result.stderr or '"event":"schema_applied"' in result.stderr
    )
