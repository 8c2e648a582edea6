"""Metadata: attributes, TTL caches, directory listings (see docs/design/metadata.md)."""
