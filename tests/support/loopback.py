"""Serving a test's aiohttp app on a free loopback port: the one way the suite starts a server
(sandboxes, webhook endpoints, receivers)."""

from __future__ import annotations

from typing import Any

from aiohttp import web


async def serve(app: web.Application, **runner_options: Any) -> tuple[web.AppRunner, str]:
    """Start `app` on 127.0.0.1 at a port the OS picks; the runner (clean it up after) and the
    base URL (`http://127.0.0.1:PORT`)."""
    runner = web.AppRunner(app, **runner_options)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"
