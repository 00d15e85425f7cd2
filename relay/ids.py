"""Public ids: prefix, 12 hex digits of milliseconds, 16 random hex digits (like SQL `relay_id`)."""

from __future__ import annotations

import secrets
import time


def new_id(prefix: str) -> str:
    return f"{prefix}_{int(time.time() * 1000):012x}{secrets.token_hex(8)}"
