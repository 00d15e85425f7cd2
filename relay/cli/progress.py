"""Progress of long operator commands (`relay rekey`, bulk retries) on stderr.

On a terminal one line is rewritten in place; in a log or a pipe a line is printed at most once
a second (plus the last one), so a run over a million rows neither floods a CI log nor goes
silent for minutes.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressLine:
    """Reports `what: done/total` as work advances; `finish()` ends the line."""

    def __init__(self, stream: TextIO | None = None, *, every: float = 1.0) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._tty = self._stream.isatty()
        self._every = every
        self._last = 0.0
        self._pending = ""

    def update(self, text: str, *, force: bool = False) -> None:
        now = time.monotonic()
        self._pending = text
        if self._tty:
            self._stream.write("\r\x1b[K" + text)
            self._stream.flush()
        elif force or now - self._last >= self._every:
            self._stream.write(text + "\n")
            self._stream.flush()
            self._last = now
            self._pending = ""

    def finish(self) -> None:
        if self._tty:
            self._stream.write("\n")
        elif self._pending:
            self._stream.write(self._pending + "\n")
        self._stream.flush()
        self._pending = ""
