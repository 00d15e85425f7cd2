"""`relay demo`: sandbox, worker, API and receiver in one process tree, wired together."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from relay.db import migrate
from relay.settings import Settings
from relay.vault import generate_key

# One simulated minute per real second: a day of a practice's changes in under half an hour, and
# the sandbox's rate-limit window shrinks with it (60 requests per 1-second window).
SANDBOX_SPEED = 60.0
DEMO_DIR = Path(".relay-demo")


@dataclass
class Child:
    name: str
    process: asyncio.subprocess.Process
    log_path: Path | None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _demo_secret_key() -> str:
    """A key kept in .relay-demo/ so the demo's stored tokens stay readable across runs."""
    path = DEMO_DIR / "secret.key"
    if path.exists():
        return path.read_text().strip()
    key = generate_key()
    path.write_text(key + "\n")
    path.chmod(0o600)
    return key


def _say(text: str) -> None:
    print(text, flush=True)


class Demo:
    """Starts the children, registers one account per provider and a subscription, and cleans
    up after."""

    def __init__(self, settings: Settings, drift: frozenset[str] = frozenset()) -> None:
        DEMO_DIR.mkdir(exist_ok=True)
        self.settings = settings
        self.drift = drift  # the sandbox's drift switches (relay.sandbox.dext.drift)
        self.secret_key = ",".join(settings.secret_keys) or _demo_secret_key()
        self.admin_token = settings.admin_token or secrets.token_urlsafe(24)
        self.ports = {name: _free_port() for name in ("api", "sandbox", "invoicext", "receiver")}
        self.children: list[Child] = []

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            DATABASE_URL=self.settings.database_url,
            REDIS_URL=self.settings.redis_url,
            RELAY_ADMIN_TOKEN=self.admin_token,
            RELAY_SECRET_KEY=self.secret_key,
            # The sandbox and receiver listen on loopback, which production refuses.
            RELAY_ALLOW_PRIVATE_TARGETS="true",
            RELAY_LOG_FORMAT="json",
            # The worker's rate-limit windows and cadences shrink with the sandbox's clock.
            RELAY_UPSTREAM_SPEED=str(SANDBOX_SPEED),
        )
        return env

    async def _spawn(self, name: str, *args: str, to_terminal: bool = False) -> Child:
        """Start `relay ARGS`; its output goes to the terminal or to .relay-demo/NAME.log."""
        command = (sys.executable, "-m", "relay", *args)
        if to_terminal:
            process = await asyncio.create_subprocess_exec(
                *command, env=self._env(), start_new_session=True
            )
            child = Child(name, process, None)
        else:
            log_path = DEMO_DIR / f"{name}.log"
            with log_path.open("ab") as out:  # the child keeps its own copy of the descriptor
                process = await asyncio.create_subprocess_exec(
                    *command, env=self._env(), stdout=out, stderr=out, start_new_session=True
                )
            child = Child(name, process, log_path)
        self.children.append(child)
        return child

    async def _wait_http(self, session: aiohttp.ClientSession, url: str, name: str) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for child in self.children:
                if child.process.returncode is not None:
                    raise RuntimeError(f"{child.name} exited early; see {child.log_path}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(url) as response:
                    if response.status < 500:
                        return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"{name} did not start within 30 s")

    async def run(self, minutes: float) -> int:
        await migrate(self.settings)
        api = f"http://127.0.0.1:{self.ports['api']}"
        sandbox = f"http://127.0.0.1:{self.ports['sandbox']}"
        invoicext = f"http://127.0.0.1:{self.ports['invoicext']}"
        receiver = f"http://127.0.0.1:{self.ports['receiver']}/webhooks"
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            await self._spawn(
                "sandbox",
                "sandbox",
                "--port",
                str(self.ports["sandbox"]),
                "--speed",
                str(SANDBOX_SPEED),
                "--clients",
                "5",
                "--items",
                "200",
                "--drift",
                ",".join(sorted(self.drift)) or "none",
            )
            # InvoiceXT on the Pro plan: 1,000 requests a (compressed) hour, paced to its month.
            await self._spawn(
                "invoicext",
                "sandbox",
                "--provider",
                "invoicext",
                "--plan",
                "pro",
                "--port",
                str(self.ports["invoicext"]),
                "--speed",
                str(SANDBOX_SPEED),
                "--items",
                "100",
            )
            await self._spawn("api", "api", "--port", str(self.ports["api"]))
            await self._spawn("worker", "worker")
            await self._wait_http(http, f"{sandbox}/_sandbox/state", "sandbox")
            await self._wait_http(http, f"{api}/healthz", "api")
            await self._wait_http(http, f"{invoicext}/_sandbox/state", "invoicext sandbox")

            async with http.post(f"{sandbox}/_sandbox/tokens", json={}) as response:
                token = (await response.json())["api_token"]
            async with http.post(
                f"{api}/v1/subscriptions",
                headers=headers,
                json={
                    "url": receiver,
                    "kind": "webhook",
                    "event_types": ["*"],
                    "description": "relay demo receiver",
                },
            ) as response:
                subscription = await response.json()
                if response.status != 201:
                    raise RuntimeError(f"creating the subscription failed: {subscription}")
            await self._spawn(
                "receiver",
                "receiver",
                "--port",
                str(self.ports["receiver"]),
                "--secret",
                subscription["secret"],
                to_terminal=True,
            )
            async with http.post(
                f"{api}/v1/accounts",
                headers=headers,
                json={
                    "provider": "dext",
                    "name": "Demo practice (sandbox)",
                    "base_url": sandbox,
                    "api_token": token,
                },
            ) as response:
                account = await response.json()
                if response.status != 201:
                    raise RuntimeError(f"creating the account failed: {account}")
            # A fresh key, like the Dext token above: limiter state in Redis is per key.
            async with http.post(f"{invoicext}/_sandbox/tokens", json={}) as response:
                key = (await response.json())["api_token"]
            async with http.post(
                f"{api}/v1/accounts",
                headers=headers,
                json={
                    "provider": "invoicext",
                    "name": "Demo InvoiceXT (sandbox)",
                    "base_url": f"{invoicext}/api/v1",
                    "api_token": key,
                },
            ) as response:
                ixt_account = await response.json()
                if response.status != 201:
                    raise RuntimeError(f"creating the InvoiceXT account failed: {ixt_account}")

        _say(f"""
Relay demo is running.
  sandbox   {sandbox}   (a simulated Dext practice at {SANDBOX_SPEED:g}x speed)
  invoicext {invoicext}/api/v1   (a simulated InvoiceXT account, Pro plan, same speed)
  console   {api}/ui/   sign in with the admin token below
  admin API {api}   token: {self.admin_token}
  receiver  {receiver}
  accounts  {account["id"]} (dext), {ixt_account["id"]} (invoicext)
  subscription {subscription["id"]}
  logs      {DEMO_DIR}/*.log

The first poll is a baseline and sends nothing; every change after it arrives below as a
verified webhook (InvoiceXT's in seed 004's payload: event, timestamp, data, webhook_id).
Open the console to watch events arrive live and retry failed deliveries, or try:
  curl -H 'Authorization: Bearer {self.admin_token}' {api}/v1/events
Ctrl-C stops everything.
""")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=minutes * 60 if minutes else None)
        return 0

    async def stop(self) -> None:
        for child in reversed(self.children):
            if child.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(signal.SIGTERM)
        for child in self.children:
            try:
                await asyncio.wait_for(child.process.wait(), timeout=10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()
                await child.process.wait()


async def _main(settings: Settings, minutes: float, drift: frozenset[str]) -> int:
    demo = Demo(settings, drift)
    try:
        return await demo.run(minutes)
    except RuntimeError as exc:
        _say(f"relay demo: {exc}")
        return 1
    finally:
        await demo.stop()


def run_demo(
    settings: Settings, *, minutes: float = 0.0, drift: frozenset[str] = frozenset()
) -> int:
    """Run the demo until Ctrl-C (or for `minutes`), then stop every child process; `drift`
    switches the sandbox's drift on (`relay sandbox --drift`)."""
    return asyncio.run(_main(settings, minutes, drift))
