"""The sandbox's aiohttp application for `--provider dext|invoicext`, and `relay sandbox`
serving it until Ctrl-C: the shared core around the provider's subfolder."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Final

import structlog
from aiohttp import web

from relay.sandbox.control import Upstream
from relay.sandbox.dext import app as dext
from relay.sandbox.dext.state import SANDBOX, Sandbox
from relay.sandbox.invoicext import api as invoicext
from relay.sandbox.options import SandboxOptions

log = structlog.get_logger("relay.sandbox")
# How often the background task brings the simulation up to the clock, in real seconds, so the
# change log fills in real time even when nobody is asking.
TICK_INTERVAL = 0.5


@dataclass(frozen=True)
class Provider:
    """One simulated upstream, as its subfolder offers it."""

    build: Callable[[SandboxOptions], web.Application]
    upstream: Callable[[web.Application], Upstream]
    announcement: Callable[[web.Application, SandboxOptions], dict[str, Any]]
    # The simulation is brought up to the clock in the background (else on every request).
    ticks: bool


PROVIDERS: Final = {
    "dext": Provider(dext.create_dext_app, dext.upstream, dext.announcement, ticks=True),
    "invoicext": Provider(
        invoicext.create_app, invoicext.upstream, invoicext.announcement, ticks=False
    ),
}


def _ticking(upstream: Upstream) -> Callable[[web.Application], AsyncIterator[None]]:
    async def drive() -> None:
        while True:
            await asyncio.sleep(TICK_INTERVAL)
            upstream.sync()

    async def background(_app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(drive())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return background


def create_sandbox_app(options: SandboxOptions) -> web.Application:
    """A sandbox app (raises ConfigError on bad options); its state is `app[SANDBOX]` for Dext,
    `app[IXT]` for InvoiceXT (`relay.sandbox.invoicext.api`)."""
    options.validate()
    provider = PROVIDERS[options.provider]
    app = provider.build(options)
    if provider.ticks and options.speed > 0:
        app.cleanup_ctx.append(_ticking(provider.upstream(app)))
    return app


def run_sandbox(options: SandboxOptions) -> None:
    """Serve until Ctrl-C; logs one line with the URL and the default api token."""
    app = create_sandbox_app(options)
    fields = PROVIDERS[options.provider].announcement(app, options)

    async def announce(_app: web.Application) -> None:
        # The sandbox's tokens are fake and printed on purpose: they are how you connect to it.
        log.info("sandbox_started", **fields)

    app.on_startup.append(announce)
    web.run_app(app, host=options.host, port=options.port, print=None, access_log=None)


__all__ = ["PROVIDERS", "SANDBOX", "Sandbox", "SandboxOptions", "create_sandbox_app", "run_sandbox"]
