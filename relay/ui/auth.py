"""The console's sessions, CSRF tokens, sign-in rate limit and security headers.

Sign-in takes the admin token once, in a POST body, and answers with a random session cookie
(`HttpOnly`, `SameSite=Strict`, `Secure` over TLS). Only the cookie's SHA-256 is stored
(`console_sessions`, owned here), with an absolute expiry, so a database read yields no usable
session and signing out deletes the row. Every state-changing request is a POST that must carry
the session's CSRF token in its form and, when the browser says where it came from (`Origin`,
`Sec-Fetch-Site`), come from this same site: a cross-site form post is refused before it does
anything. Wrong tokens count per client address in Redis; past the limit sign-in answers 429
for the rest of the window, even for the right token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import redis.asyncio as aioredis
import structlog
from aiohttp import web
from redis.exceptions import RedisError

log = structlog.get_logger("relay.ui")

COOKIE = "relay_session"
SESSION_TTL = timedelta(hours=12)
LOGIN_WINDOW = 900  # seconds over which wrong tokens are counted, per client address
LOGIN_MAX_FAILURES = 10
_FAILURES_KEY = "relay:ui:sign-in-failures:"

# No inline script or style anywhere: every script and stylesheet is a file served by Relay.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


@dataclass(frozen=True)
class Session:
    """A signed-in browser: the stored hash of its cookie and its CSRF token."""

    token_hash: str
    csrf: str


SESSION = web.RequestKey("console_session", Session)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode(errors="surrogateescape")).hexdigest()


def token_matches(given: str, expected: str | None) -> bool:
    """Constant-time comparison of a typed admin token with the configured one."""
    if not expected:
        return False
    return hmac.compare_digest(given.encode(errors="surrogateescape"), expected.encode())


async def create_session(pool: asyncpg.Pool) -> tuple[str, Session]:
    """A new session; returns the cookie value (never stored) and the session."""
    token = secrets.token_urlsafe(32)
    session = Session(token_hash=_hash(token), csrf=secrets.token_urlsafe(24))
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM console_sessions WHERE expires_at <= now()")
        await conn.execute(
            "INSERT INTO console_sessions (token_hash, csrf, expires_at) "
            "VALUES ($1, $2, now() + $3::interval)",
            session.token_hash,
            session.csrf,
            SESSION_TTL,
        )
    return token, session


async def find_session(pool: asyncpg.Pool, cookie: str | None) -> Session | None:
    """The live session of a cookie, or None (missing, unknown, expired or signed out)."""
    if not cookie or len(cookie) > 200:
        return None
    row = await pool.fetchrow(
        "SELECT token_hash, csrf FROM console_sessions WHERE token_hash = $1 "
        "AND expires_at > now()",
        _hash(cookie),
    )
    return None if row is None else Session(row["token_hash"], row["csrf"])


async def end_session(pool: asyncpg.Pool, session: Session) -> None:
    await pool.execute("DELETE FROM console_sessions WHERE token_hash = $1", session.token_hash)


def set_cookie(request: web.Request, response: web.StreamResponse, token: str) -> None:
    response.set_cookie(
        COOKIE,
        token,
        path="/ui",
        httponly=True,
        samesite="Strict",
        secure=request.secure,
        max_age=int(SESSION_TTL.total_seconds()),
    )


def clear_cookie(response: web.StreamResponse) -> None:
    response.del_cookie(COOKIE, path="/ui")


def same_site(request: web.Request) -> bool:
    """False when the browser says this request came from another site.

    Browsers send `Sec-Fetch-Site` on every request; where it is present it decides. Otherwise
    `Origin` must name this host. Under `Referrer-Policy: no-referrer` a browser may send
    `Origin: null` for our own forms, and curl sends neither: those are judged by the session's
    CSRF token alone.
    """
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None:
        return fetch_site in ("same-origin", "none")
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return True
    return urlsplit(origin).netloc == request.host


def csrf_ok(session: Session, form: Any) -> bool:
    given = form.get("csrf") if form is not None else None
    return isinstance(given, str) and hmac.compare_digest(given.encode(), session.csrf.encode())


async def sign_in_blocked(redis: aioredis.Redis, remote: str) -> bool:
    """Whether this address has used up its wrong tries (Redis down: not blocked, logged)."""
    try:
        count = await redis.get(_FAILURES_KEY + remote)
    except (RedisError, OSError) as exc:
        log.warning("console_rate_limit_unavailable", error=type(exc).__name__)
        return False
    return count is not None and int(count) >= LOGIN_MAX_FAILURES


async def count_failure(redis: aioredis.Redis, remote: str) -> None:
    key = _FAILURES_KEY + remote
    try:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, LOGIN_WINDOW, nx=True)
            await pipe.execute()
    except (RedisError, OSError) as exc:
        log.warning("console_rate_limit_unavailable", error=type(exc).__name__)
