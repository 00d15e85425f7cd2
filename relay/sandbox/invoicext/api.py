"""The InvoiceXT sandbox's contract side: `/api/v1` as `invoicext-api.md` describes it, served
behind its edge (`relay.sandbox.invoicext.edge`), with the shared control surface beside it."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from relay.sandbox.control import control_errors
from relay.sandbox.invoicext.account import InvoicextSandbox
from relay.sandbox.invoicext.control import IxtControl
from relay.sandbox.invoicext.edge import edge
from relay.sandbox.invoicext.envelope import IXT, PREFIX, error, ok
from relay.sandbox.options import SandboxOptions


def _paging(request: web.Request) -> tuple[int, int] | web.Response:
    try:
        page = int(request.query.get("page", "1"))
        limit = int(request.query.get("limit", "20"))
    except ValueError:
        return error(400, "validation_error", "page and limit must be integers")
    if page < 1 or not 1 <= limit <= 100:
        return error(400, "validation_error", "page >= 1 and limit from 1 to 100")
    return page, limit


async def list_invoices(request: web.Request) -> web.Response:
    box = request.app[IXT]
    paging = _paging(request)
    if isinstance(paging, web.Response):
        return paging
    items = list(box.invoices.values())
    if (supplier := request.query.get("supplier")) is not None:
        items = [i for i in items if i["supplier"]["name"] == supplier]
    if (currency := request.query.get("currency")) is not None:
        items = [i for i in items if i["currency"] == currency]
    shown, pagination = box.listing(items, *paging)
    return ok({"invoices": shown, "pagination": pagination})


async def get_invoice(request: web.Request) -> web.Response:
    box = request.app[IXT]
    invoice = box.invoices.get(request.match_info["id"])
    if invoice is None:
        return error(404, "resource_not_found", "Invoice not found")
    return ok(box.shown(invoice))


async def list_reconciliations(request: web.Request) -> web.Response:
    box = request.app[IXT]
    paging = _paging(request)
    if isinstance(paging, web.Response):
        return paging
    shown, pagination = box.listing(list(box.reconciliations.values()), *paging)
    return ok({"reconciliations": shown, "pagination": pagination})


async def integrations(request: web.Request) -> web.Response:
    box = request.app[IXT]
    return ok({name: box.shown(ledger) for name, ledger in box.ledgers.items()})


async def usage(request: web.Request) -> web.Response:
    box = request.app[IXT]
    return ok(box.usage(), box.clock.now())


def create_invoicext_app(box: InvoicextSandbox) -> web.Application:
    """The InvoiceXT sandbox app; its state is `app[IXT]`."""
    app = web.Application(middlewares=[control_errors, edge])
    app[IXT] = box
    app.router.add_get(f"{PREFIX}/ping", integrations)  # answered by the edge
    app.router.add_get(f"{PREFIX}/invoices", list_invoices)
    app.router.add_get(f"{PREFIX}/invoices/{{id}}", get_invoice)
    app.router.add_get(f"{PREFIX}/bank/reconciliations", list_reconciliations)
    app.router.add_get(f"{PREFIX}/integrations/status", integrations)
    app.router.add_get(f"{PREFIX}/usage/stats", usage)
    IxtControl(box).add_routes(app)
    return app


def create_app(options: SandboxOptions) -> web.Application:
    """The InvoiceXT sandbox these options describe (`--items` invoices)."""
    return create_invoicext_app(
        InvoicextSandbox(
            seed=options.seed,
            items=options.items,
            plan=options.plan,
            rate_limit=options.rate_limit if options.rate_limit_set else None,
            monthly_limit=options.monthly_limit,
            speed=options.speed,
            window_seconds=options.window_seconds,
            start=options.start,
            simulate=options.simulate,
            change_rate=options.change_rate,
            api_token=options.api_token,
        )
    )


def upstream(app: web.Application) -> InvoicextSandbox:
    return app[IXT]


def announcement(app: web.Application, options: SandboxOptions) -> dict[str, Any]:
    """The fields of `sandbox_started` (the keys are fake: they are how you connect)."""
    box = app[IXT]
    return {
        "provider": "invoicext",
        "url": f"http://{options.host}:{options.port}{PREFIX}",
        "sandbox_api_token": box.token.value,
        "plan": box.plan,
        "rate_limit_per_hour": box.limit,
        "monthly_limit": box.monthly_limit,
        "speed": options.speed,
    }


__all__ = ["IXT", "announcement", "create_app", "create_invoicext_app", "upstream"]
