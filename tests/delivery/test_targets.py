"""The SSRF guard: internal targets refused in every spelling, at create and after DNS."""

from __future__ import annotations

import socket

import pytest

from relay.delivery.targets import (
    GuardedResolver,
    TargetRefused,
    parse_ipv4_loosely,
    validate_target_url,
)
from relay.errors import InvalidInput

REFUSED = [
    "http://127.0.0.1/hook",
    "http://127.1/",
    "http://2130706433/",
    "http://0177.0.0.1/",
    "http://0x7f.0.0.1/",
    "http://0x7f000001/",
    "http://017700000001/",
    "http://[::1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://0.0.0.0/",
    "http://0/",
    "http://[::]/",
    "http://169.254.169.254/latest/meta-data/",
    "http://[fd00:ec2::254]/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://localhost:8080/",
    "http://LOCALHOST./",
    "http://api.localhost/",
    "http://10.0.0.5/",
    "http://172.16.3.4/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",
    "http://224.0.0.1/",
    "http://[fe80::1]/",
    "http://[fc00::1]/",
    "https://user:pw@127.0.0.1:443/",
]
ALLOWED = [
    "https://hooks.example.com/relay",
    "http://93.184.216.34/",
    "https://hooks.slack.com/services/T000/B000/XXXX",
    "http://[2606:4700:4700::1111]/",
    "https://8.8.8.8:8443/x?y=1",
]


@pytest.mark.parametrize("url", REFUSED)
def test_internal_targets_are_refused_in_any_spelling(url: str) -> None:
    with pytest.raises(InvalidInput) as info:
        validate_target_url(url, allow_private=False)
    assert info.value.field == "url"
    assert "RELAY_ALLOW_PRIVATE_TARGETS" in str(info.value)


@pytest.mark.parametrize("url", ALLOWED)
def test_public_targets_pass(url: str) -> None:
    assert validate_target_url(url, allow_private=False) == url


@pytest.mark.parametrize("url", ["http://127.0.0.1:9000/x", "http://localhost/"])
def test_private_targets_pass_when_allowed(url: str) -> None:
    assert validate_target_url(url, allow_private=True) == url


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/",
        "file:///etc/passwd",
        "example.com",
        "http://",
        "",
        None,
        42,
        "http://exa mple.com/",
        "http://example.com:99999/",
        "javascript:alert(1)",
    ],
)
def test_malformed_urls_are_invalid_input(url: object) -> None:
    with pytest.raises(InvalidInput):
        validate_target_url(url, allow_private=True)


def test_loose_ipv4_parsing_matches_inet_aton() -> None:
    assert str(parse_ipv4_loosely("127.1")) == "127.0.0.1"
    assert str(parse_ipv4_loosely("10.1.258")) == "10.1.1.2"
    assert str(parse_ipv4_loosely("0xA9.0376.43518")) == "169.254.169.254"
    assert parse_ipv4_loosely("example.com") is None
    assert parse_ipv4_loosely("256.1.1.1") is None
    assert parse_ipv4_loosely("1.2.3.4.5") is None


async def test_resolver_refuses_names_that_resolve_to_loopback() -> None:
    resolver = GuardedResolver()
    try:
        with pytest.raises(TargetRefused):
            await resolver.resolve("localhost", 80)
        # This machine's own name is on no deny list; it is refused for what DNS answers.
        host = socket.gethostname()
        with pytest.raises(TargetRefused, match="resolves only to internal addresses"):
            await resolver.resolve(host, 80)
    finally:
        await resolver.close()
