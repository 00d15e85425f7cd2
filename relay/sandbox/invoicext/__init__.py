"""The simulated InvoiceXT account and its `/api/v1` (invoicext-api.md)."""
