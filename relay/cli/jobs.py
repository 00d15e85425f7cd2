"""Operator commands for recovery: `relay subscriptions replay|backfill` and `relay jobs show`.

`relay.cli.subscriptions` adds the first two to its actions and `relay.cli.operator` adds `jobs`;
this module imports neither (it builds on `client` and `commands`). Both commands start a job
through the admin API, then follow `GET /v1/jobs/{id}` and draw one progress line until every
delivery of the job is settled (or `--no-wait`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from relay.cli.client import Call, request
from relay.cli.commands import add_command, csv_list
from relay.errors import AdminApiError
from relay.settings import Settings

POLL_SECONDS = 0.5


def _replay(a: argparse.Namespace) -> Call:
    body: dict[str, Any] = {"since": a.since}
    if a.until:
        body["until"] = a.until
    if a.event_types:
        body["event_types"] = csv_list(a.event_types)
    return Call("POST", f"/v1/subscriptions/{a.id}/replay", {}, body)


def _backfill(a: argparse.Namespace) -> Call:
    body: dict[str, Any] = {}
    for key, value in (("account_ids", a.account_ids), ("object_types", a.object_types)):
        if value:
            body[key] = csv_list(value)
    return Call("POST", f"/v1/subscriptions/{a.id}/backfill", {}, body)


def progress_line(job: dict[str, Any], elapsed: float) -> str:
    """One line: how many of the total are queued, sent, failed and waiting, and the rate."""
    total = max(job["total"], job["queued"])
    done = job["succeeded"] + job["failed"]
    width = 30
    filled = width * done // total if total else width
    rate = done / elapsed if elapsed > 0 else 0.0
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {job['kind']} {job['id']}: "
        f"queued {job['queued']:,}/{total:,}  sent {job['succeeded']:,}  "
        f"failed {job['failed']:,}  pending {job['pending']:,}  {rate:,.0f}/s"
    )


def _show_job(job: Any) -> None:
    print(progress_line(job, 0.0))


def finished(job: dict[str, Any]) -> bool:
    """Every delivery the job will ever queue is queued, and none is pending."""
    return bool(job["status"] != "running" and job["pending"] == 0)


def follow(args: argparse.Namespace, settings: Settings, job: dict[str, Any]) -> int:
    """Poll the job until it is finished, redrawing its progress line; 0 when all were sent."""
    if args.no_wait or args.json:
        return 0
    started = time.monotonic()
    tty = sys.stdout.isatty()
    try:
        while not finished(job):
            time.sleep(POLL_SECONDS)
            job = asyncio.run(request(settings, Call("GET", f"/v1/jobs/{job['id']}", {})))
            line = progress_line(job, time.monotonic() - started)
            print("\r" + line if tty else line, end="" if tty else "\n", flush=True)
    except AdminApiError as exc:
        print(f"\nrelay: {exc}", file=sys.stderr)
        return 1
    if tty:
        print()
    print(f"{job['kind']} {job['status']}: {job['succeeded']:,} sent, {job['failed']:,} failed")
    return 0 if job["failed"] == 0 and job["status"] == "done" else 1


def add_recovery_commands(acts: Any) -> None:
    """Add `replay` and `backfill` to the `relay subscriptions` actions."""
    p = add_command(
        acts,
        "replay",
        "send every stored event of a window again, to this subscription alone",
        _replay,
        _show_job,
    )
    p.add_argument("id", help="the subscription's id")
    p.add_argument("--since", required=True, help="events stored at or after (RFC 3339)")
    p.add_argument("--until", help="events stored before (RFC 3339)")
    p.add_argument("--event-types", help="comma-separated types or wildcards; default all")
    p.add_argument("--no-wait", action="store_true", help="start it and print the job only")
    p.set_defaults(follow=follow)
    p = add_command(
        acts,
        "backfill",
        "send the current state of every object as <object_type>.snapshot events "
        "(from Postgres: no upstream request)",
        _backfill,
        _show_job,
    )
    p.add_argument("id", help="the subscription's id")
    p.add_argument("--account-ids", help="comma-separated; default the subscription's accounts")
    p.add_argument(
        "--object-types",
        help="comma-separated: client, connection, document, supplier, expense_report "
        "(Dext); invoice, reconciliation, ledger (InvoiceXT); default all",
    )
    p.add_argument("--no-wait", action="store_true", help="start it and print the job only")
    p.set_defaults(follow=follow)


def _follow_if_asked(args: argparse.Namespace, settings: Settings, job: dict[str, Any]) -> int:
    """`relay jobs show --wait` follows the job like the command that started it."""
    if not args.wait:
        return 0
    args.no_wait = False
    return follow(args, settings, job)


def add_job_commands(sub: Any, dispatch: Any) -> None:
    """Add `relay jobs show ID [--wait]`: the progress of a replay or backfill started earlier
    (by another terminal, a script, or a command run with `--no-wait`)."""
    group = sub.add_parser("jobs", help="replay and backfill jobs: show their progress")
    group.set_defaults(func=dispatch)
    acts = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = add_command(
        acts,
        "show",
        "show a job's progress: queued, sent, failed and pending deliveries",
        lambda a: Call("GET", f"/v1/jobs/{a.id}", {}),
        _show_job,
    )
    p.add_argument("id", help="the job's id (job_...), as replay or backfill printed it")
    p.add_argument("--wait", action="store_true", help="follow it until every delivery settled")
    p.set_defaults(follow=_follow_if_asked)
