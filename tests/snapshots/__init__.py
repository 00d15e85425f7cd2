"""Tests of `relay.snapshots`: hashing, the set-based diff, scans and deletions."""
