"""Upstream connectors, one module per service."""
