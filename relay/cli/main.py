"""The `relay` command: one entry point for every process Relay runs."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence

from relay.errors import ConfigError, ServiceUnavailable
from relay.logs import configure_logging
from relay.settings import Settings

# `relay worker` runs the arq worker that lives in the `workers` package. It is named by string,
# as arq's own CLI does, so that `relay` never imports `workers` (the dependency points one way).
WORKER_MODULE = "workers.main"

Command = Callable[[argparse.Namespace, Settings], int]


def _cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from relay.db import migrate

    result = asyncio.run(migrate(settings))
    what = "created the database and applied" if result["database_created"] else "applied"
    print(f"relay: {what} schema.sql (digest {result['digest']})")
    return 0


def _cmd_keygen(args: argparse.Namespace, settings: Settings) -> int:
    from relay.vault import generate_key

    print(generate_key())
    return 0


def _cmd_rekey(args: argparse.Namespace, settings: Settings) -> int:
    from relay.cli.progress import ProgressLine
    from relay.cli.rekey import TableCount, rekey
    from relay.db import create_pool
    from relay.vault import Vault

    vault = Vault(settings.secret_keys)
    line = ProgressLine()

    def show(table: str, count: TableCount) -> None:
        line.update(f"rekey: {table} {count.seen}/{count.total} looked at, {count.rekeyed} rekeyed")

    async def run() -> dict[str, TableCount]:
        pool = await create_pool(settings, min_size=1, max_size=2)
        try:
            return await rekey(pool, vault, batch_size=args.batch_size, progress=show)
        finally:
            await pool.close()

    counts = asyncio.run(run())
    line.finish()
    failed = False
    for table, count in counts.items():
        current = count.seen - count.rekeyed - len(count.unreadable)
        print(
            f"{table}: {count.rekeyed} rekeyed, {current} already under the newest key, "
            f"{len(count.unreadable)} unreadable"
        )
        if count.unreadable:
            failed = True
            print(
                f"relay: these {table} hold a secret no key in RELAY_SECRET_KEY decrypts: "
                + ", ".join(count.unreadable),
                file=sys.stderr,
            )
    if failed:
        print("relay: keep every old key listed until they are fixed", file=sys.stderr)
        return 1
    if len(settings.secret_keys) > 1:
        print("every secret is under the newest key: the older keys can be removed")
    return 0


def _cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    from relay.api.app import run_api

    run_api(settings, host=args.host, port=args.port)
    return 0


def _cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    import importlib

    run: Callable[..., int] = importlib.import_module(WORKER_MODULE).run_worker
    return run(settings, burst=args.burst, exit_on_unavailable=args.exit_on_unavailable)


def _cmd_sandbox(args: argparse.Namespace, settings: Settings) -> int:
    from relay.sandbox.server import SandboxOptions, run_sandbox

    options = SandboxOptions(
        host=args.host,
        port=args.port,
        seed=args.seed,
        clients=args.clients,
        items=args.items,
        rate_limit=args.rate_limit if args.rate_limit is not None else 60,
        rate_limit_set=args.rate_limit is not None,
        speed=args.speed,
        provider=args.provider,
        drift=args.drift,
        drift_rate=args.drift_rate,
        plan=args.plan,
        monthly_limit=args.monthly_limit,
    )
    run_sandbox(options)
    return 0


def _cmd_receiver(args: argparse.Namespace, settings: Settings) -> int:
    from relay.cli.receiver import ReceiverOptions, run_receiver

    run_receiver(
        ReceiverOptions(
            host=args.host,
            port=args.port,
            secret=args.secret,
            fail=args.fail,
            delay=args.delay,
            status=args.status,
        )
    )
    return 0


def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from relay.cli.demo import run_demo

    return run_demo(settings, minutes=args.minutes, drift=args.drift)


def _cmd_listen(args: argparse.Namespace, settings: Settings) -> int:
    from relay.cli.listen import ListenOptions, parse_event_types, run_listen

    options = ListenOptions(
        forward_to=args.forward_to,
        event_types=tuple(parse_event_types(args.event_types)),
        secret=args.secret,
    )
    return run_listen(settings, options)


def _cmd_operator(args: argparse.Namespace, settings: Settings) -> int:
    from relay.cli.operator import run_operator_command

    return run_operator_command(args, settings)


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {text}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def _drift(text: str) -> frozenset[str]:
    from relay.sandbox.dext.drift import parse_drift

    try:
        return parse_drift(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1, not {text}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, not {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relay",
        description="Webhook relay and change-detection daemon for Dext and InvoiceXT. "
        "Settings come from the environment: DATABASE_URL, REDIS_URL, RELAY_ADMIN_TOKEN, "
        "RELAY_SECRET_KEY, RELAY_ALLOW_PRIVATE_TARGETS, RELAY_LOG_FORMAT, "
        "RELAY_RETRY_SCHEDULE, RELAY_DELIVERY_TIMEOUT, RELAY_RETENTION_DAYS.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("migrate", help="create the database if missing and apply schema.sql")
    p.set_defaults(func=_cmd_migrate)

    p = sub.add_parser("keygen", help="print a new RELAY_SECRET_KEY")
    p.set_defaults(func=_cmd_keygen)

    p = sub.add_parser(
        "rekey",
        help="re-encrypt every stored token and secret with the newest RELAY_SECRET_KEY",
        description="Re-encrypt every upstream token and webhook signing secret under the "
        "first key of RELAY_SECRET_KEY, in batches. Rotate a key by listing the new key first "
        "and the old one after it, running `relay rekey`, then removing the old key. Safe to "
        "interrupt and run again: rows already under the newest key are skipped.",
    )
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=200,
        help="rows per transaction (default 200)",
    )
    p.set_defaults(func=_cmd_rekey)

    p = sub.add_parser("api", help="serve the admin API and the operator console (/ui/)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    p.set_defaults(func=_cmd_api)

    p = sub.add_parser("worker", help="run a worker: polling, diffing, delivery, sweeping, pruning")
    p.add_argument(
        "--burst",
        action="store_true",
        help="run the jobs that are due now, then exit (for cron and tests)",
    )
    p.add_argument(
        "--exit-on-unavailable",
        action="store_true",
        help="if Postgres or Redis is unreachable at start, print which and exit with status 1 "
        "(for a supervisor to restart it) instead of saying so once and waiting for it; a "
        "store lost while running is always waited for",
    )
    p.set_defaults(func=_cmd_worker)

    p = sub.add_parser("sandbox", help="serve a simulated upstream whose data changes over time")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8090, help="port to listen on (default 8090)")
    p.add_argument("--seed", type=int, default=1, help="seed of the simulated practice (default 1)")
    p.add_argument("--clients", type=int, default=5, help="number of clients (default 5)")
    p.add_argument(
        "--items",
        type=int,
        default=200,
        help="documents per client at the start; InvoiceXT: invoices (default 200)",
    )
    p.add_argument(
        "--rate-limit",
        type=int,
        default=None,
        help="Dext: requests per simulated minute per token (default 60); InvoiceXT: requests "
        "per rolling simulated hour per key (default: the plan's)",
    )
    p.add_argument(
        "--plan",
        choices=["starter", "pro", "business", "enterprise"],
        default="starter",
        help="InvoiceXT only: seed 004's plan, 100 / 1,000 / 10,000 / 100,000 requests an hour "
        "(default starter)",
    )
    p.add_argument(
        "--monthly-limit",
        type=int,
        default=None,
        help="InvoiceXT only: API calls per billing month (default: the plan's, 5,000 for "
        "starter); past it every call is 429 monthly_limit_reached until the month ends",
    )
    p.add_argument(
        "--speed",
        type=_positive_float,
        default=1.0,
        help="how many simulated seconds pass per real second (default 1)",
    )
    p.add_argument(
        "--provider",
        choices=["dext", "invoicext"],
        default="dext",
        help="which upstream to simulate (default dext)",
    )
    p.add_argument(
        "--drift",
        type=_drift,
        default=frozenset(),
        metavar="KINDS",
        help="make answers drift as the contract allows: all, or some of retype (unwatched "
        "fields retyped, nulled or removed; decimal-string quantities), unknown (unknown "
        "fields come and go), respell (watched numbers re-spelled, keys reordered), enums "
        "(new values of unwatched enums), unusable (lists gain objects no one can use), "
        "comma-separated (default none)",
    )
    p.add_argument(
        "--drift-rate",
        type=_fraction,
        default=0.3,
        help="how often each drift touches an object, 0 to 1 (default 0.3)",
    )
    p.set_defaults(func=_cmd_sandbox)

    p = sub.add_parser("receiver", help="a development webhook endpoint that verifies and prints")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=9000, help="port to listen on (default 9000)")
    p.add_argument("--secret", required=True, help="the subscription's whsec_... secret")
    p.add_argument(
        "--fail",
        type=int,
        default=0,
        help="answer the first N requests with a failure status (default 0)",
    )
    p.add_argument(
        "--status", type=int, default=500, help="the status used by --fail (default 500)"
    )
    p.add_argument(
        "--delay",
        type=float,
        default=0.0,
        help="seconds to wait before answering each request (default 0)",
    )
    p.set_defaults(func=_cmd_receiver)

    p = sub.add_parser("demo", help="sandbox, worker, API and receiver in one process tree")
    p.add_argument(
        "--minutes",
        type=float,
        default=0.0,
        help="stop after this many minutes (default: run until Ctrl-C)",
    )
    p.add_argument(
        "--drift",
        type=_drift,
        default=frozenset(),
        metavar="KINDS",
        help="let the sandbox's answers drift as the contract allows (see `relay sandbox "
        "--help`): all, or some of retype,unknown,respell,enums,unusable (default none)",
    )
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "listen",
        help="follow the API's live event stream and forward each event to a local URL",
        description="Follow GET /v1/events/stream on RELAY_API_URL (with RELAY_ADMIN_TOKEN) and "
        "POST each event to --forward-to, signed per Standard Webhooks with a secret printed at "
        "start, like `stripe listen`: no subscription and no public address needed. A dropped "
        "stream reconnects and resumes where it was.",
    )
    p.add_argument("--forward-to", required=True, help="the local URL each event is POSTed to")
    p.add_argument(
        "--event-types",
        default="*",
        help="comma-separated types or prefix wildcards, e.g. 'document.*,client.health_changed' "
        "(default: every event)",
    )
    p.add_argument(
        "--secret",
        default=None,
        help="sign with this whsec_... secret instead of a new one (keeps it across runs)",
    )
    # The route it follows, for the test that every admin route has a command.
    p.set_defaults(func=_cmd_listen, routes=[("GET", "/v1/events/stream")])

    from relay.cli.operator import add_operator_commands

    add_operator_commands(sub, _cmd_operator)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        configure_logging(settings.log_format, settings.log_level)
        func: Command = args.func
        return int(func(args, settings))
    except (ConfigError, ServiceUnavailable) as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    except KeyboardInterrupt:
        return 130
