"""The suite's plugins: every shared fixture lives in a `tests/support/` module registered here.

tests/support/stores.py     this run's Postgres database and Redis db (`settings`, `pool`, ...)
tests/support/sandbox.py    the Dext and InvoiceXT sandboxes on loopback (`sandbox`, ...)
tests/support/polling.py    an HTTP session for the upstream clients (`http`)
tests/support/api.py        the admin API on loopback (`app`, `client`, `anon`, `api_env`)
Test files import helpers only from `tests.support.*` (tests/test_tests_layout.py checks it).
The one fixture defined here, `collect_garbage`, is about the suite itself rather than shared.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

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


@pytest.fixture(scope="module", autouse=True)
def collect_garbage() -> Iterator[None]:
    """Collect each module's garbage as the module ends, so a client or socket it left open
    fails that module, not whichever later test the collector happens to run in.

    An unclosed socket, transport or redis-py connection warns (ResourceWarning) from its
    `__del__`, which `filterwarnings = error` turns into an unraisable exception; pytest
    reports those at the end of the phase they occur in, here the teardown of the module's
    last test (`ERROR at teardown of tests/x/test_y.py::test_last`), though the leak may be in
    any test of that module. To see where the socket was opened, run the module again with
    `PYTHONTRACEMALLOC=20` and `-W always::ResourceWarning`: the warnings are then listed
    with their allocation tracebacks instead of raised (as errors they name only `__del__`).

    Module scope because a full collection costs about 0.1 s here: after every test it added
    about 75 s to the suite's ~760 tests, after every module about 8 s over ~80 modules.
    """
    yield
    gc.collect()
