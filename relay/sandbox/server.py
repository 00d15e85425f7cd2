"""The sandbox's aiohttp application, and `relay sandbox` serving it until Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from relay.sandbox.dext import contract, control
from relay.sandbox.dext.edge import edge
from relay.sandbox.dext.state import SANDBOX, Sandbox, SandboxOptions
from relay.sandbox.invoicext.account import InvoicextSandbox
from relay.sandbox.invoicext.api import IXT, create_invoicext_app

log = structlog.get_logger("relay.sandbox")
# How often the background task brings the simulation up to the clock, in real seconds, so the
# change log fills in real time even when nobody is asking.
TICK_INTERVAL = 0.5


async def _drive(sandbox: Sandbox) -> None:
    while True:
        await asyncio.sleep(TICK_INTERVAL)
        sandbox.sync()


async def _background(app: web.Application) -> AsyncIterator[None]:
    sandbox = app[SANDBOX]
    task = asyncio.create_task(_drive(sandbox)) if sandbox.options.speed > 0 else None
    yield
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def create_sandbox_app(options: SandboxOptions) -> web.Application:
    """A sandbox app; its state is `app[SANDBOX]` (raises ConfigError on bad options), or for
    `provider="invoicext"` `app[IXT]` (see `relay.sandbox.invoicext.account`)."""
    if options.provider == "invoicext":
        return create_invoicext_app(invoicext_sandbox(options))
    app = web.Application(middlewares=[control.control_errors, edge])
    app[SANDBOX] = Sandbox(options)
    contract.add_routes(app)
    control.add_routes(app)
    app.cleanup_ctx.append(_background)
    return app


def invoicext_sandbox(options: SandboxOptions) -> InvoicextSandbox:
    """The simulated InvoiceXT account these options describe (`--items` invoices)."""
    options.validate()
    return InvoicextSandbox(
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


def run_sandbox(options: SandboxOptions) -> None:
    """Serve until Ctrl-C; logs one line with the URL and the default api token."""
    app = create_sandbox_app(options)
    if options.provider == "invoicext":
        box = app[IXT]

        async def announce_ixt(_app: web.Application) -> None:
            # The sandbox's keys are fake and printed on purpose: they are how you connect.
            log.info(
                "sandbox_started",
                provider="invoicext",
                url=f"http://{options.host}:{options.port}/api/v1",
                sandbox_api_token=box.token.value,
                plan=box.plan,
                rate_limit_per_hour=box.limit,
                monthly_limit=box.monthly_limit,
                speed=options.speed,
            )

        app.on_startup.append(announce_ixt)
        web.run_app(app, host=options.host, port=options.port, print=None, access_log=None)
        return
    sandbox = app[SANDBOX]
    url = f"http://{options.host}:{options.port}"

    async def announce(_app: web.Application) -> None:
        # The sandbox's tokens are fake and printed on purpose: they are how you connect to it.
        log.info(
            "sandbox_started",
            url=url,
            sandbox_api_token=sandbox.token.api_token,
            seed=options.seed,
            clients=options.clients,
            speed=options.speed,
            window_seconds=sandbox.access.window_seconds,
        )

    app.on_startup.append(announce)
    web.run_app(app, host=options.host, port=options.port, print=None, access_log=None)


__all__ = ["SANDBOX", "Sandbox", "SandboxOptions", "create_sandbox_app", "run_sandbox"]
