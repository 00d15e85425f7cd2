"""Library loggers (arq, asyncpg, aiohttp) come out as our structlog events, in our format."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson

from relay.logs import configure_logging


@contextlib.contextmanager
def json_logs(path: Path) -> Iterator[None]:
    """JSON logging into a file standing in for stderr; afterwards the stderr of before and
    the console format of tests/conftest.py again. structlog binds the stream it is
    configured with, so the old one must be back before configuring again (capsys would
    close its stream under every later test's logger). Used inside the test body: pytest
    swaps sys.stderr between a fixture's setup and the test's call."""
    original = sys.stderr
    with path.open("w", encoding="utf-8") as stream:
        sys.stderr = stream
        try:
            configure_logging("json", "info", cache=False)
            yield
        finally:
            stream.flush()
            sys.stderr = original
            configure_logging("console", "warning", cache=False)


def _lines(text: str) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


def _refused() -> ConnectionRefusedError:
    try:
        raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 1)")
    except ConnectionRefusedError as exc:
        return exc


def test_a_library_retry_warning_is_one_compact_json_line(tmp_path: Path) -> None:
    path = tmp_path / "stderr.log"
    with json_logs(path):
        pool_log = logging.getLogger("asyncpg.pool")
        for _ in range(5):  # asyncpg retrying its pool floor during an outage
            pool_log.warning(
                "Failed to restore the pool connection floor; retrying", exc_info=_refused()
            )
        logging.getLogger("arq.worker").info("job started")  # below WARNING: our events say it
    lines = _lines(path.read_text(encoding="utf-8"))
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


def test_a_library_error_keeps_its_traceback_without_locals(tmp_path: Path) -> None:
    path = tmp_path / "stderr.log"
    api_token = "tok_secret_value"  # a local a traceback must not carry
    with json_logs(path):
        try:
            raise RuntimeError(f"job failed ({len(api_token)})")
        except RuntimeError:
            logging.getLogger("arq.worker").exception("job %s failed", "poll_account")
    [line] = _lines(path.read_text(encoding="utf-8"))
    assert line["event"] == "library_log"
    assert line["message"] == "job poll_account failed"
    assert line["level"] == "error"
    [exception] = line["exception"]  # type: ignore[misc]
    assert exception["exc_type"] == "RuntimeError"
    assert "tok_secret_value" not in orjson.dumps(line).decode()
