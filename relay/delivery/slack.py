"""Slack messages for `kind: "slack"` subscriptions: what changed, for which client, old -> new.

A partner reads these in a channel between other work, so each message reads like a colleague
wrote it: who (the client's name, from its snapshot), what (the document's supplier, amount
and currency), the watched change first ("approval: pending, stage 1 → approved by Sam
Partner"), then at most one short line naming the other fields that changed. Every event type
of relay.md and invoicext-api.md has its own headline; an unknown one still reads sensibly.

Upstream text is hostile until shown otherwise: it is escaped for mrkdwn (`&`, `<`, `>`, so no
`<!channel>` or fake link can be smuggled in), flattened to one line, and cut to length, and
every piece stays inside Slack's limits (3000 characters a section, 10 context elements,
50 blocks, a short `text` fallback) however long the input.
"""

from __future__ import annotations

import re
from typing import Any

from relay.snapshots.rules import RULES

# Slack: a section's text at most 3000 characters, a message at most 50 blocks; notifications
# show the `text` fallback, which long messages only make unreadable.
SECTION_LIMIT = 3000
TEXT_LIMIT = 1000
_VALUE_LIMIT = 200
_NAME_LIMIT = 80
_MAX_WATCHED = 6
_MAX_OTHERS = 6
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")
# Bounded, and anchored at the start of a run of scheme characters: linear on any input.
_URL = re.compile(r"(?<![A-Za-z0-9+.-])([A-Za-z][A-Za-z0-9+.-]{0,31})://")

# The summary mirrors of a full item's fields: when both changed, the full field speaks.
_MIRRORS = {
    "category_code": "category",
    "supplier_name": "supplier",
    "approval_status": "approval",
    "publish_status": "publish",
}

_ACTIONS = {
    "document.created": "new",
    "document.categorized": "recategorized",
    "document.status_changed": "status changed",
    "document.approval_changed": "approval changed",
    "document.sync_status_changed": "sync status changed",
    "document.deleted": "deleted",
    "expense_report.created": "new",
    "expense_report.status_changed": "status changed",
    "supplier.created": "new",
    "supplier.updated": "updated",
    "client.health_changed": "health changed",
    "connection.status_changed": "connection status changed",
    "account.auth_failed": "authentication failed: Relay cannot read this account",
    "account.recovered": "recovered: Relay can read this account again",
    "invoice.processed": "processed",
    "invoice.published": "published",
    "invoice.failed": "extraction failed",
    "invoice.deleted": "deleted",
    "bank.reconciled": "completed",
    "subscription.disabled": "disabled by Relay",
}


# Events whose `previous` is bookkeeping: their facts tell the story.
_FACTS_ONLY = {"subscription.disabled", "account.auth_failed", "account.recovered"}


def _watched() -> dict[str, tuple[str, ...]]:
    """Per event type, the top-level fields its rule watches, from the rules table."""
    found: dict[str, tuple[str, ...]] = {}
    for rule in RULES:
        names = [f.split(".", 1)[0].removesuffix("[]") for f in rule.fields if f != "*"]
        found[rule.event_type] = tuple(dict.fromkeys(names))
    # The outreach question is the level; the score moves daily.
    found["client.health_changed"] = ("alert_level", "health_score")
    found["connection.status_changed"] += ("connected",)  # InvoiceXT ledgers
    found["invoice.published"] = ("publications", "status")
    found["invoice.processed"] = ("status",)
    found["invoice.failed"] = ("status",)
    found["bank.reconciled"] = ("status",)
    return found


WATCHED = _watched()


# ---- text --------------------------------------------------------------------------------------


