"""The Dext sandbox's aiohttp application: the contract behind its edge, and the control surface."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from relay.sandbox.control import control_errors
from relay.sandbox.dext import contract
from relay.sandbox.dext.control import DextControl
from relay.sandbox.dext.edge import edge
from relay.sandbox.dext.state import SANDBOX, Sandbox
from relay.sandbox.options import SandboxOptions


def create_dext_app(options: SandboxOptions) -> web.Application:
    """A Dext sandbox app; its state is `app[SANDBOX]` (raises ConfigError on bad options)."""
    app = web.Application(middlewares=[control_errors, edge])
    sandbox = app[SANDBOX] = Sandbox(options)
    contract.add_routes(app)
    DextControl(sandbox).add_routes(app)
    return app


def upstream(app: web.Application) -> Sandbox:
    return app[SANDBOX]


def announcement(app: web.Application, options: SandboxOptions) -> dict[str, Any]:
    """The fields of `sandbox_started` (the tokens are fake: they are how you connect)."""
    sandbox = app[SANDBOX]
    return {
        "url": f"http://{options.host}:{options.port}",
        "sandbox_api_token": sandbox.token.api_token,
        "seed": options.seed,
        "clients": options.clients,
        "speed": options.speed,
        "window_seconds": sandbox.access.window_seconds,
    }
