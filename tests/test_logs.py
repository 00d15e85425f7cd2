"""Library loggers (arq, asyncpg, aiohttp) come out as our structlog events, in our format."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import orjson
import pytest

from relay.logs import configure_logging


@pytest.fixture
def json_logs(capsys: pytest.CaptureFixture[str]) -> Iterator[None]:
    # After capsys: the handler writes to the sys.stderr of the moment it is configured.
    configure_logging("json", "info", cache=False)
    yield
    configure_logging("console", "warning", cache=False)  # as tests/conftest.py configures


def _lines(text: str) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


def _refused() -> ConnectionRefusedError:
    try:
        raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 1)")
    except ConnectionRefusedError as exc:
        return exc


def test_a_library_retry_warning_is_one_compact_json_line(
    json_logs: None, capsys: pytest.CaptureFixture[str]
) -> None:
    pool_log = logging.getLogger("asyncpg.pool")
    for _ in range(5):  # asyncpg retrying its pool floor during an outage
        pool_log.warning(
            "Failed to restore the pool connection floor; retrying", exc_info=_refused()
        )
    logging.getLogger("arq.worker").info("job started")  # below WARNING: our events say it
    lines = _lines(capsys.readouterr().err)
    assert lines == [
        {
            "event": "library_log",
            "level": "warning",
            "logger": "asyncpg.pool",
            "message": "Failed to restore the pool connection floor; retrying",
            "error": "ConnectionRefusedError: [Errno 111] Connect call failed ('127.0.0.1', 1)",
            "timestamp": lines[0]["timestamp"],
        }
    ]


def test_a_library_error_keeps_its_traceback_without_locals(
    json_logs: None, capsys: pytest.CaptureFixture[str]
) -> None:
    api_token = "tok_secret_value"  # a local a traceback must not carry
    try:
        raise RuntimeError(f"job failed ({len(api_token)})")
    except RuntimeError:
        logging.getLogger("arq.worker").exception("job %s failed", "poll_account")
    [line] = _lines(capsys.readouterr().err)
    assert line["event"] == "library_log"
    assert line["message"] == "job poll_account failed"
    assert line["level"] == "error"
    [exception] = line["exception"]  # type: ignore[misc]
    assert exception["exc_type"] == "RuntimeError"
    assert "tok_secret_value" not in orjson.dumps(line).decode()
