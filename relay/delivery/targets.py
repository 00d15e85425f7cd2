"""Webhook target URLs: validation and the SSRF guard, at creation and after DNS at every attempt.

Two layers, because either alone leaks:
- `validate_target_url` rejects, when a subscription is created or updated, any URL whose host
  is an internal address in any spelling (`127.1`, `2130706433`, `0x7f.1`, `[::ffff:127.0.0.1]`,
  `localhost`, `metadata.google.internal` ...).
- `GuardedResolver` filters what DNS returns on every connection, so a public name that resolves
  (or re-binds) to an internal address is refused at send time. aiohttp skips the resolver for
  literal IPs, so `check_target_host` is also called before every attempt.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from relay.errors import InvalidInput

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Names that always mean "this machine" or "the cloud's metadata service".
_INTERNAL_NAMES = frozenset(
    {
        "localhost",
        "localhost.localdomain",
        "ip6-localhost",
        "ip6-loopback",
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
    }
)
_INTERNAL_SUFFIXES = (".localhost", ".internal", ".local")
# Metadata services on public-looking addresses (Alibaba, AWS IPv6, Oracle).
_METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("100.100.100.200", "fd00:ec2::254", "192.0.0.192")
)
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
MAX_URL_LENGTH = 2048


class TargetRefused(OSError):
    """A target host is (or resolves to) an internal address; raised inside the connector."""

    def __init__(self, host: str, reason: str) -> None:
        self.host = host
        self.reason = reason
        super().__init__(f"target refused: {host} {reason}")


def is_internal_address(ip: IPAddress) -> bool:
    """True for loopback, private, link-local, multicast, unspecified, reserved or metadata."""
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour
        if mapped is not None and is_internal_address(mapped):
            return True
        if ip.teredo is not None and any(is_internal_address(a) for a in ip.teredo):
            return True
    return (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_unspecified
        or ip.is_reserved
        or not ip.is_global
        or ip in _METADATA_ADDRESSES
        or (isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT)
    )


def _parse_ipv4_part(part: str) -> int | None:
    """One dotted part the way inet_aton reads it: 0x hex, leading-zero octal, else decimal."""
    text = part.lower()
    try:
        if text.startswith("0x"):
            return int(text[2:] or "0", 16)
        if len(text) > 1 and text.startswith("0"):
            return int(text[1:], 8)
        if text.isdigit():
            return int(text, 10)
    except ValueError:
        return None
    return None


def parse_ipv4_loosely(host: str) -> ipaddress.IPv4Address | None:
    """The address a legacy resolver would make of `host` (`127.1`, `0177.0.0.1`, `2130706433`).

    None when `host` is not a numeric IPv4 form at all (then it is a name).
    """
    parts = host.split(".")
    if parts and parts[-1] == "":
        parts.pop()  # a trailing dot is still the same address
    if not 1 <= len(parts) <= 4:
        return None
    values = [_parse_ipv4_part(p) for p in parts]
    if any(v is None for v in values):
        return None
    nums = [v for v in values if v is not None]
    *head, last = nums
    if any(v > 255 for v in head) or last >= 256 ** (4 - len(head)):
        return None
    value = 0
    for v in head:
        value = value * 256 + v
    value = value * 256 ** (4 - len(head)) + last
    return ipaddress.IPv4Address(value)


def literal_address(host: str) -> IPAddress | None:
    """The IP address `host` spells, in any notation, or None when it is a name."""
    bare = host.strip("[]")
    try:
        return ipaddress.ip_address(bare.split("%", 1)[0])
    except ValueError:
        pass
    return parse_ipv4_loosely(bare)


def check_target_host(host: str) -> None:
    """Raise TargetRefused when `host` names or spells an internal address (no DNS lookup)."""
    name = host.strip("[]").rstrip(".").lower()
    if not name:
        raise TargetRefused(host, "is empty")
    if name in _INTERNAL_NAMES or name.endswith(_INTERNAL_SUFFIXES):
        raise TargetRefused(host, "is an internal host name")
    ip = literal_address(name)
    if ip is not None and is_internal_address(ip):
        raise TargetRefused(host, f"is an internal address ({ip})")


def validate_target_url(url: object, *, allow_private: bool) -> str:
    """The URL, checked for a subscription: http(s), a host, and (unless allowed) not internal.

    Raises InvalidInput(field="url") saying what is wrong.
    """
    if not isinstance(url, str) or not url.strip():
        raise InvalidInput("url must be a non-empty string", "url")
    url = url.strip()
    if len(url) > MAX_URL_LENGTH:
        raise InvalidInput(f"url must be at most {MAX_URL_LENGTH} characters", "url")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidInput(f"url is not a valid URL: {exc}", "url") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidInput("url must start with http:// or https://", "url")
    host = parts.hostname
    if not host:
        raise InvalidInput("url must include a host name", "url")
    if any(c.isspace() for c in url):
        raise InvalidInput("url must not contain whitespace", "url")
    if port == 0:
        raise InvalidInput("url must not use port 0", "url")
    if not allow_private:
        try:
            check_target_host(host)
        except TargetRefused as exc:
            raise InvalidInput(
                f"url host {exc.host} {exc.reason}; webhooks to loopback, private, link-local "
                "or metadata addresses are refused unless RELAY_ALLOW_PRIVATE_TARGETS is set",
                "url",
            ) from None
    return url


class GuardedResolver(AbstractResolver):
    """Resolves like aiohttp's default, then drops internal addresses; none left is refused.

    Used for every delivery connection unless private targets are allowed, so a name that
    resolves (or re-binds) to an internal address can never be reached.
    """

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        check_target_host(host)
        results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if not _is_internal_result(r)]
        if not allowed:
            shown = ", ".join(sorted({str(r["host"]) for r in results}))
            raise TargetRefused(host, f"resolves only to internal addresses ({shown})")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


def _is_internal_result(result: dict[str, Any] | ResolveResult) -> bool:
    try:
        ip = ipaddress.ip_address(str(result["host"]).split("%", 1)[0])
    except ValueError:
        return True  # what cannot be read cannot be trusted
    return is_internal_address(ip)
