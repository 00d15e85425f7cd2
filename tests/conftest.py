"""The suite's plugins: every shared fixture lives in a `tests/support/` module registered here.

tests/support/stores.py     this run's Postgres database and Redis db (`settings`, `pool`, ...)
tests/support/sandbox.py    the Dext and InvoiceXT sandboxes on loopback (`sandbox`, ...)
tests/support/polling.py    an HTTP session for the upstream clients (`http`)
tests/support/api.py        the admin API on loopback (`app`, `client`, `anon`, `api_env`)
Test files import helpers only from `tests.support.*` (tests/test_tests_layout.py checks it).
"""

from __future__ import annotations

import pytest

from relay.logs import configure_logging

pytest_plugins = [
    "tests.support.stores",
    "tests.support.sandbox",
    "tests.support.polling",
    "tests.support.api",
]


def pytest_configure(config: pytest.Config) -> None:
    configure_logging("console", "warning", cache=False)
