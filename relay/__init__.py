"""Relay: a webhook relay and change-detection daemon for bookkeeping platforms without webhooks."""

__version__ = "0.1.0"
