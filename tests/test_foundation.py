"""Settings, migration and the CLI's behaviour when a store is missing."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from relay.db import create_pool, migrate, schema_is_current
from relay.errors import ConfigError, InvalidInput, ServiceUnavailable
from relay.http import parse_retry_after
from relay.paging import MAX_LIMIT, check_limit, decode_cursor, encode_cursor
from relay.settings import DEFAULT_RETRY_SCHEDULE, Settings, redact_url
from relay.vault import Vault, generate_key
from tests.support.stores import drop_database


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
        await drop_database(name)


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


# ---- the shared helpers: one limit check, one cursor codec, one Retry-After parser ----------


@pytest.mark.parametrize("limit", [0, 201, -1, True, "5", 2.0, None])
def test_check_limit_refuses_what_is_not_a_page_size(limit: object) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_limit(limit)
    assert caught.value.field == "limit"


def test_check_limit_passes_a_page_size_through() -> None:
    assert [check_limit(n) for n in (1, 50, MAX_LIMIT)] == [1, 50, 200]


def test_cursor_round_trips_its_key() -> None:
    cursor = encode_cursor("2026-04-14T12:00:00+00:00", "acc_1")
    assert "=" not in cursor
    assert cursor.isascii()
    assert decode_cursor(cursor, str, str) == ("2026-04-14T12:00:00+00:00", "acc_1")
    assert decode_cursor(encode_cursor(7), int) == (7,)
    assert encode_cursor(1) != encode_cursor(2)


@pytest.mark.parametrize(
    ("cursor", "types"),
    [
        ("", (int,)),
        ("!!!", (int,)),
        ("c3ViX2Zvbw", (str,)),  # base64 of a bare id, not a key
        (encode_cursor("7"), (int,)),  # wrong type
        (encode_cursor(True), (int,)),  # a bool is not a number here
        (encode_cursor(1, 2), (int,)),  # wrong length
        (encode_cursor("a"), (str, str)),
        ("w6k", (str,)),  # decodes to bytes that are not JSON
        ("é", (str,)),  # not base64 at all
    ],
)
def test_a_cursor_this_api_did_not_issue_is_invalid_input(
    cursor: str, types: tuple[type[str] | type[int], ...]
) -> None:
    with pytest.raises(InvalidInput) as caught:
        decode_cursor(cursor, *types)
    assert caught.value.field == "cursor"


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("", None),
        ("  ", None),
        ("7", 7.0),
        (" 30 ", 30.0),
        ("1.5", 1.5),
        ("-3", 0.0),
        ("nan", None),
        ("inf", None),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:10 GMT", 10.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # a date already past: now
    ],
)
def test_retry_after_reads_seconds_or_an_http_date(
    header: str | None, seconds: float | None
) -> None:
    now = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC).timestamp()
    assert parse_retry_after(header, now=now) == (
        None if seconds is None else pytest.approx(seconds)
    )
