"""Fixed sample vocabulary the simulated practice draws from (names, categories, tax rates)."""

from __future__ import annotations

from typing import Final

# Typographic apostrophes and accents are on purpose: the relay must carry them byte for byte.
CLIENT_NAMES: Final = (
    "Harbour Lights Bakery Ltd",
    "Oakfield Dental Practice",
    "Brightwater Plumbing & Heating",
    "Café Lumière",
    "Northgate Architects LLP",
    "O’Connell Family Farms",
    "Pennine Outdoor Gear",
    "Riverside Veterinary Clinic",
    "Studio Nørd Design",
    "The Green Grocer Co-op",
    "Atlas Freight Services",
    "Meadowbank Care Home",
    "Kestrel IT Consulting",
    "Little Acorns Nursery",
    "Silverline Events",
    "Thistle & Rose Florists",
)
ORGANISATION_TYPES: Final = ("limited_company", "sole_trader", "partnership", "llp", "charity")
SUPPLIER_NAMES: Final = (
    "Amazon Business",
    "British Gas",
    "BT Business",
    "Costa Coffee",
    "Screwfix",
    "Staples UK",
    "Shell UK",
    "Tesco Stores",
    "Travis Perkins",
    "Vodafone Ltd",
    "Wickes",
    "Zoom Video Communications",
    "Google Cloud EMEA",
    "Microsoft Ireland",
    "Trainline",
    "Premier Inn",
    "Müller Wholesale",
    "Café Nero",
    "O’Brien & Sons Electrical",
    "Booker Cash & Carry",
    "Royal Mail",
    "Adobe Systems",
    "Uber BV",
    "Pret A Manger",
)
CUSTOMER_NAMES: Final = (
    "Acme Holdings",
    "Blue Finch Media",
    "Cobalt Engineering",
    "Dunmore Hotels",
    "Everly & Co",
    "Foxglove Interiors",
    "Granite Homes",
    "Hale Brothers Garage",
    "Ivy Lane School",
    "Juniper Yoga Studio",
)
SUBMITTERS: Final = (
    "Aisha Khan",
    "Ben Carter",
    "Chloé Martin",
    "Dylan Hughes",
    "Eve Robinson",
    "Farid Haddad",
)
APPROVERS: Final = ("Grace Lee", "Hamish Boyd", "Isla Murray")
# (code, name) pairs per workspace, like a small chart of accounts.
COST_CATEGORIES: Final = (
    ("310", "Cost of Goods Sold"),
    ("400", "Advertising & Marketing"),
    ("420", "Entertainment"),
    ("429", "General Expenses"),
    ("445", "Light, Power, Heating"),
    ("449", "Motor Vehicle Expenses"),
    ("461", "Printing & Stationery"),
    ("463", "IT Software and Consumables"),
    ("489", "Telephone & Internet"),
    ("493", "Travel - National"),
)
SALES_CATEGORIES: Final = (("200", "Sales"), ("260", "Other Revenue"), ("270", "Interest Income"))
# (code, name, rate) with the rate as a decimal string, like money.
TAX_RATES: Final = (
    ("20.0% S", "Standard 20%", "20.00"),
    ("5.0% R", "Reduced 5%", "5.00"),
    ("0.0% Z", "Zero Rated", "0.00"),
    ("No VAT", "No VAT", "0.00"),
)
MAIN_SOFTWARE: Final = (
    "xero",
    "quickbooks_online",
    "quickbooks_desktop",
    "sage",
    "kashflow",
    "freeagent",
    "zoho",
)
ADDITIONAL_SOFTWARE: Final = ("billcom", "approvalmax")
CONNECTION_STATUSES: Final = ("connected", "unintegrated", "mismatch", "expired")
DOCUMENT_TYPES: Final = ("receipt", "invoice", "credit_note", "expense")
SALES_TYPES: Final = ("invoice", "credit_note")
SOURCES: Final = ("mobile", "email", "upload", "api", "bank_feed", "ecommerce")
DOCUMENT_STATUSES: Final = ("processing", "review", "ready", "published", "archived")
PUBLISH_STATUSES: Final = ("unpublished", "queued", "published", "failed")
APPROVAL_STATUSES: Final = ("none", "pending", "approved", "rejected")
EXPENSE_STATUSES: Final = ("draft", "submitted", "approved", "rejected", "reimbursed")
WORKSPACES: Final = ("costs", "sales")
PAYMENT_METHODS: Final = ("card", "bank_transfer", "cash", "direct_debit", None)
PUBLISH_ERRORS: Final = (
    "Tax rate not valid for the selected account",
    "Supplier not found in the accounting software",
    "Accounting period is locked",
    "Connection to the accounting software expired",
)
CURRENCIES: Final = ("GBP", "GBP", "GBP", "GBP", "EUR", "USD")
PLACES: Final = ("Leeds", "York", "Manchester", "Harrogate", "Bradford", "Sheffield", "Hull")


def alert_level(health_score: int) -> str:
    """The contract's bands: none 71..100, medium 36..70, high 0..35."""
    if health_score >= 71:
        return "none"
    if health_score >= 36:
        return "medium"
    return "high"
