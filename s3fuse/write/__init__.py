"""Write path: staging files, upload journal, multipart uploads (see docs/design/writes.md)."""
