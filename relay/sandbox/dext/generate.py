"""Builders of realistic practice objects, and the seeded initial practice made from them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from random import Random

from relay.sandbox.dext import catalog
from relay.sandbox.dext.practice import ChangeLog, Practice
from relay.sandbox.wire import JSON, parse_rfc3339, rfc3339

DAY = 86400.0
CENT = Decimal("0.01")
# Initial items are spread over this much history before the simulation starts.
HISTORY_DAYS = 180


def money(value: Decimal) -> str:
    return str(value.quantize(CENT))


def day(at: float) -> str:
    return datetime.fromtimestamp(int(at), UTC).strftime("%Y-%m-%d")


def _blank_publish() -> JSON:
    return {
        "status": "unpublished",
        "external_id": None,
        "published_at": None,
        "error_message": None,
    }


def _blank_approval() -> JSON:
    return {"status": "none", "stage": None, "approver": None, "decided_at": None}


def make_client(p: Practice, rng: Random, index: int, created: float, now: float) -> JSON:
    base = catalog.CLIENT_NAMES[index % len(catalog.CLIENT_NAMES)]
    name = base if index < len(catalog.CLIENT_NAMES) else f"{base} {index // 16 + 1}"
    initials = "".join(w[0] for w in name.split() if w[0].isalpha())[:3].upper()
    score = rng.choice((rng.randint(5, 35), rng.randint(36, 70), rng.randint(71, 100)))
    return {
        "id": p.new_id("cl_"),
        "name": name,
        "practice_code": f"{initials}{index + 1:03d}",
        "organisation_type": rng.choice(catalog.ORGANISATION_TYPES),
        "health_score": score,
        "alert_level": catalog.alert_level(score),
        "bank_reconciliation_gap": rng.randint(0, 40) if score < 71 else rng.randint(0, 5),
        "debtor_days": round(rng.uniform(5, 75), 1),
        "last_sync_at": rfc3339(now - rng.uniform(0, DAY)),
        "created_at": rfc3339(created),
    }


def make_connection(rng: Random, client: JSON, now: float) -> JSON:
    main = rng.choice(catalog.MAIN_SOFTWARE)
    status = rng.choices(catalog.CONNECTION_STATUSES, weights=(85, 5, 5, 5))[0]
    additional = [
        {
            "software": software,
            "status": rng.choices(catalog.CONNECTION_STATUSES, weights=(90, 4, 3, 3))[0],
            "organisation": client["name"],
            "last_sync_at": rfc3339(now - rng.uniform(0, DAY)),
        }
        for software in catalog.ADDITIONAL_SOFTWARE
        if rng.random() < 0.3
    ]
    publishing = main
    if additional and rng.random() < 0.5:
        publishing = additional[0]["software"]
    return {
        "main": {
            "software": main,
            "status": status,
            "organisation": client["name"],
            "last_sync_at": rfc3339(now - rng.uniform(0, DAY)),
        },
        "additional": additional,
        "default_publishing_integration": publishing,
        "default_expense_claims_integration": main if rng.random() < 0.7 else None,
    }


def make_supplier(
    p: Practice, rng: Random, client_id: str, kind: str, name: str, created: float
) -> JSON:
    categories = catalog.COST_CATEGORIES if kind == "supplier" else catalog.SALES_CATEGORIES
    connection = p.connections.get(client_id)
    slug = "".join(c for c in name.lower() if c.isalnum())[:12] or "contact"
    return {
        "id": p.new_id("sup_"),
        "name": name,
        "type": kind,
        "tax_number": f"GB{rng.randint(100_000_000, 999_999_999)}" if rng.random() < 0.6 else None,
        "default_category_code": rng.choice(categories)[0] if rng.random() < 0.8 else None,
        "default_tax_code": rng.choice(catalog.TAX_RATES)[0],
        "auto_publish": rng.random() < 0.2,
        "integration": connection["main"]["software"] if connection else None,
        "email": f"accounts@{slug}.example" if rng.random() < 0.7 else None,
        "created_at": rfc3339(created),
    }


def make_capture(
    p: Practice,
    rng: Random,
    client_id: str,
    created: float,
    *,
    workspace: str | None = None,
    doc_type: str | None = None,
    source: str | None = None,
    supplier_name: str | None = None,
    filename: str | None = None,
) -> JSON:
    """A just-captured item: status processing, nothing extracted yet."""
    workspace = workspace or ("sales" if rng.random() < 0.2 else "costs")
    if doc_type is None:
        types = catalog.SALES_TYPES if workspace == "sales" else catalog.DOCUMENT_TYPES
        weights = (90, 10) if workspace == "sales" else (45, 40, 5, 10)
        doc_type = rng.choices(types, weights=weights)[0]
    if source is None:
        source = rng.choices(catalog.SOURCES, weights=(35, 30, 15, 5, 10, 5))[0]
    party_key = "customer" if workspace == "sales" else "supplier"
    return {
        "id": p.new_id("doc_"),
        "client_id": client_id,
        "workspace": workspace,
        "type": doc_type,
        "source": source,
        "status": "processing",
        "supplier_name": supplier_name,
        "category_code": None,
        "total_amount": "0.00",
        "currency": rng.choice(catalog.CURRENCIES),
        "date": day(created),
        "integration": None,
        "publish_status": "unpublished",
        "approval_status": "none",
        "created_at": rfc3339(created),
        party_key: None,
        "category": None,
        "tax_rate": None,
        "invoice_number": None,
        "due_date": None,
        "net_amount": "0.00",
        "tax_amount": "0.00",
        "paid": False,
        "payment_method": None,
        "description": filename,
        "project": None,
        "line_items": [],
        "publish": _blank_publish(),
        "approval": _blank_approval(),
    }


def pick_category(rng: Random, workspace: str) -> JSON:
    categories = catalog.SALES_CATEGORIES if workspace == "sales" else catalog.COST_CATEGORIES
    code, name = rng.choice(categories)
    return {"code": code, "name": name}


def extraction(p: Practice, rng: Random, doc: JSON) -> JSON:
    """The fields processing fills in: party, amounts, lines, category, tax; status review/ready."""
    client_id, workspace = doc["client_id"], doc["workspace"]
    kind = "customer" if workspace == "sales" else "supplier"
    parties = p.select("supplier", client_id, lambda s: s["type"] == kind)
    named = [s for s in parties if s["name"] == doc.get("supplier_name")]
    party = named[0] if named else (rng.choice(parties) if parties else None)
    party_ref = {"id": party["id"], "name": party["name"]} if party else None
    needs_review = rng.random() < 0.3
    category: JSON | None = None
    if not (needs_review and rng.random() < 0.5):
        default = party.get("default_category_code") if party else None
        names = dict(catalog.SALES_CATEGORIES if workspace == "sales" else catalog.COST_CATEGORIES)
        category = (
            {"code": default, "name": names[default]}
            if default in names and rng.random() < 0.7
            else pick_category(rng, workspace)
        )
    code, tax_name, rate = rng.choice(catalog.TAX_RATES)
    lines = []
    net = Decimal(0)
    for n in range(rng.choice((1, 1, 1, 2, 3))):
        quantity = rng.choice((1, 1, 1, 2, 3, 5))
        unit = Decimal(rng.randint(150, 120_000)) / 100
        amount = unit * quantity
        net += amount
        lines.append(
            {
                "description": f"Item {n + 1}",
                "quantity": quantity,
                "unit_price": money(unit),
                "amount": money(amount),
                "category_code": category["code"] if category else None,
                "tax_code": code,
            }
        )
    tax = (net * Decimal(rate) / 100).quantize(CENT)
    created = doc["created_at"][:10]
    connection = p.connections.get(client_id)
    integration = None
    if connection:
        main = connection["main"]["software"]
        integration = (
            main if workspace == "sales" else connection["default_publishing_integration"] or main
        )
    is_invoice = doc["type"] in ("invoice", "credit_note")
    return {
        "status": "review" if needs_review else "ready",
        kind: party_ref,
        "category": category,
        "tax_rate": {"code": code, "name": tax_name, "rate": rate},
        "invoice_number": f"INV-{rng.randint(1000, 99999)}" if is_invoice else None,
        "due_date": (
            (datetime.fromisoformat(created) + timedelta(days=30)).strftime("%Y-%m-%d")
            if is_invoice
            else None
        ),
        "date": created,
        "net_amount": money(net),
        "tax_amount": money(tax),
        "total_amount": money(net + tax),
        "paid": doc["type"] in ("receipt", "expense") or rng.random() < 0.3,
        "payment_method": rng.choice(catalog.PAYMENT_METHODS),
        "project": rng.choice((None, None, None, "Refit 2026", "Summer campaign")),
        "line_items": lines,
        "integration": integration,
    }


def published(rng: Random, doc: JSON, at: float) -> JSON:
    software = (doc.get("integration") or "ledger")[:4].upper()
    return {
        "status": "published",
        "external_id": f"{software}-{rng.randint(100_000, 999_999)}",
        "published_at": rfc3339(at),
        "error_message": None,
    }


def _settle(p: Practice, rng: Random, doc: JSON, start: float) -> None:
    """Move an initial item along its life according to its age, like a practice's backlog."""
    made = parse_rfc3339(doc["created_at"])
    age_days = (start - made) / DAY
    roll = rng.random()
    if age_days < 0.02 and roll < 0.5:
        return  # still processing
    doc.update(extraction(p, rng, doc))
    if doc["workspace"] == "costs" and doc["type"] == "invoice" and rng.random() < 0.25:
        decided = made + rng.uniform(3600, 3 * DAY)
        if age_days > 3:
            status = rng.choices(("approved", "rejected"), weights=(9, 1))[0]
            doc["approval"] = {
                "status": status,
                "stage": 1,
                "approver": rng.choice(catalog.APPROVERS),
                "decided_at": rfc3339(min(decided, start - 60)),
            }
        else:
            doc["approval"] = {
                "status": "pending",
                "stage": 1,
                "approver": None,
                "decided_at": None,
            }
    if age_days < 2 or doc["approval"]["status"] in ("pending", "rejected"):
        return
    roll = rng.random()
    if age_days > 14 and roll < 0.3:
        doc["publish"] = published(rng, doc, made + rng.uniform(DAY, 3 * DAY))
        doc["status"] = "archived"
    elif roll < 0.9:
        doc["publish"] = published(rng, doc, made + rng.uniform(3600, DAY))
        doc["status"] = "published"
    elif roll < 0.95:
        doc["status"] = "ready"
        doc["publish"] = {**_blank_publish(), "status": "failed"}
        doc["publish"]["error_message"] = rng.choice(catalog.PUBLISH_ERRORS)


