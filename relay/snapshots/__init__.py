"""Snapshots of upstream objects and the set-based diff that turns their changes into events.

Its modules: `diff` (the `snapshots` table, all of its SQL: the set-based `diff_objects`,
`changed_summary_ids`, the stored state the poller re-checks, the rows a complete scan
deletes), `hashing` (content, quick and summary hashes, object ids), `scans` (complete scans,
the `snapshot_scans` and `snapshot_scan_pages` tables, and the deletions they confirm) and
`rules` (what counts as a change, and which event it makes).

It may import the foundation and `relay.events` (the outbox a diff writes to), never
`relay.sources` or `relay.poller`: the poller hands it plain objects and ids.
"""

from __future__ import annotations

from relay.snapshots.diff import (
    DiffResult,
    changed_summary_ids,
    diff_objects,
    stored_by_status,
    stored_document_counts,
    stored_workspaces,
)
from relay.snapshots.hashing import content_hash, quick_hash, summary_hash
from relay.snapshots.scans import (
    SCANNABLE_TYPES,
    ScanOutcome,
    begin_complete_scan,
    deletion_candidates,
    diff_scan_page,
    finish_complete_scan,
    mark_scan_partial,
    record_scan_page,
    seconds_since_complete_scan,
)

__all__ = [
    "SCANNABLE_TYPES",
    "DiffResult",
    "ScanOutcome",
    "begin_complete_scan",
    "changed_summary_ids",
    "content_hash",
    "deletion_candidates",
    "diff_objects",
    "diff_scan_page",
    "finish_complete_scan",
    "mark_scan_partial",
    "quick_hash",
    "record_scan_page",
    "seconds_since_complete_scan",
    "stored_by_status",
    "stored_document_counts",
    "stored_workspaces",
    "summary_hash",
]
