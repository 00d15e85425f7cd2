"""Snapshots of upstream objects and the set-based diff that turns their changes into events.

Its modules: `hashing` (content, quick and summary hashes, object ids), `diff` (the set-based
`diff_objects` and its SQL, `changed_summary_ids`), `scans` (complete scans and the deletions
they confirm) and `reads` (`should_emit` and the stored state the poll planner reads).
"""

from __future__ import annotations

from relay.snapshots.diff import DiffResult, changed_summary_ids, diff_objects
from relay.snapshots.hashing import content_hash, quick_hash, summary_hash
from relay.snapshots.reads import (
    should_emit,
    stored_by_status,
    stored_document_counts,
    stored_workspaces,
)
from relay.snapshots.scans import (
    SCANNABLE_TYPES,
    ScanOutcome,
    begin_complete_scan,
    deletion_candidates,
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
    "finish_complete_scan",
    "mark_scan_partial",
    "quick_hash",
    "record_scan_page",
    "seconds_since_complete_scan",
    "should_emit",
    "stored_by_status",
    "stored_document_counts",
    "stored_workspaces",
    "summary_hash",
]
