"""Fixtures that start the sandbox on loopback (owned by the sandbox's tests)."""