def _escape(text: str) -> str:
    """Slack mrkdwn needs &, < and > escaped; anything else shows as typed."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _plain(value: Any, limit: int = _VALUE_LIMIT) -> str:
    """One line of at most `limit` characters, not yet escaped. A URL in upstream text is
    defanged (`https[:]//`): Slack would turn it into a link, and the message is link-free."""
    raw = value if isinstance(value, str) else str(value)
    text = _URL.sub(r"\1[:]//", _CONTROL.sub(" ", raw[: limit * 2 + 64])).strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _safe(value: Any, limit: int = _VALUE_LIMIT) -> str:
    return _escape(_plain(value, limit))


def _fit(text: str, limit: int) -> str:
    """Cut escaped text to `limit` characters without splitting an `&amp;`-style entity."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    amp = cut.rfind("&")
    if amp != -1 and ";" not in cut[amp:]:
        cut = cut[:amp]
    return cut + "…"


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _name_of(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("name")
    return value if isinstance(value, str) and value.strip() else None


def _amount(obj: dict[str, Any]) -> str | None:
    """ "GBP 120.00" from Dext's `total_amount` or InvoiceXT's `totals.total` / `total`."""
    total = obj.get("total_amount")
    if total is None:
        total = _mapping(obj.get("totals")).get("total", obj.get("total"))
    if total is None or isinstance(total, bool | dict | list):
        return None
    if isinstance(total, int | float):
        total = f"{total:,.2f}"
    currency = obj.get("currency")
    return _plain(f"{currency} {total}" if isinstance(currency, str) else total, 40)


# ---- values as a person reads them -------------------------------------------------------------


def _approval(value: dict[str, Any]) -> str:
    status = value.get("status") or "none"
    approver = _name_of(value.get("approver"))
    if status in ("approved", "rejected") and approver:
        return f"{status} by {approver}"
    stage = value.get("stage")
    return f"{status}, stage {stage}" if stage not in (None, "") else str(status)


def _publish(value: dict[str, Any]) -> str:
    status = str(value.get("status") or "none")
    if value.get("external_id"):
        return f"{status} as {value['external_id']}"
    if status == "failed" and value.get("error_message"):
        return f"failed: {value['error_message']}"
    return status


def _link(value: dict[str, Any]) -> str:
    """An integration ("xero connected") or a publication ("xero as XRO-1")."""
    if value.get("target"):
        external = value.get("external_id")
        return f"{value['target']} as {external}" if external else str(value["target"])
    software = value.get("software") or "integration"
    return f"{software} {value.get('status') or ''}".strip()


def _show(key: str, value: Any) -> str:
    """A field's value in words, escaped and cut to length."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        if key == "approval":
            return _safe(_approval(value))
        if key == "publish":
            return _safe(_publish(value))
        if key == "main":
            return _safe(_link(value))
        if key == "tax_rate" and value.get("rate") is not None:
            return _safe(f"{value.get('name') or value.get('code')} {value['rate']}%")
        if key == "category" and value.get("code"):
            return _safe(f"{value['code']} {value.get('name') or ''}")
        name = _name_of(value)
        if name:
            return _safe(name)
        return _safe(", ".join(f"{k} {v}" for k, v in list(value.items())[:3]))
    if isinstance(value, list):
        if key in ("additional", "publications"):
            shown = [_link(_mapping(v)) for v in value[:4]]
            return _safe(", ".join(shown) or "none") + (" …" if len(value) > 4 else "")
        return f"{len(value)} item" + ("" if len(value) == 1 else "s")
    return _safe(value)


def _label(key: str) -> str:
    return _safe(key.replace("_", " "), 40)


# ---- the message -------------------------------------------------------------------------------


def _subject(event_type: str, object_type: str, obj: dict[str, Any], object_id: str) -> str:
    """What the event is about, in words: "invoice from Acme Ltd, GBP 120.00"."""
    if object_type == "document":
        kind = obj.get("type") if isinstance(obj.get("type"), str) else "document"
        who = _name_of(obj.get("supplier")) or _name_of(obj.get("customer"))
        who = who or _name_of(obj.get("supplier_name"))
        text = f"{kind} from {who}" if who else str(kind)
        if obj.get("workspace") == "sales" and who:
            text = f"{kind} to {who}"
    elif object_type == "expense_report":
        title = _name_of(obj.get("title"))
        text = f"expense report “{title}”" if title else "expense report"
        submitter = _name_of(obj.get("submitter"))
        if submitter:
            text += f" by {submitter}"
    elif object_type == "invoice":
        number = obj.get("invoice_number")
        who = _name_of(obj.get("supplier"))
        text = "invoice" + (f" {number}" if number else "") + (f" from {who}" if who else "")
    elif object_type == "reconciliation" or event_type == "bank.reconciled":
        text = "bank reconciliation"
        if obj.get("date_from") and obj.get("date_to"):
            text += f" {obj['date_from']} to {obj['date_to']}"
    elif object_type == "supplier":
        text = f"{obj.get('type') or 'supplier'} {_name_of(obj) or object_id}"
    elif object_type == "connection" and "connected" in obj:
        company = obj.get("company_name")
        text = f"{object_id} ledger" + (f" ({company})" if company else "")
    elif object_type == "connection":
        text = "integrations"
    elif object_type == "subscription":
        text = f"subscription to {obj.get('host') or object_id}"
    elif object_type == "account":
        text = "account"
    elif object_type == "client":
        return ""
    else:
        text = f"{object_type.replace('_', ' ')} {object_id}"
    amount = _amount(obj) if object_type in ("document", "expense_report", "invoice") else None
    return _plain(text + (f", {amount}" if amount else ""), 300)


def _changes(
    event_type: str, obj: dict[str, Any], previous: dict[str, Any]
) -> tuple[list[str], list[str]]:
    """(lines for the watched changes, names of the other fields that changed)."""
    watched = WATCHED.get(event_type, ())
    keys = [k for k in previous if not (k in _MIRRORS and _MIRRORS[k] in previous)]
    first = [k for k in watched if k in keys]
    if not watched and event_type.endswith(".updated"):
        first = [k for k in keys if k != "id"]
    others = [k for k in keys if k not in first]
    lines = [
        f"• *{_label(k)}*: {_show(k, previous[k])} → {_show(k, obj.get(k))}"
        for k in first[:_MAX_WATCHED]
    ]
    others = first[_MAX_WATCHED:] + others
    return lines, others


def _facts(event_type: str, obj: dict[str, Any]) -> list[str]:
    """A few facts for events with no `previous`: what a new or gone object is."""
    if event_type == "bank.reconciled":
        matched, unmatched = obj.get("matched_count"), obj.get("unmatched_count")
        return [f"{_safe(matched)} matched, {_safe(unmatched)} unmatched"]
    if event_type == "invoice.published":
        pubs = obj.get("publications")
        last = _mapping(pubs[-1]) if isinstance(pubs, list) and pubs else _mapping(obj)
        if last.get("target"):
            where = f"to {_safe(last['target'])}"
            if last.get("external_id"):
                where += f" as {_safe(last['external_id'])}"
            return [where]
    if event_type.startswith("account."):
        error = _mapping(obj.get("error"))
        detail = error.get("message") or obj.get("last_error") or obj.get("error")
        return [_safe(detail)] if isinstance(detail, str) and detail else []
    if event_type == "subscription.disabled":
        facts = [_safe(obj.get("disabled_reason") or "disabled")]
        if obj.get("pending_failed"):
            facts.append(f"{_safe(obj['pending_failed'])} pending deliveries set aside as failed")
        return facts
    shown = []
    for key in ("status", "date", "health_score", "alert_level", "email", "connected"):
        if obj.get(key) is not None and not isinstance(obj[key], dict | list):
            shown.append(f"{_label(key)} {_show(key, obj[key])}")
    return [", ".join(shown[:4])] if shown else []


def slack_message(body: dict[str, Any], client_name: str | None = None) -> dict[str, Any]:
    """The Slack incoming-webhook payload (`text` fallback plus Block Kit `blocks`) for an event.

    `body` is the stored event (the relay's envelope; seed 004's `{"event", "data"}` shape is
    read too); `client_name` comes from the client's snapshot where the event has a client.
    Three blocks at most: the headline (client, subject, what happened), a context line of
    ids, and the changes (watched first) or, for new and gone objects, a few facts.
    """
    if "type" not in body and isinstance(body.get("event"), str):  # seed 004's webhook shape
        data = {"object": _mapping(body.get("data")), "previous": {}}
        body = {**body, "type": body["event"], "data": data}
    event_type = _plain(body.get("type") or "event", 80)
    object_type = event_type.partition(".")[0]
    object_type = str(body.get("object_type") or object_type)
    data = _mapping(body.get("data"))
    obj = _mapping(data.get("object"))
    previous = _mapping(data.get("previous"))
    object_id = _plain(body.get("object_id") or obj.get("id") or "", _NAME_LIMIT)
    client_id = body.get("client_id")
    name = client_name or _name_of(obj.get("client_name"))
    if object_type == "client":
        name = name or _name_of(obj)
    who = _plain(name or client_id or "", _NAME_LIMIT)

    if event_type == "relay.ping":
        headline = "Relay test message: this Slack subscription works"
        lines: list[str] = []
        others: list[str] = []
    else:
        subject = _subject(event_type, object_type, obj, object_id)
        action = _ACTIONS.get(event_type) or _plain(event_type.partition(".")[2] or "event")
        if event_type.endswith(".snapshot"):
            action = "current state"
        if subject and event_type.endswith(".created") and object_type != "invoice":
            about = f"new {subject}"
        else:
            about = f"{subject}: {action}" if subject else action
        headline = f"{who} — {about}" if who and subject else f"{who}: {about}"
        if not who:
            headline = about[:1].upper() + about[1:]
        lines, others = [], []
        if event_type not in _FACTS_ONLY:
            lines, others = _changes(event_type, obj, previous)
        if not lines:
            lines = [f"• {fact}" for fact in _facts(event_type, obj) if fact]
    headline_md = _fit(f"*{_escape(_plain(headline, 400))}*", 600)
    # The notification text: the headline and the first changes, without the bold markers.
    text = _escape(_plain(headline, 400))
    if client_id and not name:
        text += f" for client {_safe(client_id, _NAME_LIMIT)}"
    summary = [line.removeprefix("• ").replace("*", "") for line in lines[:3]]
    if summary:
        text += ". " + "; ".join(summary)
    if others:
        names = ", ".join(_label(k) for k in others[:_MAX_OTHERS])
        more = len(others) - _MAX_OTHERS
        lines.append(f"_also changed: {names}{f' and {more} more' if more > 0 else ''}_")

    context = [f"`{_escape(event_type)}`"]
    if client_id:
        client_text = _safe(client_id, _NAME_LIMIT)
        context.append(
            f"client {_escape(who)} ({client_text})" if name else f"client {client_text}"
        )
    if object_id and object_id != client_id:
        context.append(_escape(object_id))
    if body.get("created_at") or body.get("timestamp"):
        context.append(_safe(body.get("created_at") or body.get("timestamp"), 40))

    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": headline_md}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": " · ".join(context)}]},
    ]
    if lines:
        changes = _fit("\n".join(lines), SECTION_LIMIT)
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": changes}})
    return {"text": _fit(text, TEXT_LIMIT), "blocks": blocks}
