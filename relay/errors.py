"""Relay's exceptions: few classes, each carrying the data needed to act on it.

    RelayError
    ├── ConfigError            bad settings; the CLI prints it as one line
    ├── ServiceUnavailable     Postgres or Redis cannot be reached (.service, .url)
    ├── NotFound               an admin API resource does not exist (.kind, .id) -> 404
    ├── Conflict               the resource's state does not allow this now -> 409
    ├── InvalidInput           wrong admin input (.field) -> 400
    ├── SignatureError         a webhook's signature does not verify (the receiver's 401)
    ├── LeaseLost              another worker took the account mid-poll (.account_id); the
    │                          poller stops that pass without saving more
    ├── AdminApiError          the CLI's call to the admin API failed (.status, .code); the
    │                          CLI prints it as one line and exits 1
    └── UpstreamError          anything an upstream API did wrong (.url, .status)
        ├── UpstreamAuthError      the token is revoked or invalid (.code); the account is broken
        ├── UpstreamForbidden      access to one client was removed
        ├── UpstreamNotFound       the object does not exist (any more)
        ├── UpstreamRateLimited    429 after retries (.retry_after)
        ├── UpstreamUnavailable    5xx, timeouts, dropped connections after retries
        └── UpstreamProtocolError  malformed JSON, wrong types, missing fields (.detail)

Errors are raised `from` their cause so the original exception stays in the log. The admin
API's middleware (relay/api/middleware.py) maps NotFound, Conflict, InvalidInput and
ServiceUnavailable to their JSON error envelopes; nothing else becomes a 4xx.
"""

from __future__ import annotations


class RelayError(Exception):
    """Base of every error Relay raises on purpose."""


class ConfigError(RelayError):
    """A setting is missing or malformed."""


class ServiceUnavailable(RelayError):
    """Postgres or Redis could not be reached."""

    def __init__(self, service: str, url: str, reason: str) -> None:
        self.service = service
        self.url = url
        self.reason = reason
        super().__init__(
            f"cannot reach {service} at {url} ({reason}); "
            "start it, e.g. `docker compose up -d postgres redis`"
        )


class UpstreamError(RelayError):
    """An upstream API call failed; `status` is the HTTP status when there was a response."""

    def __init__(self, message: str, *, url: str, status: int | None = None) -> None:
        self.url = url
        self.status = status
        super().__init__(message)


class UpstreamAuthError(UpstreamError):
    """The upstream token is invalid or revoked: stop polling, mark the account broken."""

    def __init__(self, message: str, *, url: str, status: int | None = 401, code: str) -> None:
        self.code = code
        super().__init__(message, url=url, status=status)


class UpstreamForbidden(UpstreamError):
    """Access to one client was removed upstream."""


class UpstreamNotFound(UpstreamError):
    """The requested object does not exist upstream."""


class UpstreamRateLimited(UpstreamError):
    """Still rate limited after waiting; `retry_after` is seconds until the next window."""

    def __init__(self, message: str, *, url: str, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(message, url=url, status=429)


class UpstreamUnavailable(UpstreamError):
    """5xx, a timeout or a dropped connection persisted through every retry."""


class UpstreamProtocolError(UpstreamError):
    """The upstream answered with something that breaks its contract (bad JSON, wrong types)."""

    def __init__(
        self, message: str, *, url: str, status: int | None = None, detail: str = ""
    ) -> None:
        self.detail = detail
        super().__init__(message, url=url, status=status)


class NotFound(RelayError):
    """A resource asked for by id does not exist (or was deleted); the admin API answers 404."""

    def __init__(self, kind: str, id: str) -> None:
        self.kind = kind
        self.id = id
        super().__init__(f"no {kind} with id {id!r}")


class Conflict(RelayError):
    """The resource's current state does not allow this now (e.g. a delivery being sent); the
    admin API answers 409."""


class InvalidInput(RelayError):
    """Input from a caller breaks the contract (bad value, bad cursor); the admin API answers 400.

    `field` names the offending field or query parameter when there is one.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        self.field = field
        super().__init__(message)


class LeaseLost(RelayError):
    """Another worker took the account (our poll lease expired); stop without saving more."""

    def __init__(self, account_id: str) -> None:
        self.account_id = account_id
        super().__init__(f"the poll lease on account {account_id!r} was lost")


class AdminApiError(RelayError):
    """The admin API answered with an error envelope, or could not be reached (`relay` CLI)."""

    def __init__(self, message: str, *, status: int | None = None, code: str = "") -> None:
        self.status = status
        self.code = code
        super().__init__(message)


class SignatureError(RelayError):
    """A webhook's Standard Webhooks signature headers are missing, stale or do not verify."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)
