"""The sources the poller can open, by an account's `provider`.

A new upstream plugs in here: its module in `relay/sources/`, its `open_source` (a
`SourceFactory`) in this table, its rules in `relay.snapshots.rules`; the poller is not touched.
A `Source` with lists only (InvoiceXT) is polled list by list (`relay.poller.lists`); a
`ScopedSource` (Dext) by planned tasks per scope (`relay.poller.tasks`).
"""

from __future__ import annotations

from typing import Final

from relay.sources import dext_source, invoicext
from relay.sources.source import ScopedSource, SourceFactory

SOURCES: Final[dict[str, SourceFactory]] = {
    "dext": dext_source.open_source,
    "invoicext": invoicext.open_source,
}
# The scoped sources' classes: their description (scan parts, page sizes) without opening one,
# for the baseline progress of an account (`relay.poller.progress`).
SCOPED: Final[dict[str, type[ScopedSource]]] = {"dext": dext_source.DextSource}
