"""The sources the poller can open by an account's `provider`, besides Dext's own task kinds.

A new upstream with lists only plugs in here: its module in `relay/sources/`, its `open_source`
(a `SourceFactory`) in this table, its rules in `relay.snapshots.rules`; the poller is not touched.
"""

from __future__ import annotations

from typing import Final

from relay.sources import invoicext
from relay.sources.source import SourceFactory

SOURCES: Final[dict[str, SourceFactory]] = {"invoicext": invoicext.open_source}