def make_expense_report(
    p: Practice, rng: Random, client_id: str, created: float, item_ids: list[str]
) -> JSON:
    submitter = rng.choice(catalog.SUBMITTERS)
    claims = []
    for _ in range(rng.choice((0, 0, 1, 2))):
        miles = rng.randint(4, 180)
        claims.append(
            {
                "date": day(created - rng.uniform(0, 10 * DAY)),
                "from": rng.choice(catalog.PLACES),
                "to": rng.choice(catalog.PLACES),
                "miles": miles,
                "amount": money(Decimal(miles) * Decimal("0.45")),
            }
        )
    docs = p.documents.get(client_id, {})
    total = sum((Decimal(docs[i]["total_amount"]) for i in item_ids if i in docs), Decimal(0))
    total += sum((Decimal(c["amount"]) for c in claims), Decimal(0))
    return {
        "id": p.new_id("exp_"),
        "client_id": client_id,
        "title": f"Expenses {day(created)[:7]} {submitter.split()[0]}",
        "submitter": {
            "id": f"usr_{catalog.SUBMITTERS.index(submitter) + 1:04d}",
            "name": submitter,
        },
        "status": "draft",
        "total_amount": money(total),
        "currency": "GBP",
        "item_ids": item_ids,
        "mileage_claims": claims,
        "submitted_at": None,
        "approver": None,
        "decided_at": None,
        "created_at": rfc3339(created),
    }


