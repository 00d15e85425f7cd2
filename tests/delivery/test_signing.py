"""Signing: Standard Webhooks compatibility, a hand-computed HMAC, rotation, the receiver."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from relay.cli.receiver import RECEIVED, ReceiverOptions, create_receiver_app, describe
from relay.delivery.signing import generate_secret, secret_key, sign, verify, webhook_headers
from relay.delivery.subscriptions import signing_keys
from relay.errors import ConfigError, SignatureError
from relay.vault import Vault
from tests.support.delivery import event_body


def test_secret_format() -> None:
    secret = generate_secret()
    assert secret.startswith("whsec_")
    assert 24 <= len(base64.b64decode(secret.removeprefix("whsec_"))) <= 32
    assert generate_secret() != secret


def test_headers_verify_with_standardwebhooks_library() -> None:
    secret = generate_secret()
    body = orjson.dumps(event_body())
    headers = webhook_headers([secret_key(secret)], "evt_abc", body)
    payload = Webhook(secret).verify(body, headers)
    assert payload["type"] == "document.categorized"
    assert headers["content-type"] == "application/json"
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 5
    with pytest.raises(WebhookVerificationError):
        Webhook(generate_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body + b" ", headers)


def test_signature_matches_hand_computed_hmac() -> None:
    key = bytes(range(32))
    secret = "whsec_" + base64.b64encode(key).decode()
    body = b'{"id":"evt_1","type":"relay.ping"}'
    expected = base64.b64encode(
        hmac.new(key, b"evt_1.1700000000." + body, hashlib.sha256).digest()
    ).decode()
    assert sign([secret_key(secret)], "evt_1", 1700000000, body) == f"v1,{expected}"


def test_rotation_signs_with_both_secrets_until_overlap_ends(settings: object) -> None:
    vault = Vault(("e3hd8qiLFO9XGfrL7tkoLL1nYbL16Y7Q85w-2d5Tu_I=",))
    old, new = generate_secret(), generate_secret()
    now = datetime.now(UTC)
    expires = now + timedelta(hours=24)
    body = b'{"a":1}'
    during = signing_keys(vault, vault.encrypt(new), vault.encrypt(old), expires, now)
    headers = webhook_headers(during, "evt_r", body)
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(body, headers)
    Webhook(new).verify(body, headers)
    after = signing_keys(
        vault, vault.encrypt(new), vault.encrypt(old), expires, now + timedelta(hours=24, seconds=1)
    )
    headers = webhook_headers(after, "evt_r", body)
    Webhook(new).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(body, headers)


def test_verify_rejects_stale_missing_and_forged() -> None:
    secret = generate_secret()
    body = b"{}"
    stale = webhook_headers([secret_key(secret)], "evt_s", body, timestamp=int(time.time()) - 600)
    with pytest.raises(SignatureError, match="more than 300 s"):
        verify(secret, stale, body)
    with pytest.raises(SignatureError, match="missing"):
        verify(secret, {}, body)
    forged = webhook_headers([secret_key(generate_secret())], "evt_s", body)
    with pytest.raises(SignatureError, match="no signature"):
        verify(secret, forged, body)
    assert verify(secret, webhook_headers([secret_key(secret)], "evt_s", body), body) == "evt_s"


async def test_receiver_verifies_prints_fails_and_rejects(
    capsys: pytest.CaptureFixture[str],
) -> None:
    secret = generate_secret()
    app = create_receiver_app(ReceiverOptions(secret=secret, fail=1, status=503))
    async with TestClient(TestServer(app)) as client:
        event = event_body(previous={"category_code": "310"})
        body = orjson.dumps(event)
        headers = webhook_headers([secret_key(secret)], event["id"], body)
        first = await client.post("/webhooks", data=body, headers=headers)
        second = await client.post("/webhooks", data=body, headers=headers)
        forged = webhook_headers([secret_key(generate_secret())], event["id"], body)
        bad = await client.post("/webhooks", data=body, headers=forged)
        assert (first.status, second.status, bad.status) == (503, 200, 401)
    received = app[RECEIVED]
    assert [r.verified for r in received] == [True, True, False]
    assert received[1].event == event
    out = capsys.readouterr().out
    assert "document.categorized" in out
    assert event["id"] in out
    assert "category_code: 310 -> 400" in out
    assert "bad signature" in out


def test_receiver_refuses_a_malformed_secret() -> None:
    for secret in ("whsec_not*base64", "nope", ""):
        with pytest.raises(ConfigError):
            create_receiver_app(ReceiverOptions(secret=secret))


def test_describe_is_one_line() -> None:
    line = describe(event_body(client_id="cli_9", previous={"status": "review"}))
    assert "\n" not in line
    assert "client=cli_9" in line
    assert "status: review -> None" not in line  # shows `null`, not Python's None
