"""Local S3 servers for the tests, all with one interface (``endpoint``, ``access_key``,
``secret_key``, ``env()``, ``start()``, ``stop()``, ``kind``):

- ``MotoServer`` (moto.py): a moto server process, always available, starts in ~1 s.
- ``RGWServer`` (rgw.py): a single-node Ceph RGW (rgw.sh), the real-server tier; needs
  the Debian packages of install-rgw.sh, starts in ~15 s.

``make_server(kind)`` builds either by name (``S3FUSE_TEST_SERVERS`` uses these names).
"""
from __future__ import annotations

from .moto import ACCESS_KEY, SECRET_KEY, MotoServer, free_port, wait_http
from .rgw import RGWServer, rgw_missing_binaries

KINDS = ("moto", "rgw")


def make_server(kind: str):
    if kind == "moto":
        return MotoServer()
    if kind == "rgw":
        return RGWServer()
    raise ValueError(f"unknown S3 test server {kind!r} (known: {', '.join(KINDS)})")


__all__ = ["ACCESS_KEY", "SECRET_KEY", "KINDS", "MotoServer", "RGWServer", "free_port", "make_server",
           "rgw_missing_binaries", "wait_http"]
