"""Data path: disk block cache and read-ahead (see docs/design/reads.md)."""
