"""API tokens, sessions, the per-token fixed-window rate limit, and the log of requests served.

The window and the log are the shared ones (`relay.sandbox.ratelimit`, `relay.sandbox.records`);
what is Dext's here is who is counted (a token, also through its sessions) and the summary.
"""

from __future__ import annotations

import secrets
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from relay.sandbox.ratelimit import Quota, Usage, Window
from relay.sandbox.records import RequestLog


@dataclass
class Token:
    token_id: str
    api_token: str = field(repr=False)
    rate_limit: int
    revoked: bool = False
    usage: Usage = field(default_factory=Usage)
    # 429s answered so far; Retry-After is sent on every other one (the contract's "sometimes").
    rejections: int = 0


@dataclass
class Session:
    token: Token
    expires_at: float  # real unix seconds


class Access:
    """Tokens and their sessions; counts every request of a known token in fixed real windows."""

    def __init__(self, *, window_seconds: float, session_ttl: float) -> None:
        self.window_seconds = window_seconds
        self.limiter = Window(window_seconds)
        self.session_ttl = session_ttl
        self.tokens: dict[str, Token] = {}
        self.sessions: dict[str, Session] = {}
        self.log = RequestLog(numbered=True)

    @property
    def requests(self) -> list[dict[str, Any]]:
        return self.log.entries

    def add_token(self, api_token: str | None, rate_limit: int) -> Token:
        value = api_token or f"sandbox-token-{secrets.token_hex(8)}"
        if value in self.tokens:
            raise ValueError("a token with that value already exists")
        token = Token(f"tok_{len(self.tokens) + 1}", value, rate_limit)
        self.tokens[value] = token
        return token

    def by_id(self, token_id: str) -> Token | None:
        return next((t for t in self.tokens.values() if t.token_id == token_id), None)

    def open_session(self, token: Token) -> tuple[str, Session]:
        value = f"sess_{secrets.token_urlsafe(24)}"
        session = Session(token, time.time() + self.session_ttl)
        self.sessions[value] = session
        return value, session

    def expire_sessions(self) -> int:
        for session in self.sessions.values():
            session.expires_at = 0.0
        return len(self.sessions)

    def window(self, now: float) -> tuple[int, float, int]:
        """(index, start, reset) of the fixed window holding real time `now`."""
        return self.limiter.bounds(now)

    def consume(self, token: Token, amount: int, now: float) -> None:
        """Use budget as another tool sharing the token would."""
        self.limiter.count(token.usage, token.rate_limit, now, amount)

    def count(self, token: Token, now: float) -> Quota:
        """Count one request (every request counts, even a rejected one)."""
        return self.limiter.count(token.usage, token.rate_limit, now)

    def record(self, entry: dict[str, Any]) -> None:
        self.log.record(entry)

    def summary(self) -> dict[str, Any]:
        """Per token: total requests, 429s, and requests per window (from the log)."""
        per_token: dict[str, dict[str, Any]] = {}
        windows: dict[str, dict[float, int]] = defaultdict(lambda: defaultdict(int))
        for entry in self.requests:
            token_id = entry["token_id"]
            if token_id is None:
                continue
            stats = per_token.setdefault(token_id, {"total": 0, "rate_limited": 0})
            stats["total"] += 1
            stats["rate_limited"] += entry["status"] == 429
            windows[token_id][entry["window_start"]] += 1
        for token_id, stats in per_token.items():
            counts = windows[token_id]
            stats["max_in_window"] = max(counts.values(), default=0)
            stats["windows"] = [{"start": s, "count": c} for s, c in sorted(counts.items())]
        return {"window_seconds": self.window_seconds, "tokens": per_token}
