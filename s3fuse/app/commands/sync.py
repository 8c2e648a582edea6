"""``s3fuse sync MOUNTPOINT``: wait until every file closed on the mount is in S3
(writeback): an fsync of the mount's root directory, which s3fuse answers once its
upload queue is empty (sync(1) and syncfs(2) do not reach FUSE daemons)."""
from __future__ import annotations

import os
import sys

from ... import errors
from ..commandline import Parsed


def run(parsed: Parsed) -> int:
    target = parsed.positionals[0]
    try:
        fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        sys.stderr.write(f"s3fuse sync: {target}: {exc.strerror}"
                         + (" (an upload failed for good: the mount's log names the file, its bytes are in "
                            "cache_dir/recovery/)" if exc.errno == errors.ERRNO[errors.WriteFailed][0] else "") + "\n")
        return 1
    return 0