def populate_client(
    p: Practice, rng: Random, index: int, items: int, start: float, *, kind: str = "created"
) -> str:
    """One client with its connection, suppliers, `items` documents and expense reports, all
    made at `start`; returns its id. `kind` is what the change log calls the client's own
    objects' entries: "existing" for a client added mid-run, whose items are history."""
    history = HISTORY_DAYS * DAY
    client = make_client(p, rng, index, start - history - rng.uniform(DAY, 400 * DAY), start)
    cid: str = client["id"]
    p.create("client", cid, client, start)
    p.create("connection", cid, make_connection(rng, client, start), start)
    for party, names, count in (
        ("supplier", catalog.SUPPLIER_NAMES, rng.randint(6, 12)),
        ("customer", catalog.CUSTOMER_NAMES, rng.randint(3, 6)),
    ):
        for name in rng.sample(names, count):
            when = start - history - rng.uniform(0, 200 * DAY)
            supplier = make_supplier(p, rng, cid, party, name, when)
            p.create("supplier", cid, supplier, start, kind=kind)
    # Older items are rarer than recent ones, as a practice's inbox is.
    times = sorted(start - history * rng.random() ** 1.5 for _ in range(items))
    for created in times:
        doc = make_capture(p, rng, cid, created)
        _settle(p, rng, doc, start)
        p.create("document", cid, doc, start, kind=kind)
    expenses = [d["id"] for d in p.select("document", cid, lambda d: d["type"] == "expense")]
    for _ in range(max(1, items // 40)):
        picked = rng.sample(expenses, min(len(expenses), rng.randint(1, 4)))
        when = start - rng.uniform(DAY, history)
        report = make_expense_report(p, rng, cid, when, picked)
        status = rng.choices(catalog.EXPENSE_STATUSES, weights=(10, 15, 20, 5, 50))[0]
        report["status"] = status
        if status != "draft":
            report["submitted_at"] = rfc3339(when + rng.uniform(3600, DAY))
        if status in ("approved", "rejected", "reimbursed"):
            report["approver"] = rng.choice(catalog.APPROVERS)
            report["decided_at"] = rfc3339(when + rng.uniform(DAY, 3 * DAY))
        p.create("expense_report", cid, report, start, kind=kind)
    return cid


def build_practice(seed: int, clients: int, items: int, start: float) -> Practice:
    """The initial practice for a seed: same arguments, same practice, byte for byte."""
    p = Practice(seed)
    rng = Random(f"practice:{seed}")
    for index in range(clients):
        populate_client(p, rng, index, items, start)
    p.log = ChangeLog()  # the starting state is not a change
    return p
