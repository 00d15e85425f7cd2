"""structlog configuration, done once per process: JSON in production, console in a terminal.

Third-party libraries (arq, asyncpg, aiohttp, redis) log through the standard library; their
records are routed through the same processors and renderer, as `library_log` events carrying
`logger` and `message`, so every line a process writes is in the configured format.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
# Keys whose values must never reach a log line, whatever a caller passes.
_SECRET_KEYS = frozenset(
    {
        "token",
        "api_token",
        "session_token",
        "secret",
        "secrets",
        "password",
        "authorization",
        "admin_token",
        "secret_key",
        "mfa_code",
    }
)


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Replace the value of any secret-looking key, as a last line of defence."""
    for key in event_dict.keys() & _SECRET_KEYS:
        event_dict[key] = "***"
    return event_dict


# Tracebacks as data on one line, without each frame's locals: a local may hold a token.
_tracebacks = structlog.processors.ExceptionRenderer(
    structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
)
# Marks the stdlib handler installed here, so configuring again replaces it and nothing else
# (pytest's capture handlers on the root logger stay).
_HANDLER_NAME = "relay-structlog"


def library_event(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A record from a library becomes a fixed-name event: its text is data, not the name."""
    record = event_dict.get("_record")
    event_dict["message"] = event_dict.get("event")
    event_dict["event"] = "library_log"
    if record is not None:
        event_dict["logger"] = record.name
    return event_dict


def compact_library_errors(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A library's warning about a failure it retries (asyncpg restoring its pool during an
    outage) keeps the error's type and text, not a traceback through the library's insides.
    Errors and worse (arq's "job failed") keep their traceback: those are bugs to read."""
    exc_info = event_dict.get("exc_info")
    if exc_info and _LEVELS.get(event_dict.get("level", ""), logging.ERROR) < logging.ERROR:
        del event_dict["exc_info"]
        if isinstance(exc_info, tuple) and exc_info[1] is not None:
            error = exc_info[1]
            event_dict["error"] = f"{type(error).__name__}: {error}".splitlines()[0]
    return event_dict


class LibraryRepeats(logging.Filter):
    """Let one of a run of identical library warnings through per `window` seconds.

    During an outage asyncpg says "Failed to restore the pool connection floor; retrying"
    every second or so; one line per incident is enough, and the next shown line carries
    `repeated=N` for the ones held back. Errors always pass.
    """

    def __init__(self, window: float = 60.0) -> None:
        super().__init__()
        self.window = window
        self._seen: dict[tuple[str, str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        error = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else ""
        key = (record.name, str(record.msg), error)
        now = time.monotonic()
        shown, held = self._seen.get(key, (0.0, 0))
        if shown and now - shown < self.window:
            self._seen[key] = (shown, held + 1)
            return False
        if len(self._seen) > 1000:
            self._seen.clear()
        self._seen[key] = (now, 0)
        if held:
            record.repeated = held
        return True


class _StderrHandler(logging.Handler):
    """Writes each record to the `sys.stderr` of that moment (pytest and tools swap it), as
    structlog's own loggers are bound to the stream configured."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


def _json_text(value: Any, **_kw: Any) -> str:
    # The stdlib formatter must return str; structlog's own path writes orjson's bytes directly.
    return orjson.dumps(value, default=repr).decode()


def configure_logging(
    log_format: str | None = None, level: str = "info", *, cache: bool = True
) -> None:
    """Configure structlog for this process; `log_format` None picks console on a TTY."""
    if log_format is None:
        log_format = "console" if sys.stderr.isatty() else "json"
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        redact_secrets,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    logger_factory: Any
    foreign: list[Any]
    if log_format == "json":
        processors = [
            *shared,
            _tracebacks,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ]
        logger_factory = structlog.BytesLoggerFactory(file=sys.stderr.buffer)
        foreign = [
            _tracebacks,
            structlog.processors.JSONRenderer(serializer=_json_text),
        ]
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        processors = [*shared, renderer]
        logger_factory = structlog.PrintLoggerFactory(file=sys.stderr)
        foreign = [renderer]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=logger_factory,
        cache_logger_on_first_use=cache,
    )
    _route_stdlib(shared, foreign)


def _route_stdlib(shared: list[Any], renderers: list[Any]) -> None:
    """Send the standard library's records (arq, asyncpg, aiohttp) through our processors.

    Libraries stay at WARNING: their per-job and per-request INFO lines duplicate our own
    events. Ours log through structlog directly and never reach this handler.
    """
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_log_level,
            structlog.stdlib.ExtraAdder(allow=["repeated"]),
            library_event,
            compact_library_errors,
            *shared[2:],  # redaction and the timestamp (merge_contextvars, level done above)
        ],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderers],
    )
    handler = _StderrHandler()
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
    handler.addFilter(LibraryRepeats())
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
