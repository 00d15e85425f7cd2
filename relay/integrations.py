"""Slack messages for `kind: "slack"` subscriptions: what changed, for which client, old -> new."""

from __future__ import annotations

from typing import Any

# Slack limits section text to 3000 characters and a message to 50 blocks.
_MAX_FIELD_TEXT = 300
_MAX_CHANGES = 10
_HEADLINES = {
    "created": "new",
    "deleted": "deleted",
    "categorized": "recategorized",
    "status_changed": "status changed",
    "approval_changed": "approval changed",
    "sync_status_changed": "sync status changed",
    "health_changed": "health changed",
    "updated": "updated",
    "auth_failed": "authentication failed",
    "recovered": "recovered",
}


def _escape(text: str) -> str:
    """Slack mrkdwn needs &, < and > escaped; anything else shows as typed."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _show(value: Any) -> str:
    """A value as a person reads it: nested objects by their most telling field."""
    if value is None:
        return "none"
    if isinstance(value, dict):
        for key in ("status", "name", "code", "stage", "id"):
            if key in value and not isinstance(value[key], dict | list):
                parts = [f"{k} {value[k]}" for k in ("status", "stage") if value.get(k)]
                text = ", ".join(parts) if parts else str(value[key])
                break
        else:
            text = ", ".join(f"{k}: {v}" for k, v in list(value.items())[:4])
    elif isinstance(value, list):
        text = f"{len(value)} item" + ("" if len(value) == 1 else "s")
    elif isinstance(value, bool):
        text = "yes" if value else "no"
    else:
        text = str(value)
    if len(text) > _MAX_FIELD_TEXT:
        text = text[: _MAX_FIELD_TEXT - 1] + "…"
    return _escape(text)


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _object_label(body: dict[str, Any], obj: dict[str, Any]) -> str:
    object_type = str(body.get("object_type") or "object").replace("_", " ")
    for key in ("supplier_name", "name", "title", "invoice_number"):
        if isinstance(obj.get(key), str) and obj[key]:
            return f"{object_type} {_escape(obj[key])} ({_escape(str(body.get('object_id')))})"
    return f"{object_type} {_escape(str(body.get('object_id') or ''))}".strip()


def _changes(obj: dict[str, Any], previous: dict[str, Any]) -> list[str]:
    lines = []
    for key, old in list(previous.items())[:_MAX_CHANGES]:
        label = _escape(key.replace("_", " "))
        lines.append(f"• *{label}*: {_show(old)} → {_show(obj.get(key))}")
    if len(previous) > _MAX_CHANGES:
        lines.append(f"• and {len(previous) - _MAX_CHANGES} more fields")
    return lines


def slack_message(body: dict[str, Any]) -> dict[str, Any]:
    """The Slack incoming-webhook payload (`text` fallback plus Block Kit `blocks`) for an event.

    Reads on its own without links: the headline says what happened to which object, then the
    client, then each changed field as old → new.
    """
    event_type = str(body.get("type") or "event")
    _, _, action = event_type.partition(".")
    data = _mapping(body.get("data"))
    obj = _mapping(data.get("object"))
    previous = _mapping(data.get("previous"))
    label = _object_label(body, obj)
    headline = f"{label[:1].upper()}{label[1:]}: {_HEADLINES.get(action, action or event_type)}"
    client = body.get("client_id")
    client_name = obj.get("client_name") or (
        obj.get("name") if body.get("object_type") == "client" else None
    )
    context = [f"`{_escape(event_type)}`"]
    if client:
        who = (
            f"{_escape(str(client_name))} ({_escape(str(client))})"
            if client_name
            else _escape(str(client))
        )
        context.append(f"client {who}")
    if body.get("created_at"):
        context.append(_escape(str(body["created_at"])))
    lines = _changes(obj, previous)
    if event_type == "relay.ping":
        headline = "Relay test message: this Slack subscription works"
        lines = []
    elif not lines and action == "created":
        details = [
            f"{_escape(k.replace('_', ' '))} {_show(obj[k])}"
            for k in ("status", "total_amount", "currency", "date", "health_score", "alert_level")
            if obj.get(k) is not None
        ]
        lines = [", ".join(details)] if details else []
    text = headline + (f" for client {client}" if client else "")
    if lines:
        text += ". " + "; ".join(line.removeprefix("• ") for line in lines)
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*{headline}*"}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": " · ".join(context)}]},
    ]
    if lines:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)}})
    return {"text": text.replace("*", ""), "blocks": blocks}
