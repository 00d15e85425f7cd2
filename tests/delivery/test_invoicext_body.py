"""InvoiceXT events go out in seed 004's payload, signed like any other, money spelled exactly."""

from __future__ import annotations

import asyncpg
import orjson
from standardwebhooks.webhooks import Webhook

from relay import exactjson
from relay.events import build_event, get_event, insert_events
from relay.settings import Settings
from relay.vault import Vault
from tests.support.delivery import DispatcherFactory, Endpoint, all_settled, subscribe, wait_until
from tests.support.stores import make_account

INVOICE = exactjson.loads(
    b'{"id": "inv_8xKp2mNq", "status": "processed", "invoice_number": "INV-2026-0042",'
    b' "supplier": {"name": "Acme Supplies Ltd", "address": null, "tax_id": null},'
    b' "currency": "GBP", "totals": {"subtotal": 1110.00, "tax_rate": 0.20,'
    b' "tax_amount": 222.00, "total": 1332.00}, "line_items": [{"amount": 0.10}],'
    b' "created_at": "2026-04-14T12:00:00Z", "publications": [], "x_new_field": 1}'
)


async def test_the_seed_payload_is_sent_with_standard_webhooks_headers(
    pool: asyncpg.Pool,
    vault: Vault,
    dsettings: Settings,
    endpoint: Endpoint,
    start_dispatcher: DispatcherFactory,
) -> None:
    account_id = await make_account(
        pool, provider="invoicext", name="ixt", base_url="http://127.0.0.1:1/api/v1",
        baselined=False,
    )  # fmt: skip
    _, secret = await subscribe(pool, vault, dsettings, endpoint.url("/ok"))
    await start_dispatcher()
    body = build_event(
        "invoice.processed",
        account_id=account_id,
        client_id=None,
        object_id=INVOICE["id"],
        object=INVOICE,
    )
    async with pool.acquire() as conn, conn.transaction():
        await insert_events(conn, [body])
    await wait_until(lambda: all_settled(pool, 1), what="delivery")
    [hit] = endpoint.to("/ok")
    sent = orjson.loads(hit.body)
    assert sent == {
        "event": "invoice.processed",
        "timestamp": body["created_at"],
        "data": {
            "id": "inv_8xKp2mNq",
            "status": "processed",
            "invoice_number": "INV-2026-0042",
            "supplier": "Acme Supplies Ltd",
            "total": 1332.0,
            "currency": "GBP",
        },
        "webhook_id": body["id"],
        "account_id": account_id,
    }
    assert b'"total":1332.00' in hit.body  # the upstream's spelling, not 1332.0
    assert hit.headers["webhook-id"] == sent["webhook_id"]
    assert Webhook(secret).verify(hit.body, hit.headers) == sent
    # The relay's own envelope stays what GET /v1/events lists; jsonb kept the exact numbers.
    stored = await get_event(pool, body["id"])
    assert stored["object_type"] == "invoice"
    assert stored["client_id"] is None
    assert stored["data"]["object"]["totals"]["tax_rate"] == 0.2
    text = await pool.fetchval("SELECT body::text FROM events WHERE id = $1", body["id"])
    assert '"amount": 0.10' in text
    assert '"total": 1332.00' in text
