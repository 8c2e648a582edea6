"""THE one place where an exception becomes the errno a FUSE callback returns.

Every callback passes through ``to_errno``: the adapter's operations
(``operations._errno_boundary``) and the binding's own ctypes-level overrides
(``binding``).  The errno comes from ``errors.ERRNO``; an everyday answer (ENOENT
from a stat) is logged at debug level; a failure in one line (the path, the S3 request,
its status and attempts, the errno returned and what became of the data, see
``errors.describe``), its traceback at debug level only; an exception no table knows (a
bug) with its traceback, answered EIO - never fusepy's accidental EINVAL.  Every answer
but success is counted in ``metrics.FUSE_ERRORS`` by operation and errno.
"""
from __future__ import annotations

import logging

from .. import errors, metrics

log = logging.getLogger("s3fuse.fuse_ops")


def to_errno(operation: str, args: tuple, exc: BaseException) -> int:
    """Log ``exc`` as raised by callback ``operation`` (first argument ``args[:1]``) and
    return the positive errno to answer with."""
    code = errors.errno_of(exc)
    name = errors.errno_name(code)
    metrics.FUSE_ERRORS.inc(operation, name)
    path = args[0] if args else ""
    if isinstance(exc, errors.FsError) and errors.is_quiet(exc):
        log.debug("%s %r: %s", operation, path, exc)
    elif isinstance(exc, (errors.FsError, OSError)):
        action = getattr(exc, "action", None)
        log.error("%s %r failed: %s; %s returned%s", operation, path, errors.describe(exc), name,
                  f", {action}" if action else "")
        log.debug("%s %r: traceback", operation, path, exc_info=exc)
    else:
        log.error("%s %r failed unexpectedly; returning EIO", operation, path, exc_info=exc)
    return code
