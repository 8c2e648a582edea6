"""Pieces shared by the unit tests' fake S3 clients."""
from __future__ import annotations

from s3fuse import errors


def head_each(client, keys):
    """``ObjectClient.head_many`` for a fake: the fake's own ``head`` per key, with a
    typed error (NotFound...) in place of the answer where it raises one."""
    out = []
    for key in keys:
        try:
            out.append(client.head(key))
        except errors.FsError as exc:
            out.append(exc)
    return out
