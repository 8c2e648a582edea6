"""THE one place where an exception becomes the errno a FUSE callback returns.

Every callback passes through ``to_errno``: the adapter's operations
(``fuse_ops._errno_boundary``) and the binding's own ctypes-level overrides
(``fuse_binding``).  The errno comes from ``errors.ERRNO``; an everyday answer (ENOENT
from a stat) is logged at debug level, a failure with its traceback, and an exception no
table knows (a bug) as an error, answered EIO - never fusepy's accidental EINVAL.
"""
from __future__ import annotations

import logging

from . import errors

log = logging.getLogger("s3fuse.fuse_ops")


def to_errno(operation: str, args: tuple, exc: BaseException) -> int:
    """Log ``exc`` as raised by callback ``operation`` (first argument ``args[:1]``) and
    return the positive errno to answer with."""
    code = errors.errno_of(exc)
    if isinstance(exc, errors.FsError) and errors.is_quiet(exc):
        log.debug("%s%r: %s", operation, args[:1], exc)
    elif isinstance(exc, (errors.FsError, OSError)):
        log.error("%s%r failed: %s", operation, args[:1], exc, exc_info=exc)
    else:
        log.error("%s%r failed unexpectedly; returning EIO", operation, args[:1], exc_info=exc)
    return code
