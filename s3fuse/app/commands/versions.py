"""``s3fuse versions PATH [--restore=VERSION_ID] [--json]``: the versions of one file on a
mount of a versioned bucket, and the restore of one of them, through the mount itself
(the reserved extended attributes of ``fs/versions.py``): the mount's credentials and
endpoint serve the requests, and a restore drops the mount's cached attributes of the
path, so the mount shows the restored content at once.  A file that no longer exists is
reached through its directory (``user.s3fuse.versions:NAME``)."""
from __future__ import annotations

import json
import os
import sys
import time

from ... import errors
from ..commandline import Parsed

VERSIONS, RESTORE = "user.s3fuse.versions", "user.s3fuse.restore"


def _where(path: str):
    """(the path asked, the xattr suffix): the file itself, or its directory and
    ``:NAME`` when the file is gone (a delete marker is its newest entry)."""
    if os.path.lexists(path):
        return path, ""
    parent, name = os.path.split(os.path.abspath(path))
    return parent, ":" + name


def _parse(value: bytes) -> tuple:
    rows, more = [], 0
    for line in value.decode("utf-8", "replace").splitlines():
        fields = line.split("\t")
        if fields[0] == "+":
            more = int(fields[1].split()[0])
            continue
        vid, mtime, size, kind, latest, etag = fields
        rows.append({"version_id": vid, "last_modified": float(mtime), "size": int(size),
                     "delete_marker": kind == "delete-marker", "latest": latest == "latest",
                     "etag": None if etag == "-" else etag})
    return rows, more


def _errno(kind) -> int:
    return errors.ERRNO[kind][0]


def _fail(path: str, exc: OSError, doing: str) -> int:
    why = exc.strerror or str(exc)
    if exc.errno == _errno(errors.NotSupported) or (exc.errno == _errno(errors.NoSuchAttribute) and doing == "list"):
        why = "not a file on an s3fuse mount (or an s3fuse without versions)"
    elif exc.errno == _errno(errors.ReadOnly):
        why = "read-only mount (a snapshot cannot restore: restore through a live mount)"
    elif exc.errno == _errno(errors.Busy):
        why = "open for writing or its upload is pending on the mount: restore once it is closed and uploaded"
    sys.stderr.write(f"s3fuse versions: {path}: {why}\n")
    return 1


def run(parsed: Parsed) -> int:
    path = parsed.positionals[0]
    target, suffix = _where(path)
    restore = parsed.get("restore")
    if restore:
        try:
            os.setxattr(target, RESTORE + suffix, restore.encode())
        except OSError as exc:
            return _fail(path, exc, "restore")
        try:
            os.stat(path)          # the kernel's attributes of the path: fetched again now
        except OSError:
            pass
        print(f"restored {path} to version {restore}")
        return 0
    try:
        rows, more = _parse(os.getxattr(target, VERSIONS + suffix))
    except OSError as exc:
        return _fail(path, exc, "list")
    if parsed.get("json"):
        print(json.dumps(rows, indent=1))
        return 0
    for r in rows:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(r["last_modified"]))
        stamp += f".{int(r['last_modified'] * 1000) % 1000:03d}Z"
        kind = "delete marker" if r["delete_marker"] else f"{r['size']:>12}"
        print(f"{r['version_id']:<34} {stamp}  {kind:>13}{'  (latest)' if r['latest'] else ''}")
    if more:
        print(f"... and {more} older version(s) not shown")
    return 0
